// Many rooms on one gateway account, each with a job waiting for approval, on the parts users
// run (`clawgate proxy`, `clawgate worker` and `clawgate gateway`, each its own process, from
// one configuration) against a real Synapse and a real Temporal dev server, in one run:
//  - the gateway's RSS (VmRSS, sampled every 100 ms) idle in its rooms, its peak while a job is
//    requested in each, and where it settles with them all waiting;
//  - `!approve <job>` to acted on (the bot's ✅ on the command) and to execution started (the
//    plan's status line edited to "running"), by Synapse's timestamps of those events, with
//    one job waiting (the baseline), then with a job waiting in every room.
// The people are matrix-js-sdk clients in this process: a requester and an approver.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { dataConverterFor } from '../src/temporal/codec.ts';
import { ensurePayloadKeyring } from '../src/keys/payload-keyring.ts';
import { Client, Connection } from '@temporalio/client';
import { Runtime } from '@temporalio/worker';
import {
  ClientEvent,
  createClient,
  RoomEvent,
  SyncState,
  type MatrixClient,
  type MatrixEvent,
} from 'matrix-js-sdk';
import { parseConfig, statePaths } from '../src/config/config.ts';
import { freeLoopbackPort } from '../src/devstack/net.ts';
import type { ServerProcess } from '../src/devstack/process.ts';
import { startSynapse } from '../src/devstack/synapse.ts';
import { startTemporalDevServer } from '../src/devstack/temporal.ts';
import { toolPaths } from '../src/devstack/tools.ts';
import { jobWorkflowId, shortJobId } from '../src/ingress/job-ids.ts';
import { quietMatrixSdkLogging } from '../src/ingress/sdk-logging.ts';
import { loadSigner, publicJwks } from '../src/keys/keyring.ts';
import { FilePolicyRegistry, signWpc } from '../src/policy/registry.ts';
import { parseWpc } from '../src/policy/wpc.ts';
import { DEMO_MODEL, ensureKeys } from '../src/stack/components.ts';
import { mib, RssSampler, sleep, startPart, writeConfig } from './clawgate-parts.ts';

const ROOMS = Number(process.env['BENCH_GATEWAY_ROOMS'] ?? 50);
const APPROVALS = Number(process.env['BENCH_GATEWAY_APPROVALS'] ?? 5);
const SETTLE_MS = Number(process.env['BENCH_GATEWAY_SETTLE_MS'] ?? 10_000);

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
const ms = (x: number) => `${x.toFixed(0)} ms`;

/** What the approver's client saw, by Synapse's timestamps. */
class RoomWatch {
  /** Plan message of a request (its thread root), as the bot posted it. */
  readonly plans = new Map<string, { eventId: string; ts: number }>();
  /** The bot's ✅ on an event. */
  readonly ticks = new Map<string, number>();
  /** The first "running" edit of a plan message. */
  readonly running = new Map<string, number>();
  /** Result messages ("Job ...: succeeded") by thread root. */
  readonly results = new Map<string, number>();
  private readonly botUserId: string;

  constructor(client: MatrixClient, botUserId: string) {
    this.botUserId = botUserId;
    client.on(RoomEvent.Timeline, (event: MatrixEvent) => this.see(event));
  }

  private see(event: MatrixEvent): void {
    if (event.getSender() !== this.botUserId) return;
    const content = event.getContent<Record<string, unknown>>();
    const relation = content['m.relates_to'] as
      { rel_type?: string; event_id?: string; key?: string } | undefined;
    const ts = event.getTs();
    if (!relation?.event_id) return;
    const body = typeof content['body'] === 'string' ? content['body'] : '';
    if (event.getType() === 'm.reaction' && relation.key === '✅') this.ticks.set(relation.event_id, ts);
    else if (relation.rel_type === 'm.replace') {
      if (body.includes('Status: approved; running') && !this.running.has(relation.event_id)) {
        this.running.set(relation.event_id, ts);
      }
    } else if (relation.rel_type === 'm.thread') {
      if (/^Job \S+: /.test(body)) this.results.set(relation.event_id, ts);
      else if (!this.plans.has(relation.event_id) && body.includes('Status: waiting for approval')) {
        this.plans.set(relation.event_id, { eventId: event.getId() as string, ts });
      }
    }
  }
}

async function until(
  check: () => boolean | Promise<boolean>,
  timeoutMs: number,
  what: string,
): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!(await check())) {
    if (performance.now() > deadline) throw new Error(`${what}: not within ${timeoutMs / 1000} s`);
    await sleep(50);
  }
}

