// The proxy's receipt store: a log on disk, one JSON line per signed receipt. `append` resolves
// only once the receipt is durable (written and fdatasync'ed), and writes that arrive while a
// flush is under way are batched into the next one (group commit), so a busy proxy pays one
// fsync per batch, not per call. A batch of one (no load) is written and synced synchronously:
// on this project's machines that took 0.19 ms where the same through the libuv thread pool
// took 0.52 ms (two round trips). Larger batches go through the thread pool, which keeps the
// event loop free to gather the next batch.
//
// The file is kept ahead of its data with zeros that are already on disk (written and synced
// in the background, 1 MiB at a time): a receipt overwrites zeros in place, so its
// fdatasync has only the data to flush, not the file's size and block map (measured here with
// the disk idle between writes: 0.14-0.15 ms at p50 against 0.22 ms for a plain append). The
// log ends at the first zero byte; a JSON line never contains one. The fills are small because a
// receipt's fdatasync that coincides with one flushes it too (with 4 MiB fills the benchmark's
// p99 under load was 150-211 ms, with 1 MiB fills about 50 ms).
//
// On start the log is read back, a chunk at a time: receipts by id and by job, and each job's
// chain head, survive a restart. In memory the store keeps where each receipt's line is (offset
// and length) and each job's chain head, not the receipts: a receipt read back by id or job is
// read from the file, so a proxy that has signed millions of receipts does not hold them all. A
// torn last line (a crash mid-write) is cut off, since its caller never got an answer; a damaged
// complete line is refused, never cut. One writer at a time: a second proxy on the same log
// refuses to start. A reader (`ReceiptStore.read`, the CLI) never changes the file.
//
// A write that fails (a full disk, an I/O error) fails every call of its batch, and leaves
// nothing behind that a restart would read: what it wrote is zeroed again (or cut off), and the
// jobs' chain heads go back to their last durable receipt, so a job's next receipt links to one
// that is in the log. A receipt queued meanwhile that links to a lost one fails with it.
import {
  closeSync,
  existsSync,
  fdatasync,
  fdatasyncSync,
  fstatSync,
  ftruncateSync,
  mkdirSync,
  openSync,
  readSync,
  rmSync,
  write,
  writeSync,
} from 'node:fs';
import { dirname } from 'node:path';
import { promisify } from 'node:util';
import { ClawgateError, ERROR_CODES } from '../errors.ts';
import { takePidLock } from '../storage/pid-lock.ts';
import type { SignedReceipt } from './receipts.ts';

const writeAsync = promisify(write) as (
  fd: number,
  buffer: Buffer,
  offset: number,
  length: number,
  position: number,
) => Promise<{ bytesWritten: number; buffer: Buffer }>;
const fdatasyncAsync = promisify(fdatasync);

/** How far ahead of the data the file is zero-filled, and when more is filled. */
export interface Preallocation {
  chunkBytes: number;
  lowWaterBytes: number;
}
const DEFAULT_PREALLOCATION: Preallocation = { chunkBytes: 1 << 20, lowWaterBytes: 512 << 10 };

interface LogLine {
  receipt_id: string;
  job_id: string | null;
  payload_sha256: string;
  jws: string;
}

export interface StoredReceipt {
  receiptId: string;
  jobId: string | null;
  payloadSha256: string;
  jws: string;
}

/** Where a receipt's line is in the log (without its newline). */
interface Place {
  offset: number;
  length: number;
}

/** What the index needs of a receipt: its ids, its hash (the chain), and where it is. */
interface Indexed {
  receiptId: string;
  jobId: string | null;
  payloadSha256: string;
  place: Place;
}

function storedFrom(line: LogLine): StoredReceipt {
  return {
    receiptId: line.receipt_id,
    jobId: line.job_id,
    payloadSha256: line.payload_sha256,
    jws: line.jws,
  };
}

/** A receipt waiting for its write: its line, and what its job's chain needs if the write fails. */
interface Pending {
  line: Buffer;
  jobId: string | null;
  payloadSha256: string;
  prev: string | null;
  resolve: (at: number) => void;
  reject: (e: unknown) => void;
}

/** How much of the log is read at a time when it is scanned at open. */
const SCAN_CHUNK_BYTES = 1 << 20;

/**
 * Scans a log from its start up to its first zero byte, a chunk at a time (a log of months is
 * never read whole into memory), and hands each complete line's receipt and place to `found`.
 * Returns where the data ends and where a torn last line starts, if there is one: a line without
 * its newline, which only a crash in the middle of a write leaves. A complete line that is not a
 * receipt is damage, not a crash, and is refused rather than cut off with what follows it.
 */
