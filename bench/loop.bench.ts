// The agent loop's cost per turn on a real Temporal dev server, in one run:
//  - real agent jobs (policy, planning and turns through the real proxy and an instant scripted
//    model, tokens, each job's own workspace cloned from the demo repository, the bubblewrap
//    sandbox, sealed bundles), approved once they wait; per execution turn: from the first model
//    turn scheduled after the approval to the job's completion, over the turns;
//  - a bare workflow doing per turn only the loop's two activities (a model turn, then the
//    tool call it asked for) with the inputs a job passes, against the same activities, proxy,
//    model and sandbox (goal: the loop at most 1.5x of it).
// Both are timed from the workflow histories' event times, and take turns on workers of their
// own. The Matrix I/O activities answer without a homeserver, since this measures the workflow,
// not Synapse.
import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { dataConverterFor, FAILURE_CONVERTER_PATH } from '../src/temporal/codec.ts';
import { ensurePayloadKeyring } from '../src/keys/payload-keyring.ts';
import { Client, Connection, type WorkflowHandle } from '@temporalio/client';
import { bundleWorkflowCode, NativeConnection, Runtime, Worker } from '@temporalio/worker';
import { createJobActivities } from '../src/activities/job-activities.ts';
import { agentPrompt } from '../src/agent/protocol.ts';
import { parseConfig } from '../src/config/config.ts';
import { startTemporalDevServer } from '../src/devstack/temporal.ts';
import { toolPaths } from '../src/devstack/tools.ts';
import { generateKeyring, KEY_PURPOSES, loadSigner, publicJwks } from '../src/keys/keyring.ts';
import { FilePolicyRegistry, signWpc } from '../src/policy/registry.ts';
import { parseWpc } from '../src/policy/wpc.ts';
import { parseProxyConfig } from '../src/proxy/config.ts';
import { scriptedModel } from '../src/proxy/demo-model.ts';
import { startDemoUpstream } from '../src/proxy/demo-upstream.ts';
import { ReceiptStore } from '../src/proxy/receipt-store.ts';
import { startProxy } from '../src/proxy/server.ts';
import { cstVerifier, registryPolicySource } from '../src/proxy/token-check.ts';
import { bubblewrapSandbox } from '../src/sandbox/bubblewrap.ts';
import { approvalSignal, statusQuery, type JobRequest } from '../src/temporal/job-contract.ts';
import { mintCapabilityToken } from '../src/tokens/cst.ts';
import { FileRevocationStore } from '../src/tokens/revocations.ts';
import type { JobResult } from '../src/workflows/job.ts';
import { ensureDemoRepository, jobWorkspacePath } from '../src/workspace/workspaces.ts';
import type { BareAgentLoopInput, BareAgentLoopResult } from './bench-workflows.ts';

/** Execution turns with a tool call; one more turn answers. */
const TURNS = Number(process.env['BENCH_LOOP_TURNS'] ?? 20);
/** Timed runs of each kind, one after another. */
const JOBS = Number(process.env['BENCH_LOOP_JOBS'] ?? 3);
/** Untimed runs of each kind first, so neither part pays for a cold process alone. */
const WARMUP = Number(process.env['BENCH_LOOP_WARMUP'] ?? 1);
const ROOM = '!bench:localhost';
const MODEL = 'demo-echo';
const TOOLS = ['read', 'search'];

type History = Awaited<ReturnType<WorkflowHandle['fetchHistory']>>;
type HistoryEvent = NonNullable<History['events']>[number];

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
const percentile = (xs: number[], p: number): number =>
  [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor((p / 100) * xs.length))] ?? NaN;
const mean = (xs: number[]): number => xs.reduce((a, b) => a + b, 0) / xs.length;
const ms = (x: number): string => `${x.toFixed(2)} ms`;

/** An event's time in ms since the epoch. */
function eventMs(event: HistoryEvent): number {
  const t = event.eventTime;
  if (!t) throw new Error(`event ${String(event.eventId)} has no time`);
  return Number(String(t.seconds ?? 0)) * 1000 + (t.nanos ?? 0) / 1e6;
}

