// End-to-end encrypted rooms: the gateway process with Rust crypto (its store durable and
// encrypted at rest), human users with their own matrix-js-sdk Rust crypto clients, the real
// Synapse and Temporal, and a worker. A whole job runs in an encrypted room; the gateway is
// stopped, or killed, while an encrypted approval is sent, and decrypts it after restarting;
// with the crypto module unloadable it still serves plain rooms and says so in its health.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, truncateSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, test } from 'node:test';
import { Direction } from 'matrix-js-sdk';
import { encodeRecoveryKey } from 'matrix-js-sdk/lib/crypto-api/index.js';
import type { ClawgateConfigInput } from '../../src/config/config.ts';
import type { RegisteredUser } from '../../src/devstack/synapse.ts';
import { GATEWAY_FAULTS } from '../../src/ingress/gateway.ts';
import { jobWorkflowId, shortJobId } from '../../src/ingress/job-ids.ts';
import { threadRelation } from '../../src/ingress/matrix-io.ts';
import { GatewayProcess, gatewayStderr, gatewayTestConfig } from '../harness/gateway-process.ts';
import { MatrixTestUser } from '../harness/matrix-user.ts';
import { registerTestUser, testServers } from '../harness/servers.ts';
import { startWorkerStack, type WorkerStack } from '../harness/stack.ts';

let stack: WorkerStack;
let dir: string;
let bot: RegisteredUser;
let bot2: RegisteredUser;
let freshRoom: string;
let requester: MatrixTestUser;
let approver: MatrixTestUser;
let secretRoom: string;
let plainRoom: string;
let config: ClawgateConfigInput;
let gateway: GatewayProcess | undefined;

before(async () => {
  stack = await startWorkerStack();
  dir = mkdtempSync(join(tmpdir(), 'clawgate-e2ee-'));
  bot = await registerTestUser('cryptobot');
  bot2 = await registerTestUser('freshbot');
  [requester, approver] = await Promise.all([
    MatrixTestUser.create('secreq', { encryption: true }),
    MatrixTestUser.create('secappr', { encryption: true }),
  ]);
  secretRoom = await requester.createRoom({
    name: 'secret',
    encrypted: true,
    invite: [bot.userId, approver.userId],
  });
  plainRoom = await requester.createRoom({ name: 'plain', invite: [bot.userId, approver.userId] });
  freshRoom = await requester.createRoom({
    name: 'fresh',
    encrypted: true,
    invite: [bot2.userId, approver.userId],
  });
  for (const roomId of [secretRoom, plainRoom, freshRoom]) {
    await approver.waitForMembership(roomId, 'invite');
    await approver.joinRoom(roomId);
  }
  await stack.activatePolicy({
    channel: 'matrix',
    rooms: [secretRoom, plainRoom, freshRoom],
    requesters: [requester.userId],
    approvers: [approver.userId],
  });
  config = gatewayTestConfig(dir, stack, [
    {
      id: 'secure',
      userId: bot.userId,
      accessToken: bot.accessToken,
      rooms: [secretRoom, plainRoom],
      encryption: true,
    },
  ]);
  gateway = await GatewayProcess.start(config, { dir });
  for (const roomId of [secretRoom, plainRoom]) await botJoined(roomId);
  await requester.waitForDeviceOf(bot.userId);
  await approver.waitForDeviceOf(bot.userId);
});

after(async () => {
  await gateway?.kill('SIGTERM');
  requester?.stop();
  approver?.stop();
  await stack?.close();
});

async function botJoined(roomId: string, who = bot.userId): Promise<void> {
  await requester.waitForRoomEvent({
    roomId,
    timeoutMs: 30_000,
    message: 'the bot joining',
    filter: (e) =>
      e.getType() === 'm.room.member' && e.getStateKey() === who && e.getContent()['membership'] === 'join',
  });
}

