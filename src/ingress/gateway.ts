// The Matrix gateway: bot accounts that sync their rooms, read commands, start jobs and signal
// approvals (of plans, and of calls on approval cards, by command or reaction) in Temporal, and
// host the Matrix I/O activities the job workflows call.
//
// At least once, never twice: the sync token of an account is saved only after every event of
// the batch before it was handled (a job start or a signal accepted by Temporal), so a crash
// between the two loses nothing; the next start syncs from the saved token and the same events
// come again. Temporal makes the repeat harmless: a job's workflow id is derived from its
// request event (a second start is refused) and approvals and card answers are deduplicated by
// event id.
import { createServer, type Server } from 'node:http';
import {
  Client,
  Connection,
  isGrpcServiceError,
  ServiceError,
  WorkflowExecutionAlreadyStartedError,
  WorkflowNotFoundError,
} from '@temporalio/client';
import { WorkflowIdReusePolicy, type DataConverter } from '@temporalio/common';
import { NativeConnection, Worker } from '@temporalio/worker';
import {
  ClientEvent,
  createClient,
  Filter,
  MatrixError,
  MatrixEvent,
  MemoryStore,
  Method,
  SyncAccumulator,
  SyncState,
  type IRoomEvent,
  type ISyncResponse,
  type MatrixClient,
} from 'matrix-js-sdk';
import type { ISavedSync } from 'matrix-js-sdk/lib/store/index.js';
import { decodeRecoveryKey, EventShieldColour } from 'matrix-js-sdk/lib/crypto-api/index.js';
import type { Logger } from 'pino';
import { ClawgateError, ERROR_CODES } from '../errors.ts';
import { FilePolicyRegistry } from '../policy/registry.ts';
import type { Wpc } from '../policy/wpc.ts';
import { canonicalHash, sha256Hex } from '../policy/canonical.ts';
import {
  approvalSignal,
  callDecisionSignal,
  cancelSignal,
  jobStaticSummary,
  statusQuery,
  type ApprovalAttempt,
  type CallDecisionAttempt,
  type JobRequest,
} from '../temporal/job-contract.ts';
import { JOB_ROOM, JOB_STATUS, startingSearchAttributes } from '../temporal/search-attributes.ts';
import { join } from 'node:path';
import { AccountState, type Credentials } from './account-state.ts';
import {
  CryptoStateFile,
  KEY_REQUESTS,
  STORE_RECOVERY,
  processIndexedDb,
  restoreDatabases,
  snapshotDatabases,
  type CryptoState,
} from './crypto-store.ts';
import {
  annotationOf,
  DEFAULT_COMMAND_WORDS,
  jobRootInRoom,
  readCard,
  readCommand,
  readReaction,
  renderHelp,
  type Command,
  type CommandEvidence,
  type CommandWords,
} from './commands.ts';
import { clip } from './displayed.ts';
import { matrixTaskQueueOf, type AccountConfig, type GatewayConfig } from './config.ts';
import { isJobWorkflowId, jobWorkflowIds, shortJobId, SHORT_JOB_ID } from './job-ids.ts';
import { decryptAhead, HeldBackNotices } from './held-back.ts';
import { createMatrixActivities, threadRelation } from './matrix-io.ts';
import { quietMatrixSdkLogging, routeRoutineSdkWarnings, sdkLogger } from './sdk-logging.ts';
import { GatewayMetrics, type GatewayApprovalRefusal } from '../metrics/gateway.ts';
import { answerMetrics, METRICS_PATH, registerTemporalReachable } from '../metrics/prometheus.ts';
import type { ApprovalVerdict } from '../temporal/job-types.ts';
import { TEMPORAL_CHANNEL_ARGS, watchTemporal, type TemporalWatch } from '../temporal/reachability.ts';
import { formatDuration, Outage, type OutageStatus } from '../stack/outages.ts';
import { routeTemporalConnectionWarnings } from '../stack/logging.ts';

/**
 * Faults a test can inject through CLAWGATE_GATEWAY_FAULT, to crash at the exact point the
 * at-least-once design is about.
 */
export const GATEWAY_FAULTS = {
  /** Die (SIGKILL) after a batch started a job or sent a signal, before its sync token is saved. */
  crashBeforeSyncToken: 'crash-before-sync-token',
  /** Die (SIGKILL) right after the homeserver answered a key upload. */
  crashAfterKeyUpload: 'crash-after-key-upload',
} as const;

/** Timeline events per room and sync; a longer gap is read back with /messages. */
const TIMELINE_LIMIT = 50;
/** Pages of 100 events read back over one gap at most. */
const GAP_PAGES = 20;
/** Sync batches that may wait, received, while one is held back for Temporal (see GatewayAccount.onBatch). */
const MAX_BATCHES_AHEAD = 100;
const LATENCY_SAMPLES = 1000;

export interface AccountHealth {
  id: string;
  userId: string;
  state: 'starting' | 'syncing' | 'catching-up' | 'error' | 'stopped' | 'failed';
  syncState: string | null;
  /** When the last batch was fully handled and its token saved. */
  lastSyncAt: string | null;
  /** Milliseconds since then. */
  syncLagMs: number | null;
  /** Server time of the last event handled to the moment it was handled. */
  eventLagMs: number | null;
  handledEvents: number;
  startedJobs: number;
  signals: number;
  refusedEvents: number;
  /** A transient failure (Temporal or the homeserver unreachable) holding the sync back, and for how long (ms). */
  blocked: { since: string; reason: string; forMs: number } | null;
  /** Whether the account's homeserver answers its sync and calls, since when and for how long. */
  homeserver: OutageStatus;
  error: string | null;
  /** Whether the account uses encryption, and whether its crypto module is working. */
  encryption: {
    enabled: boolean;
    available: boolean;
    error: string | null;
    /** The server-side key backup, when a recovery key is configured. */
    backup: { version: string | null; restored: number; error: string | null } | null;
  };
  /** Event reaching the gateway to job start accepted by Temporal, over the last starts. */
  startLatencyMs: { count: number; p50: number | null; p99: number | null };
}

export interface GatewayOptions {
  logger: Logger;
  /**
   * The payload codec of every Temporal client and worker (src/temporal/codec.ts): the jobs'
   * inputs, signals and queries are encrypted, and the gateway must read and write them so.
   */
  dataConverter: DataConverter;
  fault?: string;
}

interface EventContext {
  roomId: string;
  eventId: string;
  sender: string;
  originServerTs: number;
  threadRoot?: string;
  receivedAt: number;
  /** For a decrypted event: whether its sending device is verified by its owner's cross-signing. */
  senderDeviceVerified?: boolean;
  /** The message an answer replies to, when not the event itself (a reaction's card). */
  replyTo?: string;
}

interface JobTarget {
  workflowId: string;
  /** The old-form id the same job may run under when it was started before the short form. */
  legacyWorkflowId?: string;
  jobId: string;
  /** The job's room, when known before asking the job. */
  roomId: string | null;
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** A failure of a call to Temporal worth waiting out: it is down or busy, not the request wrong. */
export function isTemporalUnavailable(error: unknown): boolean {
  return (error instanceof ServiceError || isGrpcServiceError(error)) && isTransient(error);
}

/** Failures worth waiting out: the service is down or busy, not the request wrong. */
export function isTransient(error: unknown): boolean {
  const grpc = error instanceof ServiceError ? error.cause : error;
  if (isGrpcServiceError(grpc)) {
    // UNKNOWN, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED, INTERNAL, UNAVAILABLE
    return [2, 4, 8, 10, 13, 14].includes(grpc.code);
  }
  if (error instanceof ServiceError) return true;
  if (error instanceof MatrixError) return error.httpStatus === 429 || (error.httpStatus ?? 500) >= 500;
  const name = (error as { name?: string } | null)?.name;
  return name === 'ConnectionError' || name === 'TimeoutError' || name === 'AbortError';
}

/** SHA-256 of an event's content as canonical JSON (of its JSON text when it has none). */
function contentSha256(content: unknown): string {
  try {
    return canonicalHash(content);
  } catch {
    return sha256Hex(String(JSON.stringify(content)));
  }
}

function percentile(sorted: number[], p: number): number | null {
  if (sorted.length === 0) return null;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] as number;
}

