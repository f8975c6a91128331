// Durable state for matrix-js-sdk's Rust crypto in Node. Its store is IndexedDB, which Node
// lacks; fake-indexeddb provides one in memory. This module makes it durable: a snapshot of
// every database of an account (by name prefix) through the standard IndexedDB API (schema,
// indexes, every key and value, values serialised with node:v8), written together with the
// sync token to one file, encrypted at rest (AES-256-GCM) with a key kept in a separate file,
// replaced atomically (0600). Restoring it into a fresh factory before `initRustCrypto` gives
// the device back its identity, sessions and room keys.
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { deserialize, serialize } from 'node:v8';
import 'fake-indexeddb/auto';
import { IDBFactory as FakeIDBFactory } from 'fake-indexeddb';
import { ClawgateError, ERROR_CODES } from '../errors.ts';
import { ensurePrivateDir, writeFileAtomic } from '../storage/files.ts';

/**
 * A fresh, empty IndexedDB as the process's `indexedDB` (the Rust crypto opens its store through
 * the global, and checks the IDB* classes, which fake-indexeddb/auto installs once).
 */
let processFactory: IDBFactory | null = null;
/** The process's one IndexedDB (every account's databases, apart by name prefix). */
export function processIndexedDb(): IDBFactory {
  processFactory ??= freshIndexedDb();
  return processFactory;
}

export function freshIndexedDb(): IDBFactory {
  const factory = new FakeIDBFactory();
  (globalThis as { indexedDB: IDBFactory }).indexedDB = factory;
  return factory;
}

export interface IndexSnapshot {
  name: string;
  keyPath: string | string[];
  unique: boolean;
  multiEntry: boolean;
}

export interface StoreSnapshot {
  name: string;
  keyPath: string | string[] | null;
  autoIncrement: boolean;
  indexes: IndexSnapshot[];
  /** [key, value] pairs in key order. */
  records: Array<[IDBValidKey, unknown]>;
}

export interface DatabaseSnapshot {
  name: string;
  version: number;
  stores: StoreSnapshot[];
}

function request<T>(req: IDBRequest<T>): Promise<T> {
  return new Promise((resolve, reject) => {
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error ?? new Error('IndexedDB request failed'));
  });
}

function open(factory: IDBFactory, name: string, version?: number, upgrade?: (db: IDBDatabase) => void) {
  return new Promise<IDBDatabase>((resolve, reject) => {
    const req = version === undefined ? factory.open(name) : factory.open(name, version);
    req.onupgradeneeded = () => upgrade?.(req.result);
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error ?? new Error(`cannot open IndexedDB database ${name}`));
    req.onblocked = () => reject(new Error(`IndexedDB database ${name} is held open elsewhere`));
  });
}

/** Every database whose name starts with `prefix`, whole. */
export async function snapshotDatabases(factory: IDBFactory, prefix: string): Promise<DatabaseSnapshot[]> {
  const infos = (await factory.databases()).filter((d) => d.name?.startsWith(prefix));
  const out: DatabaseSnapshot[] = [];
  for (const info of infos.sort((a, b) => String(a.name).localeCompare(String(b.name)))) {
    const name = info.name as string;
    const db = await open(factory, name);
    try {
      const storeNames = [...db.objectStoreNames];
      const stores: StoreSnapshot[] = [];
      if (storeNames.length > 0) {
        // One read transaction over every store: a consistent snapshot.
        const tx = db.transaction(storeNames, 'readonly');
        for (const storeName of storeNames) {
          const store = tx.objectStore(storeName);
          const [keys, values] = await Promise.all([request(store.getAllKeys()), request(store.getAll())]);
          stores.push({
            name: storeName,
            keyPath: store.keyPath,
            autoIncrement: store.autoIncrement,
            indexes: [...store.indexNames].map((indexName) => {
              const index = store.index(indexName);
              return {
                name: indexName,
                keyPath: index.keyPath,
                unique: index.unique,
                multiEntry: index.multiEntry,
              };
            }),
            records: keys.map((key, i) => [key, values[i]]),
          });
        }
      }
      out.push({ name, version: db.version, stores });
    } finally {
      db.close();
    }
  }
  return out;
}