async function send(user: MatrixTestUser, roomId: string, body: string, thread?: string): Promise<string> {
  const content: Record<string, unknown> = { msgtype: 'm.text', body };
  if (thread) content['m.relates_to'] = threadRelation(thread);
  const { event_id: eventId } = await user.client.sendEvent(
    roomId,
    'm.room.message' as never,
    content as never,
  );
  return eventId;
}

/** A message from the bot, decrypted by the viewer's client, that matches; with its raw type. */
async function botSays(
  viewer: MatrixTestUser,
  roomId: string,
  pattern: RegExp,
  timeoutMs = 60_000,
  who = bot.userId,
) {
  const event = await viewer.waitForDecrypted(roomId, who, pattern, timeoutMs);
  return { body: String(event.getContent()['body']), wireType: event.getWireType() };
}

/** Once the bot has joined and the people's clients know its device: a request, its plan, !approve, success. */
async function wholeJobWith(roomId: string, botUserId: string): Promise<void> {
  await botJoined(roomId, botUserId);
  await requester.waitForDeviceOf(botUserId);
  await approver.waitForDeviceOf(botUserId);
  const request = await send(requester, roomId, '!claw summarise the readme');
  await botSays(requester, roomId, /^Plan for job/, 60_000, botUserId);
  await send(approver, roomId, '!approve', request);
  await botSays(requester, roomId, /: succeeded\./, 60_000, botUserId);
}

test('a whole job in an encrypted room: requests and approvals decrypted, everything the gateway posts encrypted', async () => {
  const request = await send(requester, secretRoom, '!claw summarise the readme');
  const plan = await botSays(requester, secretRoom, /^Plan for job j[a-z2-7]{9}/);
  assert.equal(plan.wireType, 'm.room.encrypted', 'the plan went out encrypted');
  await send(approver, secretRoom, '!approve', request);
  const result = await botSays(requester, secretRoom, /: succeeded\./);
  assert.equal(result.wireType, 'm.room.encrypted');
  // On the server, nothing the bot said in the room is in clear.
  const res = await requester.client.createMessagesRequest(secretRoom, null, 200, Direction.Backward);
  const clear = res.chunk.filter((e) => e.sender === bot.userId && e.type === 'm.room.message');
  assert.deepEqual(clear, [], 'no clear-text message from the bot in the encrypted room');
});

for (const how of ['SIGTERM', 'SIGKILL'] as const) {
  test(`an encrypted approval sent while the gateway is down (${how}) is decrypted after the restart`, async () => {
    const request = await send(requester, secretRoom, `!claw summarise the readme (${how})`);
    await botSays(requester, secretRoom, new RegExp(`^Plan for job j[a-z2-7]{9}: `));
    await gateway?.kill(how);
    await send(approver, secretRoom, '!approve', request);
    gateway = await GatewayProcess.start(config, { dir });
    await gateway.waitForLog(
      (l) => /crypto store restored/.test(String(l['msg'])),
      30_000,
      'the crypto store restored',
    );
    const result = await botSays(requester, secretRoom, /: succeeded\./);
    assert.match(result.body, /3 step\(s\) done/);
    const failures = gateway.lines.filter((l) => /unable to decrypt/.test(String(l['msg'])));
    assert.deepEqual(failures, [], 'no "unable to decrypt" after the restart');
  });
}