/** A Temporal visibility query literal; refuses what it cannot quote safely. */
function literal(value: string): string {
  if (/['"\\\n]/.test(value)) {
    throw new ClawgateError(ERROR_CODES.usage, `cannot look up ${JSON.stringify(value)}: it holds a quote`);
  }
  return `'${value}'`;
}

/**
 * The account's sync store: the sync token, saved once the batch before it was handled, and
 * (for an account with encryption) the accumulated room state, so that after a restart the
 * client knows every room it is in, and which are encrypted, before it sends anything.
 */
class HandledSyncStore extends MemoryStore {
  private readonly account: GatewayAccount;
  constructor(account: GatewayAccount) {
    super();
    this.account = account;
  }
  override getSavedSyncToken(): Promise<string | null> {
    return Promise.resolve(this.account.savedSyncToken());
  }
  override getSavedSync(): Promise<ISavedSync | null> {
    return Promise.resolve(this.account.savedSync());
  }
  override async setSyncData(data: ISyncResponse): Promise<void> {
    await this.account.onBatch(data);
  }
}

let ignoringAborts = false;

/**
 * From a stop on, a request aborted by that stop and left unawaited is not a crash, nor is the
 * Temporal client's retry of a call (one held back while Temporal is away) that finds its
 * connection closed by the stop; anything else still is.
 */
function ignoreAbortsFromNowOn(): void {
  if (ignoringAborts) return;
  ignoringAborts = true;
  process.on('unhandledRejection', (reason) => {
    if (reason instanceof Error && reason.name === 'AbortError') return;
    throw reason;
  });
  process.on('uncaughtException', (error) => {
    if (error.message === 'Channel has been shut down') return;
    console.error(error);
    process.exit(1);
  });
}

export class GatewayAccount {
  readonly config: AccountConfig;
  readonly rooms: ReadonlySet<string>;
  readonly matrixTaskQueue: string;
  private readonly gateway: Gateway;
  private readonly log: Logger;
  private readonly state: AccountState;
  /** Whether the homeserver answers: one warning when it stops, one line when it is back. */
  readonly homeserver: Outage;
  private client: MatrixClient | null = null;
  /** The encrypted crypto store (with the sync position and room state), for accounts with encryption. */
  private cryptoFile: CryptoStateFile | null = null;
  private accumulator: SyncAccumulator | null = null;
  private restoredSync: ISavedSync | null = null;
  private persisting: Promise<void> = Promise.resolve();
  private encryption: AccountHealth['encryption'] = {
    enabled: false,
    available: false,
    error: null,
    backup: null,
  };
  private worker: Worker | null = null;
  private workerRun: Promise<void> | null = null;
  private stopping = false;
  private lastToken: string | null = null;
  private readonly latencies: number[] = [];
  private readonly stats = {
    state: 'starting' as AccountHealth['state'],
    syncState: null as string | null,
    lastSyncAt: null as number | null,
    eventLagMs: null as number | null,
    handledEvents: 0,
    startedJobs: 0,
    signals: 0,
    refusedEvents: 0,
    blocked: null as { since: number; reason: string; by: 'temporal' | 'homeserver' } | null,
    error: null as string | null,
  };
  /** What a command that arrives while Temporal cannot be reached is told. */
  private readonly heldBack: HeldBackNotices;
  /** The sync batches, handled one after another (see onBatch). */
  private batches: Promise<void> = Promise.resolve();
  private batchesWaiting = 0;
  /** The SDK's waits for a batch, ended when its handling is held back for Temporal. */
  private readonly releaseOnHold = new Set<() => void>();

  constructor(config: AccountConfig, gateway: Gateway) {
    this.config = config;
    this.gateway = gateway;
    this.rooms = new Set(config.rooms);
    this.matrixTaskQueue = matrixTaskQueueOf(config);
    this.log = gateway.log.child({ account: config.id });
    this.state = new AccountState(gateway.config.stateDir, config.id);
    this.homeserver = new Outage({
      service: 'the homeserver',
      log: this.log,
      impact: 'events are handled once it answers again',
    });
    this.heldBack = new HeldBackNotices({
      userId: config.userId,
      rooms: this.rooms,
      matrix: () => this.matrix,
      words: () => this.commandWords(),
      // Without crypto nothing encrypted is read ahead (the sync says why, once).
      decrypt: async (_roomId, raw) =>
        this.encryption.available ? await decryptAhead(this.matrix, raw) : null,
      send: (command, body) => this.reply(command, body, 'held'),
      log: this.log,
    });
  }

  get userId(): string {
    return this.config.userId;
  }

  get channel(): string {
    return this.config.channel ?? this.gateway.config.policy.channel;
  }

  /** The Matrix client, once started (tests and benchmarks read it). */
  get matrix(): MatrixClient {
    if (!this.client) throw new Error(`account ${this.config.id} is not started`);
    return this.client;
  }

  savedSyncToken(): string | null {
    return this.lastToken;
  }

  async start(): Promise<void> {
    this.state.lock();
    try {
      const credentials = await this.login();
      this.lastToken = this.state.syncToken();
      let restored: CryptoState | null = null;
      if (this.config.encryption) {
        this.encryption.enabled = true;
        this.cryptoFile = new CryptoStateFile(
          join(this.state.dir, 'crypto-store.bin'),
          join(this.gateway.config.stateDir, 'store-keys', `${this.config.id}.key`),
        );
        // A damaged store stops this account only, with the file and the way out named.
        restored = this.cryptoFile.read();
        if (!restored) await this.refuseLostStore(credentials, this.cryptoFile.path);
        this.accumulator = new SyncAccumulator();
        if (restored) {
          this.lastToken = restored.syncToken;
          this.restoredSync = (restored.savedSync as ISavedSync | null) ?? null;
          if (this.restoredSync) {
            this.accumulator.accumulate(
              {
                next_batch: this.restoredSync.nextBatch,
                rooms: this.restoredSync.roomsData,
                account_data: { events: this.restoredSync.accountData },
              },
              true,
            );
          }
        }
      }
      const client = createClient({
        baseUrl: credentials.homeserverUrl,
        userId: credentials.userId,
        deviceId: credentials.deviceId,
        accessToken: credentials.accessToken,
        store: new HandledSyncStore(this),
        logger: sdkLogger(this.log),
        fetchFn: (input, init) => this.fetchPersistingFirst(input, init),
      });
      this.client = client;
      if (this.config.encryption) await this.startCrypto(client, restored);
      client.on(ClientEvent.Sync, (syncState: SyncState, _previous: unknown, data?: { error?: Error }) => {
        this.stats.syncState = syncState;
        if (syncState === SyncState.Error || syncState === SyncState.Reconnecting) {
          this.homeserver.failed(data?.error ?? `sync ${syncState.toLowerCase()}`);
        } else if (syncState === SyncState.Syncing || syncState === SyncState.Prepared) {
          this.homeserver.answered();
        }
      });
      // The Matrix I/O worker starts once Temporal answers (it has nothing to do before); the
      // sync does not wait for it.
      this.workerRun = this.runMatrixWorker(client);
      const filter = new Filter(credentials.userId);
      filter.setDefinition({
        room: { timeline: { limit: TIMELINE_LIMIT }, state: { lazy_load_members: true } },
      });
      await client.startClient({ filter, initialSyncLimit: 1, lazyLoadMembers: true });
      this.log.info(
        { userId: credentials.userId, deviceId: credentials.deviceId, rooms: this.config.rooms },
        this.lastToken ? 'resuming from the saved sync position' : 'first start of this state folder',
      );
    } catch (error) {
      this.stats.state = 'failed';
      this.stats.error = (error as Error).message;
      await this.stop();
      throw error;
    }
  }

  /** Hosts the Matrix I/O activities the job workflows call, once Temporal answers. */
  private async runMatrixWorker(client: MatrixClient): Promise<void> {
    try {
      const connection = await this.gateway.workerConnection();
      if (!connection || this.stopping) return;
      const worker = await Worker.create({
        connection,
        namespace: this.gateway.config.temporal.namespace,
        taskQueue: this.matrixTaskQueue,
        dataConverter: this.gateway.dataConverter,
        activities: createMatrixActivities(client, {
          onVerdict: (verdict) => this.gateway.metrics.jobVerdict(this.config.id, verdict),
        }),
      });
      this.worker = worker;
      const run = worker.run();
      // Stopped while it was being made: shut down at once (stop() found no worker to shut down).
      if (this.stopping) worker.shutdown();
      this.log.debug({ taskQueue: this.matrixTaskQueue }, 'the Matrix I/O worker runs');
      await run;
    } catch (error) {
      if (this.stopping) return;
      this.stats.state = 'failed';
      this.stats.error = `Matrix I/O worker stopped: ${(error as Error).message}`;
      this.log.error({ err: error }, 'the Matrix I/O worker stopped');
    }
  }

  private async login(): Promise<Credentials> {
    const { config } = this;
    const saved = this.state.credentials();
    const matches =
      saved?.userId === config.userId &&
      saved.homeserverUrl === config.homeserverUrl &&
      (config.accessToken === undefined || config.accessToken === saved.accessToken);
    if (saved && matches) return saved;
    let credentials: Credentials;
    if (config.accessToken) {
      const probe = createClient({
        baseUrl: config.homeserverUrl,
        accessToken: config.accessToken,
        logger: sdkLogger(this.log),
      });
      const who = await probe.whoami();
      if (who.user_id !== config.userId) {
        throw new ClawgateError(
          ERROR_CODES.configInvalid,
          `account ${config.id}: the access token belongs to ${who.user_id}, not ${config.userId}`,
        );
      }
      if (!who.device_id) {
        throw new ClawgateError(
          ERROR_CODES.configInvalid,
          `account ${config.id}: the access token has no device; log in with a password instead`,
        );
      }
      credentials = {
        homeserverUrl: config.homeserverUrl,
        userId: who.user_id,
        deviceId: who.device_id,
        accessToken: config.accessToken,
      };
    } else {
      const probe = createClient({ baseUrl: config.homeserverUrl, logger: sdkLogger(this.log) });
      const res = await probe.loginRequest({
        type: 'm.login.password',
        identifier: { type: 'm.id.user', user: config.userId },
        password: config.password,
        initial_device_display_name: `clawgate gateway (${config.id})`,
      });
      credentials = {
        homeserverUrl: config.homeserverUrl,
        userId: res.user_id,
        deviceId: res.device_id,
        accessToken: res.access_token,
      };
      this.log.info({ deviceId: res.device_id }, 'logged in with the password; the token is kept');
    }
    this.state.saveCredentials(credentials);
    return credentials;
  }

  /**
   * No crypto store here, yet the homeserver holds keys of this device: the store was deleted
   * (or the folder copied without it). A new store would make new keys under the same device, which
   * the homeserver and every other member would refuse, so the account stops with the way out.
   */
  private async refuseLostStore(credentials: Credentials, path: string): Promise<void> {
    const probe = createClient({
      baseUrl: credentials.homeserverUrl,
      accessToken: credentials.accessToken,
      logger: sdkLogger(this.log),
    });
    const known = await this.retrying("ask the homeserver for this device's keys", () =>
      probe.http.authedRequest<{ device_keys?: Record<string, Record<string, unknown>> }>(
        Method.Post,
        '/keys/query',
        undefined,
        { device_keys: { [credentials.userId]: [credentials.deviceId] } },
      ),
    );
    if (known.device_keys?.[credentials.userId]?.[credentials.deviceId]) {
      throw new ClawgateError(
        ERROR_CODES.stateCorrupt,
        `${path} is missing, but the homeserver already holds the keys of device ${credentials.deviceId}: ` +
          `the keys that go with them are lost; ${STORE_RECOVERY}`,
      );
    }
  }

  private get cryptoPrefix(): string {
    return `clawgate-${this.config.id}`;
  }

  /**
   * Loads and starts the Rust crypto (WebAssembly, loaded at runtime). If it fails, the account
   * goes on without it: plain rooms keep working, health and the log say what failed.
   */
  private async startCrypto(client: MatrixClient, restored: CryptoState | null): Promise<void> {
    try {
      const factory = processIndexedDb();
      const present = (await factory.databases()).some((d) => d.name?.startsWith(this.cryptoPrefix));
      if (restored && !present) {
        await restoreDatabases(
          factory,
          restored.databases.filter((d) => d.name.startsWith(this.cryptoPrefix)),
        );
      }
      await client.initRustCrypto({ cryptoDatabasePrefix: this.cryptoPrefix });
      this.encryption.available = true;
      if (this.config.recoveryKey) await this.startKeyBackup(client, this.config.recoveryKey);
      this.log.info(
        { restored: restored !== null },
        restored ? 'encryption ready (crypto store restored)' : 'encryption ready (new crypto store)',
      );
    } catch (error) {
      this.encryption.available = false;
      this.encryption.error = (error as Error).message;
      this.log.error(
        { err: error },
        'encryption is unavailable: the crypto module failed to load or start; plain rooms keep working',
      );
    }
  }

  /**
   * Server-side key backup under the recovery key from the configuration: made when the server
   * has none, enabled when the key matches it, and restored from, so a new device of the bot
   * (a lost state folder) gets the room keys back. A failure here leaves encryption working.
   */
  private async startKeyBackup(client: MatrixClient, recoveryKey: string): Promise<void> {
    try {
      const crypto = client.getCrypto();
      if (!crypto) return;
      const privateKey = decodeRecoveryKey(recoveryKey);
      let version = (await crypto.getKeyBackupInfo())?.version ?? null;
      if (!version) {
        // The wasm module is loaded by now (initRustCrypto did); it derives the public key.
        const { BackupDecryptionKey } = await import('@matrix-org/matrix-sdk-crypto-wasm');
        const key = BackupDecryptionKey.fromBase64(
          Buffer.from(privateKey).toString('base64').replace(/=+$/, ''),
        );
        const made = await client.http.authedRequest<{ version: string }>(
          Method.Post,
          '/room_keys/version',
          undefined,
          {
            algorithm: 'm.megolm_backup.v1.curve25519-aes-sha2',
            auth_data: { public_key: key.megolmV1PublicKey.publicKeyBase64 },
          },
        );
        version = made.version;
        this.log.info({ version }, 'made a key backup on the server');
      }
      await crypto.storeSessionBackupPrivateKey(privateKey, version);
      // A fresh check (the first one is cached) finds the version and enables uploads to it.
      const check = await crypto.checkKeyBackupAndEnable();
      if (check?.backupInfo.version !== version || !check.trustInfo.matchesDecryptionKey) {
        throw new Error(
          `the recovery key does not open the server's key backup (version ${check?.backupInfo.version ?? 'none'})`,
        );
      }
      const restored = await crypto.restoreKeyBackup();
      this.encryption.backup = { version, restored: restored.imported, error: null };
      this.log.info(
        { version, total: restored.total, imported: restored.imported },
        'key backup enabled; room keys restored from it',
      );
    } catch (error) {
      this.encryption.backup = { version: null, restored: 0, error: (error as Error).message };
      this.log.error({ err: error }, 'key backup unavailable; encryption works without it');
    }
  }

  /** Writes the crypto store with the sync position and room state it agrees with. */
  private persistCrypto(syncToken: string | null): Promise<void> {
    const file = this.cryptoFile;
    if (!file || !this.encryption.available) return Promise.resolve();
    const run = async (): Promise<void> => {
      const databases = await snapshotDatabases(processIndexedDb(), this.cryptoPrefix);
      const saved = this.accumulator?.getJSON(true) ?? null;
      file.write({ syncToken, savedSync: saved, databases });
    };
    this.persisting = this.persisting.then(run, run);
    return this.persisting;
  }

  /** Before any request that tells the homeserver about keys, the keys are on disk. */
  private async fetchPersistingFirst(input: RequestInfo | URL, init?: RequestInit): Promise<Response> {
    const url = typeof input === 'string' ? input : input instanceof URL ? input.href : input.url;
    const keyRequest = KEY_REQUESTS.test(url);
    if (this.cryptoFile && this.encryption.available && keyRequest) {
      await this.persistCrypto(this.lastToken);
    }
    const response = await fetch(input, init);
    if (
      keyRequest &&
      /\/keys\/upload/.test(url) &&
      this.gateway.fault === GATEWAY_FAULTS.crashAfterKeyUpload
    ) {
      this.log.warn('fault injected: dying right after a key upload');
      process.kill(process.pid, 'SIGKILL');
      await new Promise(() => {});
    }
    return response;
  }

  savedSync(): ISavedSync | null {
    return this.restoredSync;
  }

  async stop(): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    // Stopped while the SDK prepares its first /sync, the SDK still sends that request (with the
    // aborted signal) and then leaves its rejection unawaited; without this the process would end
    // with an unhandled rejection after a clean stop.
    ignoreAbortsFromNowOn();
    this.client?.stopClient();
    // A worker not made yet (Temporal has not answered) sees the stop when it is.
    if (this.worker) {
      if (this.worker.getState() === 'RUNNING') this.worker.shutdown();
      await this.workerRun;
    }
    if (this.stats.state !== 'failed') this.stats.state = 'stopped';
    this.state.unlock();
  }

  health(now = Date.now()): AccountHealth {
    const sorted = [...this.latencies].sort((a, b) => a - b);
    let state = this.stats.state;
    if (state !== 'failed' && state !== 'stopped') {
      if (this.stats.syncState === SyncState.Error || this.stats.syncState === SyncState.Reconnecting) {
        state = 'error';
      } else if (this.stats.blocked) state = 'catching-up';
      else if (this.stats.lastSyncAt !== null) state = 'syncing';
    }
    return {
      id: this.config.id,
      userId: this.config.userId,
      state,
      syncState: this.stats.syncState,
      lastSyncAt: this.stats.lastSyncAt === null ? null : new Date(this.stats.lastSyncAt).toISOString(),
      syncLagMs: this.stats.lastSyncAt === null ? null : now - this.stats.lastSyncAt,
      eventLagMs: this.stats.eventLagMs,
      handledEvents: this.stats.handledEvents,
      startedJobs: this.stats.startedJobs,
      signals: this.stats.signals,
      refusedEvents: this.stats.refusedEvents,
      blocked: this.stats.blocked && {
        since: new Date(this.stats.blocked.since).toISOString(),
        reason: this.stats.blocked.reason,
        forMs: now - this.stats.blocked.since,
      },
      homeserver: this.homeserver.status(),
      error: this.stats.error,
      encryption: { ...this.encryption },
      startLatencyMs: { count: sorted.length, p50: percentile(sorted, 50), p99: percentile(sorted, 99) },
    };
  }

  /** The latencies behind `health().startLatencyMs`, for benchmarks. */
  startLatencies(): readonly number[] {
    return this.latencies;
  }

  /**
   * A sync batch, from the SDK: handled in order after the batches before it. The SDK waits for
   * it (its next /sync is not sent before) unless the handling is held back for Temporal: then
   * the SDK goes on syncing, so that the room keys of the messages after the held one arrive
   * (to-device messages come only with /sync) and the read-ahead can decrypt and tell them. The
   * crypto store is written first: the next /sync acknowledges this batch's to-device messages,
   * and the homeserver deletes them then. The saved sync position stays at the last batch handled,
   * so a crash loses nothing; at most MAX_BATCHES_AHEAD batches wait, then the SDK waits again.
   */
  async onBatch(data: ISyncResponse): Promise<void> {
    const handled = this.batches.then(() => this.handleBatch(data));
    this.batches = handled.catch((error: unknown) => {
      this.log.error({ err: error }, 'a sync batch could not be handled');
    });
    this.batchesWaiting += 1;
    void this.batches.finally(() => {
      this.batchesWaiting -= 1;
    });
    let release: (() => void) | undefined;
    const held = new Promise<'held'>((resolve) => {
      release = () => resolve('held');
      if (this.stats.blocked?.by === 'temporal') release();
      else this.releaseOnHold.add(release);
    });
    try {
      const outcome = await Promise.race([handled.then(() => 'handled' as const), held]);
      if (outcome === 'handled' || this.batchesWaiting > MAX_BATCHES_AHEAD) {
        await handled;
        return;
      }
      await this.persistCrypto(this.lastToken);
    } finally {
      if (release) this.releaseOnHold.delete(release);
    }
  }

  /** Handles one sync batch; its token is saved only when every event before it is handled. */
  private async handleBatch(data: ISyncResponse): Promise<void> {
    const since = this.lastToken;
    const receivedAt = Date.now();
    let acted = false;
    for (const roomId of Object.keys(data.rooms?.invite ?? {})) {
      if (this.stopping) return;
      await this.onInvite(roomId);
    }
    if (since === null) {
      this.log.info('first sync of this state folder: messages from before now are not acted on');
    } else {
      for (const [roomId, room] of Object.entries(data.rooms?.join ?? {})) {
        if (!this.rooms.has(roomId)) continue;
        let events: IRoomEvent[] = room.timeline?.events ?? [];
        if (room.timeline?.limited && room.timeline.prev_batch) {
          events = [...(await this.readGap(roomId, room.timeline.prev_batch, since)), ...events];
        }
        // Messages from before the bot joined are history, not requests to it.
        const joinedAt = events.findLastIndex(
          (e) =>
            e.type === 'm.room.member' &&
            (e as { state_key?: string }).state_key === this.userId &&
            isRecord(e.content) &&
            e.content['membership'] === 'join' &&
            !(
              isRecord(e.unsigned) &&
              isRecord(e.unsigned['prev_content']) &&
              e.unsigned['prev_content']['membership'] === 'join'
            ),
        );
        for (const raw of events.slice(joinedAt + 1)) {
          if (this.stopping) return;
          if (await this.handleWithRetry(roomId, raw, receivedAt)) acted = true;
        }
      }
    }
    if (this.stopping) return;
    if (acted && this.gateway.fault === GATEWAY_FAULTS.crashBeforeSyncToken) {
      this.log.warn('fault injected: dying before the sync token is saved');
      process.kill(process.pid, 'SIGKILL');
      await new Promise(() => {});
    }
    if (this.cryptoFile && this.encryption.available) {
      // One atomic write: the crypto store, the room state and the sync position agree.
      this.accumulator?.accumulate(data);
      await this.persistCrypto(data.next_batch);
    } else {
      this.state.saveSyncToken(data.next_batch);
    }
    this.lastToken = data.next_batch;
    this.stats.lastSyncAt = Date.now();
  }

  private async onInvite(roomId: string): Promise<void> {
    if (!this.rooms.has(roomId)) {
      this.log.info({ roomId }, "invite to a room not on this account's list: not accepted");
      return;
    }
    await this.retrying(`join ${roomId}`, async () => {
      await this.matrix.joinRoom(roomId);
    });
    this.log.info({ roomId }, 'joined an allowlisted room');
  }

  /** Events between `from` (a timeline's prev_batch) and `to` (the last sync token), oldest first. */
  private async readGap(roomId: string, from: string, to: string): Promise<IRoomEvent[]> {
    const found: IRoomEvent[] = [];
    let token = from;
    for (let page = 0; page < GAP_PAGES; page++) {
      const res = await this.retrying(`read back ${roomId}`, () =>
        this.matrix.http.authedRequest<{ chunk?: IRoomEvent[]; end?: string }>(
          Method.Get,
          `/rooms/${encodeURIComponent(roomId)}/messages`,
          { from: token, to, dir: 'b', limit: '100' },
        ),
      );
      const chunk = res.chunk ?? [];
      found.push(...chunk);
      if (!res.end || chunk.length === 0) {
        this.log[found.length > 0 ? 'info' : 'debug'](
          { roomId, events: found.length },
          'read back the events of a sync gap',
        );
        return found.reverse();
      }
      token = res.end;
    }
    this.log.error(
      { roomId, read: found.length },
      'a sync gap longer than the read-back limit; older events are not handled',
    );
    return found.reverse();
  }

  /**
   * Runs `fn` until it succeeds or fails for good; transient failures hold the sync back. One
   * caused by Temporal or the homeserver not answering is part of that service's outage, which
   * the log says once when it begins and once when it ends, however often this retries.
   */
  private async retrying<T>(what: string, fn: () => Promise<T>): Promise<T> {
    for (let attempt = 0; ; attempt++) {
      const began = Date.now();
      try {
        const result = await fn();
        const held = this.stats.blocked;
        this.stats.blocked = null;
        if (held?.by === 'temporal') this.gateway.temporalOutage.answered();
        if (held?.by === 'homeserver') this.homeserver.answered();
        if (held) this.log.debug({ what, heldMs: Date.now() - held.since }, 'held-back work done');
        return result;
      } catch (error) {
        if (this.stopping || !isTransient(error)) throw error;
        const reason = `${what}: ${(error as Error).message}`;
        // Every other transient failure here is of a call to the homeserver.
        const by = isTemporalUnavailable(error) ? 'temporal' : 'homeserver';
        (by === 'temporal' ? this.gateway.temporalOutage : this.homeserver).failed(error, began);
        if (by === 'temporal') {
          this.readAheadWhileHeld();
          // The SDK need not wait for this batch any more (see onBatch).
          for (const release of [...this.releaseOnHold]) release();
        }
        if (!this.stats.blocked) {
          this.stats.blocked = { since: Date.now(), reason, by };
          this.log.debug({ err: error }, `${what} failed; retrying until it works`);
        } else {
          this.stats.blocked.reason = reason;
          this.stats.blocked.by = by;
        }
        await new Promise((r) => setTimeout(r, Math.min(30_000, 250 * 2 ** Math.min(attempt, 7))));
      }
    }
  }

  /**
   * Runs the Temporal side of a command; while Temporal cannot be reached, the command's thread
   * is told once that it is received and waits (the sync is held back and the event handled
   * again once Temporal answers). The notice's transaction id comes from the event's id, so a
   * restart during the outage does not post it twice.
   */
  private async actingOn<T>(ctx: EventContext, act: () => Promise<T>): Promise<T> {
    // Known to be away: said at once, not only after the call's own retries have given up.
    if (this.gateway.temporalOutage.down) {
      await this.heldBack.tell(ctx);
      this.readAheadWhileHeld();
    }
    try {
      return await act();
    } catch (error) {
      if (isTemporalUnavailable(error) && !this.stopping) await this.heldBack.tell(ctx);
      throw error;
    }
  }

  /** While the sync is held back for Temporal, the commands after the held event are told too. */
  private readAheadWhileHeld(): void {
    if (this.lastToken === null) return;
    this.heldBack.readAhead(
      this.lastToken,
      () => !this.stopping && (this.stats.blocked?.by === 'temporal' || this.gateway.temporalOutage.down),
    );
  }

  /** Handles one event; returns whether it started a job or sent a signal. */
  private async handleWithRetry(roomId: string, raw: IRoomEvent, receivedAt: number): Promise<boolean> {
    try {
      return await this.retrying(`event ${raw.event_id}`, () => this.handleEvent(roomId, raw, receivedAt));
    } catch (error) {
      if (this.stopping) return false;
      this.stats.refusedEvents += 1;
      this.log.error({ err: error, roomId, eventId: raw.event_id }, 'an event could not be handled; skipped');
      return false;
    }
  }

  /** The clear type and content of an encrypted event, or null (said in the log) when it cannot be read. */
  private async decrypt(
    roomId: string,
    raw: IRoomEvent,
  ): Promise<{ type: string; content: unknown; verified: boolean } | null> {
    if (!this.encryption.available) {
      this.stats.refusedEvents += 1;
      this.log.warn({ roomId, eventId: raw.event_id }, 'an encrypted message, and encryption is unavailable');
      await this.noticeOnce(
        roomId,
        'clawgate cannot read encrypted messages right now: its encryption module is unavailable (see its health endpoint).',
      );
      return null;
    }
    const event = this.matrix.getRoom(roomId)?.findEventById(raw.event_id) ?? new MatrixEvent(raw);
    await this.matrix.decryptEventIfNeeded(event);
    if (event.isDecryptionFailure() || event.getType() === 'm.room.encrypted') {
      this.stats.refusedEvents += 1;
      this.log.warn(
        { roomId, eventId: raw.event_id, reason: event.decryptionFailureReason },
        'unable to decrypt a message',
      );
      return null;
    }
    // No shield (in the SDK's default, non-strict reading) means the device is cross-signed by
    // its owner; an unsigned or unknown device, or a mismatched key, shows a shield.
    const info = await this.matrix.getCrypto()?.getEncryptionInfoForEvent(event);
    const verified = info?.shieldColour === EventShieldColour.NONE;
    return { type: event.getType(), content: event.getContent(), verified };
  }

  private readonly noticed = new Set<string>();
  /** A plain notice, once per room and process, where nothing else can be said. */
  private async noticeOnce(roomId: string, body: string): Promise<void> {
    if (this.noticed.has(roomId)) return;
    this.noticed.add(roomId);
    // Sent as it is, past the SDK, which refuses to send in an encrypted room without crypto:
    // this fixed notice is all that is ever said in clear there.
    const txnId = `notice.${Buffer.from(roomId).toString('base64url').slice(0, 100)}.${Date.now()}`;
    await this.matrix.http.authedRequest(
      Method.Put,
      `/rooms/${encodeURIComponent(roomId)}/send/m.room.message/${encodeURIComponent(txnId)}`,
      undefined,
      { msgtype: 'm.notice', body },
    );
  }

  private commandWords(): CommandWords {
    const policy = this.gateway.activePolicy(this.channel);
    if (!policy) return DEFAULT_COMMAND_WORDS;
    return {
      request: DEFAULT_COMMAND_WORDS.request,
      approve: policy.wpc.matrix.approval.approval_command,
      deny: policy.wpc.matrix.approval.deny_command,
    };
  }

  private async handleEvent(roomId: string, raw: IRoomEvent, receivedAt: number): Promise<boolean> {
    const eventId = raw.event_id;
    const sender = raw.sender;
    if (typeof eventId !== 'string' || typeof sender !== 'string') {
      this.stats.refusedEvents += 1;
      this.log.warn({ roomId }, 'an event without an event id or sender: ignored');
      return false;
    }
    if (sender === this.userId) return false;
    if (isRecord(raw.unsigned) && raw.unsigned['redacted_because'] !== undefined) return false;
    let type = raw.type;
    let content: unknown = raw.content;
    let senderDeviceVerified: boolean | undefined;
    const encrypted = type === 'm.room.encrypted';
    if (encrypted) {
      const clear = await this.decrypt(roomId, raw);
      if (!clear) return false;
      ({ type, content } = clear);
      senderDeviceVerified = clear.verified;
    }
    if (type === 'm.reaction') {
      return await this.handleReaction(roomId, raw, content, encrypted, senderDeviceVerified, receivedAt);
    }
    if (type !== 'm.room.message') return false;
    this.stats.handledEvents += 1;
    const words = this.commandWords();
    const reading = readCommand(content, { userId: this.userId }, words);
    if (reading.kind === 'none') return false;
    const ctx: EventContext = {
      roomId,
      eventId,
      sender,
      originServerTs: Number(raw.origin_server_ts) || 0,
      receivedAt,
      ...(reading.threadRoot ? { threadRoot: reading.threadRoot } : {}),
      ...(senderDeviceVerified !== undefined ? { senderDeviceVerified } : {}),
    };
    if (reading.kind === 'edit') return await this.answerEditOfCommand(ctx, reading.target, words);
    if (reading.kind === 'not-counted' || reading.kind === 'invalid') {
      this.stats.refusedEvents += 1;
      await this.reply(ctx, `${sender}: ${reading.kind === 'invalid' ? reading.error : reading.reason}`);
      return false;
    }
    this.stats.eventLagMs = Date.now() - ctx.originServerTs;
    const { command, evidence, mismatch } = reading;
    if (mismatch !== undefined) {
      this.stats.refusedEvents += 1;
      this.log.info(
        { roomId, eventId, sender, kind: command.kind, mismatch },
        'a command the room shows otherwise',
      );
      // An approval or denial still reaches its job, which refuses it and keeps the refusal.
      if (command.kind === 'approve' || command.kind === 'deny') {
        return await this.actingOn(ctx, () => this.signalApproval(ctx, command, words, evidence, mismatch));
      }
      if (command.kind === 'call-approve' || command.kind === 'call-deny') {
        return await this.actingOn(ctx, () =>
          this.signalCallDecision(ctx, command, words, evidence, mismatch),
        );
      }
      await this.reply(ctx, `${sender}: not acted on. ${mismatch}.`);
      return false;
    }
    // Help is answered from here; every other command needs Temporal.
    if (command.kind === 'help') return await this.dispatch(ctx, command, words, evidence);
    return await this.actingOn(ctx, () => this.dispatch(ctx, command, words, evidence));
  }

  /**
   * An edit changes what the room shows of a message, not what clawgate read in it: when the
   * edited message was a command, its sender is told the original stands and how to withdraw.
   */
  private async answerEditOfCommand(ctx: EventContext, target: string, words: CommandWords): Promise<false> {
    let original: IRoomEvent;
    try {
      original = (await this.matrix.fetchRoomEvent(ctx.roomId, target)) as IRoomEvent;
    } catch {
      return false; // not visible to the bot: nothing it read
    }
    if (original.sender !== ctx.sender) return false; // clients show no edit by someone else
    let content: unknown = original.content;
    if (original.type === 'm.room.encrypted') {
      const clear = await this.decrypt(ctx.roomId, original);
      if (!clear) return false;
      content = clear.content;
    } else if (original.type !== 'm.room.message') return false;
    const read = readCommand(content, { userId: this.userId }, words);
    if (read.kind !== 'command' || read.mismatch !== undefined) return false;
    const { kind } = read.command;
    if (!['approve', 'deny', 'call-approve', 'call-deny', 'cancel', 'request'].includes(kind)) return false;
    this.stats.refusedEvents += 1;
    const withdraw =
      kind === 'approve'
        ? `; to withdraw an approval, send ${words.deny} or !cancel`
        : kind === 'call-approve'
          ? '; to stop the job, send !cancel'
          : '';
    await this.reply(
      ctx,
      `${ctx.sender}: an edit does not change a command clawgate has read: "${clip(read.evidence.shown)}" stands as first sent (the job's evidence keeps it)${withdraw}.`,
    );
    return false;
  }

  private async dispatch(
    ctx: EventContext,
    command: Command,
    words: CommandWords,
    evidence: CommandEvidence,
  ): Promise<boolean> {
    switch (command.kind) {
      case 'help':
        await this.reply(ctx, renderHelp(words));
        return false;
      case 'request':
        return await this.startJob(ctx, command.text, evidence);
      case 'approve':
      case 'deny':
        return await this.signalApproval(ctx, command, words, evidence);
      case 'call-approve':
      case 'call-deny':
        return await this.signalCallDecision(ctx, command, words, evidence);
      case 'cancel':
        return await this.signalCancel(ctx, command.job, `${'!cancel'} [job]`);
      case 'status':
        await this.status(ctx, command.job);
        return false;
    }
  }

  private async startJob(ctx: EventContext, text: string, evidence: CommandEvidence): Promise<boolean> {
    if (ctx.threadRoot) {
      await this.reply(ctx, `${ctx.sender}: start a request as a new message in the room, not in a thread.`);
      return false;
    }
    const policy = this.gateway.activePolicy(this.channel);
    if (!policy) {
      this.stats.refusedEvents += 1;
      await this.reply(
        ctx,
        `${ctx.sender}: no policy is active for channel ${this.channel}, so nothing can run; an operator must activate one.`,
      );
      return false;
    }
    const refusal = await this.gateway.admit(ctx.roomId, ctx.sender, policy.wpc.matrix.limits);
    if (refusal) {
      this.stats.refusedEvents += 1;
      this.log.info(
        { roomId: ctx.roomId, sender: ctx.sender, eventId: ctx.eventId, refusal },
        'request refused',
      );
      await this.reply(ctx, `${ctx.sender}: ${refusal}`);
      return false;
    }
    const { workflowId, legacy } = jobWorkflowIds(ctx.roomId, ctx.eventId);
    const jobId = shortJobId(workflowId);
    // A request whose job was started under the old id form, before an upgrade, is redelivered
    // too: Temporal's id uniqueness cannot see that one, so it is asked for by name.
    if (await this.exists(legacy)) {
      this.log.info({ workflowId: legacy }, 'request seen again (redelivered); its job was started before');
      return true;
    }
    const request: JobRequest = {
      roomId: ctx.roomId,
      requester: ctx.sender,
      eventId: ctx.eventId,
      text,
      channel: this.channel,
      matrixTaskQueue: this.matrixTaskQueue,
      jobId,
      content: { sha256: evidence.contentSha256, shown: evidence.shown },
      ...(ctx.originServerTs > 0 ? { originServerTs: ctx.originServerTs } : {}),
    };
    try {
      await this.gateway.temporal.workflow.start('jobWorkflow', {
        taskQueue: this.gateway.config.temporal.jobTaskQueue,
        workflowId,
        args: [request],
        workflowIdReusePolicy: WorkflowIdReusePolicy.REJECT_DUPLICATE,
        typedSearchAttributes: startingSearchAttributes({ jobId, roomId: ctx.roomId, requester: ctx.sender }),
        ...jobStaticSummary(request),
      });
    } catch (error) {
      if (error instanceof WorkflowExecutionAlreadyStartedError) {
        this.log.info({ workflowId }, 'request seen again (redelivered); its job was started before');
        return true;
      }
      throw error;
    }
    this.gateway.noteStart(ctx.roomId, ctx.sender, jobId, workflowId);
    this.stats.startedJobs += 1;
    this.latencies.push(Date.now() - ctx.receivedAt);
    if (this.latencies.length > LATENCY_SAMPLES) this.latencies.shift();
    this.log.info({ workflowId, jobId, roomId: ctx.roomId, requester: ctx.sender }, 'job started');
    return true;
  }

  /** Which job a command is about: the named one, or the thread's. */
  private async resolveJob(
    ctx: EventContext,
    named: string | undefined,
    usage: string,
  ): Promise<JobTarget | { error: string }> {
    if (named === undefined) {
      if (!ctx.threadRoot) return { error: `outside a job's thread, name the job: ${usage}` };
      return this.targetOf(ctx.roomId, ctx.threadRoot);
    }
    if (named.startsWith('$')) return this.targetOf(ctx.roomId, named);
    if (isJobWorkflowId(named)) return { workflowId: named, jobId: shortJobId(named), roomId: null };
    if (SHORT_JOB_ID.test(named)) {
      const found = await this.gateway.findJob(named);
      if (!found) return { error: `there is no job ${named} (the id is in the job's plan message)` };
      return { workflowId: found.workflowId, jobId: named, roomId: found.roomId };
    }
    return { error: `"${named}" is not a job id` };
  }

  private async signalApproval(
    ctx: EventContext,
    command: Extract<Command, { kind: 'approve' | 'deny' }>,
    words: CommandWords,
    evidence: CommandEvidence,
    mismatch?: string,
  ): Promise<boolean> {
    const usage = command.kind === 'approve' ? `${words.approve} <job>` : `${words.deny} <job> [reason]`;
    const target = await this.resolveJob(ctx, command.job, usage);
    if ('error' in target) {
      this.stats.refusedEvents += 1;
      this.approvalRefused('plan', 'job_unresolved');
      await this.reply(ctx, `${ctx.sender}: ${target.error}`);
      return false;
    }
    const attempt: ApprovalAttempt = {
      eventId: ctx.eventId,
      sender: ctx.sender,
      roomId: ctx.roomId,
      decision: command.kind,
      originServerTs: ctx.originServerTs,
      ...(command.job !== undefined ? { jobId: command.job } : {}),
      ...(command.kind === 'approve' && command.planHash ? { planHash: command.planHash } : {}),
      ...(command.kind === 'deny' && command.reason ? { reason: command.reason } : {}),
      ...(ctx.senderDeviceVerified !== undefined ? { senderDeviceVerified: ctx.senderDeviceVerified } : {}),
      content: { sha256: evidence.contentSha256, shown: evidence.shown },
      ...(mismatch !== undefined ? { displayMismatch: mismatch } : {}),
    };
    const sent = await this.signal(ctx, target, (handle) => handle.signal(approvalSignal, attempt), 'plan');
    if (sent && target.roomId !== null && target.roomId !== ctx.roomId) {
      await this.reply(
        ctx,
        `${ctx.sender}: job ${target.jobId} belongs to another room; a decision counts only in the job's own room. Not counted.`,
      );
    }
    return sent;
  }

  /**
   * An answer to an approval card by command, in the job's thread: the thread's job decides
   * (whether the card is its own and waiting, the sender an approver, the display the same).
   */
  private async signalCallDecision(
    ctx: EventContext,
    command: Extract<Command, { kind: 'call-approve' | 'call-deny' }>,
    words: CommandWords,
    evidence: CommandEvidence,
    mismatch?: string,
  ): Promise<boolean> {
    if (!ctx.threadRoot) {
      this.stats.refusedEvents += 1;
      this.approvalRefused('call', 'not_in_thread');
      const word = command.kind === 'call-approve' ? words.approve : words.deny;
      await this.reply(
        ctx,
        `${ctx.sender}: a card is answered in its job's thread; send ${word} ${command.cardId} there. Nothing was changed.`,
      );
      return false;
    }
    const attempt: CallDecisionAttempt = {
      eventId: ctx.eventId,
      sender: ctx.sender,
      roomId: ctx.roomId,
      decision: command.kind === 'call-approve' ? 'approve' : 'deny',
      cardId: command.cardId,
      ...(command.kind === 'call-approve' ? { scope: command.scope } : {}),
      ...(command.kind === 'call-deny' && command.reason !== '' ? { reason: command.reason } : {}),
      via: 'command',
      originServerTs: ctx.originServerTs,
      ...(ctx.senderDeviceVerified !== undefined ? { senderDeviceVerified: ctx.senderDeviceVerified } : {}),
      content: { sha256: evidence.contentSha256, shown: evidence.shown },
      ...(mismatch !== undefined ? { displayMismatch: mismatch } : {}),
    };
    const target = this.targetOf(ctx.roomId, ctx.threadRoot);
    return await this.signal(ctx, target, (handle) => handle.signal(callDecisionSignal, attempt), 'call');
  }

  /**
   * A ✅ or ❌ reaction on an approval card the bot posted for a job of this room answers that
   * card; the job decides, as for a command. Any other reaction, or one on any other message, is
   * ordinary chat and passes unanswered.
   */
  private async handleReaction(
    roomId: string,
    raw: IRoomEvent,
    content: unknown,
    encrypted: boolean,
    decryptedVerified: boolean | undefined,
    receivedAt: number,
  ): Promise<boolean> {
    const reaction = readReaction(content);
    if (!reaction) return false;
    const eventId = raw.event_id;
    const sender = raw.sender;
    const about = { roomId, eventId, sender, card: reaction.target };
    if (encrypted) {
      // Clients show a reaction under the event its clear relation names, with its key.
      const wire = annotationOf(raw.content);
      if (wire?.target !== reaction.target || wire.key !== reaction.key) {
        this.stats.refusedEvents += 1;
        this.approvalRefused('call', 'relation_mismatch');
        this.log.warn(about, 'an encrypted reaction whose clear relation says otherwise: ignored');
        return false;
      }
    }
    let card: IRoomEvent;
    try {
      card = (await this.matrix.fetchRoomEvent(roomId, reaction.target)) as IRoomEvent;
    } catch (error) {
      if (isTransient(error)) throw error;
      return false; // not an event the bot can see: not one of its cards
    }
    if (card.sender !== this.userId) return false;
    let cardContent: unknown = card.content;
    if (card.type === 'm.room.encrypted') {
      const clear = await this.decrypt(roomId, card);
      if (clear?.type !== 'm.room.message') return false;
      cardContent = clear.content;
    } else if (card.type !== 'm.room.message') return false;
    const named = readCard(cardContent);
    if (!named) return false;
    this.stats.handledEvents += 1;
    // The bot posted the card in its job's thread; an encrypted card keeps that relation in clear.
    const thread = threadRootOf(card.content) ?? threadRootOf(cardContent);
    const root = jobRootInRoom(named.workflowId, roomId, thread);
    if (root === null) {
      this.stats.refusedEvents += 1;
      this.approvalRefused('call', 'other_room');
      this.log.warn(
        { ...about, workflowId: named.workflowId },
        'a reaction on a card naming a job of another room: not routed',
      );
      return false;
    }
    // A reaction sent in clear in an encrypted room comes from no device that can be verified.
    const senderDeviceVerified = encrypted
      ? decryptedVerified
      : this.matrix.getRoom(roomId)?.hasEncryptionStateEvent()
        ? false
        : undefined;
    const ctx: EventContext = {
      roomId,
      eventId,
      sender,
      originServerTs: Number(raw.origin_server_ts) || 0,
      receivedAt,
      threadRoot: root,
      replyTo: reaction.target,
      ...(senderDeviceVerified !== undefined ? { senderDeviceVerified } : {}),
    };
    this.stats.eventLagMs = Date.now() - ctx.originServerTs;
    const attempt: CallDecisionAttempt = {
      eventId,
      sender,
      roomId,
      decision: reaction.decision,
      cardEventId: reaction.target,
      via: 'reaction',
      originServerTs: ctx.originServerTs,
      ...(senderDeviceVerified !== undefined ? { senderDeviceVerified } : {}),
      content: { sha256: contentSha256(content), shown: reaction.key },
    };
    const target = { workflowId: named.workflowId, jobId: shortJobId(named.workflowId), roomId };
    return await this.actingOn(ctx, () =>
      this.signal(ctx, target, (handle) => handle.signal(callDecisionSignal, attempt), 'call'),
    );
  }

  /** An approval attempt the gateway refused before any job saw it, for the metric. */
  private approvalRefused(subject: ApprovalVerdict['subject'], reason: GatewayApprovalRefusal): void {
    this.gateway.metrics.gatewayRefusal(this.config.id, subject, reason);
  }

  private async signalCancel(ctx: EventContext, named: string | undefined, usage: string): Promise<boolean> {
    const target = await this.resolveJob(ctx, named, `${usage.replace(' [job]', ' <job>')}`);
    if ('error' in target) {
      this.stats.refusedEvents += 1;
      await this.reply(ctx, `${ctx.sender}: ${target.error}`);
      return false;
    }
    const sent = await this.signal(ctx, target, (handle) =>
      handle.signal(cancelSignal, {
        eventId: ctx.eventId,
        sender: ctx.sender,
        roomId: ctx.roomId,
        originServerTs: ctx.originServerTs,
      }),
    );
    if (sent && target.roomId !== null && target.roomId !== ctx.roomId) {
      await this.reply(
        ctx,
        `${ctx.sender}: job ${target.jobId} belongs to another room; it can be cancelled only there.`,
      );
    }
    return sent;
  }

  /** The job of a request event of a room, under either id form. */
  private targetOf(roomId: string, eventId: string): JobTarget {
    const { workflowId, legacy } = jobWorkflowIds(roomId, eventId);
    return { workflowId, legacyWorkflowId: legacy, jobId: shortJobId(workflowId), roomId };
  }

  /** Whether any run of this workflow id is known to Temporal, running or closed. */
  private async exists(workflowId: string): Promise<boolean> {
    try {
      await this.gateway.temporal.workflow.getHandle(workflowId).describe();
      return true;
    } catch (error) {
      if (error instanceof WorkflowNotFoundError) return false;
      throw error;
    }
  }

  /**
   * Does `use` with the target's workflow handle: its current id, and when Temporal knows no
   * such workflow, its old-form id. The old one's WorkflowNotFoundError is the one thrown.
   */
  private async withJob<T>(
    target: JobTarget,
    use: (handle: ReturnType<Client['workflow']['getHandle']>) => Promise<T>,
  ): Promise<T> {
    try {
      return await use(this.gateway.temporal.workflow.getHandle(target.workflowId));
    } catch (error) {
      if (!(error instanceof WorkflowNotFoundError) || target.legacyWorkflowId === undefined) throw error;
      return await use(this.gateway.temporal.workflow.getHandle(target.legacyWorkflowId));
    }
  }

  /** `approval`: what the signal carries, when it is an approval attempt (for the metric). */
  private async signal(
    ctx: EventContext,
    target: JobTarget,
    send: (handle: ReturnType<Client['workflow']['getHandle']>) => Promise<void>,
    approval?: ApprovalVerdict['subject'],
  ): Promise<boolean> {
    try {
      await this.withJob(target, send);
    } catch (error) {
      if (error instanceof WorkflowNotFoundError) {
        this.stats.refusedEvents += 1;
        if (approval) this.approvalRefused(approval, 'job_ended');
        await this.reply(
          ctx,
          ctx.threadRoot && target.roomId === ctx.roomId
            ? `${ctx.sender}: this thread's job has ended (or the thread is not a job's); nothing was changed.`
            : `${ctx.sender}: job ${target.jobId} has ended or does not exist; nothing was changed.`,
        );
        return false;
      }
      throw error;
    }
    this.stats.signals += 1;
    this.log.info({ workflowId: target.workflowId, eventId: ctx.eventId, sender: ctx.sender }, 'signal sent');
    return true;
  }

  private async status(ctx: EventContext, named: string | undefined): Promise<void> {
    const target = await this.resolveJob(ctx, named, '!status <job>');
    if ('error' in target) {
      await this.reply(ctx, `${ctx.sender}: ${target.error}`);
      return;
    }
    let line: string;
    try {
      const { handle, description } = await this.withJob(target, async (handle) => ({
        handle,
        description: await handle.describe(),
      }));
      const status =
        description.typedSearchAttributes.get(JOB_STATUS) ?? description.status.name.toLowerCase();
      line = `Job ${target.jobId}: ${status}`;
      if (description.status.name === 'RUNNING') {
        const view = await this.gateway.temporal
          .withDeadline(Date.now() + 5000, () => handle.query(statusQuery))
          .catch(() => null);
        if (view) {
          const accepted = view.approvals.filter((a) => a.accepted).length;
          line +=
            view.mode === 'agent'
              ? ` · approvals ${accepted} · turns ${view.used?.model_turns ?? 0} · tool calls ${view.used?.tool_calls ?? 0}`
              : ` · approvals ${accepted} · steps ${view.stepsDone}/${view.stepsTotal}`;
          if (view.planHash) line += ` · plan ${view.planHash.slice(0, 12)}`;
        }
      } else if (description.status.name === 'COMPLETED') {
        const result = (await handle.result()) as { bundleDigest?: string | null };
        if (result.bundleDigest) line += ` · bundle ${result.bundleDigest}`;
      }
    } catch (error) {
      if (!(error instanceof WorkflowNotFoundError)) throw error;
      line = `${ctx.sender}: there is no job ${target.jobId}.`;
    }
    await this.reply(ctx, line);
  }

  /**
   * Answers the sender: in the thread they wrote in, or as a reply to their message. `kind`
   * names the answer in its transaction id: one answer of each kind per event, however often
   * the event comes.
   */
  private async reply(
    ctx: Pick<EventContext, 'roomId' | 'eventId' | 'threadRoot' | 'replyTo'>,
    body: string,
    kind = 'reply',
  ): Promise<void> {
    const replyTo = ctx.replyTo ?? ctx.eventId;
    const relation = ctx.threadRoot
      ? threadRelation(ctx.threadRoot, replyTo)
      : { 'm.in_reply_to': { event_id: replyTo } };
    // Derived from the event answered, so a redelivered event is not answered twice.
    const txnId = `${kind}.${Buffer.from(ctx.eventId).toString('base64url').slice(0, 180)}`;
    await this.matrix.sendEvent(
      ctx.roomId,
      'm.room.message' as never,
      { msgtype: 'm.notice', body, 'm.relates_to': relation } as never,
      txnId,
    );
  }
}

