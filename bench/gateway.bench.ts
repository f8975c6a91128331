// Gateway figures on a real Synapse and a real Temporal dev server, in one run:
//  - added latency from a request event reaching the gateway (its sync batch handed over) to
//    the job workflow started (accepted by Temporal), p50 and p99: sequential requests, and a
//    burst from several requesters at once;
//  - the baseline measured in the same run: a bare `workflow.start` of the same workflow with
//    the same search attributes from a plain client, the part no gateway can avoid;
//  - message sent to job started as a person sees it (includes Synapse's delivery by sync).
// No worker runs the jobs: this measures the gateway, not the job workflow (bench/jobs does).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { dataConverterFor } from '../src/temporal/codec.ts';
import { ensurePayloadKeyring } from '../src/keys/payload-keyring.ts';
import { Client, Connection } from '@temporalio/client';
import { WorkflowIdReusePolicy } from '@temporalio/common';
import { Runtime } from '@temporalio/worker';
import { createClient, type MatrixClient } from 'matrix-js-sdk';
import { pino } from 'pino';
import { startSynapse } from '../src/devstack/synapse.ts';
import { startTemporalDevServer } from '../src/devstack/temporal.ts';
import { toolPaths } from '../src/devstack/tools.ts';
import { Gateway } from '../src/ingress/gateway.ts';
import { jobWorkflowId, shortJobId } from '../src/ingress/job-ids.ts';
import { quietMatrixSdkLogging } from '../src/ingress/sdk-logging.ts';
import { generateKeyring, loadSigner, publicJwks } from '../src/keys/keyring.ts';
import { FilePolicyRegistry, signWpc } from '../src/policy/registry.ts';
import { parseWpc } from '../src/policy/wpc.ts';
import { JOB_ID, JOB_REQUESTER, JOB_ROOM, JOB_STATUS } from '../src/temporal/search-attributes.ts';

const SEQUENTIAL = Number(process.env['BENCH_GATEWAY_SEQUENTIAL'] ?? 100);
const BURST_REQUESTERS = 5;
const BURST_EACH = Number(process.env['BENCH_GATEWAY_BURST_EACH'] ?? 20);
const QUEUE = 'bench-no-worker';

Runtime.install({
  logger: {
    log: () => {},
    trace: () => {},
    debug: () => {},
    info: () => {},
    warn: () => {},
    error: () => {},
  },
});
quietMatrixSdkLogging(['error']);
const percentile = (xs: readonly number[], p: number): number =>
  [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor((p / 100) * xs.length))] ?? NaN;
const fmt = (xs: readonly number[]) =>
  `p50 ${percentile(xs, 50).toFixed(1)} ms, p99 ${percentile(xs, 99).toFixed(1)} ms (n=${xs.length})`;

