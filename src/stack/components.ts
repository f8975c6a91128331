// clawgate's processes, each started from the one configuration: the receipting proxy, the
// worker (job and control workflows, the planning, token, tool and sealing activities) and the
// gateway. `clawgate proxy|worker|gateway` run one each, as the docker-compose services do and
// as `clawgate start` runs them, each a process it supervises (src/stack/start.ts).
import { existsSync } from 'node:fs';
import { createServer as createHttpServer, type Server as HttpServer } from 'node:http';
import { createServer as createNetServer, type Server } from 'node:net';
import { setFlagsFromString } from 'node:v8';
import { join } from 'node:path';
import { Client, Connection } from '@temporalio/client';
import { NativeConnection, Worker } from '@temporalio/worker';
import type { Logger } from 'pino';
import { createJobActivities, PLANNER_PROMPT } from '../activities/job-activities.ts';
import { readControlState } from '../activities/control-state.ts';
import { startControlMirror, type ControlMirror } from '../control/mirror.ts';
import type { ClawgateConfig } from '../config/config.ts';
import { statePaths } from '../config/config.ts';
import { toolPaths } from '../devstack/tools.ts';
import { ClawgateError, ERROR_CODES } from '../errors.ts';
import type { AccountConfig } from '../ingress/config.ts';
import type { Gateway } from '../ingress/gateway.ts';
import { generateKeyring, KEY_PURPOSES, loadSigner, publicJwks } from '../keys/keyring.ts';
import { ensurePayloadKeyring } from '../keys/payload-keyring.ts';
import { FilePolicyRegistry } from '../policy/registry.ts';
import { parseProxyConfig, type UpstreamConfig } from '../proxy/config.ts';
import { startDemoUpstream, type DemoUpstream } from '../proxy/demo-upstream.ts';
import { DEMO_SCRIPT, scriptedModel } from '../proxy/demo-model.ts';
import { AGENT_PROMPT_HEAD, PLANNER_PROMPT_HEAD } from '../agent/protocol.ts';
import { ReceiptStore } from '../proxy/receipt-store.ts';
import { startProxy, type RunningProxy } from '../proxy/server.ts';
import { cstVerifier, registryPolicySource } from '../proxy/token-check.ts';
import { bubblewrapSandbox, dockerSandbox } from '../sandbox/bubblewrap.ts';
import { ensurePrivateDir } from '../storage/files.ts';
import { FileRevocationStore } from '../tokens/revocations.ts';
import { EvidenceStore } from '../evidence/store.ts';
import type { Jwks } from '../evidence/jws.ts';
import { evidenceBaseUrl, startEvidenceServer, type RunningEvidenceServer } from '../evidence/server.ts';
import { ensureDemoRepository, jobWorkspacePath } from '../workspace/workspaces.ts';
import { dataConverterFor, payloadCodecFor } from '../temporal/codec.ts';
import { ensureCodecToken, startCodecServer, type RunningCodecServer } from '../temporal/codec-server.ts';
import { cachedWorkflowBundle } from './workflow-bundle.ts';
import { AWAITING_APPROVAL_QUERY, type WorkerMetrics } from '../metrics/worker.ts';
import { answerMetrics, METRICS_PATH, registerTemporalReachable } from '../metrics/prometheus.ts';
import { TEMPORAL_CHANNEL_ARGS, watchTemporal, type TemporalWatch } from '../temporal/reachability.ts';
import { routeTemporalConnectionWarnings } from './logging.ts';
import { Outage } from './outages.ts';

export const DEMO_MODEL = 'demo-echo';

/** What the demo upstream answers a planning request with: read the readme, find the TODOs. */
export const DEMO_PLAN = {
  summary: 'Read the readme and list its TODOs',
  steps: [
    { tool: 'read', args: { path: 'README.md' } },
    { tool: 'search', args: { query: 'TODO' } },
    { tool: 'model', args: { model: DEMO_MODEL, prompt: 'Summarise the TODOs of the readme in one line.' } },
  ],
};