export interface GatewayHealth {
  ok: boolean;
  /** Why it is not ok, one line each, for a person (empty when ok). */
  reasons: string[];
  /** Whether Temporal answers the gateway's checks and calls, since when and for how long. */
  temporal: OutageStatus;
  accounts: AccountHealth[];
}

export class Gateway {
  readonly config: GatewayConfig;
  readonly log: Logger;
  readonly fault: string | undefined;
  readonly temporal: Client;
  readonly dataConverter: DataConverter;
  readonly accounts: GatewayAccount[] = [];
  /** GET /metrics: this gateway's registry, its accounts' counts read at each scrape. */
  readonly metrics: GatewayMetrics;
  /** Whether Temporal answers: one warning when it stops, one line when it is back. */
  readonly temporalOutage: Outage;
  private readonly connection: Connection;
  private readonly registry: FilePolicyRegistry;
  private server: Server | null = null;
  private temporalWatch: TemporalWatch | null = null;
  private unrouteWarnings: (() => void) | null = null;
  private nativeConnection: Promise<NativeConnection | null> | null = null;
  private native: NativeConnection | null = null;
  private stopping = false;
  /** Recent starts by this process, to cover the moment before Temporal's visibility shows them. */
  private readonly recent: Array<{
    at: number;
    roomId: string;
    requester: string;
    jobId: string;
    workflowId: string;
  }> = [];

