// Job workflow figures on a real Temporal dev server, in one run:
//  - approve -> first tool start latency (p50, p99);
//  - job throughput against a bare workflow running the same number of no-op activities
//    (goal: at least 50 % of it);
//  - worker RSS with 1,000 jobs waiting for approval.
// The jobs are real (policy, planning through the real proxy and the demo model, tokens, the
// bubblewrap sandbox, sealed bundles); the Matrix I/O activities answer without a homeserver,
// since this measures the workflow, not Synapse.
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { dataConverterFor, FAILURE_CONVERTER_PATH } from '../src/temporal/codec.ts';
import { ensurePayloadKeyring } from '../src/keys/payload-keyring.ts';
import { Client, Connection } from '@temporalio/client';
import { bundleWorkflowCode, NativeConnection, Runtime, Worker } from '@temporalio/worker';
import { createJobActivities } from '../src/activities/job-activities.ts';
import { parseConfig } from '../src/config/config.ts';
import { startTemporalDevServer } from '../src/devstack/temporal.ts';
import { toolPaths } from '../src/devstack/tools.ts';
import { generateKeyring, KEY_PURPOSES, loadSigner, publicJwks } from '../src/keys/keyring.ts';
import { FilePolicyRegistry, signWpc } from '../src/policy/registry.ts';
import { parseWpc } from '../src/policy/wpc.ts';
import { parseProxyConfig } from '../src/proxy/config.ts';
import { startDemoUpstream } from '../src/proxy/demo-upstream.ts';
import { ReceiptStore } from '../src/proxy/receipt-store.ts';
import { startProxy } from '../src/proxy/server.ts';
import { cstVerifier, registryPolicySource } from '../src/proxy/token-check.ts';
import { bubblewrapSandbox } from '../src/sandbox/bubblewrap.ts';
import { approvalSignal, statusQuery, type JobRequest } from '../src/temporal/job-contract.ts';
import { FileRevocationStore } from '../src/tokens/revocations.ts';

const LATENCY_JOBS = Number(process.env['BENCH_LATENCY_JOBS'] ?? 20);
const THROUGHPUT_JOBS = Number(process.env['BENCH_THROUGHPUT_JOBS'] ?? 40);
const WAITING_JOBS = Number(process.env['BENCH_WAITING_JOBS'] ?? 1000);
const ROOM = '!bench:localhost';

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
const mib = (bytes: number): string => `${(bytes / 1024 / 1024).toFixed(0)} MiB`;

