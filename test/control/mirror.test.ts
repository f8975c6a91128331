// Control state shared between machines that share no files: a revocation or a policy change
// made with the real command line in one state folder reaches another state folder through the
// control workflow on the real Temporal dev server, and the token check there refuses at once.
// The test has a namespace of its own, so its control workflow is its alone.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { connect, createServer, type Socket } from 'node:net';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { after, before, test } from 'node:test';
import { Client, Connection } from '@temporalio/client';
import { msToTs } from '@temporalio/common';
import { Worker } from '@temporalio/worker';
import { pino } from 'pino';
import { startControlMirror, type ControlMirror } from '../../src/control/mirror.ts';
import { generateKeyring, loadSigner, publicJwks } from '../../src/keys/keyring.ts';
import { FilePolicyRegistry, signWpc } from '../../src/policy/registry.ts';
import { parseWpc } from '../../src/policy/wpc.ts';
import { cstVerifier, registryPolicySource } from '../../src/proxy/token-check.ts';
import { mintCapabilityToken } from '../../src/tokens/cst.ts';
import { FileRevocationStore } from '../../src/tokens/revocations.ts';
import {
  bundleWorkflows,
  connectTemporal,
  testDataConverter,
  type TemporalTestContext,
} from '../harness/temporal.ts';
import { testServers, uniqueId } from '../harness/servers.ts';

const cliPath = fileURLToPath(new URL('../../bin/clawgate', import.meta.url));
const namespace = uniqueId('control-ns').replace(/[^a-zA-Z0-9-]/g, '-');
const taskQueue = uniqueId('control');

let temporal: TemporalTestContext;
let connection: Connection;
let client: Client;
let worker: Worker;
let running: Promise<void>;
let mirror: ControlMirror;
const keys = mkdtempSync(join(tmpdir(), 'clawgate-control-keys-'));
const machineA = mkdtempSync(join(tmpdir(), 'clawgate-machine-a-'));
const machineB = mkdtempSync(join(tmpdir(), 'clawgate-machine-b-'));
const b = {
  revocations: new FileRevocationStore(join(machineB, 'revocations.log')),
  registry: new FilePolicyRegistry(join(machineB, 'policy-registry')),
};