function scanLog(
  fd: number,
  path: string,
  chunkBytes: number,
  found: (receipt: Indexed) => void,
): { end: number; tornAt: number | null } {
  const chunk = Buffer.alloc(chunkBytes);
  let position = 0;
  /** File offset of `carry`'s first byte: the start of the line being read. */
  let lineStart = 0;
  let carry: Buffer = Buffer.alloc(0);
  for (;;) {
    const n = readSync(fd, chunk, 0, chunkBytes, position);
    if (n === 0) break;
    position += n;
    let data = chunk.subarray(0, n);
    const zero = data.indexOf(0);
    if (zero >= 0) data = data.subarray(0, zero);
    const bytes = carry.length > 0 ? Buffer.concat([carry, data]) : data;
    let offset = 0;
    for (let newline = bytes.indexOf(0x0a); newline >= 0; newline = bytes.indexOf(0x0a, offset)) {
      const line = bytes.subarray(offset, newline).toString('utf8');
      if (line !== '') {
        let parsed: LogLine;
        try {
          parsed = JSON.parse(line) as LogLine;
        } catch {
          throw new ClawgateError(
            ERROR_CODES.stateCorrupt,
            `the receipt log ${path} has a damaged line at byte ${lineStart + offset}; receipts are evidence ` +
              'and clawgate does not cut them off: restore the log from a backup, or move it aside to start a new one',
          );
        }
        found({
          receiptId: parsed.receipt_id,
          jobId: parsed.job_id,
          payloadSha256: parsed.payload_sha256,
          place: { offset: lineStart + offset, length: newline - offset },
        });
      }
      offset = newline + 1;
    }
    // The chunk buffer is read into again: what is left of a line is copied out of it.
    carry = Buffer.from(bytes.subarray(offset));
    lineStart += offset;
    if (zero >= 0) break;
  }
  return { end: lineStart, tornAt: carry.length > 0 ? lineStart : null };
}

export class ReceiptStore {
  private readonly byId = new Map<string, Place>();
  private readonly byJob = new Map<string, Place[]>();
  private readonly heads = new Map<string, string>();
  /** Opened by `read`: it reads the file and never writes it. */
  private readonly readOnly: boolean;
  private pending: Pending[] = [];
  private flushing: Promise<void> | undefined;
  private readonly fd: number | null;
  private readonly lockPath: string | null;
  private readonly prealloc: Preallocation;
  /** Where the next receipt goes: the end of the data. */
  private end = 0;
  /** Bytes of the file on disk (data, then zeros); a write past them grows the file. */
  private allocated = 0;
  /** A zero fill under way, from `allocated` on. */
  private extending: Promise<void> | undefined;
  private closed = false;
  /**
   * Told how long each fdatasync of a batch of receipts took (the proxy's fsync histogram); the
   * zero fills ahead of the data are not timed, no call waits for them.
   */
  onFsync: ((seconds: number) => void) | undefined;

  private constructor(fd: number | null, lockPath: string | null, prealloc: Preallocation, readOnly = false) {
    this.fd = fd;
    this.lockPath = lockPath;
    this.prealloc = prealloc;
    this.readOnly = readOnly;
  }

  /** Opens the log to write receipts, as its one writer. */
  // eslint-disable-next-line @typescript-eslint/require-await -- errors as rejections, like any open
  static async open(
    path: string,
    opts: {
      preallocation?: Preallocation;
      /** How much of the log is read at a time at open (tests make it small). */
      scanChunkBytes?: number;
    } = {},
  ): Promise<ReceiptStore> {
    mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
    const lockPath = `${path}.lock`;
    takePidLock(
      lockPath,
      (pid) =>
        `the receipt log ${path} is written by process ${pid}; one proxy per log ` +
        '(stop that process, or give this proxy its own receiptsPath)',
    );
    // Created with its mode if missing, then written at offsets of clawgate's choosing.
    closeSync(openSync(path, 'a', 0o600));
    const fd = openSync(path, 'r+');
    const store = new ReceiptStore(fd, lockPath, opts.preallocation ?? DEFAULT_PREALLOCATION);
    let scanned: { end: number; tornAt: number | null };
    try {
      scanned = scanLog(fd, path, opts.scanChunkBytes ?? SCAN_CHUNK_BYTES, (r) => store.index(r));
    } catch (error) {
      closeSync(fd);
      rmSync(lockPath, { force: true });
      throw error;
    }
    const { end, tornAt } = scanned;
    if (tornAt !== null) {
      // A torn last line: its call never got an answer. It goes (only zeros follow it).
      ftruncateSync(fd, tornAt);
      fdatasyncSync(fd);
    }
    store.end = end;
    store.allocated = fstatSync(fd).size;
    store.extendIfLow();
    return store;
  }