/** Creates whatever keyring is missing (never replaces one). */
export async function ensureKeys(config: ClawgateConfig): Promise<string[]> {
  const dir = statePaths(config).keys;
  const made: string[] = [];
  for (const purpose of KEY_PURPOSES) {
    if (existsSync(join(dir, purpose, 'keyring.json'))) continue;
    await generateKeyring(dir, purpose);
    made.push(purpose);
  }
  if (ensurePayloadKeyring(statePaths(config).payloadKeys) !== null) made.push('payload');
  return made;
}

/** The data converter of every Temporal client and worker of a configuration: its payload codec. */
export function temporalDataConverter(config: ClawgateConfig) {
  return dataConverterFor(statePaths(config).payloadKeys);
}

/** A client of Temporal, once Temporal has answered (a command that needs it now). */
export async function connectTemporal(config: ClawgateConfig, address: string) {
  const temporal = lazyTemporal(config, address);
  await temporal.connection.ensureConnected();
  return temporal;
}

/** A client of Temporal that connects when first used (nothing is asked of Temporal here). */
export function lazyTemporal(config: ClawgateConfig, address: string) {
  const connection = Connection.lazy({
    address,
    channelArgs: TEMPORAL_CHANNEL_ARGS,
    ...(config.temporal.tls ? { tls: {} } : {}),
  });
  const client = new Client({
    connection,
    namespace: config.temporal.namespace,
    dataConverter: temporalDataConverter(config),
  });
  return { connection, client };
}

/**
 * A connection to Temporal for a long-running part, made once Temporal answers: a worker
 * started while its Temporal is down (restarting, or not up yet) waits for it, instead of exiting
 * with an error, and its health endpoint reads `outage` meanwhile.
 */
