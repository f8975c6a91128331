// An append-only log of JSON records, one a line, shared by every process that opens the same
// file: the policy registry's events and the token revocations. Appends are one O_APPEND write
// each, fsync'ed before `append` returns. Readers pick up what other processes appended since
// their last look (`refresh`, one stat when nothing changed), so a revocation or a rollback made
// from the command line reaches a running worker or proxy at its next check.
//
// Failure handling is fail closed. A line that is not a valid record, a log that shrank, or a
// log replaced by another file is an error, never skipped: a revocation silently dropped would
// let a revoked token through. The one exception is a torn last line (a crash in the middle of
// an append whose call never returned): readers leave it unread, and the next append first
// closes it with a marker so that it stays recognisably torn, instead of gluing the new record
// onto it.
import { closeSync, fsyncSync, openSync, readSync, statSync, type Stats } from 'node:fs';
import { dirname } from 'node:path';
import type { z } from 'zod';
import { ClawgateError, type ErrorCode } from '../errors.ts';
import { ensurePrivateDir, fsyncDir, PRIVATE_FILE_MODE, writeAll } from './files.ts';

/** Ends a line an append found torn. No JSON record ends with a tab. */
export const TORN_LINE_MARK = '\t#torn';

export interface AppendLogOptions<T> {
  /** What the log is, for error messages: `revocation log`. */
  what: string;
  schema: z.ZodType<T>;
  /** The code of the error raised when the file is damaged. */
  corruptCode: ErrorCode;
}

export class AppendLog<T> {
  readonly path: string;
  private readonly opts: AppendLogOptions<T>;
  private readonly all: T[] = [];
  /** Bytes consumed: up to and including the last complete line. */
  private offset = 0;
  private lines = 0;
  private identity: { dev: number; ino: number } | null = null;

  constructor(path: string, opts: AppendLogOptions<T>) {
    this.path = path;
    this.opts = opts;
    ensurePrivateDir(dirname(path));
    this.refresh();
  }

  /** Every record, including those other processes appended since the last look. */
  records(): readonly T[] {
    this.refresh();
    return this.all;
  }

  private corrupt(detail: string): ClawgateError {
    return new ClawgateError(
      this.opts.corruptCode,
      `${this.opts.what} ${this.path} ${detail}; it is append-only and clawgate refuses to guess (restore it from a backup)`,
    );
  }

  private stat(): Stats | null {
    try {
      // Checked on every token verification: a missing file is an answer, not an exception.
      return statSync(this.path, { throwIfNoEntry: false }) ?? null;
    } catch (error) {
      throw this.corrupt(`cannot be read (${(error as NodeJS.ErrnoException).code ?? String(error)})`);
    }
  }

  /** Reads what was appended since the last look; returns the new records. */
  refresh(): T[] {
    const stats = this.stat();
    if (stats === null) {
      if (this.identity !== null) throw this.corrupt('was removed');
      return [];
    }
    if (this.identity === null) this.identity = { dev: stats.dev, ino: stats.ino };
    else if (this.identity.dev !== stats.dev || this.identity.ino !== stats.ino) {
      throw this.corrupt('was replaced by another file');
    }
    if (stats.size < this.offset) throw this.corrupt('shrank');
    if (stats.size === this.offset) return [];
    const bytes = this.readFrom(this.offset, stats.size - this.offset);
    const end = bytes.lastIndexOf(0x0a);
    if (end < 0) return []; // only a partial line so far
    const fresh: T[] = [];
    for (const line of bytes.subarray(0, end).toString('utf8').split('\n')) {
      this.lines += 1;
      if (line.endsWith(TORN_LINE_MARK) || line.trim() === '') continue;
      let record: T;
      try {
        record = this.opts.schema.parse(JSON.parse(line));
      } catch {
        throw this.corrupt(`line ${this.lines} is not a valid record`);
      }
      fresh.push(record);
    }
    this.offset += end + 1;
    this.all.push(...fresh);
    return fresh;
  }

  private readFrom(position: number, length: number): Buffer {
    const fd = openSync(this.path, 'r');
    try {
      const buffer = Buffer.alloc(length);
      let done = 0;
      while (done < length) {
        const n = readSync(fd, buffer, done, length - done, position + done);
        if (n === 0) break;
        done += n;
      }
      return buffer.subarray(0, done);
    } finally {
      closeSync(fd);
    }
  }

  /**
   * Appends a record durably (one write, then fsync) and returns once it is on disk. The record
   * is validated first: nothing that would make the log unreadable is written.
   */
  append(record: T): void {
    const checked = this.opts.schema.parse(record);
    const line = JSON.stringify(checked); // JSON.stringify escapes newlines: one line
    this.refresh();
    const size = this.stat()?.size ?? null;
    const created = size === null;
    // Bytes after the last complete line: a torn line (or another process's write in flight,
    // which the O_APPEND write below is ordered after; closing it then leaves a line holding
    // only the marker, skipped like any torn line).
    const tail = (size ?? 0) > this.offset;
    const text = `${tail ? `${TORN_LINE_MARK}\n` : ''}${line}\n`;
    const fd = openSync(this.path, 'a', PRIVATE_FILE_MODE);
    try {
      writeAll(fd, Buffer.from(text, 'utf8'));
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    if (created) fsyncDir(dirname(this.path));
    this.refresh();
  }
}