test('with the crypto module unloadable, the gateway starts, plain rooms still work, health says why', async () => {
  await gateway?.kill('SIGTERM');
  const hook = fileURLToPath(new URL('../harness/block-crypto.mjs', import.meta.url));
  gateway = await GatewayProcess.start(config, { dir, nodeOptions: `--import ${hook}` });
  const health = (await fetch(gateway.healthUrl).then((r) => r.json())) as {
    accounts: Array<{ encryption: { enabled: boolean; available: boolean; error: string | null } }>;
  };
  assert.equal(health.accounts[0]?.encryption.enabled, true);
  assert.equal(health.accounts[0]?.encryption.available, false);
  assert.match(health.accounts[0]?.encryption.error ?? '', /blocked for this test/);
  await gateway.waitForLog(
    (l) => /encryption is unavailable/.test(String(l['msg'])),
    10_000,
    'the failure logged',
  );
  const request = await send(requester, plainRoom, '!claw summarise the readme');
  await botSays(requester, plainRoom, /^Plan for job/);
  await send(approver, plainRoom, '!approve', request);
  await botSays(requester, plainRoom, /: succeeded\./);
  // In the encrypted room it says, in one clear notice, that it cannot read it.
  await send(requester, secretRoom, '!claw anything');
  await botSays(requester, secretRoom, /cannot read encrypted messages right now/);
  // The crypto store on disk was left alone: a normal start restores it.
  await gateway.kill('SIGTERM');
  gateway = await GatewayProcess.start(config, { dir });
  await gateway.waitForLog(
    (l) => /crypto store restored/.test(String(l['msg'])),
    30_000,
    'the crypto store restored',
  );
});

test('killed right after its first key upload, a new device comes back with the keys the server knows', async () => {
  const { synapse } = testServers();
  const accounts = config.gateway?.accounts ?? [];
  accounts.push({
    id: 'fresh',
    homeserverUrl: synapse.baseUrl,
    userId: bot2.userId,
    accessToken: bot2.accessToken,
    rooms: [freshRoom],
    encryption: true,
  });
  await gateway?.kill('SIGTERM');
  // It dies right after the upload: before or after it says it runs.
  const crashing = await GatewayProcess.start(config, {
    dir,
    fault: GATEWAY_FAULTS.crashAfterKeyUpload,
  }).then(
    (p) => p.exited,
    (error: unknown) => error,
  );
  if (crashing instanceof Error) assert.match(crashing.message, /the gateway exited/);
  else assert.equal((crashing as { signal: string | null }).signal, 'SIGKILL');
  gateway = await GatewayProcess.start(config, { dir });
  await gateway.waitForLog(
    (l) => l['account'] === 'fresh' && /crypto store restored/.test(String(l['msg'])),
    30_000,
    'the fresh account restoring the store it saved before the upload',
  );
  await wholeJobWith(freshRoom, bot2.userId);
  const failures = gateway.lines.filter((l) =>
    /unable to decrypt|account failed to start/.test(String(l['msg'])),
  );
  assert.deepEqual(failures, []);
});

test('a second process on the same state refuses to start, with a message', async () => {
  const second = await GatewayProcess.start(config, { dir }).then(
    () => null,
    (error: unknown) => error,
  );
  assert.ok(second instanceof Error, 'the second gateway did not start');
  assert.match(gatewayStderr.join(''), /state folder .* is in use by process \d+; stop that process first/);
});

test('a damaged crypto store stops that account only, with the file and the way out named', async () => {
  await gateway?.kill('SIGTERM');
  const store = join(dir, 'state', 'gateway', 'accounts', 'fresh', 'crypto-store.bin');
  truncateSync(store, 20);
  gateway = await GatewayProcess.start(config, { dir });
  type Health = { ok: boolean; accounts: Array<{ id: string; state: string; error: string | null }> };
  const url = gateway.healthUrl;
  const read = async () => (await fetch(url).then((r) => r.json())) as Health;
  let health = await read();
  for (let i = 0; i < 100 && health.accounts.some((a) => a.state === 'starting'); i++) {
    await new Promise((r) => setTimeout(r, 200));
    health = await read();
  }
  assert.equal(health.ok, false);
  const byId = Object.fromEntries(health.accounts.map((a) => [a.id, a]));
  assert.equal(byId['secure']?.state, 'syncing');
  assert.equal(byId['fresh']?.state, 'failed');
  assert.match(
    byId['fresh']?.error ?? '',
    /crypto-store\.bin is not a clawgate crypto store .*move the account folder aside/,
  );
  // The other account still works, encrypted.
  const request = await send(requester, secretRoom, '!claw summarise the readme (after the damage)');
  await botSays(requester, secretRoom, /^Plan for job j[a-z2-7]{9}: /);
  await send(approver, secretRoom, '!approve', request);
  await botSays(requester, secretRoom, /: succeeded\./);
});

