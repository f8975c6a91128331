// Capability token minting and verification: the attacks on the token itself, each refused
// with its code (the whole decision, with the policy, is in test/unit/policy/authorize.test.ts);
// interoperability with jose; and the property that malformed tokens never make verification
// throw anything but clawgate's own error.
import assert from 'node:assert/strict';
import { createHmac, generateKeyPairSync, type KeyObject } from 'node:crypto';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { before, test } from 'node:test';
import fc from 'fast-check';
import {
  calculateJwkThumbprint,
  createLocalJWKSet,
  exportJWK,
  jwtVerify,
  SignJWT,
  UnsecuredJWT,
  type JWK,
} from 'jose';
import { ClawgateError, ERROR_CODES, type ErrorCode } from '../../../src/errors.ts';
import {
  CST_AUDIENCE,
  CST_ISSUER,
  CST_TYPE,
  mintCapabilityToken,
  verifyCapabilityToken,
  type CstClaims,
  type MintRequest,
  type VerifyOptions,
} from '../../../src/tokens/cst.ts';
import { FileRevocationStore } from '../../../src/tokens/revocations.ts';

const PLAN = 'a'.repeat(64);
const POLICY = 'b'.repeat(64);
const NOW = new Date('2026-06-01T12:00:00Z');

let signer: { kid: string; key: KeyObject };
let jwks: { keys: JWK[] };
let revocations: FileRevocationStore;
let activePolicy = POLICY;

const request: MintRequest = {
  purpose: 'execution',
  job: { workflowId: 'job:!ops:x:$1', runId: 'run-1' },
  roomId: '!ops:x',
  scope: { tools: ['read', 'search'], models: ['demo-echo'] },
  planHash: PLAN,
  approval: { approvers: ['@alice:x'], eventIds: ['$approve'] },
  wpcHash: POLICY,
  now: NOW,
};

const options = (extra: Partial<VerifyOptions> = {}): VerifyOptions => ({
  jwks,
  now: () => NOW,
  isRevoked: (jti, job) => revocations.isRevoked(jti, job),
  activePolicyHash: () => activePolicy,
  ...extra,
});

before(async () => {
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  const jwk = await exportJWK(publicKey);
  const kid = await calculateJwkThumbprint(jwk);
  signer = { kid, key: privateKey };
  jwks = { keys: [{ ...jwk, kid, alg: 'EdDSA' }] };
  revocations = new FileRevocationStore(
    join(mkdtempSync(join(tmpdir(), 'clawgate-revocations-')), 'revocations.log'),
  );
});

async function expectRefused(token: unknown, code: ErrorCode, opts = options()): Promise<void> {
  await assert.rejects(verifyCapabilityToken(token, opts), (error: unknown) => {
    assert.ok(error instanceof ClawgateError, `not a ClawgateError: ${String(error)}`);
    assert.equal(error.code, code, error.message);
    return true;
  });
}

const b64 = (value: unknown): string => Buffer.from(JSON.stringify(value)).toString('base64url');

test('a minted token verifies and carries its bindings', async () => {
  const { token } = await mintCapabilityToken(request, signer);
  const claims = await verifyCapabilityToken(token, options());
  assert.equal(claims.sub, request.job.workflowId);
  assert.deepEqual(claims.job, { workflow_id: request.job.workflowId, run_id: 'run-1' });
  assert.equal(claims.plan_hash, PLAN);
  assert.equal(claims.wpc_hash, POLICY);
  assert.deepEqual(claims.scope, { tools: ['read', 'search'], models: ['demo-echo'] });
  assert.equal(claims.exp - claims.iat, 900);
});

test('attack: alg none', async () => {
  const { claims } = await mintCapabilityToken(request, signer);
  const unsigned = new UnsecuredJWT(claims).encode();
  await expectRefused(unsigned, ERROR_CODES.tokenAlgorithmNotAllowed);
  await expectRefused(
    `${b64({ alg: 'none', typ: CST_TYPE })}.${b64(claims)}.`,
    ERROR_CODES.tokenAlgorithmNotAllowed,
  );
});

test('attack: HS256 signed with the public key as the secret', async () => {
  const { claims } = await mintCapabilityToken(request, signer);
  const header = b64({ alg: 'HS256', typ: CST_TYPE, kid: signer.kid });
  const body = b64(claims);
  const secret = JSON.stringify(jwks.keys[0]);
  const mac = createHmac('sha256', secret).update(`${header}.${body}`).digest('base64url');
  await expectRefused(`${header}.${body}.${mac}`, ERROR_CODES.tokenAlgorithmNotAllowed);
});

