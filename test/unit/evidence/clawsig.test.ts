// The Clawsig v1 projection's rules, without servers: did:key, the envelope's hash and signature
// conventions of the reference verifier, the event chain of a bundle's entries (times, phases,
// bindings), and the offline check refusing malformed input with a reason, never a crash.
// Real jobs' exports are checked end to end in test/workflows/agent.test.ts.
import assert from 'node:assert/strict';
import { createHash, generateKeyPairSync } from 'node:crypto';
import { test } from 'node:test';
import {
  envelopePayloadHash,
  envelopeProblem,
  eventHash,
  hexToB64u,
  projectBundle,
  signClawsigEnvelope,
} from '../../../src/evidence/clawsig.ts';
import { checkClawsigExport } from '../../../src/evidence/clawsig-check.ts';
import { didKeyFromJwkX, didKeyOf, publicKeyOfDid } from '../../../src/evidence/did.ts';
import type { BundleEntry } from '../../../src/evidence/bundle.ts';

test('did:key: an Ed25519 key is z6Mk..., and the key comes back from the DID; other DIDs are refused', () => {
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  const did = didKeyOf(privateKey);
  assert.match(did, /^did:key:z6Mk[1-9A-HJ-NP-Za-km-z]+$/);
  assert.equal(didKeyOf(publicKey), did);
  const back = publicKeyOfDid(did).export({ format: 'jwk' }) as { x: string };
  assert.equal(didKeyFromJwkX(back.x), did);
  assert.throws(() => publicKeyOfDid('did:web:example.org'), /not a did:key/);
  assert.throws(() => publicKeyOfDid('did:key:z0OIl'), /not valid base58btc/);
  // A secp256k1 did:key (multicodec 0xe7): not an Ed25519 key.
  assert.throws(() => publicKeyOfDid('did:key:zQ3shokFTS3brHcDQrn82RUDfCZESWL1ZdCEJwekUDPQiYBme'), /Ed25519/);
  assert.throws(() => didKeyFromJwkX('AAAA'), /32 bytes/);
});

test('an envelope hashes JSON.stringify of its payload in the order written (not JCS) and signs the hash string', () => {
  const { privateKey } = generateKeyPairSync('ed25519');
  const env = signClawsigEnvelope('proof_bundle', { b: 1, a: 2 }, privateKey, '2026-01-01T00:00:00.000Z');
  assert.equal(env.payload_hash_b64u, createHash('sha256').update('{"b":1,"a":2}').digest('base64url'));
  assert.notEqual(envelopePayloadHash({ a: 2, b: 1 }), env.payload_hash_b64u, 'key order matters');
  assert.equal(envelopeProblem(env), null);
  assert.deepEqual(Object.keys(env), [
    'envelope_version',
    'envelope_type',
    'payload',
    'payload_hash_b64u',
    'hash_algorithm',
    'signature_b64u',
    'algorithm',
    'signer_did',
    'issued_at',
  ]);
  // Deterministic: the same payload and key sign to the same bytes.
  assert.equal(
    JSON.stringify(signClawsigEnvelope('proof_bundle', { b: 1, a: 2 }, privateKey, env.issued_at)),
    JSON.stringify(env),
  );
  assert.match(envelopeProblem({ ...env, payload: { b: 1, a: 3 } }) ?? '', /does not match/);
  const other = generateKeyPairSync('ed25519').privateKey;
  assert.match(envelopeProblem({ ...env, signer_did: didKeyOf(other) }) ?? '', /does not verify/);
  assert.match(envelopeProblem({ ...env, signature_b64u: 5 } as never) ?? '', /must be a string/);
});

test('an event hash takes the six header fields in the Clawsig order, whatever order they come in', () => {
  const header = {
    prev_hash_b64u: null,
    payload_hash_b64u: 'AAAAAAAAAAA',
    timestamp: '2026-01-01T00:00:00.000Z',
    event_type: 'request',
    run_id: 'r',
    event_id: 'entry-1',
  };
  assert.equal(
    eventHash(header),
    createHash('sha256')
      .update(
        '{"event_id":"entry-1","run_id":"r","event_type":"request","timestamp":"2026-01-01T00:00:00.000Z","payload_hash_b64u":"AAAAAAAAAAA","prev_hash_b64u":null}',
      )
      .digest('base64url'),
  );
  assert.equal(hexToB64u('00'.repeat(32)), 'AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA');
});

const jws = (payload: unknown): string =>
  `e30.${Buffer.from(JSON.stringify(payload)).toString('base64url')}.sig`;
const receipt = (id: string, started: string) => ({
  type: 'model_receipt' as const,
  body: { jws: jws({ receipt_id: id, started_at: started, ended_at: started, status: 'ok' }) },
});

