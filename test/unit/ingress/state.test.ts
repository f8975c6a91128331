// The gateway's config and each account's state folder: errors that name the path, private
// modes, one owner at a time, and a clear message for a damaged file.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { ClawgateError, ERROR_CODES } from '../../../src/errors.ts';
import { AccountState } from '../../../src/ingress/account-state.ts';
import { loadConfig } from '../../../src/config/config.ts';
import { matrixTaskQueueOf, parseGatewayConfig } from '../../../src/ingress/config.ts';

const fresh = () => mkdtempSync(join(tmpdir(), 'clawgate-state-'));
const account = {
  id: 'main',
  homeserverUrl: 'http://127.0.0.1:8008',
  userId: '@clawgate:localhost',
  accessToken: 'secret',
  rooms: ['!ops:localhost'],
};

test('gateway config: defaults, relative folders resolved against the base folder', () => {
  const config = parseGatewayConfig(
    {
      stateDir: 'state',
      policy: { registryDir: 'registry' },
      accounts: [{ ...account, accessToken: undefined, password: 'hunter2' }],
    },
    '/srv',
  );
  assert.equal(config.stateDir, '/srv/state');
  assert.equal(config.policy.registryDir, '/srv/registry');
  assert.equal(config.temporal.address, '127.0.0.1:7233');
  assert.equal(config.health.host, '127.0.0.1');
  assert.equal(matrixTaskQueueOf(config.accounts[0] as never), 'clawgate-matrix-main');
});

test('gateway config: every problem named by its path', () => {
  const bad = {
    stateDir: 'state',
    policy: { registryDir: 'r' },
    accounts: [
      { ...account, accessToken: undefined, rooms: ['ops'] },
      { ...account, userId: 'clawgate' },
      { ...account, id: 'other', rooms: ['!ops:localhost'] },
    ],
    extra: true,
  };
  assert.throws(
    () => parseGatewayConfig(bad),
    (error: unknown) => {
      assert.ok(error instanceof ClawgateError && error.code === ERROR_CODES.configInvalid);
      for (const expected of [
        'accounts[0].rooms[0]: a Matrix room id',
        'accounts[0].accessToken: an accessToken or a password is required',
        'accounts[1].userId: a Matrix user id',
        'accounts[1].id: account id main is used twice',
        'accounts[2].rooms[0]: room !ops:localhost is already served by account main',
        '(root): Unrecognized key: "extra"',
      ]) {
        assert.ok(error.message.includes(expected), `${expected} in:\n${error.message}`);
      }
      return true;
    },
  );
});

test('account state: private folder and files, credentials and sync token kept', () => {
  const dir = fresh();
  const state = new AccountState(dir, 'main');
  assert.equal(statSync(state.dir).mode & 0o777, 0o700);
  assert.equal(state.credentials(), null);
  assert.equal(state.syncToken(), null);
  const creds = { homeserverUrl: 'http://h', userId: '@a:h', deviceId: 'DEV', accessToken: 't' };
  state.saveCredentials(creds);
  state.saveSyncToken('s72_1');
  const again = new AccountState(dir, 'main');
  assert.deepEqual(again.credentials(), creds);
  assert.equal(again.syncToken(), 's72_1');
  assert.equal(statSync(join(state.dir, 'credentials.json')).mode & 0o777, 0o600);
  assert.equal(statSync(join(state.dir, 'sync.json')).mode & 0o777, 0o600);
});

test('account state: a damaged file is named, with the way out', () => {
  const state = new AccountState(fresh(), 'main');
  writeFileSync(join(state.dir, 'sync.json'), '{"nextBatch": ');
  assert.throws(
    () => state.syncToken(),
    (error: unknown) => {
      assert.ok(error instanceof ClawgateError && error.code === ERROR_CODES.stateCorrupt);
      assert.match(error.message, /sync\.json is not valid JSON.*remove it/);
      return true;
    },
  );
  writeFileSync(join(state.dir, 'credentials.json'), '{"userId": 3}');
  assert.throws(() => state.credentials(), /credentials\.json is not what clawgate wrote/);
});

test('account state: one owner at a time; a lock left by a dead process is taken over', async () => {
  const dir = fresh();
  const first = new AccountState(dir, 'main');
  first.lock();
  // Another live process holds it: refused with a message.
  const holder = spawn(process.execPath, ['-e', 'setTimeout(() => {}, 60000)']);
  await new Promise((r) => holder.once('spawn', r));
  writeFileSync(join(first.dir, 'lock'), `${holder.pid}\n`);
  const second = new AccountState(dir, 'main');
  assert.throws(
    () => second.lock(),
    (error: unknown) => {
      assert.ok(error instanceof ClawgateError && error.code === ERROR_CODES.stateLocked);
      assert.match(error.message, new RegExp(`in use by process ${holder.pid}; stop that process first`));
      return true;
    },
  );
  holder.kill('SIGKILL');
  await new Promise((r) => holder.once('exit', r));
  second.lock();
  second.unlock();
});

test('the example configuration in the README is valid', () => {
  const config = loadConfig(new URL('../../../examples/clawgate.yaml', import.meta.url).pathname, {});
  assert.equal(config.gateway.accounts?.[0]?.id, 'main');
  assert.equal(config.temporal.address, '127.0.0.1:7233');
  assert.match(config.policy.initial ?? '', /examples\/policy\.json$/);
});
