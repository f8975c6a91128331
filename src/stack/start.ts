// `clawgate start` (and `npm start`): the whole stack on embedded defaults. A Temporal dev
// server with a file database (jobs survive a restart) and its Web UI, a Synapse with a demo
// room and users, the model upstream (configured, or the local demo one), the proxy, the
// worker and the gateway. Anything configured (an existing Temporal, homeserver, upstream) is
// used instead of the embedded part. Prints where each part is and how to try it.
import { Connection } from '@temporalio/client';
import type { MetricsBuffer } from '@temporalio/worker';
import type { Logger } from 'pino';
import type { ClawgateConfig } from '../config/config.ts';
import { statePaths } from '../config/config.ts';
import { startSynapse, type SynapseServer } from '../devstack/synapse.ts';
import { startTemporalDevServer, type TemporalDevServer } from '../devstack/temporal.ts';
import { toolPaths } from '../devstack/tools.ts';
import { ClawgateError, ERROR_CODES } from '../errors.ts';
import type { AccountConfig } from '../ingress/config.ts';
import type { Gateway } from '../ingress/gateway.ts';
import { evidenceBaseUrl, type RunningEvidenceServer } from '../evidence/server.ts';
import type { RunningProxy } from '../proxy/server.ts';
import { ensurePrivateDir } from '../storage/files.ts';
import type { RunningCodecServer } from '../temporal/codec-server.ts';
import { CLAWGATE_SEARCH_ATTRIBUTES } from '../temporal/search-attributes.ts';
import {
  codecUiOrigin,
  ensureKeys,
  ensurePortFree,
  modelUpstreams,
  runCodecServer,
  runGateway,
  runControlMirror,
  runEvidenceServer,
  runProxy,
  runWorker,
  serveWorkerHealth,
  type RunningControlMirror,
  type RunningUpstream,
  type RunningWorker,
  type WorkerHealth,
} from './components.ts';
import { forwardTemporalMetrics } from '../metrics/temporal.ts';
import { WorkerMetrics } from '../metrics/worker.ts';
import { demoAccount, ensureDemo, ensurePolicy, type DemoState } from './demo.ts';

export interface RunningStack {
  lines: string[];
  demo: DemoState | null;
  /** Where reviewers open a job's page: `evidencePageUrl(evidenceBaseUrl, digest)`. */
  evidenceBaseUrl: string;
  stop(): Promise<void>;
}

/** Warns when an existing Temporal lacks clawgate's search attributes, with the commands to add them. */
async function checkSearchAttributes(address: string, namespace: string, logger: Logger): Promise<void> {
  const connection = await Connection.connect({ address, connectTimeout: 5_000 });
  try {
    const { customAttributes } = await connection.operatorService.listSearchAttributes({ namespace });
    const registered = new Set(Object.keys(customAttributes ?? {}));
    const missing = CLAWGATE_SEARCH_ATTRIBUTES.filter((key) => !registered.has(key.name)).map((k) => k.name);
    if (missing.length > 0) {
      logger.warn(
        { missing },
        `Temporal at ${address} lacks clawgate's search attributes; register them once with ` +
          '`temporal operator search-attribute create` (README: existing servers)',
      );
    }
  } finally {
    await connection.close();
  }
}

