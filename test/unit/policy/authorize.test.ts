// The decision every tool and model call goes through, against a table of attacks: each is
// refused with its own stable code, from the bearer token to the policy's lists. Deny wins over
// allow; no token, no call. Also the policy documents an attacker might feed the registry.
import assert from 'node:assert/strict';
import { createHmac, generateKeyPairSync, sign, type KeyObject } from 'node:crypto';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { before, test } from 'node:test';
import { UnsecuredJWT, type JWK } from 'jose';
import { ClawgateError, ERROR_CODES, type ErrorCode } from '../../../src/errors.ts';
import { generateKeyring, loadSigner, publicJwks } from '../../../src/keys/keyring.ts';
import { authorize, authorizeWithToken, type Call } from '../../../src/policy/authorize.ts';
import { loadWpc, parseWpc, wpcHash, type Wpc } from '../../../src/policy/wpc.ts';
import {
  CST_TYPE,
  mintCapabilityToken,
  type CstClaims,
  type MintRequest,
  type VerifyOptions,
} from '../../../src/tokens/cst.ts';
import { FileRevocationStore } from '../../../src/tokens/revocations.ts';

const exampleText = readFileSync(new URL('../../../examples/policy.json', import.meta.url), 'utf8');
const NOW = new Date('2026-06-01T12:00:00Z');
const JOB = 'job:!ops:localhost:$request';

let policy: Wpc;
let policyHash: string;
let signer: { kid: string; key: KeyObject };
let receiptSigner: { kid: string; key: KeyObject };
let jwks: { keys: JWK[] };
let revocations: FileRevocationStore;

before(async () => {
  policy = loadWpc(exampleText).wpc;
  policyHash = wpcHash(policy);
  const keys = mkdtempSync(join(tmpdir(), 'clawgate-authorize-keys-'));
  await generateKeyring(keys, 'token');
  await generateKeyring(keys, 'receipt');
  signer = loadSigner(keys, 'token');
  receiptSigner = loadSigner(keys, 'receipt');
  // One combined JWKS, as a process holding several keyrings has: keys carry their purpose.
  jwks = publicJwks(keys);
  revocations = new FileRevocationStore(
    join(mkdtempSync(join(tmpdir(), 'clawgate-authorize-state-')), 'revocations.log'),
  );
});

const mintRequest = (change: Partial<MintRequest> = {}): MintRequest => ({
  purpose: 'execution',
  job: { workflowId: JOB, runId: 'run-1' },
  roomId: '!ops:localhost',
  scope: { tools: ['read', 'search'], models: ['demo-echo'] },
  planHash: 'a'.repeat(64),
  approval: { approvers: ['@approver:localhost'], eventIds: ['$approve'] },
  wpcHash: policyHash,
  now: NOW,
  ...change,
});

const mint = async (change: Partial<MintRequest> = {}): Promise<{ token: string; claims: CstClaims }> =>
  await mintCapabilityToken(mintRequest(change), signer);

const b64 = (value: unknown): string => Buffer.from(JSON.stringify(value)).toString('base64url');

/** A token signed with a real Ed25519 key, header and claims as the attacker wants them. */
function forge(header: Record<string, unknown>, claims: unknown, key: KeyObject = signer.key): string {
  const input = `${b64(header)}.${b64(claims)}`;
  return `${input}.${sign(null, Buffer.from(input), key).toString('base64url')}`;
}

const verifyOptions = (change: Partial<VerifyOptions> = {}) => ({
  jwks,
  now: () => NOW,
  isRevoked: (jti: string, job: string) => revocations.isRevoked(jti, job),
  activePolicyHash: () => policyHash,
  ...change,
});

const readCall: Call = { kind: 'tool', tool: 'read', workflowId: JOB };

/** The example policy with `exec` on its allow list too (it is on the deny list already). */
function execAllowedAndDenied(): Wpc {
  const p = JSON.parse(exampleText) as { execution: { tools: { allow: string[]; deny: string[] } } };
  p.execution.tools.allow.push('exec');
  assert.ok(p.execution.tools.deny.includes('exec'));
  return parseWpc(p);
}

interface Attack {
  name: string;
  code: ErrorCode;
  token: () => Promise<unknown>;
  call?: Call;
  policy?: () => Wpc;
  verify?: Partial<VerifyOptions>;
}

