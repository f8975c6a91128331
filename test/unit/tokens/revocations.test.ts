// Revocations: durable across restarts, shared between processes (a revocation made by
// `clawgate revoke` reaches a running verifier at its next check), and fail closed when the log
// is damaged.
import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { appendFileSync, mkdtempSync, readFileSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { calculateJwkThumbprint, exportJWK } from 'jose';
import { ClawgateError, ERROR_CODES } from '../../../src/errors.ts';
import { mintCapabilityToken, verifyCapabilityToken } from '../../../src/tokens/cst.ts';
import { FileRevocationStore } from '../../../src/tokens/revocations.ts';

const freshPath = () => join(mkdtempSync(join(tmpdir(), 'clawgate-revocations-')), 'revocations.log');

test('a revocation made by one store (another process) is seen by a running one at its next check', () => {
  const path = freshPath();
  const running = new FileRevocationStore(path);
  assert.equal(running.isRevoked('jti-1', 'job-1'), false);
  new FileRevocationStore(path).revokeToken('jti-1', 'leaked', '@oncall:example.com');
  assert.equal(running.isRevoked('jti-1', 'job-9'), true);
  new FileRevocationStore(path).revokeJob('job-2', 'incident 42');
  assert.equal(running.isRevoked('jti-other', 'job-2'), true);
  assert.equal(running.isRevoked('jti-other', 'job-3'), false);
  assert.deepEqual(
    running.list().map((r) => [r.kind, r.id, r.reason, r.by]),
    [
      ['token', 'jti-1', 'leaked', '@oncall:example.com'],
      ['job', 'job-2', 'incident 42', undefined],
    ],
  );
});

test('the log is private: file 0600 in a 0700 folder, one JSON record a line', () => {
  const path = freshPath();
  new FileRevocationStore(path, () => new Date('2026-06-01T12:00:00Z')).revokeJob('job-1', 'why');
  assert.equal(statSync(path).mode & 0o777, 0o600);
  assert.equal(statSync(join(path, '..')).mode & 0o777, 0o700);
  assert.equal(
    readFileSync(path, 'utf8'),
    '{"kind":"job","id":"job-1","reason":"why","at":"2026-06-01T12:00:00.000Z"}\n',
  );
});

test('a damaged log refuses every token, not just the revoked ones (fail closed)', async () => {
  const path = freshPath();
  const store = new FileRevocationStore(path);
  store.revokeToken('jti-1', 'leaked');
  appendFileSync(path, '{"kind":"token","id":\n');
  assert.throws(() => store.isRevoked('jti-2', 'job-2'), { code: ERROR_CODES.revocationsCorrupt });
  assert.throws(() => new FileRevocationStore(path), { code: ERROR_CODES.revocationsCorrupt });

  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  const jwk = await exportJWK(publicKey);
  const kid = await calculateJwkThumbprint(jwk);
  const { token } = await mintCapabilityToken(
    {
      purpose: 'planning',
      job: { workflowId: 'job-2', runId: 'r' },
      roomId: '!r:x',
      scope: { tools: [], models: ['m'] },
    },
    { kid, key: privateKey },
  );
  await assert.rejects(
    verifyCapabilityToken(token, {
      jwks: { keys: [{ ...jwk, kid }] },
      isRevoked: (jti, job) => store.isRevoked(jti, job),
    }),
    { code: ERROR_CODES.revocationsCorrupt },
  );
});

test('a revocation without an id or a reason is refused with what is missing, and nothing is written', () => {
  const path = freshPath();
  const store = new FileRevocationStore(path);
  for (const [revoke, message] of [
    [() => store.revokeToken('', 'why'), /token id/],
    [() => store.revokeJob('job-1', ''), /reason/],
    [() => store.revokeJob('x'.repeat(600), 'why'), /job id/],
  ] as const) {
    assert.throws(revoke, (error: unknown) => {
      assert.ok(error instanceof ClawgateError);
      assert.equal(error.code, ERROR_CODES.revocationInvalid);
      assert.match(error.message, message);
      return true;
    });
  }
  assert.deepEqual(new FileRevocationStore(path).list(), []);
});