test('a bundle projects to one event per entry (not job, not gateway_receipts), chained, with times and phases', () => {
  const entries: BundleEntry[] = [
    { type: 'job', body: { workflow_id: 'w', run_id: 'r' } },
    { type: 'request', body: { origin_server_ts: Date.parse('2026-01-01T10:00:00Z'), text: 'hi' } },
    { type: 'policy', body: { hash: 'ab' } },
    {
      type: 'token',
      body: { purpose: 'planning', jwt: jws({ iat: Date.parse('2026-01-01T10:00:01Z') / 1000 }) },
    },
    receipt('p1', '2026-01-01T10:00:02.000Z'),
    { type: 'plan', body: { goal: 'g' } },
    {
      type: 'approval_attempt',
      body: { accepted: false, originServerTs: Date.parse('2026-01-01T10:01:00Z') },
    },
    {
      type: 'approval_attempt',
      body: { accepted: true, decision: 'approve', originServerTs: Date.parse('2026-01-01T10:02:00Z') },
    },
    {
      type: 'token',
      body: { purpose: 'execution', jwt: jws({ iat: Date.parse('2026-01-01T10:02:01Z') / 1000 }) },
    },
    receipt('e1', '2026-01-01T10:02:02.000Z'),
    { type: 'tool_record', body: { denial: { code: 'X', reason: 'no' } } },
    { type: 'gateway_receipts', body: { envelopes: [], refused: null } },
    { type: 'outcome', body: { status: 'succeeded' } },
  ];
  const p = projectBundle({ job: { workflow_id: 'w', run_id: 'r' }, entries }, '2026-01-01T10:03:00.000Z');
  assert.equal(p.events.length, entries.length - 2);
  assert.equal(p.eventOfEntry[0], null);
  assert.equal(p.eventOfEntry[11], null);
  assert.deepEqual(
    p.events.map((e) => [e.event_id, e.event_type, e.timestamp]),
    [
      ['entry-1', 'request', '2026-01-01T10:00:00.000Z'],
      ['entry-2', 'policy_pinned', '2026-01-01T10:00:00.000Z'],
      ['entry-3', 'token_minted', '2026-01-01T10:00:01.000Z'],
      ['entry-4', 'llm_call', '2026-01-01T10:00:02.000Z'],
      ['entry-5', 'plan', '2026-01-01T10:00:02.000Z'],
      ['entry-6', 'approval_refused', '2026-01-01T10:01:00.000Z'],
      ['entry-7', 'approval', '2026-01-01T10:02:00.000Z'],
      ['entry-8', 'token_minted', '2026-01-01T10:02:01.000Z'],
      ['entry-9', 'llm_call', '2026-01-01T10:02:02.000Z'],
      ['entry-10', 'tool_call_refused', '2026-01-01T10:02:02.000Z'],
      ['entry-12', 'outcome', '2026-01-01T10:03:00.000Z'],
    ],
  );
  assert.equal(p.events[0]?.prev_hash_b64u, null);
  p.events.slice(1).forEach((e, i) => assert.equal(e.prev_hash_b64u, p.events[i]?.event_hash_b64u));
  assert.deepEqual(
    p.calls.map((c) => [
      c.binding.span_id,
      c.binding.parent_span_id,
      c.binding.phase,
      c.binding.event_hash_b64u,
    ]),
    [
      ['p1', null, 'planning', p.events[3]?.event_hash_b64u],
      ['e1', 'p1', 'execution', p.events[8]?.event_hash_b64u],
    ],
  );
  // A planning call that started after an execution call: the phases would go back; refused.
  const late = [...entries];
  late[4] = receipt('p1', '2026-01-01T10:09:00.000Z');
  assert.throws(
    () =>
      projectBundle({ job: { workflow_id: 'w', run_id: 'r' }, entries: late }, '2026-01-01T10:10:00.000Z'),
    /started after one of the execution phase/,
  );
});

test('the offline check names what is wrong with malformed input, and never throws', () => {
  const opts = { gatewayDids: [] };
  for (const input of [null, 1, 'x', [], {}, { envelope_version: '1' }]) {
    const r = checkClawsigExport(input, opts);
    assert.equal(r.ok, false);
    assert.equal(r.problems[0]?.code, 'MALFORMED_ENVELOPE');
  }
  const { privateKey } = generateKeyPairSync('ed25519');
  const did = didKeyOf(privateKey);
  const sign = (payload: unknown) =>
    signClawsigEnvelope('proof_bundle', payload, privateKey, '2026-01-01T00:00:00.000Z');
  const odd = [
    { bundle_version: '1', bundle_id: 'b', agent_did: did, event_chain: [1, null, 'x'] },
    {
      bundle_version: '1',
      bundle_id: 'b',
      agent_did: did,
      event_chain: [],
      receipts: [1, {}, { payload: 5 }],
    },
    {
      bundle_version: '1',
      bundle_id: 'b',
      agent_did: did,
      event_chain: [],
      human_approval_receipts: [null, { binding: 3 }],
    },
    { bundle_version: '2', agent_did: 'someone else', extra: true },
  ];
  for (const payload of odd) {
    const r = checkClawsigExport(sign(payload), opts);
    assert.equal(r.ok, false);
    assert.ok(r.problems.every((p) => p.code && p.field && p.problem));
  }
  // An empty chain, an agent other than the one pinned, an expired envelope.
  const r = checkClawsigExport(
    {
      ...sign({ bundle_version: '1', bundle_id: 'b', agent_did: did, event_chain: [] }),
      expires_at: '2000-01-01T00:00:00Z',
    },
    { gatewayDids: [], agentDid: 'did:key:z6MkOther' },
  );
  assert.deepEqual(r.problems.map((p) => p.code).sort(), [
    'AGENT_DID_NOT_PINNED',
    'EXPIRED_TTL',
    'SCHEMA_VALIDATION_FAILED',
  ]);
});
