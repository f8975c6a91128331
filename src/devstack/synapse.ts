// A real Synapse homeserver on loopback: SQLite, one plain-HTTP client listener on 127.0.0.1,
// registration closed except by shared secret through the admin API, and (for tests) rate
// limits lifted so a burst of test traffic is not throttled. Used by the test harness and by
// `npm start` for the demo homeserver.
import { createHmac, randomBytes } from 'node:crypto';
import { mkdirSync, writeFileSync, existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { freeLoopbackPort, waitUntil } from './net.ts';
import { startServerProcess, type ServerProcess } from './process.ts';

export interface SynapseOptions {
  /** Python interpreter that can `import synapse` (the bootstrap's virtual environment). */
  python: string;
  /** Data folder: config, signing key, SQLite database, media, log. Reused when it exists. */
  dir: string;
  serverName?: string;
  port?: number;
  /** Lift Synapse's rate limits (tests send bursts no human would). */
  liftRateLimits?: boolean;
  startTimeoutMs?: number;
  /** The server's output (default: synapse.log in `dir`). */
  logFile?: string;
  /** A process group of its own (see startServerProcess). */
  detached?: boolean;
  /** SIGTERM to it when this process is gone, kill -9 included (see startServerProcess). */
  dieWithParent?: boolean;
}

export interface RegisteredUser {
  userId: string;
  accessToken: string;
  deviceId: string;
  password: string;
}

export interface SynapseServer {
  readonly baseUrl: string;
  readonly serverName: string;
  /** The registration shared secret (for tests and the demo set-up only). */
  readonly registrationSharedSecret: string;
  readonly process: ServerProcess;
  registerUser(localpart: string, opts?: { password?: string; admin?: boolean }): Promise<RegisteredUser>;
  stop(): Promise<void>;
}

interface SynapseSecrets {
  registrationSharedSecret: string;
  macaroonSecretKey: string;
  formSecret: string;
}

const LIFTED = { per_second: 10_000, burst_count: 100_000 };

/** Synapse's rate-limit settings, each raised far above what a test run sends. */
function liftedRateLimits(): Record<string, unknown> {
  return {
    rc_message: LIFTED,
    rc_registration: LIFTED,
    rc_registration_token_validity: LIFTED,
    rc_login: { address: LIFTED, account: LIFTED, failed_attempts: LIFTED },
    rc_admin_redaction: LIFTED,
    rc_joins: { local: LIFTED, remote: LIFTED },
    rc_joins_per_room: LIFTED,
    rc_3pid_validation: LIFTED,
    rc_invites: { per_room: LIFTED, per_user: LIFTED, per_issuer: LIFTED },
    rc_third_party_invite: LIFTED,
    rc_media_create: LIFTED,
    rc_room_creation: LIFTED,
    rc_reports: LIFTED,
    rc_key_requests: LIFTED,
    rc_delayed_event_mgmt: LIFTED,
    rc_presence: { per_user: LIFTED },
    rc_federation: { window_size: 1000, sleep_limit: 10_000, sleep_delay: 0, reject_limit: 10_000 },
  };
}

/** Secrets are made once per data folder and kept there (mode 0600), so a restart reuses them. */
function loadOrCreateSecrets(dir: string): SynapseSecrets {
  const file = join(dir, 'secrets.json');
  if (existsSync(file)) return JSON.parse(readFileSync(file, 'utf8')) as SynapseSecrets;
  const secrets: SynapseSecrets = {
    registrationSharedSecret: randomBytes(32).toString('hex'),
    macaroonSecretKey: randomBytes(32).toString('hex'),
    formSecret: randomBytes(32).toString('hex'),
  };
  writeFileSync(file, JSON.stringify(secrets), { mode: 0o600 });
  return secrets;
}

/** Synapse's signing key file format: `ed25519 <key id> <unpadded base64 of the 32-byte seed>`. */
function ensureSigningKey(path: string): void {
  if (existsSync(path)) return;
  const seed = randomBytes(32).toString('base64').replace(/=+$/, '');
  writeFileSync(path, `ed25519 a_${randomBytes(2).toString('hex')} ${seed}\n`, { mode: 0o600 });
}

export async function startSynapse(opts: SynapseOptions): Promise<SynapseServer> {
  const serverName = opts.serverName ?? 'localhost';
  const port = opts.port ?? (await freeLoopbackPort());
  const baseUrl = `http://127.0.0.1:${port}`;
  mkdirSync(opts.dir, { recursive: true, mode: 0o700 });
  const secrets = loadOrCreateSecrets(opts.dir);
  const signingKeyPath = join(opts.dir, 'signing.key');
  ensureSigningKey(signingKeyPath);

  // YAML is a superset of JSON, so the config is written as JSON.
  const config = {
    server_name: serverName,
    public_baseurl: `${baseUrl}/`,
    pid_file: join(opts.dir, 'homeserver.pid'),
    listeners: [
      {
        port,
        bind_addresses: ['127.0.0.1'],
        type: 'http',
        tls: false,
        x_forwarded: false,
        resources: [{ names: ['client'], compress: false }],
      },
    ],
    database: { name: 'sqlite3', args: { database: join(opts.dir, 'homeserver.db') } },
    media_store_path: join(opts.dir, 'media'),
    signing_key_path: signingKeyPath,
    registration_shared_secret: secrets.registrationSharedSecret,
    macaroon_secret_key: secrets.macaroonSecretKey,
    form_secret: secrets.formSecret,
    enable_registration: false,
    report_stats: false,
    enable_metrics: false,
    trusted_key_servers: [],
    suppress_key_server_warning: true,
    url_preview_enabled: false,
    presence: { enabled: false },
    ...(opts.liftRateLimits === false ? {} : liftedRateLimits()),
  };
  const configPath = join(opts.dir, 'homeserver.yaml');
  writeFileSync(configPath, JSON.stringify(config, null, 2), { mode: 0o600 });

  const serverProcess = startServerProcess({
    name: 'synapse',
    command: opts.python,
    args: ['-m', 'synapse.app.homeserver', '--config-path', configPath],
    cwd: opts.dir,
    logFile: opts.logFile ?? join(opts.dir, 'synapse.log'),
    ...(opts.detached ? { detached: true } : {}),
    ...(opts.dieWithParent ? { dieWithParent: true } : {}),
  });
  let exitedEarly = false;
  void serverProcess.exited.then(() => {
    exitedEarly = true;
  });
  try {
    await waitUntil(async () => (await fetch(`${baseUrl}/health`)).ok, {
      timeoutMs: opts.startTimeoutMs ?? 90_000,
      intervalMs: 200,
      message: `Synapse on ${baseUrl} (log: ${serverProcess.logFile})`,
      failIf: () => (exitedEarly ? 'the server process exited' : undefined),
    });
  } catch (error) {
    await serverProcess.stop();
    throw error;
  }

  return {
    baseUrl,
    serverName,
    registrationSharedSecret: secrets.registrationSharedSecret,
    process: serverProcess,
    registerUser: (localpart, registerOpts) =>
      registerWithSharedSecret(baseUrl, secrets.registrationSharedSecret, localpart, registerOpts),
    stop: () => serverProcess.stop(),
  };
}

/**
 * Registers a user through Synapse's shared-secret admin API
 * (`/_synapse/admin/v1/register`: nonce, then an HMAC-SHA1 over nonce, user, password, admin).
 */
export async function registerWithSharedSecret(
  baseUrl: string,
  sharedSecret: string,
  localpart: string,
  opts: { password?: string; admin?: boolean } = {},
): Promise<RegisteredUser> {
  const url = `${baseUrl}/_synapse/admin/v1/register`;
  const nonceResponse = await fetch(url);
  if (!nonceResponse.ok) {
    throw new Error(
      `Synapse refused a registration nonce: ${nonceResponse.status} ${await nonceResponse.text()}`,
    );
  }
  const { nonce } = (await nonceResponse.json()) as { nonce: string };
  const password = opts.password ?? randomBytes(18).toString('base64url');
  const admin = opts.admin ?? false;
  const mac = createHmac('sha1', sharedSecret)
    .update(`${nonce}\0${localpart}\0${password}\0${admin ? 'admin' : 'notadmin'}`)
    .digest('hex');
  const response = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ nonce, username: localpart, password, admin, mac }),
  });
  if (!response.ok) {
    throw new Error(`Synapse refused to register ${localpart}: ${response.status} ${await response.text()}`);
  }
  const body = (await response.json()) as { user_id: string; access_token: string; device_id: string };
  return { userId: body.user_id, accessToken: body.access_token, deviceId: body.device_id, password };
}