test('a deleted crypto store (the homeserver holds the keys of the device) stops that account only, with the way out', async () => {
  await gateway?.kill('SIGTERM');
  rmSync(join(dir, 'state', 'gateway', 'accounts', 'fresh', 'crypto-store.bin'));
  gateway = await GatewayProcess.start(config, { dir });
  type Health = { accounts: Array<{ id: string; state: string; error: string | null }> };
  const read = async () => (await fetch(gateway!.healthUrl).then((r) => r.json())) as Health;
  let health = await read();
  for (let i = 0; i < 100 && health.accounts.some((a) => a.state === 'starting'); i++) {
    await new Promise((r) => setTimeout(r, 200));
    health = await read();
  }
  const byId = Object.fromEntries(health.accounts.map((a) => [a.id, a]));
  assert.equal(byId['secure']?.state, 'syncing');
  assert.equal(byId['fresh']?.state, 'failed');
  assert.match(
    byId['fresh']?.error ?? '',
    /crypto-store\.bin is missing, but the homeserver already holds the keys of device [A-Z]+: .*move the account folder aside/,
  );
});

test('with require_verified_device, only an approval from a device cross-signed by its owner counts; the refusal says why', async () => {
  await stack.activatePolicy({
    channel: 'matrix',
    rooms: [secretRoom, plainRoom, freshRoom],
    requesters: [requester.userId],
    approvers: [approver.userId],
    requireVerifiedDevice: true,
  });
  const request = await send(requester, secretRoom, '!claw summarise the readme (verified devices only)');
  const jobId = shortJobId(jobWorkflowId(secretRoom, request));
  await botSays(requester, secretRoom, new RegExp(`^Plan for job ${jobId}: `));
  await send(approver, secretRoom, '!approve', request);
  await botSays(requester, secretRoom, /not counted\. .*verified through cross-signing/);
  // The approver sets up cross-signing: this device is now signed by its owner.
  await approver.client.getCrypto()?.bootstrapCrossSigning({
    setupNewCrossSigning: true,
    authUploadDeviceSigningKeys: async (makeRequest) => {
      await makeRequest({
        type: 'm.login.password',
        identifier: { type: 'm.id.user', user: approver.userId },
        password: approver.account.password,
      });
    },
  });
  // Time for the bot to see the approver's new keys (a device-list change in its sync).
  await new Promise((r) => setTimeout(r, 3000));
  await send(approver, secretRoom, '!approve', request);
  await botSays(requester, secretRoom, new RegExp(`^Job ${jobId}: succeeded\\. 3 step`));
});

test('killed during sync processing (after acting on a batch, before saving it): the keys and the position agree after the restart', async () => {
  await gateway?.kill('SIGTERM');
  gateway = await GatewayProcess.start(config, { dir, fault: GATEWAY_FAULTS.crashBeforeSyncToken });
  // A new message session: the room key reaches the bot in the same batch as the request.
  await requester.client.getCrypto()?.forceDiscardSession(secretRoom);
  const request = await send(requester, secretRoom, '!claw summarise the readme (crash in the batch)');
  assert.equal((await gateway.exited).signal, 'SIGKILL');
  gateway = await GatewayProcess.start(config, { dir });
  const jobId = shortJobId(jobWorkflowId(secretRoom, request));
  // The batch comes again with its to-device messages; the request decrypts again, is recognised.
  await gateway.waitForLog(
    (l) => l['workflowId'] === jobWorkflowId(secretRoom, request) && /redelivered/.test(String(l['msg'])),
    30_000,
    'the request recognised after the restart',
  );
  await botSays(requester, secretRoom, new RegExp(`^Plan for job ${jobId}: `));
  const failures = gateway.lines.filter((l) => /unable to decrypt/.test(String(l['msg'])));
  assert.deepEqual(failures, []);
});