const dir = mkdtempSync(join(tmpdir(), 'clawgate-bench-rooms-'));
const tools = toolPaths();
const [temporalServer, synapse] = await Promise.all([
  startTemporalDevServer({ cliPath: tools.temporal, dir }),
  startSynapse({ python: tools.synapsePython, dir: join(dir, 'synapse'), liftRateLimits: true }),
]);
const parts: ServerProcess[] = [];
const humans: MatrixClient[] = [];
try {
  const [bot, requesterAccount, approverAccount] = await Promise.all([
    synapse.registerUser('bench-bot'),
    synapse.registerUser('bench-requester'),
    synapse.registerUser('bench-approver'),
  ]);
  const human = (a: typeof bot) => {
    const client = createClient({
      baseUrl: synapse.baseUrl,
      userId: a.userId,
      accessToken: a.accessToken,
      deviceId: a.deviceId,
    });
    humans.push(client);
    return client;
  };
  const requester = human(requesterAccount);
  const approver = human(approverAccount);
  const rooms: string[] = [];
  for (let i = 0; i < ROOMS; i++) {
    const { room_id: roomId } = await requester.createRoom({
      name: `bench room ${i}`,
      invite: [bot.userId, approverAccount.userId],
    });
    await approver.joinRoom(roomId);
    rooms.push(roomId);
  }
  const watch = new RoomWatch(approver, bot.userId);
  await new Promise<void>((resolve) => {
    const onSync = (state: SyncState) => {
      if (state !== SyncState.Prepared && state !== SyncState.Syncing) return;
      approver.off(ClientEvent.Sync, onSync);
      resolve();
    };
    approver.on(ClientEvent.Sync, onSync);
    void approver.startClient({ initialSyncLimit: 1 });
  });

  const [proxyPort, workerHealthPort, gatewayHealthPort] = [
    await freeLoopbackPort(),
    await freeLoopbackPort(),
    await freeLoopbackPort(),
  ];
  const input = {
    stateDir: join(dir, 'state'),
    temporal: { address: temporalServer.address, namespace: temporalServer.namespace },
    matrix: { homeserverUrl: synapse.baseUrl },
    proxy: { listen: { host: '127.0.0.1', port: proxyPort } },
    worker: { health: { host: '127.0.0.1', port: workerHealthPort } },
    gateway: {
      health: { host: '127.0.0.1', port: gatewayHealthPort },
      accounts: [
        {
          id: 'bench',
          homeserverUrl: synapse.baseUrl,
          userId: bot.userId,
          accessToken: bot.accessToken,
          rooms,
          encryption: false,
        },
      ],
    },
    evidence: { listen: { host: '127.0.0.1', port: 0 } },
    log: { level: 'warn' },
  };
  const configPath = writeConfig(dir, input);
  const config = parseConfig(input);
  await ensureKeys(config);
  const paths = statePaths(config);
  // The parts' payload keyring, before any starts: this process's client uses it too.
  ensurePayloadKeyring(paths.payloadKeys);
  const registry = new FilePolicyRegistry(paths.registry);
  const signed = signWpc(
    parseWpc({
      wpc_version: '1',
      channel: 'matrix',
      matrix: {
        rooms_allowlist: rooms,
        requesters_allowlist: [requesterAccount.userId],
        approval: { required: true, approver_user_ids_allowlist: [approverAccount.userId] },
        limits: { requests_per_requester_per_hour: 1000 },
      },
      // The demo's policy: the model loop with read-only tools.
      execution: {
        sandbox: { mode: 'all', workspace_access: 'ro' },
        tools: { allow: ['read', 'search'], deny: ['exec'] },
        mode: 'agent',
        agent: { model_turns: 12, tool_calls: 24, wall_seconds: 600 },
      },
      tokens: { cst: { job_scoped: true, pin_policy_hash: true } },
      model_access: { route_via: 'clawgate-proxy', receipts: 'required', allowed_models: [DEMO_MODEL] },
    }),
    loadSigner(paths.keys, 'policy'),
  );
  await registry.register(signed, publicJwks(paths.keys, ['policy']));
  registry.activate('matrix', signed.hash);

  parts.push(
    await startPart({ part: 'proxy', dir, configPath, healthUrl: `http://127.0.0.1:${proxyPort}/healthz` }),
  );
  parts.push(
    await startPart({
      part: 'worker',
      dir,
      configPath,
      healthUrl: `http://127.0.0.1:${workerHealthPort}/health`,
    }),
  );
  const gateway = await startPart({
    part: 'gateway',
    dir,
    configPath,
    healthUrl: `http://127.0.0.1:${gatewayHealthPort}/health`,
  });
  parts.push(gateway);
  const rss = new RssSampler(gateway.pid);
  await until(
    async () => {
      const joined = await fetch(`${synapse.baseUrl}/_matrix/client/v3/joined_rooms`, {
        headers: { authorization: `Bearer ${bot.accessToken}` },
      }).then((r) => r.json() as Promise<{ joined_rooms: string[] }>);
      return rooms.every((r) => joined.joined_rooms.includes(r));
    },
    120_000,
    `the bot joined all ${ROOMS} rooms`,
  );
  const temporal = new Client({
    connection: await Connection.connect({ address: temporalServer.address }),
    namespace: temporalServer.namespace,
    dataConverter: dataConverterFor(paths.payloadKeys),
  });
  const waitingJobs = async () =>
    (await temporal.workflow.count(`ClawgateStatus = "awaiting_approval"`)).count;

  // 1. Idle in its rooms (once what its start made is collected).
  await sleep(15_000);
  const idleFrom = rss.mark();
  await sleep(5000);
  const idle = rss.settled(idleFrom);

  /** `!claw` in a room; the request's event id once its plan is posted. */
  const request = async (roomId: string): Promise<string> => {
    const { event_id: eventId } = await requester.sendTextMessage(roomId, '!claw summarise the readme');
    return eventId;
  };
  /** `!approve <job>` in the room; both latencies by Synapse's timestamps. */
  const approve = async (
    roomId: string,
    requestId: string,
  ): Promise<{ actedOn: number; running: number }> => {
    const plan = watch.plans.get(requestId);
    if (!plan) throw new Error(`no plan for ${requestId}`);
    const { event_id: approveId } = await approver.sendTextMessage(
      roomId,
      `!approve ${shortJobId(jobWorkflowId(roomId, requestId))}`,
    );
    await until(
      () => watch.ticks.has(approveId) && watch.running.has(plan.eventId),
      60_000,
      'the approval acted on',
    );
    const sent = (await approver.fetchRoomEvent(roomId, approveId)).origin_server_ts as number;
    return {
      actedOn: (watch.ticks.get(approveId) as number) - sent,
      running: (watch.running.get(plan.eventId) as number) - sent,
    };
  };

  // 2. The baseline: one job waiting, in the first room.
  const single: Array<{ actedOn: number; running: number }> = [];
  for (let i = 0; i < APPROVALS; i++) {
    const roomId = rooms[0] as string;
    const requestId = await request(roomId);
    await until(() => watch.plans.has(requestId), 60_000, 'the plan posted');
    await until(async () => (await waitingJobs()) === 1, 30_000, 'the job waiting');
    await sleep(500);
    single.push(await approve(roomId, requestId));
    await until(() => watch.results.has(requestId), 120_000, 'the job done');
  }

  // 3. A job in every room.
  const loadFrom = rss.mark();
  const requests = new Map<string, string>();
  for (const roomId of rooms) requests.set(roomId, await request(roomId));
  await until(
    () => [...requests.values()].every((id) => watch.plans.has(id)),
    10 * 60_000,
    'every plan posted',
  );
  await until(async () => (await waitingJobs()) === ROOMS, 60_000, `${ROOMS} jobs waiting`);
  const loadPeak = rss.peak(loadFrom);
  const settleFrom = rss.mark();
  await sleep(SETTLE_MS);
  const settled = rss.settled(settleFrom);

  // 4. Approvals in random rooms, each with a job waiting in every other room.
  const loaded: Array<{ actedOn: number; running: number }> = [];
  const shuffled = [...rooms].sort(() => Math.random() - 0.5).slice(0, APPROVALS);
  for (const roomId of shuffled) {
    const requestId = requests.get(roomId) as string;
    await sleep(500);
    loaded.push(await approve(roomId, requestId));
    await until(() => watch.results.has(requestId), 120_000, 'the job done');
  }
  const runPeak = rss.peak(idleFrom);
  rss.stop();

  const p50 = (xs: Array<{ actedOn: number; running: number }>, k: 'actedOn' | 'running') =>
    percentile(
      xs.map((x) => x[k]),
      50,
    );
  const list = (xs: Array<{ actedOn: number; running: number }>, k: 'actedOn' | 'running') =>
    xs.map((x) => x[k].toFixed(0)).join(', ');
  console.log(`clawgate gateway, one account in ${ROOMS} rooms, real Synapse`);
  console.log(`gateway RSS idle in ${ROOMS} rooms (baseline)   ${mib(idle)}`);
  console.log(`gateway RSS while a job was asked in each  peak ${mib(loadPeak)}`);
  console.log(
    `gateway RSS with ${ROOMS} jobs waiting, settled  ${mib(settled)}; +${mib(settled - idle)} over idle, ${(settled / idle).toFixed(2)}x (peak from idle on ${mib(runPeak)})`,
  );
  console.log(
    `!approve -> ✅ (acted on), 1 waiting          p50 ${ms(p50(single, 'actedOn'))} (n=${single.length}: ${list(single, 'actedOn')})`,
  );
  console.log(
    `!approve -> "running" edit, 1 waiting        p50 ${ms(p50(single, 'running'))} (${list(single, 'running')})`,
  );
  console.log(
    `!approve -> ✅ (acted on), ${ROOMS} waiting        p50 ${ms(p50(loaded, 'actedOn'))} (n=${loaded.length}: ${list(loaded, 'actedOn')}); ${(p50(loaded, 'actedOn') / p50(single, 'actedOn')).toFixed(2)}x`,
  );
  console.log(
    `!approve -> "running" edit, ${ROOMS} waiting      p50 ${ms(p50(loaded, 'running'))} (${list(loaded, 'running')}); ${(p50(loaded, 'running') / p50(single, 'running')).toFixed(2)}x`,
  );
  console.log('(latencies by Synapse timestamps: the command event to the bot event)');
} finally {
  for (const h of humans) h.stopClient();
  for (const part of parts.reverse()) await part.stop();
  await Promise.all([temporalServer.stop(), synapse.stop()]);
  rmSync(dir, { recursive: true, force: true });
}
process.exit(0);