test('attack: unknown kid, and a key not on the JWKS', async () => {
  const other = generateKeyPairSync('ed25519');
  const stranger = await new SignJWT({})
    .setProtectedHeader({ alg: 'EdDSA', typ: CST_TYPE, kid: 'not-ours' })
    .sign(other.privateKey);
  await expectRefused(stranger, ERROR_CODES.tokenUnknownKey);
  const { claims } = await mintCapabilityToken(request, signer);
  const forged = await new SignJWT(claims)
    .setProtectedHeader({ alg: 'EdDSA', typ: CST_TYPE, kid: signer.kid })
    .sign(other.privateKey);
  await expectRefused(forged, ERROR_CODES.tokenSignatureInvalid);
});

test('attack: expired, and not yet valid', async () => {
  const { token } = await mintCapabilityToken(request, signer);
  await expectRefused(
    token,
    ERROR_CODES.tokenExpired,
    options({ now: () => new Date(NOW.getTime() + 16 * 60_000) }),
  );
  await expectRefused(
    token,
    ERROR_CODES.tokenNotYetValid,
    options({ now: () => new Date(NOW.getTime() - 60_000) }),
  );
  // Within the clock tolerance both still verify.
  await verifyCapabilityToken(token, options({ now: () => new Date(NOW.getTime() + 900_000 + 2_000) }));
});

test('attack: wrong audience, wrong type', async () => {
  const { token } = await mintCapabilityToken(request, signer);
  await expectRefused(token, ERROR_CODES.tokenAudienceInvalid, options({ audience: 'someone-else' }));
  const { claims } = await mintCapabilityToken(request, signer);
  const asAccessToken = await new SignJWT(claims)
    .setProtectedHeader({ alg: 'EdDSA', typ: 'JWT', kid: signer.kid })
    .sign(signer.key);
  await expectRefused(asAccessToken, ERROR_CODES.tokenTypeInvalid);
});

test('attack: tampered payload, tampered signature, and every single changed character', async () => {
  const { token } = await mintCapabilityToken(request, signer);
  const [h, p, s] = token.split('.') as [string, string, string];
  const claims = JSON.parse(Buffer.from(p, 'base64url').toString()) as CstClaims;
  await expectRefused(
    `${h}.${b64({ ...claims, scope: { tools: ['exec'], models: [] } })}.${s}`,
    ERROR_CODES.tokenSignatureInvalid,
  );
  // Two other last characters (a signature that already ends in AA gets gA: a real change either way).
  const tail = s.endsWith('AA') ? 'gA' : 'AA';
  await expectRefused(`${h}.${p}.${s.slice(0, -2)}${tail}`, ERROR_CODES.tokenSignatureInvalid);
  for (let i = 0; i < token.length; i++) {
    if (token[i] === '.') continue;
    const mutated = token.slice(0, i) + (token[i] === 'A' ? 'B' : 'A') + token.slice(i + 1);
    await assert.rejects(
      verifyCapabilityToken(mutated, options()),
      ClawgateError,
      `a change at ${i} verified`,
    );
  }
});

test('attack: a token of another job', async () => {
  const { token } = await mintCapabilityToken(request, signer);
  await expectRefused(
    token,
    ERROR_CODES.tokenJobMismatch,
    options({ expectedJob: { workflowId: 'job:!ops:x:$2' } }),
  );
  await expectRefused(
    token,
    ERROR_CODES.tokenJobMismatch,
    options({ expectedJob: { workflowId: request.job.workflowId, runId: 'run-2' } }),
  );
});

