// What a long-running part says about a service it depends on (Temporal, the homeserver) while
// that service does not answer: one warning when the outage starts, one line when it ends with
// how long it lasted and how many failures it folded, and its state for the health endpoint in
// between. And a folder for any other warning that repeats (the Temporal SDK's, say): the first
// is logged, the repeats are counted and logged as one line when they stop.
import type { Logger } from 'pino';

export interface OutageStatus {
  /** Whether the service answers now (its last check, or the last call made to it). */
  reachable: boolean;
  /** Since when it has been so: the last change, or when this part started watching. */
  since: string;
  /** Milliseconds since then. */
  forMs: number;
  /** While it does not answer: the last failure. */
  error: string | null;
  /** While it does not answer: the failures seen since the outage began (checks and calls). */
  failures: number;
}

export interface OutageOptions {
  /** The service, as a person names it: 'Temporal', 'the homeserver'. */
  service: string;
  log: Logger;
  /** What the outage means for this part, added to the warning. */
  impact?: string;
  /** What is said of the service while it fails, and once it works again. */
  words?: { down: string; up: string };
  now?: () => number;
}

const REACHABILITY = { down: 'is not reachable', up: 'is reachable again' };

/** The state of one service a part depends on; said in the log once per change. */
export class Outage {
  readonly service: string;
  private readonly log: Logger;
  private readonly impact: string;
  private readonly words: { down: string; up: string };
  private readonly now: () => number;
  private since: number;
  private downSince: number | null = null;
  private lastError: string | null = null;
  private failures = 0;

  constructor(opts: OutageOptions) {
    this.service = opts.service;
    this.log = opts.log;
    this.impact = opts.impact ?? '';
    this.words = opts.words ?? REACHABILITY;
    this.now = opts.now ?? Date.now;
    this.since = this.now();
  }

  get down(): boolean {
    return this.downSince !== null;
  }

  /**
   * A check or a call failed because the service did not answer; true when this began the
   * outage. One that began (`startedAt`) before the service last came back is of that outage,
   * which is over: it begins no new one (a check sent during the outage that times out just
   * after the recovery would otherwise be one warning and one "reachable again" more).
   */
  failed(error: unknown, startedAt?: number): boolean {
    if (startedAt !== undefined && this.downSince === null && startedAt < this.since) return false;
    const reason = error instanceof Error ? error.message : String(error);
    this.lastError = reason.slice(0, 500);
    this.failures += 1;
    if (this.downSince !== null) return false;
    this.downSince = this.now();
    this.since = this.downSince;
    this.log.warn(
      { service: this.service, error: this.lastError },
      `${this.service} ${this.words.down}${this.impact ? `; ${this.impact}` : ''}`,
    );
    return true;
  }

  /** The service answered; ends an outage, saying how long it lasted. */
  answered(): void {
    if (this.downSince === null) return;
    const now = this.now();
    const downMs = now - this.downSince;
    this.log.info(
      { service: this.service, downMs, failures: this.failures, lastError: this.lastError },
      `${this.service} ${this.words.up} after ${formatDuration(downMs)}`,
    );
    this.downSince = null;
    this.since = now;
    this.lastError = null;
    this.failures = 0;
  }

  /** For a health answer, while it fails: "Temporal is not reachable (for 12.3 s, since …): <the last error>". */
  reason(): string | null {
    const status = this.status();
    if (status.reachable) return null;
    return (
      `${this.service} ${this.words.down} (for ${formatDuration(status.forMs)}, since ${status.since})` +
      (status.error ? `: ${status.error}` : '')
    );
  }

  status(): OutageStatus {
    const now = this.now();
    return {
      reachable: this.downSince === null,
      since: new Date(this.since).toISOString(),
      forMs: now - this.since,
      error: this.lastError,
      failures: this.failures,
    };
  }
}

/** 850 ms, 12.3 s, 4 min 5 s, 2 h 3 min. */
export function formatDuration(ms: number): string {
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(1)} s`;
  const s = Math.round(ms / 1000);
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

export interface LogEntry {
  level: 'warn' | 'error';
  message: string;
  meta: Record<string, unknown>;
}

/** What makes two entries the same warning: the level and the text with its numbers left out. */
export function foldKey(entry: LogEntry): string {
  return `${entry.level} ${entry.message.replace(/\d+/g, '#')}`;
}

/**
 * Logs the first of a run of the same warning at once and counts the repeats that follow within
 * `windowMs`; once that window has passed (`flush`, or the next repeat), the last repeat is
 * logged once with `repeated: <count>`. A warning that does not come back costs nothing more.
 */
export class RepeatFolder {
  private readonly windowMs: number;
  private readonly now: () => number;
  private readonly emit: (entry: LogEntry, repeated: number) => void;
  private readonly runs = new Map<string, { startedAt: number; repeated: number; last: LogEntry }>();

  constructor(opts: {
    windowMs: number;
    emit: (entry: LogEntry, repeated: number) => void;
    now?: () => number;
  }) {
    this.windowMs = opts.windowMs;
    this.emit = opts.emit;
    this.now = opts.now ?? Date.now;
  }

  note(entry: LogEntry): void {
    const key = foldKey(entry);
    const now = this.now();
    const run = this.runs.get(key);
    if (run && now - run.startedAt < this.windowMs) {
      run.repeated += 1;
      run.last = entry;
      return;
    }
    if (run && run.repeated > 0) this.emit(run.last, run.repeated);
    this.runs.set(key, { startedAt: now, repeated: 0, last: entry });
    this.emit(entry, 0);
  }

  /** Logs the count of every run whose window has passed, and forgets those runs. */
  flush(): void {
    const now = this.now();
    for (const [key, run] of this.runs) {
      if (now - run.startedAt < this.windowMs) continue;
      if (run.repeated > 0) this.emit(run.last, run.repeated);
      this.runs.delete(key);
    }
  }
}

/** A folder whose lines go to `log`; flushed every window until the process ends. */
export function foldingLogger(log: Logger, windowMs = 60_000): RepeatFolder {
  const folder = new RepeatFolder({
    windowMs,
    emit: (entry, repeated) => {
      const meta = repeated > 0 ? { ...entry.meta, repeated, withinMs: windowMs } : entry.meta;
      const message = repeated > 0 ? `${entry.message} (and ${repeated} more like it)` : entry.message;
      if (entry.level === 'error') log.error(meta, message);
      else log.warn(meta, message);
    },
  });
  setInterval(() => folder.flush(), windowMs).unref();
  return folder;
}