  /** Reads a log without writing to it (a proxy may be writing it): what is complete now. */
  static read(path: string, opts: { scanChunkBytes?: number } = {}): ReceiptStore {
    if (!existsSync(path)) {
      throw new ClawgateError(ERROR_CODES.receiptNotFound, `no receipt log at ${path}`);
    }
    const fd = openSync(path, 'r');
    const store = new ReceiptStore(fd, null, DEFAULT_PREALLOCATION, true);
    try {
      scanLog(fd, path, opts.scanChunkBytes ?? SCAN_CHUNK_BYTES, (r) => store.index(r));
    } catch (error) {
      closeSync(fd);
      throw error;
    }
    return store;
  }

  /** Zero-fills the next chunk in the background when the room ahead runs low. */
  private extendIfLow(): void {
    const fd = this.fd;
    if (fd === null || this.extending || this.allocated - this.end >= this.prealloc.lowWaterBytes) return;
    const from = this.allocated;
    const zeros = Buffer.alloc(this.prealloc.chunkBytes);
    this.extending = (async () => {
      let done = 0;
      while (done < zeros.length) {
        done += (await writeAsync(fd, zeros, done, zeros.length - done, from + done)).bytesWritten;
      }
      await fdatasyncAsync(fd);
      this.allocated = Math.max(this.allocated, from + zeros.length);
    })()
      .catch(() => {
        // No room ahead (a full disk, say): receipts go past the end, slower but as durable.
      })
      .finally(() => {
        this.extending = undefined;
      });
  }

  private index(receipt: Indexed): void {
    this.byId.set(receipt.receiptId, receipt.place);
    if (receipt.jobId !== null) {
      const list = this.byJob.get(receipt.jobId) ?? [];
      list.push(receipt.place);
      this.byJob.set(receipt.jobId, list);
      this.heads.set(receipt.jobId, receipt.payloadSha256);
    }
  }

  /** A receipt read back from its place in the log. */
  private at(place: Place): StoredReceipt {
    if (this.fd === null || this.closed) throw new Error('this receipt log is closed');
    const bytes = Buffer.alloc(place.length);
    let done = 0;
    while (done < place.length) {
      const n = readSync(this.fd, bytes, done, place.length - done, place.offset + done);
      if (n === 0) break;
      done += n;
    }
    return storedFrom(JSON.parse(bytes.toString('utf8')) as LogLine);
  }

  /**
   * The hash the job's next receipt links to, and reserves that place: the caller builds its
   * receipt on this head and must `append` it (chains are built in call order).
   */
  chainHead(jobId: string): string | null {
    return this.heads.get(jobId) ?? null;
  }

  /** Moves the chain head at once (before the write is durable) so concurrent calls chain in order. */
  advanceHead(jobId: string, payloadSha256: string): void {
    this.heads.set(jobId, payloadSha256);
  }

  async append(receipt: SignedReceipt): Promise<void> {
    const line: LogLine = {
      receipt_id: receipt.receiptId,
      job_id: receipt.jobId,
      payload_sha256: receipt.payloadSha256,
      jws: receipt.jws,
    };
    const bytes = Buffer.from(`${JSON.stringify(line)}\n`);
    const offset = await new Promise<number>((resolve, reject) => {
      this.pending.push({
        line: bytes,
        jobId: receipt.jobId,
        payloadSha256: receipt.payloadSha256,
        // (Tests and benchmarks append bare lines, without a payload: they link to nothing.)
        prev: (receipt.payload as SignedReceipt['payload'] | undefined)?.prev_receipt_sha256 ?? null,
        resolve,
        reject,
      });
      this.flushing ??= this.flush();
    });
    const place: Place = { offset, length: bytes.length - 1 };
    this.byId.set(receipt.receiptId, place);
    if (receipt.jobId !== null) {
      const list = this.byJob.get(receipt.jobId) ?? [];
      list.push(place);
      this.byJob.set(receipt.jobId, list);
    }
  }

