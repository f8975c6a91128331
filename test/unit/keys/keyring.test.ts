// Keyrings: private JWK files 0600 named by their RFC 7638 thumbprint, a public JWKS, rotation
// in which the new key signs and the old one still verifies until its tokens have expired.
import assert from 'node:assert/strict';
import { chmodSync, mkdtempSync, readdirSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { calculateJwkThumbprint } from 'jose';
import { ERROR_CODES } from '../../../src/errors.ts';
import {
  generateKeyring,
  keysFor,
  loadSigner,
  publicJwks,
  rotateKeyring,
} from '../../../src/keys/keyring.ts';
import { mintCapabilityToken, verifyCapabilityToken } from '../../../src/tokens/cst.ts';

const fresh = (): string => mkdtempSync(join(tmpdir(), 'clawgate-keys-'));

test('generate writes a 0600 private JWK whose kid is its RFC 7638 thumbprint, in a 0700 folder', async () => {
  const dir = fresh();
  const kid = await generateKeyring(dir, 'token');
  assert.equal(statSync(dir).mode & 0o777, 0o700);
  assert.equal(statSync(join(dir, 'token')).mode & 0o777, 0o700);
  for (const file of readdirSync(join(dir, 'token')))
    assert.equal(statSync(join(dir, 'token', file)).mode & 0o777, 0o600, file);
  const jwks = publicJwks(dir);
  assert.equal(jwks.keys.length, 1);
  assert.equal(jwks.keys[0]?.kid, kid);
  assert.equal(await calculateJwkThumbprint(jwks.keys[0] ?? {}), kid);
  assert.equal((jwks.keys[0] as { d?: string }).d, undefined, 'the JWKS has no private part');
  await assert.rejects(generateKeyring(dir, 'token'), /already exists/);
});

test('a private key readable by others is refused', async () => {
  const dir = fresh();
  const kid = await generateKeyring(dir, 'receipt');
  chmodSync(join(dir, 'receipt', `${kid}.jwk.json`), 0o644);
  assert.throws(() => loadSigner(dir, 'receipt'), { code: ERROR_CODES.keyFileMode });
});

test('rotation: the new key signs, tokens of the old one verify until they expire, then the old key is gone', async () => {
  const dir = fresh();
  await generateKeyring(dir, 'token');
  const t0 = new Date('2026-06-01T12:00:00Z');
  const job = { workflowId: 'job:1', runId: 'r' };
  const old = await mintCapabilityToken(
    { purpose: 'planning', job, roomId: '!r:x', scope: { tools: [], models: ['m'] }, now: t0 },
    loadSigner(dir, 'token'),
  );
  const { kid, retired } = await rotateKeyring(dir, 'token', t0);
  assert.equal(loadSigner(dir, 'token').kid, kid);
  const during = publicJwks(dir, ['token'], new Date(t0.getTime() + 10 * 60_000));
  assert.deepEqual(during.keys.map((k) => k.kid).sort(), [kid, retired].sort());
  await verifyCapabilityToken(old.token, { jwks: during, now: () => new Date(t0.getTime() + 10 * 60_000) });
  const after = publicJwks(dir, ['token'], new Date(t0.getTime() + 2 * 3600_000));
  assert.deepEqual(
    after.keys.map((k) => k.kid),
    [kid],
  );
});

test('evidence keys stay in the JWKS after rotation, and each key serves only its purpose', async () => {
  const dir = fresh();
  await generateKeyring(dir, 'receipt');
  await generateKeyring(dir, 'token');
  const { retired } = await rotateKeyring(dir, 'receipt');
  const far = new Date(Date.now() + 365 * 86_400_000);
  assert.ok(publicJwks(dir, ['receipt'], far).keys.some((k) => k.kid === retired));
  const all = publicJwks(dir);
  assert.equal(keysFor(all, 'token').keys.length, 1);
  assert.equal(keysFor(all, 'receipt').keys.length, 2);
});