/** Every run's events of a workflow, first run first (an agent job may continue as new). */
async function historyOf(client: Client, workflowId: string, firstRunId: string): Promise<HistoryEvent[][]> {
  const runs: HistoryEvent[][] = [];
  let runId: string | null | undefined = firstRunId;
  while (runId) {
    const history: History = await client.workflow.getHandle(workflowId, runId).fetchHistory();
    const events: HistoryEvent[] = history.events ?? [];
    runs.push(events);
    runId = events.at(-1)?.workflowExecutionContinuedAsNewEventAttributes?.newExecutionRunId;
  }
  return runs;
}

/** One activity of a history: when it was scheduled, started and completed (ms since the epoch). */
interface ActivitySpan {
  name: string;
  scheduled: number;
  started: number;
  completed: number;
}

interface Timed {
  /** From the first model turn scheduled (after the approval) to the workflow's completion. */
  toEnd: number;
  /** From the same start to the completion of the last model turn. */
  toLastTurn: number;
  /** The activities from that start on, in the order they were scheduled. */
  spans: ActivitySpan[];
  turns: number;
  events: number;
  runs: number;
}

/**
 * The execution phase of a workflow's history: from the first `modelTurn` scheduled after the
 * first event `startAfter` picks (the approval; the start when absent) to the completion.
 */
function executionPhase(runs: HistoryEvent[][], startAfter?: (e: HistoryEvent) => boolean): Timed {
  let started = startAfter === undefined;
  let first: number | null = null;
  const spans: ActivitySpan[] = [];
  for (const events of runs) {
    // Event ids are per run: activities' other events are matched within each.
    const byScheduledId = new Map<string, ActivitySpan>();
    for (const e of events) {
      if (!started) {
        started = startAfter?.(e) ?? true;
        continue;
      }
      const name = e.activityTaskScheduledEventAttributes?.activityType?.name;
      if (name === 'modelTurn') first ??= eventMs(e);
      if (name && first !== null) {
        const span = { name, scheduled: eventMs(e), started: NaN, completed: NaN };
        spans.push(span);
        byScheduledId.set(String(e.eventId), span);
      }
      const start = e.activityTaskStartedEventAttributes;
      const startedSpan = start ? byScheduledId.get(String(start.scheduledEventId)) : undefined;
      if (startedSpan) startedSpan.started = eventMs(e);
      const done = e.activityTaskCompletedEventAttributes;
      const doneSpan = done ? byScheduledId.get(String(done.scheduledEventId)) : undefined;
      if (doneSpan) doneSpan.completed = eventMs(e);
    }
  }
  const completed = runs.at(-1)?.find((e) => e.workflowExecutionCompletedEventAttributes);
  const lastTurn = spans.findLast((s) => s.name === 'modelTurn');
  if (first === null || !lastTurn || Number.isNaN(lastTurn.completed) || !completed) {
    throw new Error('the history has no completed execution phase');
  }
  return {
    toEnd: eventMs(completed) - first,
    toLastTurn: lastTurn.completed - first,
    spans,
    turns: spans.filter((s) => s.name === 'modelTurn').length,
    events: runs.reduce((n, events) => n + events.length, 0),
    runs: runs.length,
  };
}

const approvalSignalled = (e: HistoryEvent): boolean =>
  e.workflowExecutionSignaledEventAttributes?.signalName === approvalSignal.name;