const dir = mkdtempSync(join(tmpdir(), 'clawgate-bench-gateway-'));
const tools = toolPaths();
const [temporalServer, synapse] = await Promise.all([
  startTemporalDevServer({ cliPath: tools.temporal, dir }),
  startSynapse({ python: tools.synapsePython, dir: join(dir, 'synapse'), liftRateLimits: true }),
]);
let gateway: Gateway | undefined;
const humans: MatrixClient[] = [];
try {
  const bot = await synapse.registerUser('bench-bot');
  const people = await Promise.all(
    Array.from({ length: BURST_REQUESTERS }, (_, i) => synapse.registerUser(`bench-requester-${i}`)),
  );
  for (const p of people) {
    const client = createClient({
      baseUrl: synapse.baseUrl,
      userId: p.userId,
      accessToken: p.accessToken,
      deviceId: p.deviceId,
    });
    humans.push(client);
  }
  const owner = humans[0] as MatrixClient;
  const { room_id: roomId } = await owner.createRoom({
    invite: [bot.userId, ...people.slice(1).map((p) => p.userId)],
  });
  for (const h of humans.slice(1)) await h.joinRoom(roomId);

  const keys = join(dir, 'keys');
  await generateKeyring(keys, 'policy');
  ensurePayloadKeyring(keys);
  const registryDir = join(dir, 'registry');
  const registry = new FilePolicyRegistry(registryDir);
  const signed = signWpc(
    parseWpc({
      wpc_version: '1',
      channel: 'matrix',
      matrix: {
        rooms_allowlist: [roomId],
        requesters_allowlist: people.map((p) => p.userId),
        approval: { required: true, approver_user_ids_allowlist: ['@approver:localhost'] },
        limits: { requests_per_requester_per_hour: 1000, open_jobs_per_room: 1000 },
      },
      execution: { sandbox: { mode: 'all', workspace_access: 'ro' }, tools: { allow: ['read'] } },
      tokens: { cst: { job_scoped: true } },
      model_access: { route_via: 'clawgate-proxy', receipts: 'required', allowed_models: ['demo-echo'] },
    }),
    loadSigner(keys, 'policy'),
  );
  await registry.register(signed, publicJwks(keys, ['policy']));
  registry.activate('matrix', signed.hash);

  gateway = await Gateway.start(
    {
      stateDir: join(dir, 'gateway'),
      temporal: { address: temporalServer.address, namespace: temporalServer.namespace, jobTaskQueue: QUEUE },
      policy: { registryDir, channel: 'matrix' },
      health: { host: '127.0.0.1', port: 0 },
      accounts: [
        {
          id: 'bench',
          homeserverUrl: synapse.baseUrl,
          userId: bot.userId,
          accessToken: bot.accessToken,
          rooms: [roomId],
          encryption: false,
        },
      ],
    },
    { logger: pino({ level: 'silent' }), dataConverter: dataConverterFor(keys) },
  );
  const account = gateway.accounts[0];
  if (!account) throw new Error('no account');
  // Wait until the bot has joined and its first sync is saved.
  while (!(await account.matrix.getJoinedRooms()).joined_rooms.includes(roomId)) {
    await new Promise((r) => setTimeout(r, 100));
  }
  await new Promise((r) => setTimeout(r, 1500));

  const temporal = new Client({
    connection: await Connection.connect({ address: temporalServer.address }),
    namespace: temporalServer.namespace,
    dataConverter: dataConverterFor(keys),
  });
  const started = async (workflowId: string): Promise<number> => {
    for (;;) {
      try {
        const d = await temporal.workflow.getHandle(workflowId).describe();
        return d.startTime.getTime();
      } catch {
        await new Promise((r) => setTimeout(r, 20));
      }
    }
  };
  const waitForStarts = async (n: number) => {
    while (account.startLatencies().length < n) await new Promise((r) => setTimeout(r, 5));
  };

  // Baseline: the same start from a plain client.
  const bare: number[] = [];
  for (let i = 0; i < SEQUENTIAL; i++) {
    const workflowId = `bench-bare-${i}`;
    const t0 = performance.now();
    await temporal.workflow.start('jobWorkflow', {
      taskQueue: QUEUE,
      workflowId,
      args: [{}],
      workflowIdReusePolicy: WorkflowIdReusePolicy.REJECT_DUPLICATE,
      typedSearchAttributes: [
        { key: JOB_ID, value: shortJobId(workflowId) },
        { key: JOB_ROOM, value: '!bare:localhost' },
        { key: JOB_REQUESTER, value: '@bare:localhost' },
        { key: JOB_STATUS, value: 'planning' },
      ],
    });
    bare.push(performance.now() - t0);
  }

  // Sequential requests through the gateway.
  const seen: number[] = [];
  for (let i = 0; i < SEQUENTIAL; i++) {
    const sender = humans[i % humans.length] as MatrixClient;
    const { event_id: eventId } = await sender.sendMessage(roomId, {
      msgtype: 'm.text',
      body: `!claw task ${i}`,
    } as never);
    await waitForStarts(i + 1);
    const event = await sender.fetchRoomEvent(roomId, eventId);
    seen.push((await started(jobWorkflowId(roomId, eventId))) - Number(event.origin_server_ts));
  }
  const sequential = [...account.startLatencies()];

  // A burst: every requester sends at once.
  const before = account.startLatencies().length;
  await Promise.all(
    humans.map(async (h, r) => {
      for (let i = 0; i < BURST_EACH; i++) {
        await h.sendMessage(roomId, { msgtype: 'm.text', body: `!claw burst ${r}-${i}` } as never);
      }
    }),
  );
  await waitForStarts(before + humans.length * BURST_EACH);
  const burst = account.startLatencies().slice(before);

  const p50 = (xs: readonly number[]) => percentile(xs, 50);
  console.log(`bare workflow.start (baseline)         ${fmt(bare)}`);
  console.log(`gateway, sequential: event -> started   ${fmt(sequential)}`);
  console.log(`gateway, burst of ${humans.length}x${BURST_EACH}: event -> started ${fmt(burst)}`);
  console.log(`message sent -> job started (via sync)  ${fmt(seen)}`);
  console.log(
    `ratio gateway/bare at p50: sequential ${(p50(sequential) / p50(bare)).toFixed(2)}x, burst ${(p50(burst) / p50(bare)).toFixed(2)}x`,
  );
  console.log(
    `gateway RSS ${(process.memoryUsage().rss / 1024 / 1024).toFixed(0)} MiB (bench process, servers apart)`,
  );
} finally {
  for (const h of humans) h.stopClient();
  await gateway?.stop();
  await Promise.all([temporalServer.stop(), synapse.stop()]);
  rmSync(dir, { recursive: true, force: true });
}
process.exit(0);