  /** Writes what is pending, in batches, once the current tick has queued what it will. */
  private async flush(): Promise<void> {
    await Promise.resolve();
    const fd = this.fd;
    while (this.pending.length > 0) {
      const batch = this.pending;
      this.pending = [];
      const at = this.end;
      let written = 0;
      try {
        if (fd === null || this.readOnly) throw new Error('this receipt log is open for reading only');
        const bytes = Buffer.concat(batch.map((p) => p.line));
        // Never write where a zero fill is still going on.
        while (this.extending && this.end + bytes.length > this.allocated) await this.extending;
        if (batch.length === 1) {
          // A lone call (no load): the synchronous path answers it soonest.
          while (written < bytes.length) {
            written += writeSync(fd, bytes, written, bytes.length - written, at + written);
          }
          const syncStart = performance.now();
          fdatasyncSync(fd);
          this.onFsync?.((performance.now() - syncStart) / 1000);
        } else {
          // Under load: keep the event loop free for the calls that will form the next batch.
          while (written < bytes.length) {
            const { bytesWritten } = await writeAsync(
              fd,
              bytes,
              written,
              bytes.length - written,
              at + written,
            );
            written += bytesWritten;
          }
          const syncStart = performance.now();
          await fdatasyncAsync(fd);
          this.onFsync?.((performance.now() - syncStart) / 1000);
        }
        this.end = at + bytes.length;
        this.allocated = Math.max(this.allocated, this.end);
        let offset = at;
        for (const p of batch) {
          p.resolve(offset);
          offset += p.line.length;
        }
        this.extendIfLow();
      } catch (error) {
        if (fd !== null && !this.readOnly) {
          // Bytes that reached the file stay unread: no receipt of a call that failed is trusted.
          if (written > 0) this.unwrite(fd, at, written);
          this.forget(batch, error);
        } else for (const p of batch) p.reject(error);
      }
      // Let requests that arrived meanwhile join the next batch.
      await new Promise<void>((resolve) => setImmediate(resolve));
    }
    this.flushing = undefined;
  }

  /**
   * Undoes what a failed write left at `at` (part of a line, or whole lines whose fdatasync
   * failed): zeros over it, since the log ends at its first zero byte, or, when even that fails,
   * the file cut back to `at`.
   */
  private unwrite(fd: number, at: number, written: number): void {
    try {
      const zeros = Buffer.alloc(written);
      let done = 0;
      while (done < written) done += writeSync(fd, zeros, done, written - done, at + done);
      fdatasyncSync(fd);
    } catch {
      try {
        ftruncateSync(fd, at);
        fdatasyncSync(fd);
        this.allocated = Math.min(this.allocated, at);
      } catch {
        // Nothing more can be done now; the next write starts at `at` again, over what is there.
      }
    }
  }

  /**
   * Fails a batch whose write failed, with every receipt queued since that links to one of it
   * (its chain would point at a receipt that is not in the log), and moves each job's chain head
   * back to its last receipt that is durable.
   */
  private forget(batch: Pending[], error: unknown): void {
    const lost = new Map<string, string | null>(batch.map((p) => [p.payloadSha256, p.prev]));
    const failed = [...batch];
    const kept: Pending[] = [];
    for (const p of this.pending) {
      if (p.prev !== null && lost.has(p.prev)) {
        lost.set(p.payloadSha256, p.prev);
        failed.push(p);
      } else kept.push(p);
    }
    this.pending = kept;
    for (const p of failed) {
      if (p.jobId === null) continue;
      let head = this.heads.get(p.jobId) ?? null;
      while (head !== null && lost.has(head)) head = lost.get(head) ?? null;
      if (head === null) this.heads.delete(p.jobId);
      else this.heads.set(p.jobId, head);
    }
    for (const p of failed) p.reject(error);
  }

  get(receiptId: string): StoredReceipt | undefined {
    const place = this.byId.get(receiptId);
    return place ? this.at(place) : undefined;
  }

  forJob(jobId: string): StoredReceipt[] {
    return (this.byJob.get(jobId) ?? []).map((place) => this.at(place));
  }

  /** Waits for what is being written, closes the file and lets another writer have it. Idempotent. */
  async close(): Promise<void> {
    await this.flushing;
    await this.extending;
    if (this.closed) return;
    this.closed = true;
    if (this.fd !== null) closeSync(this.fd);
    if (this.lockPath !== null) rmSync(this.lockPath, { force: true });
  }
}
