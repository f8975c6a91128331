// The durable crypto store: an IndexedDB snapshot restored whole into a fresh factory, written
// encrypted and atomically, refused clearly when damaged; and, with matrix-js-sdk's real Rust
// crypto, a device that keeps its identity keys across a "restart" (a new factory).
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { IDBFactory, IDBKeyRange } from 'fake-indexeddb';
import { createClient } from 'matrix-js-sdk';
import { ClawgateError, ERROR_CODES } from '../../../src/errors.ts';
import {
  CryptoStateFile,
  freshIndexedDb,
  restoreDatabases,
  snapshotDatabases,
} from '../../../src/ingress/crypto-store.ts';
import { quietMatrixSdkLogging } from '../../../src/ingress/sdk-logging.ts';

quietMatrixSdkLogging(['error']);
const fresh = () => mkdtempSync(join(tmpdir(), 'clawgate-crypto-'));

function request<T>(req: IDBRequest<T>): Promise<T> {
  return new Promise((resolve, reject) => {
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error ?? new Error('IndexedDB request failed'));
  });
}

async function seed(factory: IDBFactory, name: string): Promise<void> {
  const open = factory.open(name, 3);
  open.onupgradeneeded = () => {
    const db = open.result;
    const a = db.createObjectStore('sessions', { keyPath: ['sender', 'id'] });
    a.createIndex('by_sender', 'sender', { unique: false });
    db.createObjectStore('blobs');
    db.createObjectStore('counters', { autoIncrement: true });
  };
  const db = await request(open);
  const tx = db.transaction(['sessions', 'blobs', 'counters'], 'readwrite');
  tx.objectStore('sessions').put({ sender: '@a:x', id: 's1', pickle: new Uint8Array([1, 2, 3]) });
  tx.objectStore('sessions').put({ sender: '@b:x', id: 's2', pickle: new Uint8Array([4]) });
  tx.objectStore('blobs').put({ nested: { map: new Map([['k', 1]]) } }, 'account');
  tx.objectStore('counters').put('first');
  await new Promise((r) => (tx.oncomplete = r));
  db.close();
}

test('a snapshot restores whole: schema, indexes, keys and values (typed arrays, maps)', async () => {
  const before = new IDBFactory();
  await seed(before, 'acct-a::matrix-sdk-crypto');
  await seed(before, 'acct-b::matrix-sdk-crypto');
  const snapshot = await snapshotDatabases(before, 'acct-a');
  assert.deepEqual(
    snapshot.map((d) => d.name),
    ['acct-a::matrix-sdk-crypto'],
    "only this account's databases",
  );
  const after = new IDBFactory();
  await restoreDatabases(after, snapshot);
  const db = await request(after.open('acct-a::matrix-sdk-crypto'));
  assert.equal(db.version, 3);
  const tx = db.transaction(['sessions', 'blobs', 'counters']);
  const bySender = await request(
    tx.objectStore('sessions').index('by_sender').getAll(IDBKeyRange.only('@b:x')),
  );
  assert.deepEqual(bySender, [{ sender: '@b:x', id: 's2', pickle: new Uint8Array([4]) }]);
  assert.deepEqual(await request(tx.objectStore('blobs').get('account')), {
    nested: { map: new Map([['k', 1]]) },
  });
  assert.deepEqual(await request(tx.objectStore('counters').getAll()), ['first']);
  db.close();
  // And the restored copy snapshots to the same thing.
  assert.deepEqual(await snapshotDatabases(after, 'acct-a'), snapshot);
});

test('the state file: encrypted at rest, 0600, its key in another file; damage and a wrong key are named', async () => {
  const dir = fresh();
  const factory = new IDBFactory();
  await seed(factory, 'acct-a::matrix-sdk-crypto');
  const file = new CryptoStateFile(join(dir, 'crypto.bin'), join(dir, 'crypto.key'));
  const state = { syncToken: 's42_7', databases: await snapshotDatabases(factory, 'acct-a') };
  file.write(state);
  assert.equal(statSync(join(dir, 'crypto.bin')).mode & 0o777, 0o600);
  assert.equal(statSync(join(dir, 'crypto.key')).mode & 0o777, 0o600);
  const bytes = readFileSync(join(dir, 'crypto.bin'));
  assert.ok(!bytes.includes(Buffer.from('@a:x')), 'nothing readable without the key');
  assert.deepEqual(new CryptoStateFile(join(dir, 'crypto.bin'), join(dir, 'crypto.key')).read(), state);

  const expectCorrupt = (pattern: RegExp) => (error: unknown) => {
    assert.ok(error instanceof ClawgateError && error.code === ERROR_CODES.stateCorrupt);
    assert.match(error.message, pattern);
    assert.match(error.message, /move the account folder aside/);
    return true;
  };
  writeFileSync(join(dir, 'crypto.bin'), bytes.subarray(0, bytes.length - 10));
  assert.throws(() => file.read(), expectCorrupt(/crypto\.bin does not decrypt with its key/));
  writeFileSync(join(dir, 'crypto.bin'), bytes.subarray(0, 8));
  assert.throws(() => file.read(), expectCorrupt(/crypto\.bin is not a clawgate crypto store \(truncated/));
  writeFileSync(join(dir, 'crypto.bin'), bytes);
  writeFileSync(join(dir, 'other.key'), `${Buffer.alloc(32, 7).toString('base64')}\n`);
  assert.throws(
    () => new CryptoStateFile(join(dir, 'crypto.bin'), join(dir, 'other.key')).read(),
    expectCorrupt(/does not decrypt with its key/),
  );
  writeFileSync(join(dir, 'bad.key'), 'short');
  assert.throws(
    () => new CryptoStateFile(join(dir, 'crypto.bin'), join(dir, 'bad.key')),
    /not a crypto store key/,
  );
});

test("matrix-js-sdk's Rust crypto keeps its device identity across a restart through the snapshot", async () => {
  const identity = async (factory: IDBFactory) => {
    (globalThis as { indexedDB: IDBFactory }).indexedDB = factory;
    const client = createClient({
      baseUrl: 'http://127.0.0.1:9',
      userId: '@bot:localhost',
      deviceId: 'DEVICE1',
    });
    await client.initRustCrypto({ cryptoDatabasePrefix: 'acct-a' });
    const keys = await client.getCrypto()?.getOwnDeviceKeys();
    client.stopClient();
    return keys;
  };
  const first = freshIndexedDb();
  const keys = await identity(first);
  assert.ok(keys?.ed25519 && keys.curve25519);
  const dir = fresh();
  const file = new CryptoStateFile(join(dir, 'crypto.bin'), join(dir, 'crypto.key'));
  file.write({ syncToken: null, databases: await snapshotDatabases(first, 'acct-a') });

  const restored = new IDBFactory();
  await restoreDatabases(restored, file.read()?.databases ?? []);
  assert.deepEqual(await identity(restored), keys, 'the same identity keys');
  assert.notDeepEqual(await identity(new IDBFactory()), keys, 'without the snapshot, a new identity');
});