export async function startStack(
  config: ClawgateConfig,
  logger: Logger,
  progress: (line: string) => void,
  opts: {
    /** The buffer the Temporal runtime was installed with, for the SDK's part of the worker's /metrics. */
    metricsBuffer?: MetricsBuffer;
  } = {},
): Promise<RunningStack> {
  const paths = statePaths(config);
  ensurePrivateDir(config.stateDir);
  let temporal: TemporalDevServer | undefined;
  let synapse: SynapseServer | undefined;
  let upstream: RunningUpstream | undefined;
  let proxy: RunningProxy | undefined;
  let worker: RunningWorker | undefined;
  let gateway: Gateway | undefined;
  let mirror: RunningControlMirror | undefined;
  let evidence: RunningEvidenceServer | undefined;
  let codec: RunningCodecServer | undefined;
  let workerHealth: WorkerHealth | undefined;
  const workerMetrics = new WorkerMetrics();
  const sdkMetrics = opts.metricsBuffer
    ? forwardTemporalMetrics(opts.metricsBuffer, workerMetrics.registry)
    : null;
  const stop = async (): Promise<void> => {
    await mirror?.close();
    await gateway?.stop();
    await workerHealth?.close();
    sdkMetrics?.stop();
    await worker?.close();
    await evidence?.close();
    await proxy?.close();
    await upstream?.demo?.close();
    await Promise.all([temporal?.stop(), synapse?.stop()]);
    await codec?.close();
  };
  const lines: string[] = [];
  try {
    // The ports of the servers started here, checked before any starts: another server on one
    // of them would otherwise answer in its place.
    const loopback = '127.0.0.1';
    if (!config.temporal.address) {
      const existing = ', or use that server with temporal.address';
      await ensurePortFree(
        { host: loopback, port: config.temporal.port },
        'embedded Temporal server',
        'temporal.port or CLAWGATE_TEMPORAL_PORT',
        existing,
      );
      await ensurePortFree(
        { host: loopback, port: config.temporal.uiPort },
        'embedded Temporal Web UI',
        'temporal.uiPort or CLAWGATE_TEMPORAL_UI_PORT',
      );
    }
    if (!config.matrix.homeserverUrl) {
      await ensurePortFree(
        { host: loopback, port: config.matrix.port },
        'embedded Synapse',
        'matrix.port or CLAWGATE_SYNAPSE_PORT',
        ', or use that homeserver with matrix.homeserverUrl',
      );
    }
    // The codec server before Temporal: the embedded Web UI is started pointed at it. Its keys
    // are made first, so that no other part makes a payload keyring of its own meanwhile.
    progress('Keys and the codec server');
    const made = await ensureKeys(config);
    if (made.length > 0) logger.info({ purposes: made }, 'generated keys');
    codec = await runCodecServer(config, logger.child({ component: 'codec' }));
    let address = config.temporal.address;
    if (address) {
      progress(`Temporal: connecting to ${address}`);
      await checkSearchAttributes(address, config.temporal.namespace, logger);
      lines.push(`Temporal         ${address} (existing)`);
    } else {
      progress('Temporal: starting the dev server (file database, Web UI)');
      temporal = await startTemporalDevServer({
        cliPath: toolPaths().temporal,
        dir: config.stateDir,
        dbFile: paths.temporalDb,
        port: config.temporal.port,
        uiPort: config.temporal.uiPort,
        namespace: config.temporal.namespace,
        uiCodecEndpoint: codec.url,
      });
      address = temporal.address;
      lines.push(`Temporal         ${address} (dev server, database ${paths.temporalDb})`);
      lines.push(`Temporal Web UI  ${temporal.uiUrl ?? ''} (payloads decrypted by the codec server)`);
    }

    let demo: DemoState | null = null;
    let accounts: AccountConfig[] | undefined = config.gateway.accounts;
    if (config.matrix.homeserverUrl) {
      lines.push(`Matrix           ${config.matrix.homeserverUrl} (existing)`);
    } else {
      progress('Matrix: starting Synapse (first start takes a few seconds more)');
      synapse = await startSynapse({
        python: toolPaths().synapsePython,
        dir: paths.synapse,
        port: config.matrix.port,
        liftRateLimits: false,
      });
      demo = await ensureDemo(config, synapse, logger);
      lines.push(`Matrix           ${synapse.baseUrl} (Synapse, server name ${synapse.serverName})`);
      accounts ??= [demoAccount(demo)];
    }
    if (!accounts) {
      throw new ClawgateError(
        ERROR_CODES.configInvalid,
        'gateway.accounts: required with an existing homeserver (matrix.homeserverUrl); see `clawgate config sample`',
      );
    }

    progress('Policy');
    upstream = await modelUpstreams(config);
    const planningModel = config.worker.planningModel ?? upstream.upstreams[0]?.models[0] ?? '';
    await ensurePolicy(config, demo, planningModel, logger);
    lines.push(
      upstream.demo
        ? `Model upstream   ${upstream.demo.url} (the local DEMO upstream: it echoes, it is not a model; configure proxy.upstreams for a real one)`
        : `Model upstream   ${upstream.upstreams.map((u) => `${u.name} ${u.baseUrl}`).join(', ')}`,
    );

    // The mirror first: the proxy's and the worker's token checks ask it whether they may trust
    // the revocations they hold.
    mirror = await runControlMirror(config, address, logger);
    progress('Proxy');
    proxy = await runProxy(config, upstream.upstreams, logger.child({ component: 'proxy' }), {
      stale: mirror.stale,
    });
    lines.push(`Model proxy      ${proxy.url} (receipts in ${paths.receipts})`);
    // The evidence pages before the worker: the address of a job's page is known when it seals.
    progress('Evidence pages');
    evidence = await runEvidenceServer(config, logger.child({ component: 'evidence' }));
    const evidenceBase = config.evidence.baseUrl ? evidenceBaseUrl(config.evidence) : evidence.url;
    lines.push(`Evidence pages   ${evidenceBase}/bundles/<digest> (each job's proof bundle, verified)`);
    progress('Worker (the first start bundles the workflow code)');
    worker = await runWorker(config, {
      address,
      proxyUrl: proxy.url,
      planningModel,
      logger: logger.child({ component: 'worker' }),
      controlStale: mirror.stale,
      evidenceBaseUrl: evidenceBase,
      metrics: workerMetrics,
    });
    lines.push(`Worker           task queue ${config.temporal.taskQueue}; bundles in ${paths.bundles}`);
    workerHealth = await serveWorkerHealth(config, {
      worker,
      mirror,
      metrics: workerMetrics,
      drain: sdkMetrics?.drain ?? (() => {}),
    });
    lines.push(`Worker health    ${workerHealth.healthUrl} (metrics ${workerHealth.metricsUrl})`);
    progress('Gateway');
    gateway = await runGateway(config, { address, accounts, logger: logger.child({ component: 'gateway' }) });
    lines.push(`Gateway health   ${gateway.healthUrl}`);
    lines.push(
      `Codec server     ${codec.url} (Temporal payloads are encrypted; it decrypts for ${codecUiOrigin(config)} only)`,
    );
    lines.push(`State and logs   ${config.stateDir}`);
    return { lines, demo, evidenceBaseUrl: evidenceBase, stop };
  } catch (error) {
    await stop();
    throw error;
  }
}

/** What to type next, for the demo. */
export function tryItLines(demo: DemoState | null): string[] {
  if (!demo) return [];
  return [
    'Try it (the demo users are in the room "clawgate demo"):',
    `  bin/clawgate say --as requester demo '!claw summarise the readme'`,
    '  bin/clawgate jobs list                      # the job and its short id (j...)',
    `  bin/clawgate say --as approver demo '!approve <job id>'`,
    '  bin/clawgate jobs show <job id>             # outcome and bundle digest',
    `Or log in to ${demo.homeserverUrl} with any Matrix client as ${demo.users.requester.userId} (password in state/demo.json).`,
  ];
}