  private constructor(
    config: GatewayConfig,
    options: GatewayOptions,
    connection: Connection,
    temporalOutage: Outage,
  ) {
    this.config = config;
    this.temporalOutage = temporalOutage;
    this.log = options.logger;
    this.fault = options.fault;
    this.connection = connection;
    this.dataConverter = options.dataConverter;
    this.temporal = new Client({
      connection,
      namespace: config.temporal.namespace,
      dataConverter: options.dataConverter,
    });
    this.registry = new FilePolicyRegistry(config.policy.registryDir);
    this.metrics = new GatewayMetrics(() => this.accounts.map((a) => a.health()));
    registerTemporalReachable(this.metrics.registry, () => !this.temporalOutage.down);
  }

  /**
   * Starts the health endpoint and every account, then leaves Temporal to be reached: a gateway
   * started while Temporal is away (restarting, not up yet) syncs its rooms, answers 503 saying
   * so, and tells each command that arrives that it waits; it is acted on once Temporal answers.
   */
  static async start(config: GatewayConfig, options: GatewayOptions): Promise<Gateway> {
    // The gateway's clients log through pino; the SDK's global logger keeps warnings and errors.
    quietMatrixSdkLogging();
    // Its routine warnings (one per thread message, say) go to this log at debug level.
    routeRoutineSdkWarnings((message) => options.logger.debug({ sdk: true }, message));
    const { address } = config.temporal;
    const temporalOutage = new Outage({
      service: 'Temporal',
      log: options.logger.child({ address }),
      impact: 'requests and approvals wait until it is back',
    });
    // Lazy: nothing is asked of Temporal until a command needs it; a call made while it is away
    // fails as unavailable, and the command is held back (see actingOn).
    const connection = Connection.lazy({ address, channelArgs: TEMPORAL_CHANNEL_ARGS });
    const gateway = new Gateway(config, options, connection, temporalOutage);
    gateway.temporalWatch = watchTemporal(connection, temporalOutage);
    gateway.unrouteWarnings = routeTemporalConnectionWarnings(gateway.temporalWatch);
    try {
      await gateway.listen();
      for (const accountConfig of config.accounts) {
        const account = new GatewayAccount(accountConfig, gateway);
        gateway.accounts.push(account);
        try {
          await account.start();
        } catch (error) {
          // Another live process owns this account's state: this process must not run beside it.
          if (error instanceof ClawgateError && error.code === ERROR_CODES.stateLocked) throw error;
          // One account's failure (a damaged store, a refused login) stops that account only.
          // The gateway stays up (no crash loop under a supervisor); health says why (503).
          options.logger.error(
            { account: accountConfig.id, err: error, reason: (error as Error).message },
            'account failed to start',
          );
        }
      }
    } catch (error) {
      await gateway.stop();
      throw error;
    }
    return gateway;
  }