export async function onceTemporalAnswers<T>(
  address: string,
  logger: Logger,
  connect: () => Promise<T>,
  // One warning when it does not answer, one line when it does: not one per attempt.
  outage = new Outage({
    service: 'Temporal',
    log: logger.child({ address }),
    impact: 'waiting for it',
  }),
): Promise<T> {
  for (;;) {
    try {
      const connected = await connect();
      outage.answered();
      return connected;
    } catch (error) {
      outage.failed(error);
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  }
}

export interface RunningUpstream {
  upstreams: UpstreamConfig[];
  demo: DemoUpstream | null;
}

/** The configured upstreams, or the local demo upstream (it echoes, and answers plans with DEMO_PLAN). */
export async function modelUpstreams(config: ClawgateConfig): Promise<RunningUpstream> {
  if (config.proxy.upstreams) return { upstreams: config.proxy.upstreams, demo: null };
  const demo = await startDemoModelUpstream();
  return { upstreams: demoUpstreams(demo.url), demo };
}

/** The proxy's upstream list for a demo upstream at `url`. */
function demoUpstreams(url: string): UpstreamConfig[] {
  return [{ name: 'demo', baseUrl: `${url}/v1`, models: [DEMO_MODEL] }];
}

/**
 * The local demo upstream: the scripted demo model (src/proxy/demo-model.ts), which plans, calls
 * tools, reads what they return and answers from it; a fixed-step policy's planner gets DEMO_PLAN.
 */
export function startDemoModelUpstream(opts: { port?: number } = {}): Promise<DemoUpstream> {
  const agent = scriptedModel(DEMO_SCRIPT);
  return startDemoUpstream({
    ...(opts.port !== undefined ? { port: opts.port } : {}),
    reply: (request) => {
      const { messages } = request;
      if (messages.some((m) => m.role === 'system' && m.content === PLANNER_PROMPT)) {
        return { content: JSON.stringify(DEMO_PLAN) };
      }
      const system = messages.find((m) => m.role === 'system')?.content;
      if (
        typeof system === 'string' &&
        (system.startsWith(PLANNER_PROMPT_HEAD) || system.startsWith(AGENT_PROMPT_HEAD))
      ) {
        return agent(request);
      }
      const last = messages.at(-1)?.content;
      return {
        content:
          typeof last === 'string' ? `(demo upstream, not a model) ${last}` : '(demo upstream, not a model)',
      };
    },
  });
}

export async function runProxy(
  config: ClawgateConfig,
  upstreams: UpstreamConfig[],
  logger: Logger,
  opts: {
    /** More to say in GET /healthz. */
    health?: () => Record<string, unknown>;
    /** Why token checks must refuse now (a stale mirror of the shared control state), or null. */
    stale?: (() => string | null) | undefined;
  } = {},
): Promise<RunningProxy> {
  const { health, stale } = opts;
  const paths = statePaths(config);
  const registry = new FilePolicyRegistry(paths.registry);
  const proxyConfig = parseProxyConfig({
    listen: config.proxy.listen,
    upstreams,
    limits: { maxBodyBytes: config.proxy.maxBodyBytes, upstreamTimeoutMs: config.proxy.upstreamTimeoutMs },
    receiptsPath: paths.receipts,
    clawsigReceipts: config.proxy.clawsigReceipts,
  });
  const receiptKey = loadSigner(paths.keys, 'receipt');
  const verifyToken = cstVerifier({
    jwks: publicJwks(paths.keys, ['token']),
    revocations: new FileRevocationStore(paths.revocations),
    policies: registryPolicySource(registry, config.policy.channel),
    ...(stale ? { stale } : {}),
  });
  // From here on, startProxy owns the store: it lets it go if it cannot start.
  const store = await ReceiptStore.open(proxyConfig.receiptsPath);
  const proxy = await listening('model proxy', 'proxy.listen.port or CLAWGATE_PROXY_PORT', () =>
    startProxy({
      config: proxyConfig,
      store,
      receiptKey,
      verifyToken,
      // A job's sealer asks for its receipts in the Clawsig form; read at each request, so a
      // rotated bundle key is known without a restart.
      bindingJwks: () => publicJwks(paths.keys, ['bundle']),
      ...(health ? { health } : {}),
      ...(stale ? { refusing: stale } : {}),
      logger: logger.child({ component: 'proxy' }),
    }),
  );
  logger.info({ url: proxy.url, upstreams: upstreams.map((u) => u.name) }, 'proxy listening');
  return proxy;
}

export interface RunningWorker {
  worker: Worker;
  run: Promise<void>;
  /** Whether Temporal answers the worker's checks (its polls go to the same server). */
  temporal: TemporalWatch;
  close(): Promise<void>;
}

export interface WorkerHealth {
  /** GET /health: 200 while the worker runs, with its state and the control mirror's. */
  healthUrl: string;
  /** GET /metrics: the worker's counts and the Temporal SDK's, in Prometheus text. */
  metricsUrl: string;
  close(): Promise<void>;
}

/**
 * The worker's health and metrics endpoint on `worker.health`, for `clawgate worker` and the
 * worker `clawgate start` runs in its own process alike. `drain` moves the SDK's buffered
 * metrics into the registry before each scrape (forwardTemporalMetrics).
 */
export async function serveWorkerHealth(
  config: ClawgateConfig,
  opts: {
    /** The worker, once made: until then it waits for Temporal (`waiting` says how long). */
    worker: () => RunningWorker | null;
    waiting: Outage;
    mirror: RunningControlMirror;
    metrics: WorkerMetrics;
    drain: () => void;
  },
): Promise<WorkerHealth> {
  const server: HttpServer = createHttpServer((req, res) => {
    if (req.method === 'GET' && req.url === METRICS_PATH) {
      answerMetrics(res, opts.metrics.registry, opts.drain);
      return;
    }
    const running = opts.worker();
    const state = running ? running.worker.getState() : 'STARTING';
    const outage = running ? running.temporal.outage : opts.waiting;
    const temporal = outage.status();
    const reasons: string[] = [];
    if (state !== 'RUNNING') reasons.push(`the worker is ${state.toLowerCase()}`);
    // A worker whose polls fail is RUNNING to the SDK, yet takes no task.
    const away = outage.reason();
    if (away) reasons.push(`${away}; no task is taken`);
    else if (!running) reasons.push(`it connects to Temporal at ${config.temporal.address ?? '?'}`);
    const ok = req.url === '/health' && reasons.length === 0;
    res.writeHead(req.url === '/health' ? (ok ? 200 : 503) : 404, { 'content-type': 'application/json' });
    const control = opts.mirror.health();
    res.end(
      `${JSON.stringify({ ok, state, reasons, temporal, taskQueue: config.temporal.taskQueue, control })}\n`,
    );
  });
  await listen(
    server,
    config.worker.health,
    'worker health endpoint',
    'worker.health.port or CLAWGATE_WORKER_HEALTH_PORT',
  );
  const bound = server.address();
  const port = bound !== null && typeof bound === 'object' ? bound.port : config.worker.health.port;
  const base = `http://${config.worker.health.host}:${port}`;
  return {
    healthUrl: `${base}/health`,
    metricsUrl: `${base}${METRICS_PATH}`,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

/** Workflow tasks the worker takes at once (see runWorker). */
const WORKFLOW_TASK_SLOTS = 10;

export async function runWorker(
  config: ClawgateConfig,
  opts: {
    address: string;
    proxyUrl: string;
    planningModel: string;
    logger: Logger;
    /** Why token checks must refuse now (a stale mirror of the shared control state), or null. */
    controlStale?: (() => string | null) | undefined;
    /** Where the evidence pages are (the link in a job's result); default from evidence config. */
    evidenceBaseUrl?: string;
    /** Where the worker counts (its GET /metrics); nothing is counted without it. */
    metrics?: WorkerMetrics;
    /** Whether Temporal has answered yet, as the worker waits for it to start (its health reads it). */
    waiting?: Outage;
  },
): Promise<RunningWorker> {
  const paths = statePaths(config);
  ensurePrivateDir(paths.bundles);
  ensurePrivateDir(paths.workspaces);
  // Each job's workspace is made fresh from this source; the demo has a repository of its own.
  const configured = config.worker.workspace;
  const source =
    configured && typeof configured !== 'string'
      ? configured
      : await ensureDemoRepository(paths.demoRepository).then((d) => ({ source: d.repo, ref: d.ref }));
  const backend =
    config.worker.sandbox.backend === 'docker'
      ? dockerSandbox()
      : bubblewrapSandbox(config.worker.sandbox.bwrap ?? bwrapPath());
  const { metrics } = opts;
  const sandbox = metrics ? metrics.countingSandbox(backend) : backend;
  const { connection, client } = lazyTemporal(config, opts.address);
  const activities = createJobActivities({
    registry: new FilePolicyRegistry(paths.registry),
    keysDir: paths.keys,
    revocations: new FileRevocationStore(paths.revocations),
    proxyUrl: opts.proxyUrl,
    planningModel: opts.planningModel,
    sandbox,
    workspaceFor: (job) => jobWorkspacePath(paths.workspaces, job.workflowId),
    workspaces: {
      root: paths.workspaces,
      source: () => Promise.resolve({ repo: source.source, ref: source.ref }),
    },
    evidence: new EvidenceStore(paths.evidence),
    pushRepo: paths.pushRepo,
    ...(config.worker.prRemote ? { prRemote: config.worker.prRemote } : {}),
    bundleDir: paths.bundles,
    evidenceBaseUrl: opts.evidenceBaseUrl ?? evidenceBaseUrl(config.evidence),
    warn: (message) => opts.logger.warn(message),
    controlState: () => readControlState(client),
    ...(opts.controlStale ? { controlStale: opts.controlStale } : {}),
    ...(metrics ? { metrics } : {}),
  });
  const { code: workflowCode, cached } = await cachedWorkflowBundle(paths.workflowBundles);
  opts.logger.info(cached ? 'workflow code: the bundle made before' : 'workflow code bundled');
  const workerConnection = await onceTemporalAnswers(
    opts.address,
    opts.logger,
    () =>
      NativeConnection.connect({
        address: opts.address,
        ...(config.temporal.tls ? { tls: {} } : {}),
      }),
    opts.waiting,
  );
  capWorkflowThreadHeap(config.worker.maxCachedWorkflows);
  const worker = await Worker.create({
    connection: workerConnection,
    namespace: config.temporal.namespace,
    taskQueue: config.temporal.taskQueue,
    // Bundled in a process of its own (src/stack/workflow-bundle.ts): webpack's heap is not kept here.
    workflowBundle: { code: workflowCode },
    // The codec runs in the worker's main thread, outside the workflow sandbox; the bundle has
    // the same failure converter as this data converter.
    dataConverter: temporalDataConverter(config),
    activities,
    maxCachedWorkflows: config.worker.maxCachedWorkflows,
    // One workflow thread runs the tasks one after another, and a task's 10 s timeout runs from
    // when the worker takes it. Taking 40 at once (the SDK's default) through a burst of 1,000
    // jobs on a busy machine, with the thread's heap held small (capWorkflowThreadHeap), the last
    // of them timed out before their turn some 500 times: the server gave them out again, the
    // worker's answers were refused, the runs were replayed, and a job went unplanned for over
    // 5 minutes. Taking 10, the others wait on the server, where their timeout has not started:
    // some 30 timed out in a like run (`npm run bench -- waiting`).
    maxConcurrentWorkflowTaskExecutions: WORKFLOW_TASK_SLOTS,
  });
  const run = worker.run();
  // Polls that fail leave the worker RUNNING to the SDK: this says whether Temporal answers.
  const temporal = watchTemporal(
    connection,
    new Outage({
      service: 'Temporal',
      log: opts.logger.child({ address: opts.address }),
      impact: 'no job task is taken until it is back',
    }),
  );
  const unroute = routeTemporalConnectionWarnings(temporal);
  if (metrics) registerTemporalReachable(metrics.registry, () => !temporal.outage.down);
  // From Temporal's visibility, not from this worker's own jobs: a waiting job sleeps in no
  // worker (any of them may take its next task, and it may be out of every cache), so only the
  // server knows them all. Every worker reports the same number; alert on max(), not sum().
  const awaiting = metrics?.watchAwaitingApproval(
    async () => (await client.workflow.count(AWAITING_APPROVAL_QUERY)).count,
  );
  opts.logger.info({ taskQueue: config.temporal.taskQueue }, 'worker running');
  return {
    worker,
    run,
    temporal,
    async close() {
      await temporal.stop();
      unroute();
      awaiting?.stop();
      if (worker.getState() === 'RUNNING') worker.shutdown();
      await run;
      await workerConnection.close();
      await connection.close();
    },
  };
}

/**
 * The workflow thread's heap. Its young generation at most 16 MiB (two 8 MiB semi-spaces): under a
 * stream of jobs V8 grows it to 128 MiB and keeps that until the thread has been idle for minutes:
 * about 110 MiB of the worker's resident memory, for fewer of the scavenges that are cheap here
 * anyway. Its old generation at most 256 MiB and 1 MiB per cached workflow (each holds some 0.2 to
 * 0.4 MiB): with a limit of 2 GiB or more (by default a quarter of the machine's memory, at most
 * 4 GiB) V8 lets a heap grow to up to four times what it holds live before a full collection, near
 * 256 MiB to 1.3 times; through a burst of 1,000 jobs the thread's heap stayed at about 50 MiB
 * instead of reaching 105 (`npm run bench -- waiting`). V8 reads these flags when a thread's heap
 * is made, so they take effect for the thread Worker.create starts next, not for the main thread
 * (that one only takes them from the command line, which bin/clawgate gives it). A semi-space size
 * given there or in NODE_OPTIONS is kept, and an old-space size given in NODE_OPTIONS.
 */
function capWorkflowThreadHeap(maxCachedWorkflows: number): void {
  const given = [...process.execArgv, process.env['NODE_OPTIONS'] ?? ''].join(' ');
  if (!given.includes('--max-semi-space-size')) setFlagsFromString('--max-semi-space-size=8');
  // bin/clawgate gives the worker's main thread its own (fixed) old-space size on the command
  // line; the workflow thread's grows with its cache.
  if (!(process.env['NODE_OPTIONS'] ?? '').includes('--max-old-space-size')) {
    setFlagsFromString(`--max-old-space-size=${256 + maxCachedWorkflows}`);
  }
}

function bwrapPath(): string {
  try {
    return toolPaths().bwrap;
  } catch {
    return '/usr/bin/bwrap';
  }
}

/**
 * Runs `start` (something that listens); a port another process holds becomes an error that says
 * which part wanted it and which setting moves it, instead of a bare EADDRINUSE.
 */
export async function listening<T>(
  what: string,
  setting: string,
  start: () => Promise<T>,
  hint = '',
): Promise<T> {
  try {
    return await start();
  } catch (error) {
    const e = error as NodeJS.ErrnoException & { address?: string; port?: number };
    if (e.code !== 'EADDRINUSE') throw error;
    throw new ClawgateError(
      ERROR_CODES.portInUse,
      `${what}: ${e.address ?? 'the address'}:${e.port ?? '?'} is already in use by another process; ` +
        `stop it, or give the ${what} another port (${setting})${hint}`,
      { cause: error },
    );
  }
}

/** Listens with a server, resolving once it listens; EADDRINUSE as `listening` says. */
export function listen(
  server: Server,
  at: { host: string; port: number },
  what: string,
  setting: string,
  hint = '',
): Promise<void> {
  return listening(
    what,
    setting,
    () =>
      new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen(at.port, at.host, () => {
          server.off('error', reject);
          resolve();
        });
      }),
    hint,
  );
}

/**
 * Checks that a port a server of another process (the embedded Temporal or Synapse) is about to
 * take is free. Without it, a server already there (your own Temporal dev server on 7233, say)
 * would answer in its place, and clawgate would carry on with it unawares.
 */
export async function ensurePortFree(
  at: { host: string; port: number },
  what: string,
  setting: string,
  hint = '',
): Promise<void> {
  if (at.port === 0) return;
  const server = createNetServer();
  await listen(server, at, what, setting, hint);
  await new Promise<void>((resolve) => server.close(() => resolve()));
}

export async function runGateway(
  config: ClawgateConfig,
  opts: { address: string; accounts: AccountConfig[]; logger: Logger; fault?: string },
): Promise<Gateway> {
  // Loaded here, not with this module: matrix-js-sdk and the rest of the gateway (some 18 MiB
  // of resident memory) have no business in `clawgate worker` or `clawgate proxy`.
  const { Gateway } = await import('../ingress/gateway.ts');
  const paths = statePaths(config);
  // `clawgate gateway` may be the first process of a state folder to talk to Temporal.
  ensurePayloadKeyring(paths.payloadKeys);
  const gateway = await listening(
    'gateway health endpoint',
    'gateway.health.port or CLAWGATE_HEALTH_PORT',
    () =>
      Gateway.start(
        {
          stateDir: paths.gateway,
          temporal: {
            address: opts.address,
            namespace: config.temporal.namespace,
            jobTaskQueue: config.temporal.taskQueue,
          },
          policy: { registryDir: paths.registry, channel: config.policy.channel },
          health: config.gateway.health,
          accounts: opts.accounts,
        },
        {
          logger: opts.logger,
          dataConverter: temporalDataConverter(config),
          ...(opts.fault ? { fault: opts.fault } : {}),
        },
      ),
  );
  opts.logger.info({ health: gateway.healthUrl }, 'gateway running');
  return gateway;
}

export interface RunningControlMirror {
  mirror: ControlMirror;
  /**
   * For the process's token checks: a reason to refuse once the shared state has gone unread
   * longer than `temporal.controlStaleAfterSeconds` (absent when that is null).
   */
  stale: (() => string | null) | undefined;
  /** For health answers: the mirror's last good read, its error, and the refusal if any. */
  health(): { lastSync: string | null; error: string | null; refusing: string | null };
  close(): Promise<void>;
}

/**
 * Mirrors the revocations and active policies shared through the control workflow into this
 * process's state folder (src/control/mirror.ts). One per process is enough.
 */
export function runControlMirror(
  config: ClawgateConfig,
  address: string,
  logger: Logger,
): RunningControlMirror {
  const paths = statePaths(config);
  // Lazy: the mirror's reads fail while Temporal is away, and its staleness says so (the part
  // runs meanwhile, and its health endpoint answers).
  const { connection, client } = lazyTemporal(config, address);
  const mirror = startControlMirror({
    client,
    revocations: new FileRevocationStore(paths.revocations),
    registry: new FilePolicyRegistry(paths.registry),
    policySigners: () => publicJwks(paths.keys, ['policy']),
    log: logger.child({ component: 'control-mirror' }),
  });
  const limit = config.temporal.controlStaleAfterSeconds;
  const stale = limit === null ? undefined : () => mirror.staleness(limit * 1000);
  return {
    mirror,
    stale,
    health: () => ({ ...mirror.status(), refusing: stale?.() ?? null }),
    async close() {
      await mirror.stop();
      await connection.close();
    },
  };
}

export function requireAddress(config: ClawgateConfig, what: string): string {
  if (!config.temporal.address) {
    throw new ClawgateError(
      ERROR_CODES.configInvalid,
      `${what} needs temporal.address (or CLAWGATE_TEMPORAL_ADDRESS); only clawgate start runs an embedded Temporal`,
    );
  }
  return config.temporal.address;
}

/**
 * The evidence pages (src/evidence/server.ts) of the state folder's bundles, verified against
 * its keyrings, on evidence.listen; `overrides` are what `clawgate evidence serve` was given.
 */
export async function runEvidenceServer(
  config: ClawgateConfig,
  logger: Logger,
  overrides: {
    host?: string;
    port?: number;
    bundleDir?: string;
    jwks?: () => Jwks;
    keysSource?: string;
  } = {},
): Promise<RunningEvidenceServer> {
  const paths = statePaths(config);
  const server = await listening('evidence server', 'evidence.listen.port or CLAWGATE_EVIDENCE_PORT', () =>
    startEvidenceServer({
      host: overrides.host ?? config.evidence.listen.host,
      port: overrides.port ?? config.evidence.listen.port,
      bundleDir: overrides.bundleDir ?? paths.bundles,
      jwks: overrides.jwks ?? (() => publicJwks(paths.keys, KEY_PURPOSES)),
      keysSource: overrides.keysSource ?? "the public keys of this clawgate's keyrings",
      logger,
    }),
  );
  logger.info({ url: server.url }, 'evidence server running');
  return server;
}

/** The Web UI origin the codec server answers: configured, or the embedded dev server's UI. */
export function codecUiOrigin(config: ClawgateConfig): string {
  return config.codec.uiOrigin ?? `http://127.0.0.1:${config.temporal.uiPort}`;
}

/**
 * The codec server (src/temporal/codec-server.ts) of the payload keyring, on codec.listen, for
 * the Web UI's origin; callers without that origin give the token of the state folder.
 */
export async function runCodecServer(
  config: ClawgateConfig,
  logger: Logger,
  overrides: { host?: string; port?: number; uiOrigin?: string } = {},
): Promise<RunningCodecServer> {
  const paths = statePaths(config);
  ensurePrivateDir(config.stateDir);
  ensurePayloadKeyring(paths.payloadKeys);
  const token = ensureCodecToken(paths.codecToken);
  const uiOrigin = overrides.uiOrigin ?? codecUiOrigin(config);
  const server = await listening('codec server', 'codec.listen.port or CLAWGATE_CODEC_PORT', () =>
    startCodecServer({
      host: overrides.host ?? config.codec.listen.host,
      port: overrides.port ?? config.codec.listen.port,
      uiOrigin,
      token,
      codec: payloadCodecFor(paths.payloadKeys),
      logger,
    }),
  );
  logger.info({ url: server.url, uiOrigin }, 'codec server running');
  return server;
}