test('key backup under the recovery key: a new device of the bot (its state folder lost) restores the room keys', async () => {
  const { synapse } = testServers();
  const bot3 = await registerTestUser('backupbot');
  const roomId = await requester.createRoom({
    name: 'backed up',
    encrypted: true,
    invite: [bot3.userId, approver.userId],
  });
  await approver.waitForMembership(roomId, 'invite');
  await approver.joinRoom(roomId);
  await stack.activatePolicy({
    channel: 'matrix',
    rooms: [secretRoom, plainRoom, freshRoom, roomId],
    requesters: [requester.userId],
    approvers: [approver.userId],
  });
  const recoveryKey = encodeRecoveryKey(randomBytes(32)) as string;
  config.gateway?.accounts?.push({
    id: 'backup',
    homeserverUrl: synapse.baseUrl,
    userId: bot3.userId,
    password: bot3.password,
    rooms: [roomId],
    encryption: true,
    recoveryKey,
  });
  await gateway?.kill('SIGTERM');
  gateway = await GatewayProcess.start(config, { dir });
  await wholeJobWith(roomId, bot3.userId);
  // The bot backs up the room keys it received (the requester's and the approver's).
  const backedUp = async () => {
    const res = await fetch(`${synapse.baseUrl}/_matrix/client/v3/room_keys/version`, {
      headers: { authorization: `Bearer ${bot3.accessToken}` },
    });
    return ((await res.json()) as { count?: number }).count ?? 0;
  };
  const deadline = Date.now() + 30_000;
  while ((await backedUp()) < 2) {
    if (Date.now() > deadline) throw new Error(`the bot backed up ${await backedUp()} room keys, not 2`);
    await new Promise((r) => setTimeout(r, 300));
  }
  // The state folder is lost: the next start logs in again (a new device) and restores the keys.
  await gateway.kill('SIGTERM');
  rmSync(join(dir, 'state', 'gateway', 'accounts', 'backup'), { recursive: true, force: true });
  gateway = await GatewayProcess.start(config, { dir });
  const restored = await gateway.waitForLog(
    (l) => l['account'] === 'backup' && /room keys restored/.test(String(l['msg'])),
    30_000,
    'the room keys restored from the backup',
  );
  assert.ok(Number(restored['imported']) >= 2, JSON.stringify(restored));
  type BackupHealth = {
    accounts: Array<{
      id: string;
      state: string;
      encryption: {
        available: boolean;
        backup: { version: string | null; restored: number; error: string | null } | null;
      };
    }>;
  };
  const backupHealth = async () => {
    const health = (await fetch(gateway!.healthUrl).then((r) => r.json())) as BackupHealth;
    return health.accounts.find((a) => a.id === 'backup');
  };
  assert.deepEqual((await backupHealth())?.encryption.backup, {
    version: restored['version'],
    restored: Number(restored['imported']),
    error: null,
  });
  // A recovery key that does not open the server's backup: said in the health and the log,
  // and encryption goes on working without the backup.
  await gateway.kill('SIGTERM');
  rmSync(join(dir, 'state', 'gateway', 'accounts', 'backup'), { recursive: true, force: true });
  const account = config.gateway?.accounts?.find((a) => a.id === 'backup');
  assert.ok(account);
  account.recoveryKey = encodeRecoveryKey(randomBytes(32));
  gateway = await GatewayProcess.start(config, { dir });
  await gateway.waitForLog(
    (l) => l['account'] === 'backup' && /key backup unavailable/.test(String(l['msg'])),
    30_000,
    'the wrong recovery key reported',
  );
  const wrong = await backupHealth();
  assert.equal(wrong?.encryption.available, true);
  assert.match(wrong?.encryption.backup?.error ?? '', /recovery key does not open the server's key backup/);
  config.gateway!.accounts = config.gateway!.accounts!.filter((a) => a.id !== 'backup');
});
