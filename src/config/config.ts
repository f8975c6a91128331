// clawgate's one configuration file (YAML or JSON) with environment overrides, validated with
// zod at start; an error names the path in the file, or the environment variable, that is
// wrong. Everything has an embedded default: with no file at all, `clawgate start` runs a
// local Temporal dev server, a local Synapse with a demo room and users, and the demo model
// upstream.
import { existsSync, readFileSync } from 'node:fs';
import { dirname, isAbsolute, resolve } from 'node:path';
import { z } from 'zod';
import { ClawgateError, ERROR_CODES, formatPath } from '../errors.ts';
import { accountSchema } from '../ingress/config.ts';
import { parseStrict } from '../policy/canonical.ts';
import { upstreamSchema } from '../proxy/config.ts';
import { JOB_TASK_QUEUE } from '../temporal/job-contract.ts';

const port = z.number().int().min(0).max(65_535);
const listen = (defaultPort: number) =>
  z
    .object({ host: z.string().min(1).default('127.0.0.1'), port: port.default(defaultPort) })
    .strict()
    .prefault({});

export const configSchema = z
  .object({
    /** Keys, policy registry, bundles, receipts, the gateway's accounts, the embedded servers' data. */
    stateDir: z.string().min(1).default('state'),
    temporal: z
      .object({
        /** An existing Temporal frontend (host:port); absent: an embedded dev server. */
        address: z.string().min(1).optional(),
        namespace: z.string().min(1).default('default'),
        /** Connect with TLS (needed when the address is not on loopback). */
        tls: z.boolean().default(false),
        /** The embedded dev server's ports (gRPC, Web UI). */
        port: port.default(7233),
        uiPort: port.default(8233),
        taskQueue: z.string().min(1).default(JOB_TASK_QUEUE),
        /**
         * When the shared control state (revocations and policies from other machines) has gone
         * unread this long, token checks refuse every token until it is read again; null: keep
         * checking with what this state folder holds.
         */
        controlStaleAfterSeconds: z.number().int().min(2).max(86_400).nullable().default(30),
      })
      .strict()
      .prefault({}),
    matrix: z
      .object({
        /** An existing homeserver; absent: an embedded Synapse with a demo room and users. */
        homeserverUrl: z.url({ protocol: /^https?$/ }).optional(),
        /** The embedded Synapse's port. */
        port: port.default(8008),
      })
      .strict()
      .prefault({}),
    policy: z
      .object({
        channel: z.string().min(1).default('matrix'),
        /** A policy file to sign, register and activate on the channel when none is active yet. */
        initial: z.string().min(1).optional(),
        /** The policy registry folder (default: <stateDir>/policy-registry). */
        registryDir: z.string().min(1).optional(),
      })
      .strict()
      .prefault({}),
    proxy: z
      .object({
        listen: listen(8787),
        /** OpenAI-compatible upstreams; absent: the local demo upstream (it echoes; it is not a model). */
        upstreams: z.array(upstreamSchema).min(1).optional(),
        maxBodyBytes: z
          .number()
          .int()
          .positive()
          .default(1024 * 1024),
        upstreamTimeoutMs: z.number().int().positive().default(120_000),
        /**
         * Also give each receipt in the Clawsig gateway_receipt form (GET /v1/receipts), bound
         * to the caller's X-Run-Id, X-Event-Hash and X-Idempotency-Key. Off by default; sealed
         * jobs' receipts are signed in that form either way, for the job's Clawsig export.
         */
        clawsigReceipts: z.boolean().default(false),
      })
      .strict()
      .prefault({}),
    worker: z
      .object({
        /** The model that drafts plans (default: the first model of the first upstream). */
        planningModel: z.string().min(1).optional(),
        /** The worker (`clawgate worker`, or `clawgate start`'s) answers GET /health and /metrics here. */
        health: listen(8791),
        /**
         * Workflows kept in the worker's memory; others (jobs waiting days for approval) are
         * evicted and replayed from their history when a signal comes. The cache is for jobs at
         * work, whose every turn is a workflow task; a waiting job gains nothing from it, and
         * each cached one holds some 0.2 to 0.4 MiB of the worker's workflow heap. Replaying an
         * evicted job on its `!approve` costs some tens of milliseconds (`npm run bench -- waiting`).
         */
        maxCachedWorkflows: z.number().int().min(10).max(100_000).default(50),
        /**
         * Where each job's own workspace is made from: a git repository (a path or a URL) and a
         * ref (branch, tag or commit). A string is the repository at its HEAD. Default: the demo
         * repository clawgate makes in the state folder.
         */
        workspace: z
          .union([
            z.string().min(1),
            z.object({ source: z.string().min(1), ref: z.string().min(1).default('HEAD') }).strict(),
          ])
          .optional(),
        /** Where write_pr pushes its branches (a repository path or URL); absent: no push. */
        prRemote: z.string().min(1).optional(),
        sandbox: z
          .object({
            backend: z.enum(['bubblewrap', 'docker']).default('bubblewrap'),
            /** The bwrap binary (default: the one the bootstrap found). */
            bwrap: z.string().min(1).optional(),
          })
          .strict()
          .prefault({}),
      })
      .strict()
      .prefault({}),
    gateway: z
      .object({
        health: listen(8790),
        /** Bot accounts; absent with the embedded Synapse: its demo bot. */
        accounts: z.array(accountSchema).min(1).optional(),
      })
      .strict()
      .prefault({}),
    evidence: z
      .object({
        /** The evidence pages: GET /bundles/<digest> (a page), .json (the bundle), .clawsig.json. */
        listen: listen(8792),
        /** The address reviewers open, in the link of a job's result (default: http://<host>:<port>). */
        baseUrl: z.url({ protocol: /^https?$/ }).optional(),
      })
      .strict()
      .prefault({}),
    codec: z
      .object({
        /**
         * The codec server (Temporal's remote codec protocol, POST /encode and /decode), with which
         * the Temporal Web UI shows encrypted payloads decrypted. Keep it on loopback.
         */
        listen: listen(8793),
        /**
         * The one browser origin the codec server answers: the Web UI's (default: the embedded
         * dev server's, http://127.0.0.1:<temporal.uiPort>).
         */
        uiOrigin: z.url({ protocol: /^https?$/ }).optional(),
        /**
         * The keys folder whose payload/ keyring encrypts Temporal payloads (default:
         * <stateDir>/keys). Every process on one Temporal must use the same keyring.
         */
        keysDir: z.string().min(1).optional(),
      })
      .strict()
      .prefault({}),
    supervisor: z
      .object({
        /**
         * `clawgate start`: a part that runs but has not answered its health check at all (no
         * answer, not an answer saying it is unhealthy) for this long is hung; it is killed and
         * restarted.
         */
        hungAfterSeconds: z.number().int().min(5).max(3_600).default(60),
      })
      .strict()
      .prefault({}),
    log: z
      .object({
        level: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
      })
      .strict()
      .prefault({}),
  })
  .strict();