test('attack: a revoked token, and any token of a revoked job, also after a restart', async () => {
  const one = await mintCapabilityToken(request, signer);
  const other = await mintCapabilityToken(
    { ...request, job: { workflowId: 'job:!ops:x:$9', runId: 'r' } },
    signer,
  );
  revocations.revokeToken(one.claims.jti, 'test');
  await expectRefused(one.token, ERROR_CODES.tokenRevoked);
  revocations.revokeJob('job:!ops:x:$9', 'test');
  await expectRefused(other.token, ERROR_CODES.tokenRevoked);
  const elsewhere = new FileRevocationStore(join(mkdtempSync(join(tmpdir(), 'clawgate-other-')), 'r.log'));
  assert.equal(elsewhere.isRevoked(one.claims.jti, 'x'), false);
  const path = revocations.path;
  const restarted = new FileRevocationStore(path);
  assert.ok(restarted.isRevoked(one.claims.jti, 'any'));
  assert.ok(restarted.isRevoked('any', 'job:!ops:x:$9'));
  assert.match(readFileSync(path, 'utf8'), /"kind":"job"/);
});

test('attack: pinned policy hash drift fails closed', async () => {
  const { token } = await mintCapabilityToken(request, signer);
  activePolicy = 'c'.repeat(64);
  try {
    await expectRefused(token, ERROR_CODES.policyHashMismatch);
    await expectRefused(token, ERROR_CODES.policyHashMismatch, options({ activePolicyHash: undefined }));
  } finally {
    activePolicy = POLICY;
  }
});

test('attack: claims of the wrong shape are refused even when signed', async () => {
  const { claims } = await mintCapabilityToken(request, signer);
  const bad = await new SignJWT({ ...claims, scope: { tools: 'exec', models: [] } })
    .setProtectedHeader({ alg: 'EdDSA', typ: CST_TYPE, kid: signer.kid })
    .sign(signer.key);
  await expectRefused(bad, ERROR_CODES.tokenClaimsInvalid);
});

test('jose, an independent implementation, accepts a minted token with the same type, audience and issuer', async () => {
  const { token, claims } = await mintCapabilityToken(request, signer);
  const { payload, protectedHeader } = await jwtVerify(token, createLocalJWKSet(jwks), {
    algorithms: ['EdDSA'],
    typ: CST_TYPE,
    audience: CST_AUDIENCE,
    issuer: CST_ISSUER,
    currentDate: NOW,
    requiredClaims: ['jti', 'sub', 'iat', 'nbf', 'exp'],
  });
  assert.equal(protectedHeader.kid, signer.kid);
  assert.deepEqual(payload, claims);
});

test('every token gets a unique jti', async () => {
  const ids = new Set<string>();
  for (let i = 0; i < 200; i++) ids.add((await mintCapabilityToken(request, signer)).claims.jti);
  assert.equal(ids.size, 200);
});

test('the lifetime comes from the request (the policy), within 30 s to 1 h', async () => {
  const { claims } = await mintCapabilityToken({ ...request, ttlSeconds: 120 }, signer);
  assert.equal(claims.exp - claims.iat, 120);
  for (const ttlSeconds of [0, 29, 3601, 1.5, NaN, Infinity]) {
    await assert.rejects(mintCapabilityToken({ ...request, ttlSeconds }, signer), {
      code: ERROR_CODES.tokenRequestInvalid,
      message: /ttlSeconds/,
    });
  }
});

test('a mint request that would make a token the verifier refuses is refused, naming the field', async () => {
  const bad: Array<[Partial<MintRequest>, RegExp]> = [
    [{ planHash: undefined }, /plan_hash: an execution token needs plan_hash and approval/],
    [{ approval: undefined }, /an execution token needs plan_hash and approval/],
    [{ approval: { approvers: [], eventIds: ['$e'] } }, /approval\.approvers/],
    [{ planHash: 'not-a-hash' }, /plan_hash/],
    [{ wpcHash: 'B'.repeat(64) }, /wpc_hash/],
    [
      {
        purpose: 'planning',
        planHash: undefined,
        approval: undefined,
        scope: { tools: ['read', 'exec'], models: [] },
      },
      /scope\.tools: a planning token carries only the read-only tools \(read, search\), not exec/,
    ],
    [{ budget: { modelCalls: 0 } }, /budget\.model_calls/],
    [{ job: { workflowId: '', runId: 'r' } }, /sub|job\.workflow_id/],
    [{ now: new Date(NaN) }, /now/],
  ];
  for (const [change, message] of bad) {
    await assert.rejects(
      mintCapabilityToken({ ...request, ...change }, signer),
      (error: unknown) => {
        assert.ok(error instanceof ClawgateError, String(error));
        assert.equal(error.code, ERROR_CODES.tokenRequestInvalid);
        assert.match(error.message, message);
        return true;
      },
      JSON.stringify(change),
    );
  }
});

