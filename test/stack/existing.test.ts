// `clawgate start` configured to use what already runs: the harness's Temporal and Synapse, a
// model upstream named by CLAWGATE_MODEL_BASE_URL, a bot account and an initial policy from the
// configuration file. It starts no server of its own, and a job runs end to end through it.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer as createNetServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, test } from 'node:test';
import { Direction } from 'matrix-js-sdk';
import { freeLoopbackPort } from '../../src/devstack/net.ts';
import { startDemoUpstream, type DemoUpstream } from '../../src/proxy/demo-upstream.ts';
import { threadRelation } from '../../src/ingress/matrix-io.ts';
import { MatrixTestUser } from '../harness/matrix-user.ts';
import { registerTestUser, testServers, uniqueId } from '../harness/servers.ts';
import { DEMO_SCRIPT, scriptedModel } from '../../src/proxy/demo-model.ts';
import { DEMO_README } from '../../src/workspace/workspaces.ts';

const bin = fileURLToPath(new URL('../../bin/clawgate', import.meta.url));
const cleanups: Array<() => unknown> = [];
const bodyText = (content: unknown): string => {
  const body = (content as { body?: unknown } | undefined)?.body;
  return typeof body === 'string' ? body : '';
};
after(async () => {
  for (const fn of cleanups.reverse()) await fn();
});