const dir = mkdtempSync(join(tmpdir(), 'clawgate-bench-loop-'));
const temporalServer = await startTemporalDevServer({ cliPath: toolPaths().temporal, dir });
try {
  const keys = join(dir, 'keys');
  for (const purpose of KEY_PURPOSES) await generateKeyring(keys, purpose);
  ensurePayloadKeyring(keys);
  const policy = parseWpc({
    wpc_version: '1',
    channel: 'matrix',
    matrix: {
      rooms_allowlist: [ROOM],
      requesters_allowlist: ['@requester:localhost'],
      approval: { required: true, approver_user_ids_allowlist: ['@approver:localhost'] },
    },
    execution: {
      sandbox: { mode: 'all', workspace_access: 'ro' },
      tools: { allow: TOOLS },
      mode: 'agent',
      agent: { model_turns: TURNS + 1, tool_calls: TURNS, model_tokens: 100_000_000 },
    },
    tokens: { cst: { job_scoped: true } },
    model_access: { route_via: 'clawgate-proxy', receipts: 'required', allowed_models: [MODEL] },
  });
  const registry = new FilePolicyRegistry(join(dir, 'registry'));
  const signed = signWpc(policy, loadSigner(keys, 'policy'));
  await registry.register(signed, publicJwks(keys, ['policy']));
  registry.activate('matrix', signed.hash);
  const revocations = new FileRevocationStore(join(dir, 'revocations.log'));
  // An instant model: it plans at once, then searches TURNS times, then answers.
  const upstream = await startDemoUpstream({
    reply: scriptedModel({
      planning: [{ auto: true }],
      execution: [
        ...Array.from({ length: TURNS }, () => ({
          call: { name: 'search', arguments: { query: 'TODO' } },
        })),
        { answer: 'done' },
      ],
    }),
  });
  const proxyConfig = parseProxyConfig({
    listen: { host: '127.0.0.1', port: 0 },
    upstreams: [{ name: 'demo', baseUrl: `${upstream.url}/v1`, models: [MODEL] }],
    receiptsPath: join(dir, 'receipts.log'),
  });
  const proxy = await startProxy({
    config: proxyConfig,
    store: await ReceiptStore.open(proxyConfig.receiptsPath),
    receiptKey: loadSigner(keys, 'receipt'),
    verifyToken: cstVerifier({
      jwks: publicJwks(keys, ['token']),
      revocations,
      policies: registryPolicySource(registry, 'matrix'),
    }),
  });

  const source = await ensureDemoRepository(join(dir, 'source'));
  const workspaceRoot = join(dir, 'workspaces');
  const activities = {
    ...createJobActivities({
      registry,
      keysDir: keys,
      revocations,
      proxyUrl: proxy.url,
      planningModel: MODEL,
      sandbox: bubblewrapSandbox(toolPaths().bwrap),
      workspaces: { root: workspaceRoot, source: () => Promise.resolve(source) },
      workspaceFor: (job) => jobWorkspacePath(workspaceRoot, job.workflowId),
      bundleDir: join(dir, 'bundles'),
    }),
    // Matrix I/O without a homeserver: this bench measures the workflow.
    postToThread: () => Promise.resolve({ eventId: '$x', originServerTs: Date.now() }),
    editMessage: () => Promise.resolve({ eventId: '$x', originServerTs: Date.now() }),
    react: () => Promise.resolve({ eventId: '$x', originServerTs: Date.now() }),
  };
  const connection = await Connection.connect({ address: temporalServer.address });
  // Payloads encrypted, as clawgate's own clients and workers do.
  const dataConverter = dataConverterFor(join(dir, 'keys'));
  const client = new Client({ connection, dataConverter });
  const workerConnection = await NativeConnection.connect({ address: temporalServer.address });
  const workflowBundle = await bundleWorkflowCode({
    workflowsPath: fileURLToPath(new URL('./bench-workflows.ts', import.meta.url)),
    failureConverterPath: FAILURE_CONVERTER_PATH,
    logger: {
      log: () => {},
      trace: () => {},
      debug: () => {},
      info: () => {},
      warn: () => {},
      error: () => {},
    },
  });
  // The worker as `clawgate worker` runs it: at most the configured number of workflows cached.
  const maxCachedWorkflows = parseConfig({}).worker.maxCachedWorkflows;
  /** A worker of its own on a fresh task queue; the function returned stops it. */
  const startWorker = async (taskQueue: string): Promise<() => Promise<void>> => {
    const worker = await Worker.create({
      connection: workerConnection,
      dataConverter,
      taskQueue,
      workflowBundle,
      activities,
      maxCachedWorkflows,
    });
    const running = worker.run();
    return async () => {
      worker.shutdown();
      await running;
    };
  };

  // 1. The loop: whole agent jobs, approved once their plan waits.
  const loopQueue = `bench-loop-${randomUUID()}`;
  let n = 0;
  // A tool call's outcome of each kind, as the loop shows it (every call must exit 0).
  let loopOutcome = '';
  let bareOutcome = '';
  const runJob = async (workflowId: string): Promise<Timed> => {
    n += 1;
    const request: JobRequest = {
      roomId: ROOM,
      requester: '@requester:localhost',
      eventId: `$req${n}`,
      text: 'search',
      channel: 'matrix',
      matrixTaskQueue: loopQueue,
    };
    const handle = await client.workflow.start('jobWorkflow', {
      taskQueue: loopQueue,
      workflowId,
      args: [request],
    });
    for (;;) {
      const { status } = await handle.query(statusQuery);
      if (status === 'awaiting_approval') break;
      if (status !== 'planning') throw new Error(`job ${workflowId} is ${status} before its approval`);
      await new Promise((r) => setTimeout(r, 5));
    }
    await handle.signal(approvalSignal, {
      eventId: `$approve-${n}`,
      sender: '@approver:localhost',
      roomId: ROOM,
      decision: 'approve',
      originServerTs: Date.now(),
    });
    const result = (await handle.result()) as JobResult;
    if (result.status !== 'succeeded') {
      throw new Error(`job ${workflowId} ended ${result.status}: ${result.reason}`);
    }
    const view = await client.workflow.getHandle(workflowId).query(statusQuery);
    const calls = (view.turns ?? []).filter((t) => t.phase === 'execution' && t.tool !== null);
    const failed = calls.filter((t) => !t.outcome.startsWith('exit 0,'));
    loopOutcome ||= calls[0]?.outcome ?? '';
    if (calls.length !== TURNS || failed.length > 0) {
      throw new Error(
        `job ${workflowId}: ${calls.length} tool calls, ${failed.length} not exit 0 (${failed[0]?.outcome ?? ''})`,
      );
    }
    const timed = executionPhase(
      await historyOf(client, workflowId, handle.firstExecutionRunId),
      approvalSignalled,
    );
    if (timed.turns !== TURNS + 1) throw new Error(`job ${workflowId}: ${timed.turns} execution turns`);
    return timed;
  };
  // 2. The baseline: the loop's two activities per turn, with the inputs a job passes.
  const bareQueue = `bench-bare-${randomUUID()}`;
  const agent = policy.execution.agent;
  const runBare = async (workflowId: string): Promise<Timed> => {
    const job = { workflowId, runId: randomUUID() };
    const { token } = await mintCapabilityToken(
      {
        purpose: 'execution',
        job,
        roomId: ROOM,
        scope: { tools: TOOLS, models: [MODEL] },
        planHash: 'ab'.repeat(32),
        approval: { approvers: ['@a:localhost'], eventIds: ['$e'] },
        wpcHash: signed.hash,
        budget: { modelCalls: 1000 },
      },
      loadSigner(keys, 'token'),
    );
    const input: BareAgentLoopInput = {
      job,
      token,
      model: MODEL,
      policyHash: signed.hash,
      channel: 'matrix',
      prelude: [
        { role: 'system', content: agentPrompt({ goal: 'x', steps: ['x'], tools: TOOLS }) },
        { role: 'user', content: 'bench' },
      ],
      tools: TOOLS,
      maxTurns: TURNS + 1,
      wallSeconds: policy.execution.sandbox.limits.wall_seconds,
      resultBytes: agent?.tool_result_bytes ?? 16 * 1024,
    };
    const handle = await client.workflow.start('bareAgentLoopWorkflow', {
      taskQueue: bareQueue,
      workflowId,
      args: [input],
    });
    const result = (await handle.result()) as BareAgentLoopResult;
    const failed = result.outcomes.filter((o) => !o.startsWith('exit 0,'));
    bareOutcome ||= result.outcomes[0] ?? '';
    if (result.turns !== TURNS + 1 || result.toolCalls !== TURNS || failed.length > 0) {
      throw new Error(
        `bare ${workflowId}: ${result.turns} turns, ${result.toolCalls} tool calls, ${failed.length} not exit 0 (${failed[0] ?? ''})`,
      );
    }
    return executionPhase(await historyOf(client, workflowId, handle.firstExecutionRunId));
  };
  // The two parts take turns (a loop job, then a bare run), each on its own worker and task
  // queue, so a machine whose load changes during the run weighs on both alike.
  const stopLoopWorker = await startWorker(loopQueue);
  const stopBareWorker = await startWorker(bareQueue);
  const loop: Timed[] = [];
  const bare: Timed[] = [];
  try {
    for (let i = 0; i < WARMUP; i++) {
      await runJob(`loop-warmup-${i}`);
      await runBare(`bare-warmup-${i}`);
    }
    for (let i = 0; i < JOBS; i++) {
      loop.push(await runJob(`loop-${i}`));
      bare.push(await runBare(`bare-${i}`));
    }
  } finally {
    await stopLoopWorker();
    await stopBareWorker();
  }

  // 3. Figures.
  const perTurn = (runs: Timed[], key: 'toEnd' | 'toLastTurn') => runs.map((t) => t[key] / t.turns);
  const line = (what: string, xs: number[]) => `${what}: mean ${ms(mean(xs))}, p50 ${ms(percentile(xs, 50))}`;
  const loopTurn = perTurn(loop, 'toEnd');
  const bareTurn = perTurn(bare, 'toEnd');
  console.log(
    `agent loop, ${JOBS} jobs (after ${WARMUP} untimed), taking turns with as many bare runs, of ${TURNS + 1} execution turns (${TURNS} with a search call, then the answer), per turn from the first model turn after the approval to completion`,
  );
  console.log(`  ${line('loop (whole job)', loopTurn)}`);
  console.log(`  ${line('bare (modelTurn + runToolCall only)', bareTurn)}`);
  console.log(
    `  ratio loop/bare: mean ${(mean(loopTurn) / mean(bareTurn)).toFixed(2)}x, p50 ${(percentile(loopTurn, 50) / percentile(bareTurn, 50)).toFixed(2)}x (goal: at most 1.5x)`,
  );
  const loopTurns = perTurn(loop, 'toLastTurn');
  const bareTurns = perTurn(bare, 'toLastTurn');
  console.log(
    `  to the last model turn's completion (without sealing and reporting): loop mean ${ms(mean(loopTurns))}, p50 ${ms(percentile(loopTurns, 50))}; bare mean ${ms(mean(bareTurns))}, p50 ${ms(percentile(bareTurns, 50))}; ratio mean ${(mean(loopTurns) / mean(bareTurns)).toFixed(2)}x`,
  );
  /** Per execution turn: time queued (scheduled to started) and running (started to completed). */
  const split = (runs: Timed[]): string => {
    const turns = runs.reduce((n, t) => n + t.turns, 0);
    const inKind = (name: string) => {
      const spans = runs.flatMap((t) => t.spans.filter((s) => s.name === name));
      const queued = spans.reduce((n, s) => n + (s.started - s.scheduled), 0) / turns;
      const running = spans.reduce((n, s) => n + (s.completed - s.started), 0) / turns;
      return { queued, running, text: `${name} ${ms(queued)} queued + ${ms(running)} running` };
    };
    const model = inKind('modelTurn');
    const tool = inKind('runToolCall');
    const total = runs.reduce((n, t) => n + t.toLastTurn, 0) / turns;
    const rest = total - model.queued - model.running - tool.queued - tool.running;
    return `${model.text}, ${tool.text}, between activities ${ms(rest)}`;
  };
  console.log(`  per turn up to the last model turn, loop: ${split(loop)}`);
  console.log(`  per turn up to the last model turn, bare: ${split(bare)}`);
  const tail = (t: Timed): string => {
    const lastTurnDone = t.spans.findLast((x) => x.name === 'modelTurn')?.completed ?? Infinity;
    const spans = t.spans.filter((s) => s.scheduled >= lastTurnDone);
    const list = spans.map((s) => `${s.name} ${(s.completed - s.scheduled).toFixed(0)}`).join(', ');
    return `${(t.toEnd - t.toLastTurn).toFixed(0)} ms (${list || 'no activity'}; ms scheduled to completed)`;
  };
  if (loop[0] && bare[0]) {
    console.log(
      `  after the last model turn, one loop job: ${tail(loop[0])}; one bare run: ${tail(bare[0])}`,
    );
  }
  console.log(`  each search call: loop "${loopOutcome}", bare "${bareOutcome}"`);
  const [oneLoop, oneBare] = [loop[0], bare[0]];
  if (oneLoop && oneBare) {
    console.log(
      `history length: one loop job ${oneLoop.events} events (${oneLoop.runs} run${oneLoop.runs === 1 ? '' : 's'}, planning and approval included), one bare run ${oneBare.events} events`,
    );
  }
  await proxy.close();
  await upstream.close();
  await connection.close();
  await workerConnection.close();
} finally {
  await temporalServer.stop();
  rmSync(dir, { recursive: true, force: true });
}
