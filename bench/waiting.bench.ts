// Many jobs waiting for approval at once, on the worker users run (`clawgate worker` from a
// configuration, its own process) against a real Temporal dev server, in one run:
//  - the worker's RSS (VmRSS, sampled every 100 ms): idle, its peak while 1,000 jobs are
//    planned, and where it settles with them all waiting (goal: at most 300 MiB in all);
//  - `!approve` to acted on (the ✅ reaction asked for) and to execution started (the status
//    line's "running" edit), with one job waiting (the baseline), then with 1,000 waiting: for
//    the job that waited longest (out of the worker's cache, so its history is replayed) and
//    for random ones.
// The jobs are real: the demo's policy (the model loop, read-only tools), the job's workspace
// cloned, its plan drafted through `clawgate proxy` (its own process) and the demo model. Their
// Matrix I/O activities are answered at once by this process on the jobs' Matrix task queue, as
// a gateway would, so the worker is measured, not Synapse (bench/gateway-rooms.bench.ts has the
// gateway).
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { dataConverterFor } from '../src/temporal/codec.ts';
import { ensurePayloadKeyring } from '../src/keys/payload-keyring.ts';
import { Client, Connection } from '@temporalio/client';
import { WorkflowIdReusePolicy } from '@temporalio/common';
import { NativeConnection, Runtime, Worker } from '@temporalio/worker';
import { parseConfig, statePaths } from '../src/config/config.ts';
import { freeLoopbackPort } from '../src/devstack/net.ts';
import { startTemporalDevServer } from '../src/devstack/temporal.ts';
import { toolPaths } from '../src/devstack/tools.ts';
import { jobWorkflowId, shortJobId } from '../src/ingress/job-ids.ts';
import { DEMO_MODEL, ensureKeys } from '../src/stack/components.ts';
import { FilePolicyRegistry, signWpc } from '../src/policy/registry.ts';
import { parseWpc } from '../src/policy/wpc.ts';
import { loadSigner, publicJwks } from '../src/keys/keyring.ts';
import { approvalSignal, type JobRequest } from '../src/temporal/job-contract.ts';
import { JOB_ID, JOB_REQUESTER, JOB_ROOM, JOB_STATUS } from '../src/temporal/search-attributes.ts';
import type { ServerProcess } from '../src/devstack/process.ts';
import { mib, RssSampler, sleep, startPart, writeConfig } from './clawgate-parts.ts';

const WAITING = Number(process.env['BENCH_WAITING_JOBS'] ?? 1000);
/** Approvals measured with one job waiting (the baseline), and random ones with WAITING waiting. */
const APPROVALS = Number(process.env['BENCH_WAITING_APPROVALS'] ?? 5);
/**
 * The most jobs being planned at once while the worker is loaded (requests keep coming, as a
 * busy gateway hands them over): the next is started when one has posted its plan.
 */
const IN_FLIGHT = Number(process.env['BENCH_WAITING_IN_FLIGHT'] ?? 50);
/**
 * How long the worker is left alone with every job waiting before its settled RSS is read (V8
 * gives back what a burst of work grew only once a thread has been idle for a while).
 */
const SETTLE_MS = Math.max(20_000, Number(process.env['BENCH_WAITING_SETTLE_MS'] ?? 240_000));
/** Unset: the configuration's default, what users run. */
const MAX_CACHED = process.env['BENCH_MAX_CACHED_WORKFLOWS'];
/** Node.js options of the worker process alone (NODE_OPTIONS), to weigh a V8 flag; unset: none. */
const WORKER_NODE_OPTIONS = process.env['BENCH_WORKER_NODE_OPTIONS'];
const ROOM = '!bench:localhost';
const REQUESTER = '@requester:localhost';
const APPROVER = '@approver:localhost';
const MATRIX_QUEUE = 'bench-matrix';
const LIMIT_RSS = 300 * 1024 * 1024;

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
const percentile = (xs: readonly number[], p: number): number =>
  [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor((p / 100) * xs.length))] ?? NaN;
const ms = (x: number) => `${x.toFixed(0)} ms`;