export type ClawgateConfig = z.infer<typeof configSchema>;
export type ClawgateConfigInput = z.input<typeof configSchema>;

/** Where each environment override goes in the file's structure. */
export const ENV_OVERRIDES: ReadonlyArray<{
  name: string;
  path: string[];
  kind: 'string' | 'port' | 'bool';
}> = [
  { name: 'CLAWGATE_STATE_DIR', path: ['stateDir'], kind: 'string' },
  { name: 'CLAWGATE_TEMPORAL_ADDRESS', path: ['temporal', 'address'], kind: 'string' },
  { name: 'CLAWGATE_TEMPORAL_NAMESPACE', path: ['temporal', 'namespace'], kind: 'string' },
  { name: 'CLAWGATE_TEMPORAL_TLS', path: ['temporal', 'tls'], kind: 'bool' },
  { name: 'CLAWGATE_TEMPORAL_PORT', path: ['temporal', 'port'], kind: 'port' },
  { name: 'CLAWGATE_TEMPORAL_UI_PORT', path: ['temporal', 'uiPort'], kind: 'port' },
  { name: 'CLAWGATE_HOMESERVER_URL', path: ['matrix', 'homeserverUrl'], kind: 'string' },
  { name: 'CLAWGATE_SYNAPSE_PORT', path: ['matrix', 'port'], kind: 'port' },
  { name: 'CLAWGATE_PROXY_PORT', path: ['proxy', 'listen', 'port'], kind: 'port' },
  { name: 'CLAWGATE_HEALTH_PORT', path: ['gateway', 'health', 'port'], kind: 'port' },
  { name: 'CLAWGATE_WORKER_HEALTH_PORT', path: ['worker', 'health', 'port'], kind: 'port' },
  { name: 'CLAWGATE_EVIDENCE_PORT', path: ['evidence', 'listen', 'port'], kind: 'port' },
  { name: 'CLAWGATE_EVIDENCE_BASE_URL', path: ['evidence', 'baseUrl'], kind: 'string' },
  { name: 'CLAWGATE_CODEC_PORT', path: ['codec', 'listen', 'port'], kind: 'port' },
  { name: 'CLAWGATE_CODEC_UI_ORIGIN', path: ['codec', 'uiOrigin'], kind: 'string' },
  { name: 'CLAWGATE_PAYLOAD_KEYS_DIR', path: ['codec', 'keysDir'], kind: 'string' },
  { name: 'CLAWGATE_LOG_LEVEL', path: ['log', 'level'], kind: 'string' },
];

