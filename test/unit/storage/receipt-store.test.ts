// The proxy's receipt log: zero-filled ahead of its data, read back after a restart up to the
// first zero byte, a torn last line cut off, readers that never change it, one writer at a time.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { appendFileSync, existsSync, mkdtempSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { ClawgateError, ERROR_CODES } from '../../../src/errors.ts';
import { ReceiptStore } from '../../../src/proxy/receipt-store.ts';
import type { SignedReceipt } from '../../../src/proxy/receipts.ts';

const SMALL = { chunkBytes: 64 * 1024, lowWaterBytes: 16 * 1024 };

function receipt(i: number, job = 'job-1'): SignedReceipt {
  return {
    receiptId: `r-${i}`,
    jobId: job,
    payloadSha256: i.toString(16).padStart(64, '0'),
    jws: `header.${'p'.repeat(700)}${i}.signature`,
  } as SignedReceipt;
}

function logPath(): string {
  return join(mkdtempSync(join(tmpdir(), 'clawgate-receipts-')), 'receipts.log');
}

test('receipts fill zeros laid down ahead of them, across many chunks, and all come back after a restart', async () => {
  const path = logPath();
  const store = await ReceiptStore.open(path, { preallocation: SMALL });
  // Sequential appends (the synchronous path) and a burst (one batch through the thread pool).
  for (let i = 0; i < 150; i++) await store.append(receipt(i));
  await Promise.all(Array.from({ length: 150 }, (_, i) => store.append(receipt(150 + i))));
  await store.close();
  const bytes = readFileSync(path);
  const dataEnd = bytes.indexOf(0);
  assert.ok(dataEnd > 0, 'the file has zeros ahead of its data');
  assert.ok(
    bytes.subarray(dataEnd).every((b) => b === 0),
    'nothing but zeros after the data',
  );
  assert.equal(bytes.subarray(0, dataEnd).toString().split('\n').filter(Boolean).length, 300);
  assert.ok(statSync(path).size - dataEnd <= SMALL.chunkBytes + SMALL.lowWaterBytes);

  const again = await ReceiptStore.open(path, { preallocation: SMALL });
  const ids = again.forJob('job-1').map((r) => r.receiptId);
  assert.equal(ids.length, 300);
  assert.deepEqual(ids.slice(0, 3), ['r-0', 'r-1', 'r-2']);
  assert.equal(again.chainHead('job-1'), receipt(299).payloadSha256);
  // The next receipt goes right after the last one, not after the zeros.
  await again.append(receipt(300));
  await again.close();
  const third = ReceiptStore.read(path);
  assert.equal(third.forJob('job-1').length, 301);
  assert.equal(third.get('r-300')?.jws, receipt(300).jws);
});

test('a torn last line (a crash mid-write) is cut off at the next open, and appends go on after it', async () => {
  const path = logPath();
  const store = await ReceiptStore.open(path, { preallocation: SMALL });
  for (let i = 0; i < 3; i++) await store.append(receipt(i));
  await store.close();
  // What a crash in the middle of the fourth write leaves: half a line, then the zeros.
  const bytes = readFileSync(path);
  const end = bytes.indexOf(0);
  const half = Buffer.from(`{"receipt_id":"r-3","job_id":"job-1","payload_sha2`);
  half.copy(bytes, end);
  writeFileSync(path, bytes);

  const reader = ReceiptStore.read(path);
  assert.equal(reader.forJob('job-1').length, 3);
  assert.deepEqual(readFileSync(path), bytes, 'reading changed the file');

  const reopened = await ReceiptStore.open(path, { preallocation: SMALL });
  assert.equal(reopened.forJob('job-1').length, 3);
  await reopened.append(receipt(4));
  await reopened.close();
  const text = readFileSync(path).toString('utf8');
  assert.doesNotMatch(text, /payload_sha2[^5]/, 'the torn line is gone');
  assert.deepEqual(
    ReceiptStore.read(path)
      .forJob('job-1')
      .map((r) => r.receiptId),
    ['r-0', 'r-1', 'r-2', 'r-4'],
  );
});