/** When each job's Matrix I/O asked for what: its plan posted, ✅ on its approval, "running". */
interface Seen {
  planPosted?: number;
  reacted?: number;
  running?: number;
}
const seen = new Map<string, Seen>();
const seenOf = (txnKey: string): Seen => {
  const workflowId = txnKey.slice(0, txnKey.indexOf('/'));
  let s = seen.get(workflowId);
  if (!s) seen.set(workflowId, (s = {}));
  return s;
};
let posted = 0;
const matrixActivities = {
  postToThread(input: { txnKey: string }) {
    if (input.txnKey.endsWith('/plan')) seenOf(input.txnKey).planPosted ??= performance.now();
    return Promise.resolve({ eventId: `$posted-${++posted}`, originServerTs: Date.now() });
  },
  react(input: { key: string; txnKey: string }) {
    if (input.key === '✅') seenOf(input.txnKey).reacted ??= performance.now();
    return Promise.resolve({ eventId: `$reaction-${++posted}`, originServerTs: Date.now() });
  },
  editMessage(input: { body: string; txnKey: string }) {
    if (input.body.includes('Status: approved; running')) seenOf(input.txnKey).running ??= performance.now();
    return Promise.resolve({ eventId: `$edit-${++posted}`, originServerTs: Date.now() });
  },
};

async function until(check: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!check()) {
    if (performance.now() > deadline) throw new Error(`${what}: not within ${timeoutMs / 1000} s`);
    await sleep(20);
  }
}