/** Runs `clawgate <args>` in the background, its output kept; it is killed after the tests. */
function runClawgate(args: string[], env: NodeJS.ProcessEnv, cwd: string) {
  const child = spawn(bin, args, { env, cwd, stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (c: string) => (output += c));
  child.stderr.setEncoding('utf8').on('data', (c: string) => {
    output += c;
    stderr += c;
  });
  const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
  cleanups.push(async () => {
    if (child.exitCode === null) child.kill('SIGKILL');
    await exited;
  });
  return {
    child,
    exited,
    /** stdout and stderr as they came. */
    output: () => output,
    stderr: () => stderr,
    /** Its exit code, or 'still running' if it has not ended within `ms`. */
    endsWithin: (ms: number) =>
      Promise.race([exited, new Promise<string>((r) => setTimeout(() => r('still running'), ms))]),
  };
}

/** A port a listener of this test holds until the tests end. */
async function heldPort(): Promise<number> {
  const holder = createNetServer();
  await new Promise<void>((resolve) => holder.listen(0, '127.0.0.1', resolve));
  cleanups.push(() => new Promise<void>((resolve) => holder.close(() => resolve())));
  return (holder.address() as AddressInfo).port;
}

test('clawgate start uses an existing Temporal, homeserver and model upstream when configured', async () => {
  const { temporal, synapse } = testServers();
  // An OpenAI-compatible upstream with tool calling, as a provider's is: the scripted demo model.
  const upstream: DemoUpstream = await startDemoUpstream({ reply: scriptedModel(DEMO_SCRIPT) });
  cleanups.push(() => upstream.close());
  const bot = await registerTestUser('startbot');
  const [requester, approver] = await Promise.all([
    MatrixTestUser.create('startreq'),
    MatrixTestUser.create('startappr'),
  ]);
  cleanups.push(
    () => requester.stop(),
    () => approver.stop(),
  );
  const roomId = await requester.createRoom({ name: 'existing', invite: [bot.userId, approver.userId] });
  await approver.waitForMembership(roomId, 'invite');
  await approver.joinRoom(roomId);

  const dir = mkdtempSync(join(tmpdir(), 'clawgate-existing-'));
  const policy = JSON.parse(readFileSync(new URL('../../examples/policy.json', import.meta.url), 'utf8'));
  policy.matrix.rooms_allowlist = [roomId];
  policy.matrix.requesters_allowlist = [requester.userId];
  policy.matrix.approval.approver_user_ids_allowlist = [approver.userId];
  writeFileSync(join(dir, 'policy.json'), JSON.stringify(policy));
  writeFileSync(
    join(dir, 'clawgate.yaml'),
    [
      'stateDir: state',
      `temporal: { namespace: ${temporal.namespace}, taskQueue: ${uniqueId('start-jobs')} }`,
      `matrix: { homeserverUrl: "${synapse.baseUrl}" }`,
      'policy: { initial: policy.json }',
      `proxy: { listen: { port: ${await freeLoopbackPort()} } }`,
      `evidence: { listen: { port: ${await freeLoopbackPort()} } }`,
      `codec: { listen: { port: ${await freeLoopbackPort()} } }`,
      'gateway:',
      `  health: { port: ${await freeLoopbackPort()} }`,
      '  accounts:',
      `    - { id: main, homeserverUrl: "${synapse.baseUrl}", userId: "${bot.userId}", rooms: ["${roomId}"], encryption: false }`,
    ].join('\n'),
  );
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    CLAWGATE_CONFIG: join(dir, 'clawgate.yaml'),
    CLAWGATE_TEMPORAL_ADDRESS: temporal.address,
    CLAWGATE_MODEL_BASE_URL: `${upstream.url}/v1`,
    CLAWGATE_MODEL: 'demo-echo',
    CLAWGATE_ACCOUNT_MAIN_ACCESS_TOKEN: bot.accessToken,
    CLAWGATE_WORKER_HEALTH_PORT: String(await freeLoopbackPort()),
  };
  delete env['CLAWGATE_STATE_DIR'];
  const { child, exited, output } = runClawgate(['start'], env, dir);
  const deadline = Date.now() + 120_000;
  while (!output().includes('clawgate is ready')) {
    if (child.exitCode !== null || Date.now() > deadline)
      throw new Error(`clawgate start did not come up:\n${output()}`);
    await new Promise((r) => setTimeout(r, 200));
  }
  assert.match(output(), new RegExp(`Temporal +${temporal.address} \\(existing\\)`));
  assert.match(output(), new RegExp(`Matrix +${synapse.baseUrl} \\(existing\\)`));
  assert.match(output(), /Model upstream +env http:\/\/127\.0\.0\.1:\d+\/v1/);
  assert.doesNotMatch(output(), /Temporal Web UI|DEMO upstream/);

  // The bot joins on its first sync; then a whole job.
  await requester.waitForRoomEvent({
    roomId,
    timeoutMs: 30_000,
    message: 'the bot joining',
    filter: (e) =>
      e.getType() === 'm.room.member' &&
      e.getStateKey() === bot.userId &&
      e.getContent()['membership'] === 'join',
  });
  const request = await requester.sendText(roomId, '!claw summarise the readme');
  const find = async (pattern: RegExp) => {
    const until = Date.now() + 60_000;
    for (;;) {
      const res = await requester.client.createMessagesRequest(roomId, null, 100, Direction.Backward);
      const hit = res.chunk.find((e) => e.sender === bot.userId && pattern.test(bodyText(e.content)));
      if (hit) return hit;
      if (Date.now() > until)
        throw new Error(`no ${pattern} from the bot; clawgate start said:\n${output()}`);
      await new Promise((r) => setTimeout(r, 300));
    }
  };
  await find(/^Plan for job j[a-z2-7]{9}/);
  await approver.client.sendEvent(
    roomId,
    'm.room.message' as never,
    {
      msgtype: 'm.text',
      body: '!approve',
      'm.relates_to': threadRelation(request),
    } as never,
  );
  const result = await find(/: succeeded\./);
  // The agent read the README of the job's workspace (the demo repository) and answered from it.
  const answer = await find(/^Answer for job/);
  assert.ok(bodyText(answer.content).includes(/^# (.+)$/m.exec(DEMO_README)?.[1] as string));
  assert.match(bodyText(result.content), /bundle [0-9a-f]{64}/);
  child.kill('SIGINT');
  assert.equal(await exited, 0, output());
});

test('clawgate proxy and clawgate worker run alone from the configuration, answer their health checks and stop on SIGTERM', async () => {
  const { temporal } = testServers();
  const dir = mkdtempSync(join(tmpdir(), 'clawgate-parts-'));
  const proxyPort = await freeLoopbackPort();
  const workerHealth = await freeLoopbackPort();
  writeFileSync(
    join(dir, 'clawgate.yaml'),
    [
      'stateDir: state',
      `temporal: { address: "${temporal.address}", namespace: ${temporal.namespace}, taskQueue: ${uniqueId('parts')} }`,
      `proxy: { listen: { port: ${proxyPort} } }`,
      `worker: { health: { port: ${workerHealth} } }`,
    ].join('\n'),
  );
  const env: NodeJS.ProcessEnv = { ...process.env, CLAWGATE_CONFIG: join(dir, 'clawgate.yaml') };
  delete env['CLAWGATE_STATE_DIR'];
  for (const [part, url] of [
    ['proxy', `http://127.0.0.1:${proxyPort}/healthz`],
    ['worker', `http://127.0.0.1:${workerHealth}/health`],
  ] as const) {
    const { child, exited, output } = runClawgate([part], env, dir);
    const deadline = Date.now() + 60_000;
    let status = 0;
    while (status !== 200) {
      if (child.exitCode !== null || Date.now() > deadline)
        throw new Error(`clawgate ${part} did not come up:\n${output()}`);
      status = await fetch(url).then(
        (r) => r.status,
        () => 0,
      );
      if (status !== 200) await new Promise((r) => setTimeout(r, 250));
    }
    // Both mirror the control state shared through Temporal, and say how that goes.
    const health = (await fetch(url).then((r) => r.json())) as {
      control?: { lastSync: string | null; error: string | null };
    };
    assert.ok(
      health.control && 'lastSync' in health.control && 'error' in health.control,
      JSON.stringify(health),
    );
    // JSON log lines on stdout.
    const first = JSON.parse(output().split('\n')[0] ?? '{}') as { name?: string; msg?: string };
    assert.equal(first.name, `clawgate-${part}`);
    child.kill('SIGTERM');
    assert.equal(await exited, 0, output());
  }
});

test('clawgate proxy and clawgate worker on a port another process holds: a clear error, exit 1, nothing left running', async () => {
  const { temporal } = testServers();
  const dir = mkdtempSync(join(tmpdir(), 'clawgate-taken-'));
  // A listener of this test holds the port both parts are configured to use.
  const taken = await heldPort();
  writeFileSync(
    join(dir, 'clawgate.yaml'),
    [
      'stateDir: state',
      `temporal: { address: "${temporal.address}", namespace: ${temporal.namespace}, taskQueue: ${uniqueId('taken')} }`,
      `proxy: { listen: { port: ${taken} } }`,
      `worker: { health: { port: ${taken} } }`,
    ].join('\n'),
  );
  const env: NodeJS.ProcessEnv = { ...process.env, CLAWGATE_CONFIG: join(dir, 'clawgate.yaml') };
  delete env['CLAWGATE_STATE_DIR'];
  for (const [part, message] of [
    [
      'proxy',
      `model proxy: 127.0.0.1:${taken} is already in use by another process; stop it, or give the model proxy another port (proxy.listen.port or CLAWGATE_PROXY_PORT)`,
    ],
    [
      'worker',
      `worker health endpoint: 127.0.0.1:${taken} is already in use by another process; stop it, or give the worker health endpoint another port (worker.health.port or CLAWGATE_WORKER_HEALTH_PORT)`,
    ],
  ] as const) {
    const run = runClawgate([part], env, dir);
    // It ends by itself (a Temporal connection left open must not keep it running).
    const code = await run.endsWithin(60_000);
    assert.equal(code, 1, `clawgate ${part}: ${run.stderr()}`);
    assert.equal(run.stderr().trim(), `clawgate: ${message}`);
  }
});

test('clawgate start where another server holds the Temporal or Synapse port: a clear error at once, nothing started', async () => {
  // Without the check, a Temporal dev server already on the port would answer in place of the
  // embedded one, and clawgate would carry on with a server it did not start.
  const taken = await heldPort();
  for (const [variable, message] of [
    [
      'CLAWGATE_TEMPORAL_PORT',
      `embedded Temporal server: 127.0.0.1:${taken} is already in use by another process; stop it, or give the embedded Temporal server another port (temporal.port or CLAWGATE_TEMPORAL_PORT), or use that server with temporal.address`,
    ],
    [
      'CLAWGATE_SYNAPSE_PORT',
      `embedded Synapse: 127.0.0.1:${taken} is already in use by another process; stop it, or give the embedded Synapse another port (matrix.port or CLAWGATE_SYNAPSE_PORT), or use that homeserver with matrix.homeserverUrl`,
    ],
  ] as const) {
    const state = join(mkdtempSync(join(tmpdir(), 'clawgate-held-')), 'state');
    const env: NodeJS.ProcessEnv = {
      ...process.env,
      CLAWGATE_STATE_DIR: state,
      CLAWGATE_TEMPORAL_PORT: String(await freeLoopbackPort()),
      CLAWGATE_TEMPORAL_UI_PORT: String(await freeLoopbackPort()),
      CLAWGATE_SYNAPSE_PORT: String(await freeLoopbackPort()),
      CLAWGATE_CODEC_PORT: String(await freeLoopbackPort()),
      CLAWGATE_WORKER_HEALTH_PORT: String(await freeLoopbackPort()),
      [variable]: String(taken),
    };
    delete env['CLAWGATE_CONFIG'];
    const run = runClawgate(['start'], env, tmpdir());
    const code = await run.endsWithin(60_000);
    assert.equal(code, 1, run.stderr());
    assert.equal(run.stderr().trim(), `clawgate: ${message}`);
    assert.equal(existsSync(join(state, 'temporal.db')), false, 'no Temporal server was started');
    assert.equal(existsSync(join(state, 'synapse')), false, 'no Synapse was started');
  }
});
