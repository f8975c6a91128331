// A sealed proof bundle verifies offline from itself and a JWKS, and any change to it fails
// verification with the entry at fault named.
import assert from 'node:assert/strict';
import { generateKeyPairSync, randomUUID, type KeyObject } from 'node:crypto';
import { before, test } from 'node:test';
import { calculateJwkThumbprint, exportJWK, SignJWT, type JWK } from 'jose';
import {
  canonicalHash,
  CST_JWT_TYPE,
  sealBundle,
  verifyBundle,
  type BundleEntry,
  type ProofBundle,
} from '../../../src/evidence/bundle.ts';
import type { Ed25519Signer } from '../../../src/evidence/jws.ts';
import { signReceipt, type ReceiptPayload } from '../../../src/proxy/receipts.ts';

async function keyPair(): Promise<{ signer: Ed25519Signer; jwk: JWK }> {
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  const jwk = await exportJWK(publicKey);
  const kid = await calculateJwkThumbprint(jwk);
  return { signer: { kid, key: privateKey }, jwk: { ...jwk, kid, alg: 'EdDSA', use: 'sig' } };
}

const job = { workflow_id: 'job-$event1', run_id: 'run-1' };
const policy = {
  wpc_version: '1',
  channel: 'matrix',
  execution: { tools: { allow: ['read'], deny: ['exec'] } },
};
const plan = {
  steps: [
    { tool: 'read', args: { path: 'README.md' } },
    { tool: 'search', args: { query: 'TODO' } },
  ],
};

let orchestrator: Ed25519Signer;
let minter: Ed25519Signer;
let receiptKey: Ed25519Signer;
let jwks: { keys: JWK[] };
let bundle: ProofBundle;

async function mint(key: KeyObject, kid: string, claims: Record<string, unknown>): Promise<string> {
  return await new SignJWT(claims)
    .setProtectedHeader({ alg: 'EdDSA', kid, typ: CST_JWT_TYPE })
    .setSubject(job.workflow_id)
    .setJti(randomUUID())
    .setIssuedAt()
    .setExpirationTime('15m')
    .sign(key);
}

function receipt(tokenId: string, prev: string | null, n: number) {
  const payload: ReceiptPayload = {
    v: 1,
    receipt_id: `receipt-${n}`,
    proxy_id: 'proxy',
    job,
    token_id: tokenId,
    policy_hash: canonicalHash(policy),
    model: 'demo-echo',
    upstream: { name: 'demo', url: 'http://127.0.0.1:1/v1' },
    stream: false,
    status: 'ok',
    http_status: 200,
    refusal: null,
    error: null,
    request_sha256: 'a'.repeat(64),
    response_sha256: 'b'.repeat(64),
    request_bytes: 10,
    response_bytes: 20,
    usage: null,
    started_at: '2026-01-01T00:00:00.000Z',
    ended_at: '2026-01-01T00:00:01.000Z',
    prev_receipt_sha256: prev,
  };
  return signReceipt(payload, receiptKey);
}

async function buildEntries(): Promise<BundleEntry[]> {
  const planningJwt = await mint(minter.key, minter.kid, { purpose: 'planning' });
  const executionJwt = await mint(minter.key, minter.kid, {
    plan_hash: canonicalHash(plan),
    wpc_hash: canonicalHash(policy),
  });
  const jti = (jwt: string): string =>
    (JSON.parse(Buffer.from(jwt.split('.')[1] ?? '', 'base64url').toString()) as { jti: string }).jti;
  const r1 = receipt(jti(planningJwt), null, 1);
  const r2 = receipt(jti(executionJwt), r1.payloadSha256, 2);
  return [
    { type: 'job', body: job },
    {
      type: 'request',
      body: {
        room: '!room:localhost',
        sender: '@alice:localhost',
        event_id: '$event1',
        text: 'read the readme',
      },
    },
    { type: 'policy', body: { document: policy, hash: canonicalHash(policy) } },
    { type: 'token', body: { purpose: 'planning', jwt: planningJwt } },
    { type: 'model_receipt', body: { jws: r1.jws } },
    { type: 'plan', body: plan },
    { type: 'approval_attempt', body: { sender: '@bob:localhost', event_id: '$approve1', accepted: true } },
    { type: 'token', body: { purpose: 'execution', jwt: executionJwt } },
    {
      type: 'tool_record',
      body: { step: 0, tool: 'read', args_sha256: canonicalHash(plan.steps[0]?.args), exit: 0 },
    },
    { type: 'model_receipt', body: { jws: r2.jws } },
    {
      type: 'tool_record',
      body: { step: 1, tool: 'search', args_sha256: canonicalHash(plan.steps[1]?.args), exit: 0 },
    },
    { type: 'outcome', body: { status: 'succeeded' } },
  ];
}