test('a log without zeros ahead (written before they were kept) is read and continued', async () => {
  const path = logPath();
  const line = (i: number) =>
    `${JSON.stringify({ receipt_id: `r-${i}`, job_id: 'job-1', payload_sha256: 'a'.repeat(64), jws: 'x.y.z' })}\n`;
  appendFileSync(path, line(0) + line(1));
  const store = await ReceiptStore.open(path, { preallocation: SMALL });
  await store.append(receipt(2));
  await store.close();
  assert.deepEqual(
    ReceiptStore.read(path)
      .forJob('job-1')
      .map((r) => r.receiptId),
    ['r-0', 'r-1', 'r-2'],
  );
});

test('one writer per log: a live other process holding it is refused with a message; a dead one is not', async () => {
  const path = logPath();
  const holder = spawn(process.execPath, ['-e', 'setTimeout(() => {}, 30000)'], { stdio: 'ignore' });
  try {
    writeFileSync(`${path}.lock`, `${holder.pid}\n`);
    await assert.rejects(ReceiptStore.open(path), (error: unknown) => {
      assert.ok(error instanceof ClawgateError);
      assert.equal(error.code, ERROR_CODES.stateLocked);
      assert.match(error.message, new RegExp(`is written by process ${holder.pid}; one proxy per log`));
      return true;
    });
  } finally {
    holder.kill('SIGKILL');
    await new Promise((resolve) => holder.once('exit', resolve));
  }
  // The holder is gone: its lock is stale and the log opens.
  const store = await ReceiptStore.open(path);
  assert.equal(readFileSync(`${path}.lock`, 'utf8'), `${process.pid}\n`);
  await store.close();
});

test('reading a log that is not there says so', () => {
  assert.throws(
    () => ReceiptStore.read(join(tmpdir(), 'no-such-dir-clawgate', 'receipts.log')),
    /no receipt log at/,
  );
});

test('the log is read back a chunk at a time: lines across chunk boundaries come back whole', async () => {
  const path = logPath();
  const store = await ReceiptStore.open(path, { preallocation: SMALL });
  for (let i = 0; i < 40; i++) await store.append(receipt(i, i % 2 === 0 ? 'job-even' : 'job-odd'));
  await store.close();
  // Chunks smaller than a line, of an odd size, and larger than the file.
  for (const scanChunkBytes of [97, 4096, 1 << 20]) {
    const reader = ReceiptStore.read(path, { scanChunkBytes });
    assert.deepEqual(
      reader.forJob('job-even').map((r) => r.receiptId),
      Array.from({ length: 20 }, (_, i) => `r-${2 * i}`),
      `chunks of ${scanChunkBytes}`,
    );
    assert.equal(reader.get('r-39')?.jws, receipt(39).jws);
    await reader.close();
    const reopened = await ReceiptStore.open(path, { preallocation: SMALL, scanChunkBytes });
    assert.equal(reopened.chainHead('job-odd'), receipt(39).payloadSha256);
    assert.equal(reopened.forJob('job-odd').length, 20);
    await reopened.close();
  }
});

test('a damaged line in the middle of the log is refused, never cut off with the receipts after it', async () => {
  const path = logPath();
  const store = await ReceiptStore.open(path, { preallocation: SMALL });
  for (let i = 0; i < 3; i++) await store.append(receipt(i));
  await store.close();
  const bytes = readFileSync(path);
  const second = bytes.indexOf(0x0a) + 1;
  bytes[second] = 0x78; // the second line no longer starts a JSON object
  writeFileSync(path, bytes);
  const refusal = (error: unknown): boolean => {
    assert.ok(error instanceof ClawgateError);
    assert.equal(error.code, ERROR_CODES.stateCorrupt);
    assert.match(error.message, new RegExp(`has a damaged line at byte ${second}; receipts are evidence`));
    return true;
  };
  await assert.rejects(ReceiptStore.open(path, { preallocation: SMALL }), refusal);
  assert.throws(() => ReceiptStore.read(path), refusal);
  assert.deepEqual(readFileSync(path), bytes, 'nothing was cut');
  // The refused open let the log go: the writer's lock is not left behind.
  assert.equal(existsSync(`${path}.lock`), false);
});