const dir = mkdtempSync(join(tmpdir(), 'clawgate-bench-waiting-'));
const temporalServer = await startTemporalDevServer({ cliPath: toolPaths().temporal, dir });
const parts: ServerProcess[] = [];
let matrixWorker: Worker | undefined;
let matrixRun: Promise<void> | undefined;
try {
  // The configuration: the dev server above, the demo upstream behind `clawgate proxy`, and
  // everything else as it comes (the worker's defaults are what is measured).
  const [proxyPort, workerHealthPort] = [await freeLoopbackPort(), await freeLoopbackPort()];
  const configPath = writeConfig(dir, {
    stateDir: join(dir, 'state'),
    temporal: { address: temporalServer.address, namespace: temporalServer.namespace },
    proxy: { listen: { host: '127.0.0.1', port: proxyPort } },
    worker: {
      health: { host: '127.0.0.1', port: workerHealthPort },
      ...(MAX_CACHED ? { maxCachedWorkflows: Number(MAX_CACHED) } : {}),
    },
    gateway: { health: { host: '127.0.0.1', port: 0 } },
    evidence: { listen: { host: '127.0.0.1', port: 0 } },
    log: { level: 'warn' },
  });
  const config = parseConfig({
    stateDir: join(dir, 'state'),
    ...(MAX_CACHED ? { worker: { maxCachedWorkflows: Number(MAX_CACHED) } } : {}),
  });
  mkdirSync(config.stateDir, { recursive: true, mode: 0o700 });
  await ensureKeys(config);
  const paths = statePaths(config);
  // The parts' payload keyring, before any starts: this process's client and worker use it too.
  ensurePayloadKeyring(paths.payloadKeys);
  const registry = new FilePolicyRegistry(paths.registry);
  const signed = signWpc(
    parseWpc({
      wpc_version: '1',
      channel: 'matrix',
      matrix: {
        rooms_allowlist: [ROOM],
        requesters_allowlist: [REQUESTER],
        approval: { required: true, approver_user_ids_allowlist: [APPROVER] },
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
    await startPart({
      part: 'proxy',
      dir,
      configPath,
      healthUrl: `http://127.0.0.1:${proxyPort}/healthz`,
    }),
  );
  const worker = await startPart({
    part: 'worker',
    dir,
    configPath,
    healthUrl: `http://127.0.0.1:${workerHealthPort}/health`,
    ...(WORKER_NODE_OPTIONS ? { env: { NODE_OPTIONS: WORKER_NODE_OPTIONS } } : {}),
  });
  parts.push(worker);
  const rss = new RssSampler(worker.pid);

  const connection = await Connection.connect({ address: temporalServer.address });
  const client = new Client({
    connection,
    namespace: temporalServer.namespace,
    dataConverter: dataConverterFor(paths.payloadKeys),
  });
  matrixWorker = await Worker.create({
    connection: await NativeConnection.connect({ address: temporalServer.address }),
    namespace: temporalServer.namespace,
    taskQueue: MATRIX_QUEUE,
    dataConverter: dataConverterFor(paths.payloadKeys),
    activities: matrixActivities,
  });
  matrixRun = matrixWorker.run();

  let n = 0;
  /** Starts a job as the gateway does for a `!claw` in the room; its workflow id. */
  const startJob = async (): Promise<string> => {
    const eventId = `$request-${++n}`;
    const workflowId = jobWorkflowId(ROOM, eventId);
    const request: JobRequest = {
      roomId: ROOM,
      requester: REQUESTER,
      eventId,
      text: 'summarise the readme',
      channel: 'matrix',
      matrixTaskQueue: MATRIX_QUEUE,
      jobId: shortJobId(workflowId),
      originServerTs: Date.now(),
    };
    await client.workflow.start('jobWorkflow', {
      taskQueue: config.temporal.taskQueue,
      workflowId,
      args: [request],
      workflowIdReusePolicy: WorkflowIdReusePolicy.REJECT_DUPLICATE,
      typedSearchAttributes: [
        { key: JOB_ID, value: request.jobId as string },
        { key: JOB_ROOM, value: ROOM },
        { key: JOB_REQUESTER, value: REQUESTER },
        { key: JOB_STATUS, value: 'planning' },
      ],
    });
    return workflowId;
  };
  const waiting = async (): Promise<number> =>
    (await client.workflow.count(`ClawgateStatus = "awaiting_approval"`)).count;
  const untilWaiting = async (count: number, timeoutMs: number): Promise<void> => {
    const deadline = performance.now() + timeoutMs;
    while ((await waiting()) < count) {
      if (performance.now() > deadline) {
        throw new Error(`only ${await waiting()} of ${count} jobs reached awaiting_approval in time`);
      }
      await sleep(250);
    }
  };
  const untilStatus = async (workflowId: string, status: string): Promise<void> => {
    const handle = client.workflow.getHandle(workflowId);
    const deadline = performance.now() + 60_000;
    while ((await handle.describe()).typedSearchAttributes.get(JOB_STATUS) !== status) {
      if (performance.now() > deadline) throw new Error(`${workflowId}: not ${status} within 60 s`);
      await sleep(20);
    }
  };
  /** Sends `!approve` (as the gateway signals it) and waits for ✅ and "running"; both latencies. */
  const approve = async (workflowId: string): Promise<{ actedOn: number; running: number }> => {
    const s = seen.get(workflowId) ?? {};
    const sent = performance.now();
    await client.workflow.getHandle(workflowId).signal(approvalSignal, {
      eventId: `$approve-${workflowId.slice(-12)}`,
      sender: APPROVER,
      roomId: ROOM,
      decision: 'approve',
      jobId: shortJobId(workflowId),
      originServerTs: Date.now(),
    });
    const deadline = sent + 60_000;
    while (s.reacted === undefined || s.running === undefined) {
      if (performance.now() > deadline) throw new Error(`${workflowId}: approval not acted on in 60 s`);
      await sleep(2);
      Object.assign(s, seen.get(workflowId));
    }
    return { actedOn: s.reacted - sent, running: s.running - sent };
  };
  const jobDone = (workflowId: string) => client.workflow.getHandle(workflowId).result();

  // 1. Idle.
  await sleep(3000);
  const idleFrom = rss.mark();
  await sleep(5000);
  const idle = rss.settled(idleFrom);

  // 2. The baseline: one job waiting at a time, approved once it waits.
  const single: Array<{ actedOn: number; running: number }> = [];
  for (let i = 0; i < APPROVALS; i++) {
    const workflowId = await startJob();
    await untilStatus(workflowId, 'awaiting_approval');
    await sleep(500);
    single.push(await approve(workflowId));
    await jobDone(workflowId);
  }
  const afterSingles = rss.mark();
  await sleep(3000);
  const baselineRss = rss.settled(afterSingles);

  // 3. WAITING jobs started (at most IN_FLIGHT being planned at once), all planned and waiting.
  const loadFrom = rss.mark();
  const loadStart = performance.now();
  const ids: string[] = [];
  let toStart = WAITING;
  await Promise.all(
    Array.from({ length: IN_FLIGHT }, async () => {
      while (toStart > 0) {
        toStart -= 1;
        const workflowId = await startJob();
        ids.push(workflowId);
        await until(
          () => seen.get(workflowId)?.planPosted !== undefined,
          5 * 60_000,
          `${workflowId} planned`,
        );
      }
    }),
  );
  await untilWaiting(WAITING, 30 * 60_000);
  const loadSeconds = (performance.now() - loadStart) / 1000;
  const loadPeak = rss.peak(loadFrom);
  // Left alone: where RSS is 15 s on, and over the last 10 s of the settling time.
  const settleFrom = rss.mark();
  await sleep(15_000);
  const after15s = rss.settled(performance.now() - 5_000);
  await sleep(Math.max(0, SETTLE_MS - 15_000));
  const settled = rss.settled(performance.now() - 10_000);
  const settledPeak = rss.peak(settleFrom);

  // 4. Approvals with WAITING waiting: the job that waited longest, then random ones.
  const byPlan = [...ids].sort((a, b) => (seen.get(a)?.planPosted ?? 0) - (seen.get(b)?.planPosted ?? 0));
  const oldest = byPlan[0] as string;
  const loaded: Array<{ actedOn: number; running: number }> = [];
  const approved = new Set<string>([oldest]);
  const oldestApproval = await approve(oldest);
  await jobDone(oldest);
  for (let i = 0; i < APPROVALS; i++) {
    let pick: string;
    do pick = ids[Math.floor(Math.random() * ids.length)] as string;
    while (approved.has(pick));
    approved.add(pick);
    await sleep(500);
    loaded.push(await approve(pick));
    await jobDone(pick);
  }
  const approvalsPeak = rss.peak(loadFrom);
  rss.stop();

  const p50 = (xs: Array<{ actedOn: number; running: number }>, k: 'actedOn' | 'running') =>
    percentile(
      xs.map((x) => x[k]),
      50,
    );
  const maxCached = config.worker.maxCachedWorkflows;
  console.log(
    `clawgate worker (maxCachedWorkflows ${maxCached}${MAX_CACHED ? ', from BENCH_MAX_CACHED_WORKFLOWS' : ', the default'}), ${WAITING} jobs`,
  );
  console.log(`worker RSS idle (baseline)                 ${mib(idle)}`);
  console.log(`worker RSS after ${APPROVALS} single jobs              ${mib(baselineRss)}`);
  console.log(
    `worker RSS while ${WAITING} jobs were planned      peak ${mib(loadPeak)} (${loadSeconds.toFixed(0)} s to all waiting)`,
  );
  console.log(
    `worker RSS with ${WAITING} waiting, 15 s on     ${mib(after15s)}; settled after ${SETTLE_MS / 1000} s: ${mib(settled)} (+${mib(settled - idle)} over idle, ${(settled / idle).toFixed(2)}x; peak while left alone ${mib(settledPeak)})`,
  );
  console.log(`worker RSS peak over the whole run          ${mib(approvalsPeak)}`);
  console.log(
    `!approve -> acted on (✅), 1 waiting        p50 ${ms(p50(single, 'actedOn'))} (n=${single.length}: ${single.map((x) => x.actedOn.toFixed(0)).join(', ')})`,
  );
  console.log(
    `!approve -> execution started, 1 waiting   p50 ${ms(p50(single, 'running'))} (${single.map((x) => x.running.toFixed(0)).join(', ')})`,
  );
  console.log(
    `!approve -> acted on (✅), ${WAITING} waiting     p50 ${ms(p50(loaded, 'actedOn'))} (n=${loaded.length} random: ${loaded.map((x) => x.actedOn.toFixed(0)).join(', ')}); ${(p50(loaded, 'actedOn') / p50(single, 'actedOn')).toFixed(2)}x`,
  );
  console.log(
    `!approve -> execution started, ${WAITING} waiting p50 ${ms(p50(loaded, 'running'))} (${loaded.map((x) => x.running.toFixed(0)).join(', ')}); ${(p50(loaded, 'running') / p50(single, 'running')).toFixed(2)}x`,
  );
  console.log(
    `!approve of the job waiting longest (${maxCached < WAITING ? 'evicted, its history replayed' : 'cached'}): acted on ${ms(oldestApproval.actedOn)}, execution started ${ms(oldestApproval.running)}`,
  );
  const verdict = (bytes: number) => (bytes <= LIMIT_RSS ? 'met' : 'NOT met');
  console.log(
    `goal, RSS at most ${mib(LIMIT_RSS)} in all: settled with ${WAITING} waiting ${verdict(settled)} (${mib(settled)}); at every moment ${verdict(approvalsPeak)} (peak ${mib(approvalsPeak)})`,
  );
  await connection.close();
} finally {
  matrixWorker?.shutdown();
  await matrixRun?.catch(() => {});
  for (const part of parts.reverse()) await part.stop();
  await temporalServer.stop();
  rmSync(dir, { recursive: true, force: true });
}
process.exit(0);
