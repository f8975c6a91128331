// The proxy's receipt log: what it holds in memory per receipt, and what an append and a read
// back cost. The baseline, measured in the same run, holds every receipt in a Map (as the store
// did before it kept places in the file instead): the memory a long-running proxy would grow by.
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { ReceiptStore } from '../src/proxy/receipt-store.ts';
import type { SignedReceipt } from '../src/proxy/receipts.ts';

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;
const RECEIPTS = Number(process.env['BENCH_RECEIPTS'] ?? 20_000);
const JOBS = 200;

/** A receipt the size of a real one (a JWS of about 1,400 bytes). */
function receipt(i: number): SignedReceipt {
  const id = crypto.randomUUID();
  return {
    receiptId: id,
    jobId: `job-${i % JOBS}`,
    payloadSha256: i.toString(16).padStart(64, '0'),
    jws: `eyJhbGciOiJFZERTQSJ9.${Buffer.from(`${id}${'x'.repeat(950)}`).toString('base64url')}.${'s'.repeat(86)}`,
  } as SignedReceipt;
}

function heapMiB(): number {
  gc();
  gc();
  return process.memoryUsage().heapUsed / (1 << 20);
}

const dir = mkdtempSync(join(tmpdir(), 'clawgate-bench-receipts-'));
try {
  // Receipts are made as they are needed (a proxy does not keep them either); only ids are kept.
  const ids: string[] = [];
  let before = heapMiB();
  const held = new Map<string, SignedReceipt>();
  const heldByJob = new Map<string, SignedReceipt[]>();
  for (let i = 0; i < RECEIPTS; i++) {
    const r = receipt(i);
    ids.push(r.receiptId);
    held.set(r.receiptId, r);
    const list = heldByJob.get(r.jobId ?? '') ?? [];
    list.push(r);
    heldByJob.set(r.jobId ?? '', list);
  }
  const baseline = heapMiB() - before;
  held.clear();
  heldByJob.clear();
  ids.length = 0;

  const path = join(dir, 'receipts.log');
  const store = await ReceiptStore.open(path);
  before = heapMiB();
  let started = performance.now();
  for (let i = 0; i < RECEIPTS; i += 100) {
    // Batches of 100, as under load (one fdatasync each).
    const batch = Array.from({ length: Math.min(100, RECEIPTS - i) }, (_, j) => receipt(i + j));
    for (const r of batch) ids.push(r.receiptId);
    await Promise.all(batch.map((r) => store.append(r)));
  }
  const appendMs = performance.now() - started;
  const indexed = heapMiB() - before;
  started = performance.now();
  let read = 0;
  for (let i = 0; i < RECEIPTS; i += 97) read += store.get(ids[i] ?? '') ? 1 : 0;
  const getUs = ((performance.now() - started) / read) * 1000;
  started = performance.now();
  const job = store.forJob('job-7');
  const forJobMs = performance.now() - started;
  await store.close();
  const size = receipt(0).jws.length;
  // A restart: the log read back (a chunk at a time) and indexed, against reading its bytes.
  started = performance.now();
  const reopened = await ReceiptStore.open(path);
  const openMs = performance.now() - started;
  await reopened.close();
  started = performance.now();
  const raw = readFileSync(path);
  const readMs = performance.now() - started;

  const kib = (mib: number): string => `${((mib * 1024 * 1024) / RECEIPTS / 1024).toFixed(2)} KiB`;
  console.log(`${RECEIPTS} receipts of ${size}-byte JWS, ${JOBS} jobs (both hold the ids too):`);
  console.log(`  held in a Map (baseline)   heap ${baseline.toFixed(1)} MiB   ${kib(baseline)} per receipt`);
  console.log(
    `  receipt store (places)     heap ${indexed.toFixed(1)} MiB   ${kib(indexed)} per receipt   ` +
      `(${(indexed / baseline).toFixed(3)} of the baseline)`,
  );
  console.log(
    `  append in batches of 100: ${((appendMs / RECEIPTS) * 1000).toFixed(1)} us per receipt; ` +
      `get by id from the file: ${getUs.toFixed(1)} us; forJob (${job.length} receipts): ${forJobMs.toFixed(2)} ms`,
  );
  console.log(
    `  reopen (a restart): ${openMs.toFixed(1)} ms, ${((openMs / RECEIPTS) * 1000).toFixed(1)} us per receipt; ` +
      `reading the ${(raw.length / (1 << 20)).toFixed(1)} MiB file alone: ${readMs.toFixed(1)} ms`,
  );
} finally {
  rmSync(dir, { recursive: true, force: true });
}