function setPath(target: Record<string, unknown>, path: string[], value: unknown): void {
  let node = target;
  for (const key of path.slice(0, -1)) {
    const next = node[key];
    if (typeof next !== 'object' || next === null || Array.isArray(next)) node[key] = {};
    node = node[key] as Record<string, unknown>;
  }
  node[path.at(-1) as string] = value;
}

/** Applies CLAWGATE_* overrides to a parsed file; a malformed value names its variable. */
export function applyEnv(input: unknown, env: NodeJS.ProcessEnv): Record<string, unknown> {
  const out: Record<string, unknown> =
    typeof input === 'object' && input !== null && !Array.isArray(input)
      ? structuredClone(input as Record<string, unknown>)
      : {};
  for (const { name, path, kind } of ENV_OVERRIDES) {
    const raw = env[name];
    if (raw === undefined || raw === '') continue;
    let value: unknown = raw;
    if (kind === 'port') {
      value = Number(raw);
      if (!Number.isInteger(value) || (value as number) < 0 || (value as number) > 65_535) {
        throw new ClawgateError(ERROR_CODES.configInvalid, `${name}=${raw}: not a TCP port (0 to 65535)`);
      }
    } else if (kind === 'bool') {
      if (raw !== 'true' && raw !== 'false') {
        throw new ClawgateError(ERROR_CODES.configInvalid, `${name}=${raw}: true or false`);
      }
      value = raw === 'true';
    }
    setPath(out, path, value);
  }
  // Secrets by name, so the file need not hold them: CLAWGATE_ACCOUNT_<ID>_PASSWORD or
  // _ACCESS_TOKEN for a gateway account, CLAWGATE_UPSTREAM_<NAME>_API_KEY for a model upstream.
  const envName = (s: string) => s.toUpperCase().replace(/[^A-Z0-9]/g, '_');
  const gateway = out['gateway'] as { accounts?: unknown } | undefined;
  if (gateway && Array.isArray(gateway.accounts)) {
    for (const account of gateway.accounts as Array<Record<string, unknown>>) {
      if (typeof account['id'] !== 'string') continue;
      const prefix = `CLAWGATE_ACCOUNT_${envName(account['id'])}`;
      if (env[`${prefix}_PASSWORD`]) account['password'] = env[`${prefix}_PASSWORD`];
      if (env[`${prefix}_ACCESS_TOKEN`]) account['accessToken'] = env[`${prefix}_ACCESS_TOKEN`];
      if (env[`${prefix}_RECOVERY_KEY`]) account['recoveryKey'] = env[`${prefix}_RECOVERY_KEY`];
    }
  }
  const proxy = out['proxy'] as { upstreams?: unknown } | undefined;
  if (proxy && Array.isArray(proxy.upstreams)) {
    for (const upstream of proxy.upstreams as Array<Record<string, unknown>>) {
      if (typeof upstream['name'] !== 'string') continue;
      const key = env[`CLAWGATE_UPSTREAM_${envName(upstream['name'])}_API_KEY`];
      if (key) upstream['apiKey'] = key;
    }
  }
  // A model upstream from the environment: base URL, key and model.
  const baseUrl = env['CLAWGATE_MODEL_BASE_URL'];
  if (baseUrl) {
    const model = env['CLAWGATE_MODEL'];
    if (!model) {
      throw new ClawgateError(
        ERROR_CODES.configInvalid,
        'CLAWGATE_MODEL_BASE_URL is set but CLAWGATE_MODEL is not: name the model to use',
      );
    }
    // Its name in receipts and health: CLAWGATE_MODEL_UPSTREAM (`clawgate start`'s demo upstream is `demo`).
    const name = env['CLAWGATE_MODEL_UPSTREAM'] || 'env';
    const upstream: Record<string, unknown> = { name, baseUrl, models: [model] };
    if (env['CLAWGATE_MODEL_API_KEY']) upstream['apiKey'] = env['CLAWGATE_MODEL_API_KEY'];
    setPath(out, ['proxy', 'upstreams'], [upstream]);
  }
  return out;
}