test('a verifier without a usable clock or with an absurd tolerance refuses every token', async () => {
  const { token } = await mintCapabilityToken(request, signer);
  await expectRefused(token, ERROR_CODES.tokenExpired, options({ now: () => new Date(NaN) }));
  await expectRefused(token, ERROR_CODES.tokenExpired, options({ clockToleranceSeconds: 86_400 }));
  await expectRefused(token, ERROR_CODES.tokenExpired, options({ clockToleranceSeconds: -1 }));
});

test('a failing lookup refuses the token: revocation check and active policy', async () => {
  const { token } = await mintCapabilityToken(request, signer);
  await expectRefused(
    token,
    ERROR_CODES.revocationCheckFailed,
    options({ isRevoked: () => Promise.reject(new Error('unreachable')) }),
  );
  await expectRefused(
    token,
    ERROR_CODES.policyHashMismatch,
    options({
      activePolicyHash: () => {
        throw new TypeError('registry gone');
      },
    }),
  );
});

test('a retired token key verifies only while the JWKS still lists it; a JWKS entry of the wrong kind is unusable', async () => {
  const { token } = await mintCapabilityToken(request, signer);
  await expectRefused(token, ERROR_CODES.tokenUnknownKey, options({ jwks: { keys: [] } }));
  const asEncryptionKey = { keys: jwks.keys.map((k) => ({ ...k, use: 'enc' })) };
  await expectRefused(token, ERROR_CODES.tokenUnknownKey, options({ jwks: asEncryptionKey }));
  const broken = { keys: jwks.keys.map((k) => ({ ...k, x: 'AAAA' })) };
  await expectRefused(token, ERROR_CODES.tokenUnknownKey, options({ jwks: broken }));
});

test('property: malformed tokens are refused with clawgate errors only', async () => {
  const { token } = await mintCapabilityToken(request, signer);
  const [h, p] = token.split('.') as [string, string];
  await fc.assert(
    fc.asyncProperty(
      fc.oneof(
        fc.anything(),
        fc.string(),
        fc.tuple(fc.string(), fc.string(), fc.string()).map((parts) => parts.join('.')),
        fc.jsonValue().map((v) => `${h}.${b64(v)}.${'A'.repeat(86)}`),
        fc.jsonValue().map((v) => `${b64(v)}.${p}.${'A'.repeat(86)}`),
        fc.base64String().map((s) => `${h}.${p}.${s}`),
      ),
      async (candidate) => {
        try {
          await verifyCapabilityToken(candidate, options());
          assert.fail('a malformed token verified');
        } catch (error) {
          assert.ok(error instanceof ClawgateError, `not a ClawgateError: ${String(error)}`);
        }
      },
    ),
    { numRuns: 1000 },
  );
});

test('a token verified once is still checked on every call: expiry, revocation, policy, its key, the audience', async () => {
  const { token, claims } = await mintCapabilityToken(
    { ...request, job: { workflowId: 'job:!ops:x:$cached', runId: 'r' } },
    signer,
  );
  // Verified (and remembered) once; the same claims come back, frozen so no caller can change them.
  const first = await verifyCapabilityToken(token, options());
  assert.equal(await verifyCapabilityToken(token, options()), first);
  assert.ok(Object.isFrozen(first) && Object.isFrozen(first.scope.models));
  await expectRefused(
    token,
    ERROR_CODES.tokenExpired,
    options({ now: () => new Date(NOW.getTime() + 16 * 60_000) }),
  );
  await expectRefused(token, ERROR_CODES.tokenAudienceInvalid, options({ audience: 'another-service' }));
  activePolicy = 'c'.repeat(64);
  try {
    await expectRefused(token, ERROR_CODES.policyHashMismatch);
  } finally {
    activePolicy = POLICY;
  }
  // A JWKS without the key, and the same JWKS object once its key is taken out.
  await expectRefused(token, ERROR_CODES.tokenUnknownKey, options({ jwks: { keys: [] } }));
  const own = { keys: [...jwks.keys] };
  await verifyCapabilityToken(token, options({ jwks: own }));
  own.keys.length = 0;
  await expectRefused(token, ERROR_CODES.tokenUnknownKey, options({ jwks: own }));
  revocations.revokeToken(claims.jti, 'test');
  await expectRefused(token, ERROR_CODES.tokenRevoked);
});