const dir = mkdtempSync(join(tmpdir(), 'clawgate-bench-jobs-'));
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
    execution: { sandbox: { mode: 'all', workspace_access: 'ro' }, tools: { allow: ['search'] } },
    tokens: { cst: { job_scoped: true } },
    model_access: { route_via: 'clawgate-proxy', receipts: 'required', allowed_models: ['demo-echo'] },
  });
  const registry = new FilePolicyRegistry(join(dir, 'registry'));
  const signed = signWpc(policy, loadSigner(keys, 'policy'));
  await registry.register(signed, publicJwks(keys, ['policy']));
  registry.activate('matrix', signed.hash);
  const revocations = new FileRevocationStore(join(dir, 'revocations.log'));
  const upstream = await startDemoUpstream({
    answer: () => JSON.stringify({ summary: 'search', steps: [{ tool: 'search', args: { query: 'TODO' } }] }),
  });
  const proxyConfig = parseProxyConfig({
    listen: { host: '127.0.0.1', port: 0 },
    upstreams: [{ name: 'demo', baseUrl: `${upstream.url}/v1`, models: ['demo-echo'] }],
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

  const firstToolStart = new Map<string, number>();
  const jobActivities = createJobActivities({
    registry,
    keysDir: keys,
    revocations,
    proxyUrl: proxy.url,
    planningModel: 'demo-echo',
    sandbox: bubblewrapSandbox(toolPaths().bwrap),
    workspaceFor: (job) => {
      const ws = join(dir, 'ws', Buffer.from(job.workflowId).toString('base64url'));
      mkdirSync(ws, { recursive: true });
      writeFileSync(join(ws, 'notes.md'), 'TODO: measure\n');
      return ws;
    },
    bundleDir: join(dir, 'bundles'),
  });
  const activities = {
    ...jobActivities,
    runStep: (input: Parameters<typeof jobActivities.runStep>[0]) => {
      if (!firstToolStart.has(input.job.workflowId))
        firstToolStart.set(input.job.workflowId, performance.now());
      return jobActivities.runStep(input);
    },
    // Matrix I/O without a homeserver: this bench measures the workflow.
    postToThread: () => Promise.resolve({ eventId: '$posted', originServerTs: 0 }),
    react: () => Promise.resolve({ eventId: '$reaction', originServerTs: 0 }),
    editMessage: () => Promise.resolve({ eventId: '$edit', originServerTs: 0 }),
    noop: () => Promise.resolve(),
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
  const worker = await Worker.create({
    connection: workerConnection,
    dataConverter,
    taskQueue: 'bench',
    workflowBundle,
    activities,
    maxCachedWorkflows,
  });
  const running = worker.run();

  let n = 0;
  const request = (): JobRequest => {
    n += 1;
    return {
      roomId: ROOM,
      requester: '@requester:localhost',
      eventId: `$req${n}`,
      text: 'search',
      channel: 'matrix',
      matrixTaskQueue: 'bench',
    };
  };
  const approval = (eventId: string) => ({
    eventId: `$approve-${eventId}`,
    sender: '@approver:localhost',
    roomId: ROOM,
    decision: 'approve' as const,
    originServerTs: Date.now(),
  });

  // 1. approve -> first tool start.
  const latencies: number[] = [];
  for (let i = 0; i < LATENCY_JOBS; i++) {
    const input = request();
    const handle = await client.workflow.start('jobWorkflow', {
      taskQueue: 'bench',
      workflowId: `lat-${i}`,
      args: [input],
    });
    while ((await handle.query(statusQuery)).status !== 'awaiting_approval')
      await new Promise((r) => setTimeout(r, 5));
    const sent = performance.now();
    await handle.signal(approvalSignal, approval(input.eventId));
    await handle.result();
    latencies.push((firstToolStart.get(`lat-${i}`) ?? NaN) - sent);
  }
  console.log(
    `approve -> first tool start over ${LATENCY_JOBS} jobs: p50 ${percentile(latencies, 50).toFixed(1)} ms, p99 ${percentile(latencies, 99).toFixed(1)} ms`,
  );

  // 2. throughput: whole jobs (approved at start) against bare workflows with as many no-op activities.
  const sample = await client.workflow.getHandle('lat-0').fetchHistory();
  const activityCount = (sample.events ?? []).filter((e) => e.activityTaskScheduledEventAttributes).length;
  let start = performance.now();
  await Promise.all(
    Array.from({ length: THROUGHPUT_JOBS }, async (_, i) => {
      const input = request();
      const handle = await client.workflow.signalWithStart('jobWorkflow', {
        taskQueue: 'bench',
        workflowId: `tput-${i}`,
        args: [input],
        signal: approvalSignal,
        signalArgs: [approval(input.eventId)],
      });
      await client.workflow.getHandle(handle.workflowId).result();
    }),
  );
  const jobsPerSecond = (THROUGHPUT_JOBS / (performance.now() - start)) * 1000;
  start = performance.now();
  await Promise.all(
    Array.from({ length: THROUGHPUT_JOBS }, (_, i) =>
      client.workflow.execute('bareWorkflow', {
        taskQueue: 'bench',
        workflowId: `bare-${i}`,
        args: [activityCount],
      }),
    ),
  );
  const barePerSecond = (THROUGHPUT_JOBS / (performance.now() - start)) * 1000;
  console.log(
    `throughput, ${THROUGHPUT_JOBS} concurrent: jobs ${jobsPerSecond.toFixed(2)}/s, bare workflows with ${activityCount} no-op activities ${barePerSecond.toFixed(2)}/s, ratio ${((jobsPerSecond / barePerSecond) * 100).toFixed(0)} % (goal >= 50 %)`,
  );

  // 3. RSS with many jobs waiting for approval.
  global.gc?.();
  const before = process.memoryUsage().rss;
  const handles = [];
  for (let i = 0; i < WAITING_JOBS; i++) {
    handles.push(
      await client.workflow.start('jobWorkflow', {
        taskQueue: 'bench',
        workflowId: `wait-${i}`,
        args: [request()],
      }),
    );
  }
  for (const handle of handles) {
    while ((await handle.query(statusQuery)).status !== 'awaiting_approval')
      await new Promise((r) => setTimeout(r, 20));
  }
  global.gc?.();
  const after = process.memoryUsage().rss;
  console.log(
    `worker process RSS: ${mib(before)} before, ${mib(after)} with ${WAITING_JOBS} jobs waiting for approval (+${mib(after - before)}; at most ${maxCachedWorkflows} cached; the process also holds the proxy and demo model)`,
  );
  for (const handle of handles) await handle.terminate('benchmark over');
  worker.shutdown();
  await running;
  await proxy.close();
  await upstream.close();
  await connection.close();
} finally {
  await temporalServer.stop();
  rmSync(dir, { recursive: true, force: true });
}
