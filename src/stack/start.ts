// `clawgate start` (and `npm start`): the whole stack on embedded defaults, each part a process
// this one supervises (src/stack/supervisor.ts): a Temporal dev server with a file database
// (jobs survive a restart) and its Web UI, a Synapse with a demo room and users, the local demo
// model upstream (unless one is configured), and `clawgate proxy`, `clawgate worker` and
// `clawgate gateway`, the same commands docker-compose runs, told by CLAWGATE_* variables what
// was decided here. The codec server and the evidence pages run in this process. Anything
// configured (an existing Temporal, homeserver, upstream) is used instead of the embedded part.
// Each part's output goes to <stateDir>/logs/<part>.log; its pid is in <stateDir>/run/<part>.pid
// while it runs.
import { existsSync, rmSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { Connection } from '@temporalio/client';
import type { Logger } from 'pino';
import type { ClawgateConfig } from '../config/config.ts';
import { statePaths } from '../config/config.ts';
import { freeLoopbackPort } from '../devstack/net.ts';
import { setpriv } from '../devstack/process.ts';
import { toolPaths } from '../devstack/tools.ts';
import { ClawgateError, ERROR_CODES } from '../errors.ts';
import { evidenceBaseUrl, type RunningEvidenceServer } from '../evidence/server.ts';
import { ensurePrivateDir } from '../storage/files.ts';
import type { RunningCodecServer } from '../temporal/codec-server.ts';
import { CLAWGATE_SEARCH_ATTRIBUTES } from '../temporal/search-attributes.ts';
import {
  codecUiOrigin,
  DEMO_MODEL,
  ensureKeys,
  ensurePortFree,
  runCodecServer,
  runEvidenceServer,
} from './components.ts';
import { ensureDemo, ensurePolicy, type DemoState } from './demo.ts';
import { clawgateCommandPart, synapsePart, temporalPart } from './parts.ts';
import { Supervisor, type SupervisorTiming } from './supervisor.ts';

export interface RunningStack {
  lines: string[];
  demo: DemoState | null;
  /** Where reviewers open a job's page: `evidencePageUrl(evidenceBaseUrl, digest)`. */
  evidenceBaseUrl: string;
  /** Rejects when a part keeps failing (a PartFailedError naming it and its log): stop then. */
  failed: Promise<never>;
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

/** The ports of the servers started here, checked before any starts: another server there would answer in its place. */
async function checkPorts(config: ClawgateConfig): Promise<void> {
  const loopback = '127.0.0.1';
  if (!config.temporal.address) {
    await ensurePortFree(
      { host: loopback, port: config.temporal.port },
      'embedded Temporal server',
      'temporal.port or CLAWGATE_TEMPORAL_PORT',
      ', or use that server with temporal.address',
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
  // The parts run as processes of their own: a port taken would otherwise show only as their
  // failed starts, one after the other; and they find each other by port, so none may be 0.
  for (const [what, at, setting] of [
    ['model proxy', config.proxy.listen, 'proxy.listen.port or CLAWGATE_PROXY_PORT'],
    ['worker health endpoint', config.worker.health, 'worker.health.port or CLAWGATE_WORKER_HEALTH_PORT'],
    ['gateway health endpoint', config.gateway.health, 'gateway.health.port or CLAWGATE_HEALTH_PORT'],
  ] as const) {
    if (at.port === 0) {
      throw new ClawgateError(
        ERROR_CODES.configInvalid,
        `${setting}: 0 cannot be used by clawgate start, whose parts find the ${what} by its port; give it one`,
      );
    }
    await ensurePortFree(at, what, setting);
  }
}

/** The configuration file the parts are given: the one this process read, by its absolute path. */
function configFile(given: string | undefined): string | undefined {
  const chosen =
    given ?? process.env['CLAWGATE_CONFIG'] ?? (existsSync('clawgate.yaml') ? 'clawgate.yaml' : undefined);
  return chosen ? resolve(chosen) : undefined;
}

const httpBase = (at: { host: string; port: number }): string =>
  `http://${at.host.includes(':') ? `[${at.host}]` : at.host}:${at.port}`;

export async function startStack(
  config: ClawgateConfig,
  logger: Logger,
  progress: (line: string) => void,
  opts: {
    /** The configuration file given on the command line, if any (the parts are given it too). */
    configPath?: string;
    /** One line for the terminal when a part exits, comes back, or keeps failing. */
    notify?: (line: string) => void;
    timing?: Partial<SupervisorTiming>;
    /** Aborted: the start is given up, and the parts started so far are stopped. */
    signal?: AbortSignal;
  } = {},
): Promise<RunningStack> {
  const paths = statePaths(config);
  ensurePrivateDir(config.stateDir);
  ensurePrivateDir(paths.logs);
  const logFile = (part: string): string => join(paths.logs, `${part}.log`);
  const supervisor = new Supervisor({
    notify: (line) => {
      logger.info({ supervisor: true }, line);
      (opts.notify ?? progress)(line);
    },
    pidDir: paths.run,
    timing: { hungAfterMs: config.supervisor.hungAfterSeconds * 1000, ...opts.timing },
  });
  opts.signal?.addEventListener('abort', () => supervisor.abandon(), { once: true });
  let evidence: RunningEvidenceServer | undefined;
  let codec: RunningCodecServer | undefined;
  const stop = async (): Promise<void> => {
    await supervisor.stop(['temporal', 'synapse']);
    rmSync(paths.demoUpstreamUrl, { force: true });
    await evidence?.close();
    await codec?.close();
  };
  const lines: string[] = [];
  try {
    await checkPorts(config);
    // The codec server before Temporal: the embedded Web UI is started pointed at it. Its keys
    // are made first, so that no part makes a payload keyring of its own meanwhile.
    progress('Keys and the codec server');
    const made = await ensureKeys(config);
    if (made.length > 0) logger.info({ purposes: made }, 'generated keys');
    codec = await runCodecServer(config, logger.child({ component: 'codec' }));

    // Temporal and Synapse are told to die with this process (setpriv): clawgate's own parts see
    // that it is gone by themselves, these servers cannot.
    if ((!config.temporal.address || !config.matrix.homeserverUrl) && !setpriv()) {
      logger.warn(
        'no setpriv on PATH (util-linux): the embedded Temporal and Synapse would outlive a clawgate start killed with kill -9',
      );
    }

    // Temporal and Synapse at the same time: neither needs the other.
    const temporalUp = (async (): Promise<string> => {
      const configured = config.temporal.address;
      if (configured) {
        progress(`Temporal: connecting to ${configured}`);
        await checkSearchAttributes(configured, config.temporal.namespace, logger);
        lines.push(`Temporal         ${configured} (existing)`);
        return configured;
      }
      progress('Temporal: starting the dev server (file database, Web UI)');
      await supervisor.start(
        temporalPart({
          cliPath: toolPaths().temporal,
          dir: config.stateDir,
          dbFile: paths.temporalDb,
          port: config.temporal.port,
          uiPort: config.temporal.uiPort,
          namespace: config.temporal.namespace,
          uiCodecEndpoint: codec?.url ?? '',
          logFile: logFile('temporal'),
        }),
      );
      const address = `127.0.0.1:${config.temporal.port}`;
      lines.push(`Temporal         ${address} (dev server, database ${paths.temporalDb})`);
      lines.push(
        `Temporal Web UI  http://127.0.0.1:${config.temporal.uiPort} (payloads decrypted by the codec server)`,
      );
      return address;
    })();
    const matrixUp = (async (): Promise<DemoState | null> => {
      if (config.matrix.homeserverUrl) {
        lines.push(`Matrix           ${config.matrix.homeserverUrl} (existing)`);
        return null;
      }
      progress('Matrix: starting Synapse (first start takes a few seconds more)');
      const synapse = synapsePart({
        python: toolPaths().synapsePython,
        dir: paths.synapse,
        port: config.matrix.port,
        liftRateLimits: false,
        logFile: logFile('synapse'),
      });
      await supervisor.start(synapse);
      const demo = await ensureDemo(config, synapse.server(), logger);
      lines.push(
        `Matrix           ${demo.homeserverUrl} (Synapse, server name ${synapse.server().serverName})`,
      );
      return demo;
    })();
    const [address, demo] = await Promise.all([temporalUp, matrixUp]);
    if (!config.gateway.accounts && !demo) {
      throw new ClawgateError(
        ERROR_CODES.configInvalid,
        'gateway.accounts: required with an existing homeserver (matrix.homeserverUrl); see `clawgate config sample`',
      );
    }

    // What the parts are told: the configuration file, the state folder, the Temporal this
    // process runs, the demo upstream; and who supervises them (they stop if it goes away).
    const env: NodeJS.ProcessEnv = {
      ...process.env,
      CLAWGATE_STATE_DIR: config.stateDir,
      CLAWGATE_TEMPORAL_ADDRESS: address,
      CLAWGATE_SUPERVISOR_PID: String(process.pid),
    };
    const file = configFile(opts.configPath);
    if (file) env['CLAWGATE_CONFIG'] = file;
    else delete env['CLAWGATE_CONFIG'];

    progress('Policy');
    const planningModel = config.worker.planningModel ?? config.proxy.upstreams?.[0]?.models[0] ?? DEMO_MODEL;
    await ensurePolicy(config, demo, planningModel, logger);
    if (config.proxy.upstreams) {
      lines.push(
        `Model upstream   ${config.proxy.upstreams.map((u) => `${u.name} ${u.baseUrl}`).join(', ')}`,
      );
    } else {
      const url = `http://127.0.0.1:${await freeLoopbackPort()}`;
      progress('Model upstream: the local demo one');
      await supervisor.start(
        clawgateCommandPart({
          name: 'demo-upstream',
          command: 'demo-upstream',
          args: ['--port', new URL(url).port],
          env,
          logFile: logFile('demo-upstream'),
          healthUrl: `${url}/v1/models`,
        }),
      );
      writeFileSync(paths.demoUpstreamUrl, `${url}\n`, { mode: 0o600 });
      env['CLAWGATE_MODEL_BASE_URL'] = `${url}/v1`;
      env['CLAWGATE_MODEL'] = DEMO_MODEL;
      env['CLAWGATE_MODEL_UPSTREAM'] = 'demo';
      lines.push(
        `Model upstream   ${url} (the local DEMO upstream: it echoes, it is not a model; configure proxy.upstreams for a real one)`,
      );
    }

    // The evidence pages before the worker: the address of a job's page is known when it seals.
    progress('Evidence pages');
    evidence = await runEvidenceServer(config, logger.child({ component: 'evidence' }));
    const evidenceBase = config.evidence.baseUrl ? evidenceBaseUrl(config.evidence) : evidence.url;

    progress('Proxy, worker and gateway (the first start bundles the workflow code)');
    const proxyUrl = httpBase(config.proxy.listen);
    const workerHealth = `${httpBase(config.worker.health)}/health`;
    const gatewayHealth = `${httpBase(config.gateway.health)}/health`;
    const part = (name: 'proxy' | 'worker' | 'gateway', healthUrl: string) =>
      supervisor.start(clawgateCommandPart({ name, command: name, env, logFile: logFile(name), healthUrl }));
    await Promise.all([
      part('proxy', `${proxyUrl}/healthz`),
      part('worker', workerHealth),
      part('gateway', gatewayHealth),
    ]);
    lines.push(`Model proxy      ${proxyUrl} (receipts in ${paths.receipts})`);
    lines.push(`Evidence pages   ${evidenceBase}/bundles/<digest> (each job's proof bundle, verified)`);
    lines.push(`Worker           task queue ${config.temporal.taskQueue}; bundles in ${paths.bundles}`);
    lines.push(`Worker health    ${workerHealth} (metrics ${workerHealth.replace(/\/health$/, '/metrics')})`);
    lines.push(`Gateway health   ${gatewayHealth}`);
    lines.push(
      `Codec server     ${codec.url} (Temporal payloads are encrypted; it decrypts for ${codecUiOrigin(config)} only)`,
    );
    lines.push(`State            ${config.stateDir}`);
    lines.push(`Parts' logs      ${paths.logs}/<part>.log (\`clawgate status\` shows each part)`);
    return { lines, demo, evidenceBaseUrl: evidenceBase, failed: supervisor.failed, stop };
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
    `  bin/clawgate say --as requester demo '!claw summarise the readme' --follow`,
    '      # the thread, decrypted, as it comes: the plan names the job id (j...); Ctrl-C stops following',
    `  bin/clawgate say --as approver demo '!approve <job id>'`,
    '  bin/clawgate jobs show <job id>             # outcome and bundle digest',
    '  bin/clawgate status                         # every part, up or down',
    `Or log in to ${demo.homeserverUrl} with any Matrix client as ${demo.users.requester.userId} (password in state/demo.json).`,
  ];
}