before(async () => {
  const [o, m, r] = await Promise.all([keyPair(), keyPair(), keyPair()]);
  orchestrator = o.signer;
  minter = m.signer;
  receiptKey = r.signer;
  jwks = { keys: [o.jwk, m.jwk, r.jwk] };
  bundle = sealBundle(job, await buildEntries(), orchestrator, new Date('2026-01-01T00:00:02Z'));
});

test('a sealed bundle verifies offline from itself and the JWKS', async () => {
  const result = await verifyBundle(JSON.parse(JSON.stringify(bundle)), jwks);
  assert.deepEqual(result.problems, []);
  assert.ok(result.ok);
  assert.match(result.digest ?? '', /^[0-9a-f]{64}$/);
});

test('changing any byte of an entry fails verification and names that entry', async () => {
  const text = JSON.stringify(bundle);
  for (let i = 0; i < bundle.entries.length; i++) {
    const entryText = JSON.stringify(bundle.entries[i]);
    const start = text.indexOf(entryText);
    assert.ok(start > 0);
    for (let pos = start; pos < start + entryText.length; pos++) {
      const mutated =
        text.slice(0, pos) + String.fromCharCode(text.charCodeAt(pos) ^ 1) + text.slice(pos + 1);
      let parsed: unknown;
      try {
        parsed = JSON.parse(mutated);
      } catch {
        continue; // not JSON any more: refused before verification
      }
      const result = await verifyBundle(parsed, jwks);
      assert.equal(result.ok, false, `a change at byte ${pos} (entry ${i}) went unnoticed`);
      assert.ok(
        result.problems.some((p) => p.entry === i),
        `a change at byte ${pos} did not name entry ${i}: ${JSON.stringify(result.problems)}`,
      );
    }
  }
});

test('changing any byte of the seal or the root fails verification', async () => {
  const text = JSON.stringify(bundle);
  const entriesEnd = text.indexOf('"merkle_root"');
  for (let pos = entriesEnd; pos < text.length; pos++) {
    const mutated = text.slice(0, pos) + String.fromCharCode(text.charCodeAt(pos) ^ 1) + text.slice(pos + 1);
    let parsed: unknown;
    try {
      parsed = JSON.parse(mutated);
    } catch {
      continue;
    }
    assert.equal((await verifyBundle(parsed, jwks)).ok, false, `a change at byte ${pos} went unnoticed`);
  }
});

test('a bundle re-sealed by another key, an executed step not in the plan, or a broken receipt chain is refused', async () => {
  const stranger = await keyPair();
  const resealed = sealBundle(job, bundle.entries, stranger.signer, new Date());
  assert.match((await verifyBundle(resealed, jwks)).problems[0]?.problem ?? '', /seal: no key/);

  const entries = structuredClone(bundle.entries) as BundleEntry[];
  entries.splice(10, 0, {
    type: 'tool_record',
    body: { step: 7, tool: 'exec', args_sha256: 'c'.repeat(64) },
  });
  const extraStep = sealBundle(job, entries, orchestrator, new Date());
  const extra = await verifyBundle(extraStep, jwks);
  assert.ok(extra.problems.some((p) => p.entry === 10 && /not in the approved plan/.test(p.problem)));

  const withoutFirstReceipt = (structuredClone(bundle.entries) as BundleEntry[]).filter((_, i) => i !== 4);
  const broken = await verifyBundle(sealBundle(job, withoutFirstReceipt, orchestrator, new Date()), jwks);
  assert.ok(broken.problems.some((p) => p.type === 'model_receipt' && /breaks the chain/.test(p.problem)));
});

test('an execution token bound to another plan is refused', async () => {
  const entries = structuredClone(bundle.entries) as BundleEntry[];
  const other = await mint(minter.key, minter.kid, {
    plan_hash: 'd'.repeat(64),
    wpc_hash: canonicalHash(policy),
  });
  entries[7] = { type: 'token', body: { purpose: 'execution', jwt: other } };
  const result = await verifyBundle(sealBundle(job, entries, orchestrator, new Date()), jwks);
  assert.ok(result.problems.some((p) => p.entry === 7 && /approved plan/.test(p.problem)));
});