  /**
   * The connection the accounts' Matrix I/O workers poll Temporal on, made once Temporal answers
   * (tried every second until then); null when the gateway stops first.
   */
  workerConnection(): Promise<NativeConnection | null> {
    this.nativeConnection ??= (async () => {
      const { address } = this.config.temporal;
      while (!this.stopping) {
        try {
          const made = await NativeConnection.connect({ address });
          if (this.stopping) {
            await made.close();
            return null;
          }
          this.native = made;
          return made;
        } catch (error) {
          this.temporalOutage.failed(error);
          await new Promise((r) => setTimeout(r, 1000).unref());
        }
      }
      return null;
    })();
    return this.nativeConnection;
  }

  get healthUrl(): string {
    const address = this.server?.address();
    if (!address || typeof address === 'string') throw new Error('the health endpoint is not listening');
    return `http://${this.config.health.host}:${address.port}/health`;
  }

  /** GET /metrics, beside the health endpoint. */
  get metricsUrl(): string {
    return this.healthUrl.replace(/\/health$/, METRICS_PATH);
  }

  health(): GatewayHealth {
    const accounts = this.accounts.map((a) => a.health());
    const temporal = this.temporalOutage.status();
    const reasons: string[] = [];
    const away = this.temporalOutage.reason();
    if (away) reasons.push(away);
    for (const [i, a] of accounts.entries()) {
      if (a.state === 'syncing') continue;
      const why =
        this.accounts[i]?.homeserver.reason() ??
        a.error ??
        (a.blocked ? `held back for ${formatDuration(a.blocked.forMs)}: ${a.blocked.reason}` : null) ??
        a.syncState ??
        'not syncing yet';
      reasons.push(`account ${a.id} is ${a.state}: ${why}`);
    }
    return { ok: reasons.length === 0, reasons, temporal, accounts };
  }

