// A demo user's own Matrix device, for `clawgate say`: matrix-js-sdk with the Rust crypto, its
// crypto store kept in <stateDir>/demo-devices/<user>/ (encrypted at rest, as the gateway keeps
// the bot's), under the device id the user was registered with. Every run restores the same
// store, so the device keeps its identity and the room keys it was sent: no "unable to
// decrypt" after a restart of the command or of the stack. One process at a time uses a device.
import { existsSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { ClientEvent, createClient, SyncState, type MatrixClient } from 'matrix-js-sdk';
import type { CryptoBackend } from 'matrix-js-sdk/lib/common-crypto/CryptoBackend.js';
import pino from 'pino';
import type { ClawgateConfig } from '../config/config.ts';
import {
  CryptoStateFile,
  KEY_REQUESTS,
  processIndexedDb,
  restoreDatabases,
  snapshotDatabases,
} from '../ingress/crypto-store.ts';
import { sdkLogger } from '../ingress/sdk-logging.ts';
import { ensurePrivateDir } from '../storage/files.ts';
import { takePidLock } from '../storage/pid-lock.ts';
import { writeDemo, type DemoPerson, type DemoState } from './demo.ts';

/** How long a device waits for its first sync, and for its keys to reach the homeserver. */
const READY_MS = 60_000;

function deviceDir(config: ClawgateConfig, who: DemoPerson): string {
  return join(config.stateDir, 'demo-devices', who);
}

function storeFile(config: ClawgateConfig, who: DemoPerson): string {
  return join(deviceDir(config, who), 'crypto-store.bin');
}

/** Whether the demo user's device has its crypto store (made on the first start). */
export function demoDeviceExists(config: ClawgateConfig, who: DemoPerson): boolean {
  return existsSync(storeFile(config, who));
}

export interface DemoDevice {
  readonly client: MatrixClient;
  readonly userId: string;
  readonly deviceId: string;
  /** The device this one replaced, when the store of that one was lost; else null. */
  readonly replaced: string | null;
  /** Resolves once the homeserver holds this device's keys (others can encrypt to it). */
  keysPublished(): Promise<void>;
  /** Writes the crypto store now (it is also written after every sync and before key requests). */
  persist(): Promise<void>;
  /** Stops the client, writes the store, and lets the device go. */
  close(): Promise<void>;
}

type DemoUser = DemoState['users'][DemoPerson];

async function post(base: string, path: string, token: string | null, body: unknown) {
  const res = await fetch(`${base}/_matrix/client/v3${path}`, {
    method: 'POST',
    headers: {
      'content-type': 'application/json',
      ...(token === null ? {} : { authorization: `Bearer ${token}` }),
    },
    body: JSON.stringify(body),
  });
  const json = (await res.json()) as Record<string, unknown>;
  if (!res.ok) throw new Error(`POST ${path}: ${res.status} ${JSON.stringify(json)}`);
  return json;
}

/** Whether the homeserver holds keys of this device (others encrypt to it). */
async function publishedKeys(base: string, user: DemoUser): Promise<boolean> {
  const known = (await post(base, '/keys/query', user.accessToken, {
    device_keys: { [user.userId]: [user.deviceId] },
  })) as { device_keys?: Record<string, Record<string, unknown>> };
  return known.device_keys?.[user.userId]?.[user.deviceId] !== undefined;
}

/** A new device of the user, by a login with its password. */
async function newDevice(base: string, who: DemoPerson, user: DemoUser): Promise<DemoUser> {
  const res = (await post(base, '/login', null, {
    type: 'm.login.password',
    identifier: { type: 'm.id.user', user: user.userId },
    password: user.password,
    initial_device_display_name: `clawgate say (${who})`,
  })) as { access_token: string; device_id: string };
  return { ...user, accessToken: res.access_token, deviceId: res.device_id };
}

/**
 * Opens the demo user's device and starts its client, synced (the rooms and their members
 * loaded), its crypto restored from the store. Throws when another process uses the device.
 * When its store is gone while the homeserver holds its keys (a new store under that device
 * would make keys the others refuse), the user logs in as a new device, kept in demo.json: it
 * reads what is said from then on.
 */
export async function openDemoDevice(
  config: ClawgateConfig,
  demo: DemoState,
  who: DemoPerson,
): Promise<DemoDevice> {
  let user = demo.users[who];
  const dir = deviceDir(config, who);
  ensurePrivateDir(dir);
  const lock = join(dir, 'lock');
  takePidLock(
    lock,
    (pid) => `the ${who}'s device is in use by process ${pid} (another clawgate say); wait for it to end`,
  );
  const file = new CryptoStateFile(storeFile(config, who), join(dir, 'store.key'));
  const prefix = `demo-device-${who}`;
  let client: MatrixClient | undefined;
  try {
    const restored = file.read();
    let replaced: string | null = null;
    if (!restored && (await publishedKeys(demo.homeserverUrl, user))) {
      replaced = user.deviceId;
      user = await newDevice(demo.homeserverUrl, who, user);
      demo.users[who] = user;
      writeDemo(config, demo);
    }
    const log = pino({ level: 'silent' });
    let writing: Promise<void> = Promise.resolve();
    const persist = (): Promise<void> => {
      const run = async (): Promise<void> => {
        if (!client?.getCrypto()) return;
        file.write({ syncToken: null, databases: await snapshotDatabases(processIndexedDb(), prefix) });
      };
      writing = writing.then(run, run);
      return writing;
    };
    client = createClient({
      baseUrl: demo.homeserverUrl,
      userId: user.userId,
      deviceId: user.deviceId,
      accessToken: user.accessToken,
      logger: sdkLogger(log),
      // Before any request that tells the homeserver about keys, the keys are on disk.
      fetchFn: async (input, init) => {
        const url = typeof input === 'string' ? input : input instanceof URL ? input.href : input.url;
        if (KEY_REQUESTS.test(url)) await persist();
        return await fetch(input, init);
      },
    });
    const matrix = client;
    const factory = processIndexedDb();
    if (restored) await restoreDatabases(factory, restored.databases);
    await matrix.initRustCrypto({ cryptoDatabasePrefix: prefix });
    // Each run syncs afresh, so it is told no device list changes of the time between runs: the
    // devices of every user it knew are asked for again (a bot that has come since gets the keys).
    if (restored) await (matrix.getCrypto() as CryptoBackend | undefined)?.markAllTrackedUsersAsDirty();
    await synced(matrix);
    matrix.on(ClientEvent.Sync, (state: SyncState) => {
      if (state === SyncState.Syncing) void persist();
    });
    await persist();
    let closed = false;
    return {
      client: matrix,
      userId: user.userId,
      deviceId: user.deviceId,
      replaced,
      async keysPublished() {
        const deadline = Date.now() + READY_MS;
        while (!(await publishedKeys(demo.homeserverUrl, user))) {
          if (Date.now() > deadline) {
            throw new Error(
              `the keys of ${user.userId}'s device did not reach the homeserver in ${READY_MS} ms`,
            );
          }
          await new Promise((r) => setTimeout(r, 200));
        }
        await persist();
      },
      persist,
      async close() {
        if (closed) return;
        closed = true;
        matrix.stopClient();
        await persist();
        rmSync(lock, { force: true });
      },
    };
  } catch (error) {
    client?.stopClient();
    rmSync(lock, { force: true });
    throw error;
  }
}

/** Starts the client and resolves after its first sync (the rooms' state and members known). */
async function synced(client: MatrixClient): Promise<void> {
  const ready = new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => {
      client.off(ClientEvent.Sync, onSync);
      reject(new Error(`the homeserver gave no first sync in ${READY_MS} ms`));
    }, READY_MS);
    const onSync = (state: SyncState, _prev: SyncState | null, data?: { error?: Error }): void => {
      if (state !== SyncState.Prepared && state !== SyncState.Syncing && state !== SyncState.Error) return;
      clearTimeout(timer);
      client.off(ClientEvent.Sync, onSync);
      if (state === SyncState.Error) {
        reject(new Error(`the first sync failed: ${data?.error?.message ?? 'unknown error'}`));
      } else resolve();
    };
    client.on(ClientEvent.Sync, onSync);
  });
  await client.startClient({ initialSyncLimit: 30 });
  await ready;
}