const attacks: Attack[] = [
  { name: 'no token at all', code: ERROR_CODES.tokenMissing, token: () => Promise.resolve(undefined) },
  {
    name: 'alg none (an unsecured JWT)',
    code: ERROR_CODES.tokenAlgorithmNotAllowed,
    token: async () => new UnsecuredJWT((await mint()).claims).encode(),
  },
  {
    name: 'alg none with our typ and kid, and a signature part left empty',
    code: ERROR_CODES.tokenAlgorithmNotAllowed,
    token: async () =>
      `${b64({ alg: 'none', typ: CST_TYPE, kid: signer.kid })}.${b64((await mint()).claims)}.`,
  },
  {
    name: 'HS256 keyed with the public key (algorithm confusion)',
    code: ERROR_CODES.tokenAlgorithmNotAllowed,
    token: async () => {
      const input = `${b64({ alg: 'HS256', typ: CST_TYPE, kid: signer.kid })}.${b64((await mint()).claims)}`;
      const secret = JSON.stringify(jwks.keys.find((k) => k.kid === signer.kid));
      return `${input}.${createHmac('sha256', secret).update(input).digest('base64url')}`;
    },
  },
  {
    name: 'an unknown kid',
    code: ERROR_CODES.tokenUnknownKey,
    token: async () => {
      const stranger = generateKeyPairSync('ed25519').privateKey;
      return forge(
        { alg: 'EdDSA', typ: CST_TYPE, kid: 'not-a-key-of-ours' },
        (await mint()).claims,
        stranger,
      );
    },
  },
  {
    name: 'signed by the receipt key (on the JWKS, but not a token key)',
    code: ERROR_CODES.tokenUnknownKey,
    token: async () =>
      forge(
        { alg: 'EdDSA', typ: CST_TYPE, kid: receiptSigner.kid },
        (await mint()).claims,
        receiptSigner.key,
      ),
  },
  {
    name: 'our kid, another key',
    code: ERROR_CODES.tokenSignatureInvalid,
    token: async () =>
      forge(
        { alg: 'EdDSA', typ: CST_TYPE, kid: signer.kid },
        (await mint()).claims,
        generateKeyPairSync('ed25519').privateKey,
      ),
  },
  {
    name: 'another token type (a plain JWT)',
    code: ERROR_CODES.tokenTypeInvalid,
    token: async () => forge({ alg: 'EdDSA', typ: 'JWT', kid: signer.kid }, (await mint()).claims),
  },
  {
    name: 'expired',
    code: ERROR_CODES.tokenExpired,
    token: async () => (await mint({ now: new Date(NOW.getTime() - 16 * 60_000) })).token,
  },
  {
    name: 'not yet valid',
    code: ERROR_CODES.tokenNotYetValid,
    token: async () => (await mint({ now: new Date(NOW.getTime() + 60_000) })).token,
  },
  {
    name: 'a wrong audience',
    code: ERROR_CODES.tokenAudienceInvalid,
    token: async () => (await mint()).token,
    verify: { audience: 'another-service' },
  },
  {
    name: 'a tampered payload (a tool added to the scope)',
    code: ERROR_CODES.tokenSignatureInvalid,
    token: async () => {
      const { token, claims } = await mint();
      const [h, , s] = token.split('.');
      return `${h}.${b64({ ...claims, scope: { ...claims.scope, tools: ['exec', 'read'] } })}.${s}`;
    },
  },
  {
    name: 'a tampered signature',
    code: ERROR_CODES.tokenSignatureInvalid,
    token: async () => {
      const { token } = await mint();
      const s = Buffer.from(token.split('.')[2] ?? '', 'base64url');
      s[10] = (s[10] ?? 0) ^ 1;
      return `${token.split('.').slice(0, 2).join('.')}.${s.toString('base64url')}`;
    },
  },
  {
    name: 'a token of another job',
    code: ERROR_CODES.tokenJobMismatch,
    token: async () => (await mint({ job: { workflowId: 'job:!ops:localhost:$other', runId: 'r' } })).token,
  },
  {
    name: 'a revoked token',
    code: ERROR_CODES.tokenRevoked,
    token: async () => {
      const { token, claims } = await mint();
      revocations.revokeToken(claims.jti, 'leaked in a paste');
      return token;
    },
  },
  {
    name: 'a token of a revoked job',
    code: ERROR_CODES.tokenRevoked,
    call: { kind: 'tool', tool: 'read', workflowId: 'job:!ops:localhost:$revoked' },
    token: async () => {
      revocations.revokeJob('job:!ops:localhost:$revoked', 'incident');
      return (await mint({ job: { workflowId: 'job:!ops:localhost:$revoked', runId: 'r' } })).token;
    },
  },
  {
    name: 'a revocation list that cannot be read',
    code: ERROR_CODES.revocationCheckFailed,
    token: async () => (await mint()).token,
    verify: {
      isRevoked: () => {
        throw new Error('control workflow unreachable');
      },
    },
  },
  {
    name: 'pinned hash drift: another policy became active',
    code: ERROR_CODES.policyHashMismatch,
    token: async () => (await mint()).token,
    verify: { activePolicyHash: () => 'c'.repeat(64) },
  },
  {
    name: 'pinned hash drift: no policy is active any more',
    code: ERROR_CODES.policyHashMismatch,
    token: async () => (await mint()).token,
    verify: { activePolicyHash: () => null },
  },
  {
    name: 'pinned to one policy, judged by another',
    code: ERROR_CODES.policyHashMismatch,
    token: async () => (await mint()).token,
    policy: () => parseWpc({ ...JSON.parse(exampleText), description: 'another policy' }),
  },
  {
    name: 'not pinned, while the policy asks for pinning',
    code: ERROR_CODES.tokenNotPinned,
    token: async () => (await mint({ wpcHash: undefined })).token,
  },
  {
    name: 'a token for a room the policy does not list',
    code: ERROR_CODES.tokenRoomNotAllowed,
    token: async () => (await mint({ roomId: '!elsewhere:localhost' })).token,
  },
  {
    name: 'a tool outside the token scope (allowed by the policy, not in the approved plan)',
    code: ERROR_CODES.toolNotInTokenScope,
    call: { kind: 'tool', tool: 'http', workflowId: JOB },
    token: async () => (await mint()).token,
  },
  {
    name: 'a tool on the deny list and the allow list at once, and in the scope: deny wins',
    code: ERROR_CODES.toolDeniedByPolicy,
    call: { kind: 'tool', tool: 'exec', workflowId: JOB },
    policy: execAllowedAndDenied,
    token: async () =>
      (
        await mint({
          scope: { tools: ['exec', 'read'], models: [] },
          wpcHash: wpcHash(execAllowedAndDenied()),
        })
      ).token,
    verify: { activePolicyHash: () => wpcHash(execAllowedAndDenied()) },
  },
  {
    name: 'a tool the policy does not allow',
    code: ERROR_CODES.toolNotAllowedByPolicy,
    call: { kind: 'tool', tool: 'browser', workflowId: JOB },
    token: async () => (await mint({ scope: { tools: ['browser'], models: [] } })).token,
  },
  {
    name: 'a planning token used to run a tool with effects (http)',
    code: ERROR_CODES.planningTokenForTool,
    call: { kind: 'tool', tool: 'http', workflowId: JOB },
    token: async () =>
      (
        await mint({
          purpose: 'planning',
          scope: { tools: ['read'], models: ['demo-echo'] },
          planHash: undefined,
          approval: undefined,
        })
      ).token,
  },
  {
    name: 'a planning token used to run a read-only tool outside its scope',
    code: ERROR_CODES.toolNotInTokenScope,
    call: { kind: 'tool', tool: 'search', workflowId: JOB },
    token: async () =>
      (
        await mint({
          purpose: 'planning',
          scope: { tools: ['read'], models: ['demo-echo'] },
          planHash: undefined,
          approval: undefined,
        })
      ).token,
  },
  {
    name: 'a model the policy does not allow',
    code: ERROR_CODES.modelNotAllowedByPolicy,
    call: { kind: 'model', model: 'gpt-anything', workflowId: JOB },
    token: async () => (await mint({ scope: { tools: [], models: ['gpt-anything'] } })).token,
  },
  {
    name: 'a model outside the token scope',
    code: ERROR_CODES.modelNotInTokenScope,
    call: { kind: 'model', model: 'demo-echo', workflowId: JOB },
    token: async () => (await mint({ scope: { tools: ['read'], models: [] } })).token,
  },
  {
    name: 'a token that lives longer than any token may, signed by the real key',
    code: ERROR_CODES.tokenClaimsInvalid,
    token: async () => {
      const { claims } = await mint();
      return forge({ alg: 'EdDSA', typ: CST_TYPE, kid: signer.kid }, { ...claims, exp: claims.iat + 86_400 });
    },
  },
  {
    name: 'claims without the approval an execution token needs, signed by the real key',
    code: ERROR_CODES.tokenClaimsInvalid,
    token: async () => {
      const { claims } = await mint();
      const { approval: _approval, ...rest } = claims;
      return forge({ alg: 'EdDSA', typ: CST_TYPE, kid: signer.kid }, rest);
    },
  },
];