  private async listen(): Promise<void> {
    const server = createServer((req, res) => {
      if (req.method === 'GET' && (req.url === '/health' || req.url === '/healthz')) {
        const health = this.health();
        res.writeHead(health.ok ? 200 : 503, { 'content-type': 'application/json' });
        res.end(`${JSON.stringify(health)}\n`);
        return;
      }
      if (req.method === 'GET' && req.url === METRICS_PATH) {
        answerMetrics(res, this.metrics.registry);
        return;
      }
      res.writeHead(404, { 'content-type': 'application/json' });
      res.end(`${JSON.stringify({ error: 'not found: the gateway serves GET /health and GET /metrics' })}\n`);
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.config.health.port, this.config.health.host, () => resolve());
    });
    this.server = server;
    this.log.info({ url: this.healthUrl }, 'health endpoint listening');
  }

  async stop(): Promise<void> {
    this.stopping = true;
    await this.temporalWatch?.stop();
    this.unrouteWarnings?.();
    await Promise.all(this.accounts.map((a) => a.stop()));
    if (this.server) {
      this.server.closeAllConnections();
      await new Promise<void>((resolve) => this.server?.close(() => resolve()));
      this.server = null;
    }
    await this.connection.close();
    // One still being made is closed by its maker, which sees the stop.
    await this.native?.close();
  }

  /** The active policy of a channel, or null when none is (or it cannot be read: fail closed). */
  activePolicy(channel: string): { hash: string; wpc: Wpc } | null {
    try {
      const hash = this.registry.activeHash(channel);
      if (!hash) return null;
      return { hash, wpc: this.registry.policy(hash) };
    } catch (error) {
      this.log.error({ err: error, channel }, 'the policy registry cannot be read; refusing requests');
      return null;
    }
  }

  noteStart(roomId: string, requester: string, jobId: string, workflowId: string): void {
    const now = Date.now();
    this.recent.push({ at: now, roomId, requester, jobId, workflowId });
    while (this.recent.length > 0 && (this.recent[0] as { at: number }).at < now - 3_600_000)
      this.recent.shift();
  }

  /**
   * Whether a new request may start: the requester's requests in the last hour and the room's
   * open jobs, from Temporal's visibility (shared by every gateway, kept across restarts) and
   * from this process's own recent starts (which visibility may not show yet).
   */
  async admit(roomId: string, requester: string, limits: Wpc['matrix']['limits']): Promise<string | null> {
    const now = Date.now();
    const hourAgo = new Date(now - 3_600_000).toISOString();
    const mine = this.recent.filter((r) => r.requester === requester && r.at >= now - 3_600_000).length;
    const { count: seen } = await this.temporal.workflow.count(
      `WorkflowType = 'jobWorkflow' AND ClawgateRequester = ${literal(requester)} AND StartTime > '${hourAgo}'`,
    );
    const asked = Math.max(mine, seen);
    if (asked >= limits.requests_per_requester_per_hour) {
      return `you have asked for ${asked} jobs in the last hour and the policy allows ${limits.requests_per_requester_per_hour}; try again later.`;
    }
    const { count: open } = await this.temporal.workflow.count(
      `WorkflowType = 'jobWorkflow' AND ClawgateRoom = ${literal(roomId)} AND ExecutionStatus = 'Running'`,
    );
    const fresh = this.recent.filter((r) => r.roomId === roomId && r.at >= now - 10_000).length;
    const running = Math.max(open, fresh);
    if (running >= limits.open_jobs_per_room) {
      return `this room has ${running} open jobs and the policy allows ${limits.open_jobs_per_room}; wait for one to end, or cancel one.`;
    }
    return null;
  }

  /** A job by its short id: this process's own starts first, then Temporal's visibility. */
  async findJob(jobId: string): Promise<{ workflowId: string; roomId: string | null } | null> {
    const mine = this.recent.find((r) => r.jobId === jobId);
    if (mine) return { workflowId: mine.workflowId, roomId: mine.roomId };
    for await (const execution of this.temporal.workflow.list({
      query: `ClawgateJobId = ${literal(jobId)}`,
      pageSize: 5,
    })) {
      return {
        workflowId: execution.workflowId,
        roomId: execution.typedSearchAttributes.get(JOB_ROOM) ?? null,
      };
    }
    return null;
  }
}

/** The thread root an event of the bot's names in its (clear) relation, if any. */
function threadRootOf(content: unknown): string | undefined {
  const relation = isRecord(content) ? content['m.relates_to'] : undefined;
  if (!isRecord(relation)) return undefined;
  return relation['rel_type'] === 'm.thread' && typeof relation['event_id'] === 'string'
    ? relation['event_id']
    : undefined;
}