async function until<T>(what: string, fn: () => T | Promise<T>, timeoutMs = 20_000): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      const value = await fn();
      if (value) return value;
    } catch (error) {
      if (Date.now() > deadline) throw error;
    }
    if (Date.now() > deadline) throw new Error(`${what}: not within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

function cli(...args: string[]) {
  return promisify(execFile)(cliPath, args, {
    encoding: 'utf8',
    env: { ...process.env, CLAWGATE_TEMPORAL_ADDRESS: '' },
  });
}
/** A planning token of a job in !room:x, pinned to a policy, signed by the token key. */
const planningToken = (workflowId: string, hash: string) =>
  mintCapabilityToken(
    {
      purpose: 'planning',
      job: { workflowId, runId: 'r' },
      roomId: '!room:x',
      scope: { tools: [], models: ['demo-echo'] },
      wpcHash: hash,
      ttlSeconds: 600,
    },
    loadSigner(keys, 'token'),
  );

const shared = () => [
  '--address',
  testServers().temporal.address,
  '--namespace',
  namespace,
  '--task-queue',
  taskQueue,
];

before(async () => {
  for (const purpose of ['token', 'policy'] as const) await generateKeyring(keys, purpose);
  temporal = await connectTemporal();
  connection = await Connection.connect({ address: testServers().temporal.address });
  await connection.workflowService.registerNamespace({
    namespace,
    workflowExecutionRetentionPeriod: msToTs('1 day'),
  });
  client = new Client({ connection, namespace, dataConverter: testDataConverter() });
  worker = await Worker.create({
    connection: temporal.workerConnection,
    dataConverter: testDataConverter(),
    namespace,
    taskQueue,
    workflowBundle: await bundleWorkflows(
      fileURLToPath(new URL('../../src/workflows/control.ts', import.meta.url)),
    ),
  });
  running = worker.run();
  mirror = startControlMirror({
    client,
    revocations: b.revocations,
    registry: b.registry,
    policySigners: () => publicJwks(keys, ['policy']),
    log: pino({ level: 'silent' }),
    intervalMs: 100,
  });
});

after(async () => {
  await mirror.stop();
  worker.shutdown();
  await running;
  await connection.close();
  await temporal.close();
});

test('a policy activated on machine A becomes the active policy on machine B, signature checked', async () => {
  const policy = parseWpc(
    JSON.parse(readFileSync(new URL('../../examples/policy.json', import.meta.url), 'utf8')),
  );
  const signedFile = join(machineA, 'policy.signed.json');
  writeFileSync(signedFile, JSON.stringify(signWpc(policy, loadSigner(keys, 'policy'))));
  const registryA = join(machineA, 'policy-registry');
  const registered = await cli('policy', 'register', signedFile, '--registry', registryA, '--keys', keys);
  const hash = /registered ([0-9a-f]{64})/.exec(registered.stdout)?.[1];
  assert.ok(hash, registered.stdout);
  // The namespace was just made: the first signal may find it not yet known everywhere.
  const activated = await until('the activation shared', () =>
    cli(
      'policy',
      'activate',
      hash,
      '--channel',
      'matrix',
      '--registry',
      registryA,
      '--reason',
      'rollout',
      ...shared(),
    ),
  );
  assert.match(activated.stdout, /is shared through Temporal at/);
  await until('machine B on the new policy', () => b.registry.activeHash('matrix') === hash);
  assert.equal(b.registry.policy(hash).model_access.allowed_models.length > 0, true);
  const last = b.registry.history('matrix').at(-1);
  assert.ok(last && last.op !== 'register');
  assert.match(last.reason ?? '', /rollout \(shared from another machine\)/);
});

test('a token revoked on machine A is refused on machine B; an unreachable Temporal is an error, the revocation holds here', async () => {
  const hash = b.registry.activeHash('matrix');
  assert.ok(hash, 'the previous test activated a policy');
  const { token, claims } = await planningToken('job:!room:x:$shared', hash);
  const verify = cstVerifier({
    jwks: publicJwks(keys, ['token']),
    revocations: b.revocations,
    policies: registryPolicySource(b.registry, 'matrix'),
  });
  assert.equal((await verify(token)).ok, true);
  const revoked = await cli(
    'revoke',
    '--token',
    claims.jti,
    '--reason',
    'leaked in a paste',
    '--by',
    '@oncall:x',
    '--revocations',
    join(machineA, 'revocations.log'),
    ...shared(),
  );
  assert.match(revoked.stdout, /this revocation is shared through Temporal/);
  const refused = await until('machine B refusing the token', async () => {
    const check = await verify(token);
    return check.ok ? null : check;
  });
  assert.equal(refused.code, 'TOKEN_REVOKED');
  assert.match(b.revocations.list().at(-1)?.reason ?? '', /leaked in a paste \(shared from another machine/);

  // Temporal not answering: exit 1 with the message, and the revocation made here stands.
  const aLog = join(machineA, 'revocations.log');
  const failed = await cli(
    'revoke',
    '--job',
    'job:other',
    '--reason',
    'x',
    '--revocations',
    aLog,
    '--address',
    '127.0.0.1:9',
    '--namespace',
    namespace,
  ).then(
    () => null,
    (error: { code: number; stderr: string }) => error,
  );
  if (!failed) throw new Error('the command succeeded without Temporal');
  assert.notEqual(failed.code, 0);
  assert.match(
    failed.stderr,
    /holds in this state folder, but could not be shared through Temporal at 127\.0\.0\.1:9/,
  );
  assert.equal(new FileRevocationStore(aLog).isRevoked('any', 'job:other'), true);

  // Without an address the command says the change stayed in this state folder.
  const local = await cli('revoke', '--job', 'job:third', '--reason', 'x', '--revocations', aLog);
  assert.match(local.stdout, /holds in this state folder only \(give --address/);
});

test('a shared policy signed by a key machine B does not trust is refused there, and B keeps its policy', async () => {
  const before = b.registry.activeHash('matrix');
  assert.ok(before);
  const strangerKeys = mkdtempSync(join(tmpdir(), 'clawgate-stranger-keys-'));
  await generateKeyring(strangerKeys, 'policy');
  const policy = parseWpc(
    JSON.parse(readFileSync(new URL('../../examples/policy.json', import.meta.url), 'utf8')) as unknown,
  );
  const forged = signWpc({ ...policy, description: 'forged' }, loadSigner(strangerKeys, 'policy'));
  const { sharePolicy } = await import('../../src/activities/control-state.ts');
  await sharePolicy(client, taskQueue, {
    channel: 'matrix',
    hash: forged.hash,
    jws: forged.jws,
    by: '@mallory:x',
    reason: 'trust me',
    rollback: false,
  });
  // A revocation shared after it still arrives: the mirror read the forged policy, refused it,
  // and went on; B still runs the policy it had.
  const { shareRevocation } = await import('../../src/activities/control-state.ts');
  await shareRevocation(client, taskQueue, {
    kind: 'job',
    id: 'job:after-forgery',
    reason: 'later',
    at: new Date().toISOString(),
  });
  await until('the later revocation on machine B', () => b.revocations.isRevoked('any', 'job:after-forgery'));
  assert.equal(b.registry.activeHash('matrix'), before);
  assert.equal(
    b.registry.list().some((p) => p.hash === forged.hash),
    false,
  );
});

test('a machine that cannot read the shared control state refuses every token past the limit, and serves again once it can', async () => {
  const hash = b.registry.activeHash('matrix');
  assert.ok(hash, 'the first test activated a policy');
  // Machine C reaches Temporal through a relay this test can cut and restore.
  const [host, port] = testServers().temporal.address.split(':') as [string, string];
  const sockets = new Set<Socket>();
  const relay = createServer((inbound) => {
    const outbound = connect(Number(port), host);
    for (const socket of [inbound, outbound]) {
      sockets.add(socket);
      socket.on('error', () => {
        inbound.destroy();
        outbound.destroy();
      });
      socket.on('close', () => sockets.delete(socket));
    }
    inbound.pipe(outbound).pipe(inbound);
  });
  await new Promise<void>((resolve) => relay.listen(0, '127.0.0.1', resolve));
  const relayPort = (relay.address() as { port: number }).port;
  const machineC = mkdtempSync(join(tmpdir(), 'clawgate-machine-c-'));
  const c = {
    revocations: new FileRevocationStore(join(machineC, 'revocations.log')),
    registry: new FilePolicyRegistry(join(machineC, 'policy-registry')),
  };
  // C runs the policy B runs (the shared state's latest is the forged one C refuses).
  await c.registry.register(b.registry.get(hash), publicJwks(keys, ['policy']));
  c.registry.activate('matrix', hash);
  const cConnection = await Connection.connect({ address: `127.0.0.1:${relayPort}` });
  const cMirror = startControlMirror({
    client: new Client({ connection: cConnection, namespace, dataConverter: testDataConverter() }),
    revocations: c.revocations,
    registry: c.registry,
    policySigners: () => publicJwks(keys, ['policy']),
    log: pino({ level: 'silent' }),
    intervalMs: 100,
    timeoutMs: 500,
  });
  try {
    const { token } = await planningToken('job:!room:x:$machine-c', hash);
    const verify = cstVerifier({
      jwks: publicJwks(keys, ['token']),
      revocations: c.revocations,
      policies: registryPolicySource(c.registry, 'matrix'),
      stale: () => cMirror.staleness(2_000),
    });
    await until('machine C reading the shared state', () => cMirror.status().lastSync);
    assert.equal((await verify(token)).ok, true);

    // Temporal out of reach: the token still passes within the limit, then every check refuses.
    relay.close();
    for (const socket of sockets) socket.destroy();
    assert.equal((await verify(token)).ok, true, 'a read 100 ms ago is within the limit');
    const refused = await until('machine C refusing', async () => {
      const check = await verify(token);
      return check.ok ? null : check;
    });
    assert.equal(refused.code, 'REVOCATION_CHECK_FAILED');
    // No verdict on the token: "not now", which callers wait out (and then refuse).
    assert.equal(refused.status, 503);
    assert.match(
      refused.reason,
      /the shared control state was last read \d+ s ago \(limit 2 s\).*revocations made on other machines may be missing here/,
    );
    assert.ok(cMirror.status().error, 'the failing read is reported in the status');

    // Reachable again: the next good read ends the refusals.
    await new Promise<void>((resolve) => relay.listen(relayPort, '127.0.0.1', resolve));
    await until('machine C serving again', async () => (await verify(token)).ok, 60_000);
    assert.equal(cMirror.staleness(2_000), null);
  } finally {
    await cMirror.stop();
    await cConnection.close();
    relay.close();
    for (const socket of sockets) socket.destroy();
  }
});