for (const attack of attacks) {
  test(`attack refused with ${attack.code}: ${attack.name}`, async () => {
    const decision = await authorizeWithToken(
      attack.call ?? readCall,
      attack.policy?.() ?? policy,
      await attack.token(),
      verifyOptions(attack.verify),
    );
    assert.equal(decision.allow, false, `${attack.name} was allowed`);
    assert.ok(!decision.allow);
    assert.equal(decision.code, attack.code, decision.reason);
    assert.ok(decision.reason.length > 10, 'the reason says what was wrong');
  });
}

test('the same token, call and policy are allowed when nothing is wrong (the attacks above can fail)', async () => {
  const { token } = await mint();
  assert.deepEqual(await authorizeWithToken(readCall, policy, token, verifyOptions()), { allow: true });
  assert.deepEqual(
    await authorizeWithToken(
      { kind: 'model', model: 'demo-echo', workflowId: JOB },
      policy,
      token,
      verifyOptions(),
    ),
    { allow: true },
  );
  // A planning token runs the read-only tools in its scope: the model may look before it plans.
  const { token: planning } = await mint({
    purpose: 'planning',
    scope: { tools: ['read', 'search'], models: ['demo-echo'] },
    planHash: undefined,
    approval: undefined,
  });
  assert.deepEqual(await authorizeWithToken(readCall, policy, planning, verifyOptions()), { allow: true });
  const unpinnedPolicy = parseWpc({
    ...JSON.parse(exampleText),
    tokens: { cst: { job_scoped: true, pin_policy_hash: false } },
  });
  const { token: unpinned } = await mint({ wpcHash: undefined });
  assert.deepEqual(await authorizeWithToken(readCall, unpinnedPolicy, unpinned, verifyOptions()), {
    allow: true,
  });
});

