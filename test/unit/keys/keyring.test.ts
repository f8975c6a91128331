// Keyrings: private JWK files 0600 named by their RFC 7638 thumbprint, a public JWKS, rotation
// in which the new key signs and the old one still verifies until its tokens have expired.
import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { chmodSync, copyFileSync, mkdtempSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { calculateJwkThumbprint, exportJWK } from 'jose';
import { ERROR_CODES } from '../../../src/errors.ts';
import {
  ed25519Thumbprint,
  generateKeyring,
  keysFor,
  MAX_TOKEN_TTL_SECONDS,
  RETIRED_TOKEN_KEY_GRACE_SECONDS,
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

test('the RFC 7638 thumbprint computed here agrees with jose, and with the RFC 7638 example key', async () => {
  for (let i = 0; i < 20; i++) {
    const jwk = await exportJWK(generateKeyPairSync('ed25519').publicKey);
    assert.equal(ed25519Thumbprint(jwk.x ?? ''), await calculateJwkThumbprint(jwk));
  }
  // RFC 8037 appendix A.3: the thumbprint of the RFC 8037 example Ed25519 key.
  assert.equal(
    ed25519Thumbprint('11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo'),
    'kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k',
  );
});

test('a key file swapped or edited by hand is refused, not used under a kid that is not its own', async () => {
  const dir = fresh();
  const kid = await generateKeyring(dir, 'policy');
  const other = fresh();
  const otherKid = await generateKeyring(other, 'policy');
  copyFileSync(join(other, 'policy', `${otherKid}.jwk.json`), join(dir, 'policy', `${kid}.jwk.json`));
  assert.throws(() => loadSigner(dir, 'policy'), {
    code: ERROR_CODES.keyInvalid,
    message: /thumbprint is not/,
  });
  assert.throws(() => publicJwks(dir), { code: ERROR_CODES.keyInvalid });
  writeFileSync(join(dir, 'policy', `${kid}.jwk.json`), '{"kty":"oct","k":"c2VjcmV0"}', { mode: 0o600 });
  assert.throws(() => loadSigner(dir, 'policy'), { code: ERROR_CODES.keyInvalid, message: /not an Ed25519/ });
});

test('a damaged keyring file is an error saying which file, not a crash', async () => {
  const dir = fresh();
  await generateKeyring(dir, 'token');
  writeFileSync(join(dir, 'token', 'keyring.json'), '{ "purpose": "token", ');
  assert.throws(() => loadSigner(dir, 'token'), { code: ERROR_CODES.keyInvalid, message: /keyring\.json/ });
  writeFileSync(join(dir, 'token', 'keyring.json'), '{"purpose":"receipt","active":"x","keys":[]}');
  assert.throws(() => loadSigner(dir, 'token'), {
    code: ERROR_CODES.keyInvalid,
    message: /not a valid token keyring/,
  });
  assert.throws(() => loadSigner(fresh(), 'token'), {
    code: ERROR_CODES.keyNotFound,
    message: /keys generate/,
  });
});

test('a retired token key verifies for the longest token lifetime plus the clock grace, then no longer', async () => {
  const dir = fresh();
  await generateKeyring(dir, 'token');
  const t0 = new Date('2026-06-01T12:00:00Z');
  const { retired } = await rotateKeyring(dir, 'token', t0);
  const at = (seconds: number) => new Date(t0.getTime() + seconds * 1000);
  const kids = (when: Date) => publicJwks(dir, ['token'], when).keys.map((k) => k.kid);
  assert.ok(kids(at(MAX_TOKEN_TTL_SECONDS + RETIRED_TOKEN_KEY_GRACE_SECONDS - 1)).includes(retired));
  assert.ok(!kids(at(MAX_TOKEN_TTL_SECONDS + RETIRED_TOKEN_KEY_GRACE_SECONDS + 1)).includes(retired));
});