export function parseConfig(
  input: unknown,
  opts: { baseDir?: string; source?: string } = {},
): ClawgateConfig {
  const result = configSchema.safeParse(input);
  if (!result.success) {
    const lines = result.error.issues.map(
      (issue) => `${formatPath(issue.path) || '(root)'}: ${issue.message}`,
    );
    throw new ClawgateError(
      ERROR_CODES.configInvalid,
      `invalid configuration${opts.source ? ` in ${opts.source}` : ''}:\n  ${lines.join('\n  ')}`,
    );
  }
  const config = result.data;
  const base = opts.baseDir ?? process.cwd();
  const abs = (p: string) => (isAbsolute(p) ? p : resolve(base, p));
  config.stateDir = abs(config.stateDir);
  // A source that is a path (not a URL) is resolved against the configuration's folder.
  const localPath = (p: string) =>
    /^[a-z][a-z0-9+.-]*:\/\//i.test(p) || /^[^/]+@[^/]+:/.test(p) ? p : abs(p);
  const source = config.worker.workspace;
  if (source !== undefined) {
    config.worker.workspace =
      typeof source === 'string'
        ? { source: localPath(source), ref: 'HEAD' }
        : { ...source, source: localPath(source.source) };
  }
  if (config.worker.prRemote) config.worker.prRemote = localPath(config.worker.prRemote);
  if (config.policy.initial) config.policy.initial = abs(config.policy.initial);
  if (config.policy.registryDir) config.policy.registryDir = abs(config.policy.registryDir);
  if (config.codec.keysDir) config.codec.keysDir = abs(config.codec.keysDir);
  // An origin is scheme, host and port only: what a browser sends in its Origin header.
  if (config.codec.uiOrigin) config.codec.uiOrigin = new URL(config.codec.uiOrigin).origin;
  for (const upstream of config.proxy.upstreams ?? []) {
    if (upstream.caFile) upstream.caFile = abs(upstream.caFile);
  }
  return config;
}

/**
 * The configuration: the file given (or CLAWGATE_CONFIG, or ./clawgate.yaml when it exists),
 * then the environment's overrides. No file at all is fine: every part has a default.
 */
export function loadConfig(path?: string, env: NodeJS.ProcessEnv = process.env): ClawgateConfig {
  const chosen =
    path ?? env['CLAWGATE_CONFIG'] ?? (existsSync('clawgate.yaml') ? 'clawgate.yaml' : undefined);
  let parsed: unknown = {};
  if (chosen) {
    let text: string;
    try {
      text = readFileSync(chosen, 'utf8');
    } catch (error) {
      throw new ClawgateError(
        ERROR_CODES.fileUnreadable,
        `cannot read the configuration ${chosen}: ${(error as NodeJS.ErrnoException).code ?? String(error)}`,
      );
    }
    parsed = parseStrict(text, chosen) ?? {};
  }
  return parseConfig(applyEnv(parsed, env), {
    baseDir: chosen ? dirname(resolve(chosen)) : process.cwd(),
    ...(chosen ? { source: chosen } : {}),
  });
}

/** Where things live in the state folder. */
export function statePaths(config: ClawgateConfig) {
  const s = config.stateDir;
  return {
    keys: resolve(s, 'keys'),
    /** The keys folder of the payload keyring (`payload/`), which encrypts Temporal payloads. */
    payloadKeys: config.codec.keysDir ?? resolve(s, 'keys'),
    /** The bearer token a caller of the codec server other than the Web UI gives. */
    codecToken: resolve(s, 'codec-server.token'),
    registry: config.policy.registryDir ?? resolve(s, 'policy-registry'),
    revocations: resolve(s, 'revocations.log'),
    bundles: resolve(s, 'bundles'),
    receipts: resolve(s, 'proxy', 'receipts.log'),
    gateway: resolve(s, 'gateway'),
    demo: resolve(s, 'demo.json'),
    /** Jobs' own workspaces, one folder each, removed when the job is over. */
    workspaces: resolve(s, 'workspaces'),
    /** The demo repository jobs' workspaces are made from when no source is configured. */
    demoRepository: resolve(s, 'demo-repo'),
    /** Jobs' evidence stores: tool outputs, conversations, tool-call claims. */
    evidence: resolve(s, 'evidence'),
    /** The worker's own repository write_pr pushes from (no sandbox mounts it). */
    pushRepo: resolve(s, 'push-repo'),
    temporalDb: resolve(s, 'temporal.db'),
    /** The worker's bundled workflow code, kept for its restarts (src/stack/workflow-bundle.ts). */
    workflowBundles: resolve(s, 'cache'),
    synapse: resolve(s, 'synapse'),
    /** `clawgate start`'s parts: their logs (<part>.log) and, while each runs, its pid (<part>.pid). */
    logs: resolve(s, 'logs'),
    run: resolve(s, 'run'),
    /** The demo upstream's address while `clawgate start` runs it (for `clawgate status`). */
    demoUpstreamUrl: resolve(s, 'run', 'demo-upstream.url'),
  };
}