test('authorize is pure: the same inputs give the same decision, and it never throws on a missing token', () => {
  for (const token of [null, undefined]) {
    const decision = authorize(readCall, policy, token);
    assert.deepEqual(decision, {
      allow: false,
      code: ERROR_CODES.tokenMissing,
      reason: 'no capability token: nothing runs without one',
    });
  }
});

const policyAttacks: Array<[string, string, ErrorCode, RegExp]> = [
  [
    'unknown keys',
    exampleText.replace('"allow":', '"allowlist": ["exec"], "allow":'),
    ERROR_CODES.policyInvalid,
    /execution\.tools: Unrecognized key: "allowlist"/,
  ],
  [
    'duplicate keys (JSON.parse would keep the last, silently)',
    exampleText.replace('"deny": [', '"allow": ["exec"], "deny": ['),
    ERROR_CODES.jsonDuplicateKey,
    /line \d+, column \d+: a key appears twice/,
  ],
  [
    'a number too large to be finite',
    exampleText.replace('"pin_policy_hash": true', '"pin_policy_hash": true, "ttl_seconds": 1e999'),
    ERROR_CODES.jsonNotCanonicalizable,
    /tokens\.cst\.ttl_seconds is not a finite number/,
  ],
  [
    'a NaN literal',
    exampleText.replace('"pin_policy_hash": true', '"pin_policy_hash": true, "ttl_seconds": NaN'),
    ERROR_CODES.jsonInvalid,
    /not valid JSON/,
  ],
  [
    'a YAML .inf',
    'wpc_version: "1"\nchannel: matrix\ntokens:\n  cst:\n    ttl_seconds: .inf\n',
    ERROR_CODES.jsonNotCanonicalizable,
    /tokens\.cst\.ttl_seconds is not a finite number/,
  ],
];
for (const [name, text, code, message] of policyAttacks) {
  test(`policy attack refused with ${code}: ${name}`, () => {
    assert.notEqual(text, exampleText, 'the attack changed the document');
    assert.throws(
      () => loadWpc(text),
      (error: unknown) => {
        assert.ok(error instanceof ClawgateError);
        assert.equal(error.code, code, error.message);
        assert.match(error.message, message);
        return true;
      },
    );
  });
}
