// The policy registry: signed policies by hash, a signer allowlist, activation per channel,
// rollback to an earlier active hash, history kept, all durable across a reopen and shared
// with other processes; damage on disk is refused, never served.
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import fc from 'fast-check';
import { ClawgateError, ERROR_CODES } from '../../../src/errors.ts';
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

test('an activation or rollback made by another process reaches a running registry at its next read', async () => {
  const { signer, signers, dir, v1, v2 } = await setup();
  const running = new FilePolicyRegistry(dir);
  const a = await new FilePolicyRegistry(dir).register(signWpc(v1, signer), signers);
  const b = await new FilePolicyRegistry(dir).register(signWpc(v2, signer), signers);
  new FilePolicyRegistry(dir).activate('matrix', a.hash, { reason: 'first', by: '@alice:example.com' });
  assert.equal(running.activeHash('matrix'), a.hash);
  new FilePolicyRegistry(dir).activate('matrix', b.hash);
  assert.equal(running.activeHash('matrix'), b.hash);
  new FilePolicyRegistry(dir).rollback('matrix', a.hash, 'incident');
  assert.equal(running.activeHash('matrix'), a.hash);
  assert.deepEqual(running.policy(a.hash), v1);
  assert.deepEqual(running.channels(), [{ channel: 'matrix', hash: a.hash }]);
  const first = running.history('matrix')[0];
  assert.ok(first && first.op !== 'register');
  assert.equal(first.by, '@alice:example.com');
});

test('a document on disk without its registration event is not registered; registering it again repairs that', async () => {
  const { signer, signers, dir, v1 } = await setup();
  const signed = signWpc(v1, signer);
  // A crash between writing the document and appending its event.
  mkdirSync(join(dir, 'policies'), { recursive: true });
  writeFileSync(join(dir, 'policies', `${signed.hash}.json`), JSON.stringify(signed));
  const registry = new FilePolicyRegistry(dir);
  assert.throws(() => registry.activate('matrix', signed.hash), { code: ERROR_CODES.policyNotRegistered });
  assert.deepEqual(await registry.register(signed, signers), { hash: signed.hash, new: true });
  registry.activate('matrix', signed.hash);
  assert.equal(registry.activeHash('matrix'), signed.hash);
});

test('a stored policy changed on disk is refused when read, not served', async () => {
  const { signer, signers, dir, v1, v2 } = await setup();
  const registry = new FilePolicyRegistry(dir);
  const a = await registry.register(signWpc(v1, signer), signers);
  const path = join(dir, 'policies', `${a.hash}.json`);
  // Swap in another validly signed policy under the first one's name.
  writeFileSync(path, JSON.stringify({ ...signWpc(v2, signer), hash: a.hash }));
  assert.throws(() => registry.get(a.hash), {
    code: ERROR_CODES.registryCorrupt,
    message: /does not hold the policy of hash/,
  });
  writeFileSync(path, '{ not json');
  assert.throws(() => registry.get(a.hash), { code: ERROR_CODES.registryCorrupt });
});

test('a damaged registry log is refused on open, naming the line', async () => {
  const { signer, signers, dir, v1 } = await setup();
  const registry = new FilePolicyRegistry(dir);
  const a = await registry.register(signWpc(v1, signer), signers);
  registry.activate('matrix', a.hash);
  const log = join(dir, 'registry.log');
  writeFileSync(log, readFileSync(log, 'utf8').replace('"op":"activate"', '"op":"activat'));
  assert.throws(() => new FilePolicyRegistry(dir), {
    code: ERROR_CODES.registryCorrupt,
    message: /line 2 is not a valid record/,
  });
});

test('hashes are checked for shape before anything else', () => {
  const registry = new FilePolicyRegistry(mkdtempSync(join(tmpdir(), 'clawgate-registry-')));
  for (const bad of ['abc', 'F'.repeat(64), '../../etc/passwd', `${'a'.repeat(64)}/x`]) {
    assert.throws(() => registry.get(bad), { code: ERROR_CODES.policyHashInvalid });
    assert.throws(() => registry.activate('matrix', bad), { code: ERROR_CODES.policyHashInvalid });
    assert.throws(() => registry.rollback('matrix', bad), { code: ERROR_CODES.policyHashInvalid });
  }
});

test('a policy signed by a key of another purpose is refused even when that key is on the JWKS given', async () => {
  const keys = mkdtempSync(join(tmpdir(), 'clawgate-policy-keys-'));
  await generateKeyring(keys, 'policy');
  await generateKeyring(keys, 'receipt');
  const registry = new FilePolicyRegistry(mkdtempSync(join(tmpdir(), 'clawgate-registry-')));
  await assert.rejects(
    registry.register(signWpc(parseWpc(example), loadSigner(keys, 'receipt')), publicJwks(keys)),
    {
      code: ERROR_CODES.policySignerNotAllowed,
    },
  );
  assert.equal(
    (await registry.register(signWpc(parseWpc(example), loadSigner(keys, 'policy')), publicJwks(keys))).new,
    true,
  );
});

test('property: anything offered as a signed policy is registered or refused with a clawgate error, and nothing is half-registered', async () => {
  const { signer, signers, dir, v1 } = await setup();
  const registry = new FilePolicyRegistry(dir);
  const good = signWpc(v1, signer);
  const [h, p, s] = good.jws.split('.') as [string, string, string];
  await fc.assert(
    fc.asyncProperty(
      fc.oneof(
        fc.anything(),
        fc.record({ hash: fc.string(), jws: fc.string() }),
        fc.jsonValue().map((v) => ({
          hash: good.hash,
          jws: `${h}.${Buffer.from(JSON.stringify(v)).toString('base64url')}.${s}`,
        })),
        fc.jsonValue().map((v) => ({
          hash: good.hash,
          jws: `${Buffer.from(JSON.stringify(v)).toString('base64url')}.${p}.${s}`,
        })),
        fc.string().map((text) => ({ hash: good.hash, jws: `${h}.${p}.${text}` })),
      ),
      async (candidate) => {
        try {
          await registry.register(candidate, signers);
          assert.fail('a forged policy was registered');
        } catch (error) {
          assert.ok(error instanceof ClawgateError, `not a ClawgateError: ${String(error)}`);
        }
      },
    ),
    { numRuns: 400 },
  );
  assert.deepEqual(registry.list(), []);
  assert.deepEqual(readdirSync(join(dir, 'policies')), []);
});