/** Recreates databases from a snapshot in a factory that has none of them yet. */
export async function restoreDatabases(factory: IDBFactory, snapshot: DatabaseSnapshot[]): Promise<void> {
  for (const saved of snapshot) {
    const db = await open(factory, saved.name, saved.version, (fresh) => {
      for (const s of saved.stores) {
        const store = fresh.createObjectStore(s.name, { keyPath: s.keyPath, autoIncrement: s.autoIncrement });
        for (const index of s.indexes) {
          store.createIndex(index.name, index.keyPath, {
            unique: index.unique,
            multiEntry: index.multiEntry,
          });
        }
      }
    });
    try {
      const names = saved.stores.map((s) => s.name);
      if (names.length === 0) continue;
      const tx = db.transaction(names, 'readwrite');
      const done = new Promise<void>((resolve, reject) => {
        tx.oncomplete = () => resolve();
        tx.onerror = () => reject(tx.error ?? new Error(`restoring ${saved.name} failed`));
        tx.onabort = () => reject(tx.error ?? new Error(`restoring ${saved.name} was aborted`));
      });
      for (const s of saved.stores) {
        const store = tx.objectStore(s.name);
        for (const [key, value] of s.records) {
          if (s.keyPath === null) store.put(value, key);
          else store.put(value);
        }
      }
      await done;
    } finally {
      db.close();
    }
  }
}

const MAGIC = Buffer.from('CGCS1\n');
const KEY_BYTES = 32;
const IV_BYTES = 12;
const TAG_BYTES = 16;

export interface CryptoState {
  /** The sync token the databases agree with. */
  syncToken: string | null;
  /** The accumulated sync (room state) at that token, as matrix-js-sdk's SyncAccumulator gives it. */
  savedSync?: unknown;
  databases: DatabaseSnapshot[];
}

/** The at-rest key: made once (0600), kept apart from the store it protects. */
export function loadOrCreateStoreKey(path: string): Buffer {
  if (existsSync(path)) {
    const key = Buffer.from(readFileSync(path, 'utf8').trim(), 'base64');
    if (key.length !== KEY_BYTES) {
      throw new ClawgateError(
        ERROR_CODES.stateCorrupt,
        `${path} is not a crypto store key (32 bytes, base64); without the right key the store cannot be read`,
      );
    }
    return key;
  }
  const key = randomBytes(KEY_BYTES);
  ensurePrivateDir(dirname(path));
  writeFileAtomic(path, `${key.toString('base64')}\n`);
  return key;
}

export function encryptState(state: CryptoState, key: Buffer): Buffer {
  const iv = randomBytes(IV_BYTES);
  const cipher = createCipheriv('aes-256-gcm', key, iv);
  cipher.setAAD(MAGIC);
  const body = Buffer.concat([cipher.update(serialize(state)), cipher.final()]);
  return Buffer.concat([MAGIC, iv, cipher.getAuthTag(), body]);
}

/** Requests after which the homeserver knows something of the device's keys: the store is written first. */
export const KEY_REQUESTS =
  /\/_matrix\/client\/[^/]+\/(keys\/(upload|claim|signatures\/upload|device_signing\/upload)|room_keys\/)/;

/** The way out of a crypto store that cannot be used, said in every such error. */
export const STORE_RECOVERY =
  'stop the gateway, move the account folder aside and start again: the bot gets a new device ' +
  '(restore room keys from the key backup)';

export function decryptState(bytes: Buffer, key: Buffer, path: string): CryptoState {
  if (bytes.length < MAGIC.length + IV_BYTES + TAG_BYTES || !bytes.subarray(0, MAGIC.length).equals(MAGIC)) {
    throw new ClawgateError(
      ERROR_CODES.stateCorrupt,
      `${path} is not a clawgate crypto store (truncated or another file); ${STORE_RECOVERY}`,
    );
  }
  const iv = bytes.subarray(MAGIC.length, MAGIC.length + IV_BYTES);
  const tag = bytes.subarray(MAGIC.length + IV_BYTES, MAGIC.length + IV_BYTES + TAG_BYTES);
  const body = bytes.subarray(MAGIC.length + IV_BYTES + TAG_BYTES);
  let plain: Buffer;
  try {
    const decipher = createDecipheriv('aes-256-gcm', key, iv);
    decipher.setAAD(MAGIC);
    decipher.setAuthTag(tag);
    plain = Buffer.concat([decipher.update(body), decipher.final()]);
  } catch {
    throw new ClawgateError(
      ERROR_CODES.stateCorrupt,
      `${path} does not decrypt with its key (damaged, or the key file was replaced); ${STORE_RECOVERY}`,
    );
  }
  const state = deserialize(plain) as CryptoState;
  if (!state || !Array.isArray(state.databases)) {
    throw new ClawgateError(ERROR_CODES.stateCorrupt, `${path} holds no crypto store; ${STORE_RECOVERY}`);
  }
  return state;
}

/** One account's crypto store file and its key file. */
export class CryptoStateFile {
  readonly path: string;
  private readonly key: Buffer;

  constructor(path: string, keyPath: string) {
    this.path = path;
    this.key = loadOrCreateStoreKey(keyPath);
  }

  read(): CryptoState | null {
    if (!existsSync(this.path)) return null;
    return decryptState(readFileSync(this.path), this.key, this.path);
  }

  write(state: CryptoState): void {
    writeFileAtomic(this.path, encryptState(state, this.key));
  }
}
