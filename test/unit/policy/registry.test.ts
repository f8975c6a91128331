// The policy registry: signed policies by hash, a signer allowlist, activation per channel,
// rollback to an earlier active hash, history kept, all durable across a reopen.
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { ERROR_CODES } from '../../../src/errors.ts';
import { generateKeyring, loadSigner, publicJwks } from '../../../src/keys/keyring.ts';
import { FilePolicyRegistry, signWpc, verifySignedWpc } from '../../../src/policy/registry.ts';
import { parseWpc } from '../../../src/policy/wpc.ts';

const example = JSON.parse(
  readFileSync(new URL('../../../examples/policy.json', import.meta.url), 'utf8'),
) as Record<string, any>;

async function setup() {
  const keys = mkdtempSync(join(tmpdir(), 'clawgate-policy-keys-'));
  await generateKeyring(keys, 'policy');
  const signer = loadSigner(keys, 'policy');
  const signers = publicJwks(keys, ['policy']);
  const dir = mkdtempSync(join(tmpdir(), 'clawgate-registry-'));
  const v1 = parseWpc(example);
  const v2 = parseWpc({ ...example, description: 'version two' });
  return { signer, signers, dir, v1, v2 };
}

test('register, activate, rollback, and the history, across a reopen', async () => {
  const { signer, signers, dir, v1, v2 } = await setup();
  const registry = new FilePolicyRegistry(dir);
  const a = await registry.register(signWpc(v1, signer), signers);
  const b = await registry.register(signWpc(v2, signer), signers);
  assert.ok(a.new && b.new);
  assert.equal(
    (await registry.register(signWpc(v1, signer), signers)).new,
    false,
    'registering again changes nothing',
  );
  registry.activate('ops', a.hash);
  registry.activate('ops', b.hash, 'add a description');
  assert.equal(registry.activeHash('ops'), b.hash);
  assert.equal(registry.activeHash('other'), null);

  const reopened = new FilePolicyRegistry(dir);
  assert.equal(reopened.activeHash('ops'), b.hash);
  reopened.rollback('ops', a.hash, 'incident 42');
  assert.equal(new FilePolicyRegistry(dir).activeHash('ops'), a.hash);
  assert.deepEqual(
    new FilePolicyRegistry(dir).history('ops').map((e) => [e.op, e.hash]),
    [
      ['activate', a.hash],
      ['activate', b.hash],
      ['rollback', a.hash],
    ],
  );
  assert.deepEqual(
    new FilePolicyRegistry(dir).list().map((p) => p.hash),
    [a.hash, b.hash],
  );
  const { wpc } = await verifySignedWpc(reopened.get(a.hash), signers);
  assert.deepEqual(wpc, v1);
});

test('rollback only to a hash that was active on that channel; activation only of a registered one', async () => {
  const { signer, signers, dir, v1, v2 } = await setup();
  const registry = new FilePolicyRegistry(dir);
  const a = await registry.register(signWpc(v1, signer), signers);
  const b = await registry.register(signWpc(v2, signer), signers);
  registry.activate('ops', a.hash);
  assert.throws(() => registry.rollback('ops', b.hash), { code: ERROR_CODES.policyNotRegistered });
  assert.throws(() => registry.activate('ops', 'f'.repeat(64)), { code: ERROR_CODES.policyNotRegistered });
  assert.throws(() => registry.activate('Ops Room', a.hash), { code: ERROR_CODES.policyChannelMismatch });
});

test('a policy signed by a key off the allowlist, or changed after signing, is refused', async () => {
  const { signer, signers, dir, v1 } = await setup();
  const other = await setup();
  const registry = new FilePolicyRegistry(dir);
  await assert.rejects(registry.register(signWpc(v1, other.signer), signers), {
    code: ERROR_CODES.policySignerNotAllowed,
  });
  const signed = signWpc(v1, signer);
  const [h, , s] = signed.jws.split('.');
  const changed = Buffer.from(JSON.stringify({ ...v1, description: 'sneaky' })).toString('base64url');
  await assert.rejects(registry.register({ hash: signed.hash, jws: `${h}.${changed}.${s}` }, signers), {
    code: ERROR_CODES.policySignatureInvalid,
  });
  await assert.rejects(registry.register({ hash: 'e'.repeat(64), jws: signed.jws }, signers), {
    code: ERROR_CODES.policySignatureInvalid,
  });
  assert.deepEqual(registry.list(), [], 'nothing was registered');
});
