// What `clawgate start` does with the parts it runs as processes: each is started and watched; one
// that exits unasked is started again after a pause that doubles from one start to the next (1 s,
// 2 s, ... 30 s, back to 1 s once it has stayed healthy a while); once it answers its health check
// again the terminal is told in one line, with how long it was down; one that stays alive but no
// longer answers its health check at all (hung: stopped, deadlocked) for hungAfterMs is killed
// with SIGKILL and started again the same way; one that fails its starts again and again (it
// never becomes healthy) stops the whole stack, naming it and its log. The
// parts themselves (how one is started, what "healthy" means) are given: src/stack/parts.ts has
// clawgate's, the unit tests fake ones.
import { rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ClawgateError, ERROR_CODES } from '../errors.ts';
import { ensurePrivateDir } from '../storage/files.ts';

/** How one start of a part ended. */
export interface Exit {
  code: number | null;
  signal: string | null;
}

/** One start of a part: its process, and how it ends. */
export interface Launched {
  pid: number;
  exited: Promise<Exit>;
  signal(sig: NodeJS.Signals): void;
}

export interface PartSpec {
  name: string;
  /** Where the part's output goes (named when it keeps failing). */
  logFile: string;
  /** Starts the process; may wait for it to be ready. A throw is a failed start. */
  launch(): Promise<Launched>;
  /**
   * Its health check now: healthy (200, or a server's own readiness), answering (it runs and
   * says it is not healthy: waiting for Temporal, say), or unreachable.
   */
  check(): Promise<Health>;
  /** How long a start may take to become healthy before it counts as failed (default: the supervisor's). */
  startTimeoutMs?: number;
  /** How long a clean stop may take before SIGKILL (default 15 s). */
  stopGraceMs?: number;
}

export interface SupervisorTiming {
  /** The first pause before a restart; it doubles with each restart in a row. */
  initialBackoffMs: number;
  maxBackoffMs: number;
  /** A part healthy this long has its pause back at initialBackoffMs. */
  resetAfterMs: number;
  /** Failed starts in a row (never healthy in between) after which the stack stops. */
  maxFailedStarts: number;
  startTimeoutMs: number;
  /** How often a starting part's health is asked. */
  healthPollMs: number;
  /**
   * A start that answers its health check, but not healthy, this long is up (its endpoint says
   * why: an account that cannot log in, say): it is not killed, and `clawgate start` goes on.
   */
  unhealthyGraceMs: number;
  /** How often a started part's health is asked, to see that it still answers (one check at a time). */
  liveCheckMs: number;
  /** A check that has not answered in this long counts as unreachable (the probes give up after 5 s). */
  checkTimeoutMs: number;
  /**
   * A started part whose check is unreachable (no answer at all, not an answer that says it is
   * not healthy) this long without a break is hung: it is killed with SIGKILL and restarted.
   */
  hungAfterMs: number;
}

export const DEFAULT_TIMING: SupervisorTiming = {
  initialBackoffMs: 1_000,
  maxBackoffMs: 30_000,
  resetAfterMs: 60_000,
  maxFailedStarts: 5,
  startTimeoutMs: 180_000,
  healthPollMs: 250,
  unhealthyGraceMs: 15_000,
  liveCheckMs: 5_000,
  checkTimeoutMs: 10_000,
  hungAfterMs: 60_000,
};

/** Why the supervisor gave up on a part: the stack stops with this. */
export class PartFailedError extends ClawgateError {
  readonly part: string;
  readonly logFile: string;
  constructor(part: string, logFile: string, detail: string) {
    super(ERROR_CODES.partFailed, `${part} ${detail}; stopping clawgate (see its log: ${logFile})`);
    this.part = part;
    this.logFile = logFile;
  }
}

export type Health = 'healthy' | 'answering' | 'unreachable';

export type PartState = 'starting' | 'up' | 'restarting' | 'stopping' | 'stopped' | 'failed';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function describeExit(exit: Exit): string {
  return exit.signal ? `signal ${exit.signal}` : `code ${exit.code ?? '?'}`;
}

/** A pause of `ms` that ends early when the process exits (its timer cleared either way). */
async function waitOrEnd(ms: number, exited: Promise<unknown>): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([new Promise<void>((r) => (timer = setTimeout(r, ms))), exited]);
  clearTimeout(timer);
}

/** What a check says, or `unreachable` when it has not answered in `timeoutMs` or the process exited meanwhile. */
async function firstOf(check: Promise<Health>, exited: Promise<unknown>, timeoutMs: number): Promise<Health> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<Health>((r) => (timer = setTimeout(() => r('unreachable'), timeoutMs)));
  try {
    return await Promise.race([check, late, exited.then((): Health => 'unreachable')]);
  } finally {
    clearTimeout(timer);
  }
}

/** 1 s, 2.5 s, 42 s. */
export function seconds(ms: number): string {
  if (ms % 1000 === 0 || ms >= 10_000) return `${Math.round(ms / 1000)} s`;
  return `${(ms / 1000).toFixed(1)} s`;
}

/** One supervised part: its current process, its restarts. */
export class SupervisedPart {
  readonly spec: PartSpec;
  state: PartState = 'starting';
  /** Starts that ended before the part was healthy, in a row. */
  failedStarts = 0;
  restarts = 0;
  private current: Launched | null = null;
  /** A launch under way: stop() waits for it, so that what it starts is stopped too. */
  private launching: Promise<Launched> | null = null;
  private backoffMs: number;
  private healthySince: number | null = null;
  private wake: (() => void) | null = null;
  private readonly owner: Supervisor;

  constructor(spec: PartSpec, owner: Supervisor) {
    this.spec = spec;
    this.owner = owner;
    this.backoffMs = owner.timing.initialBackoffMs;
  }

  get name(): string {
    return this.spec.name;
  }

  get pid(): number | null {
    return this.current?.pid ?? null;
  }

  /**
   * Starts the part and keeps it running until the supervisor stops; resolves once it is up the
   * first time (healthy, or answering when its start timeout passed), rejects with a PartFailedError when it fails too many starts before that.
   */
  run(): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      void this.loop(resolve, reject);
    });
  }

  private async loop(firstUp: () => void, gaveUp: (error: Error) => void): Promise<void> {
    const { timing } = this.owner;
    let downSince: number | null = null;
    let first = true;
    while (!this.owner.stopping) {
      this.state = first ? 'starting' : 'restarting';
      const outcome = await this.startOnce();
      if (this.owner.stopping) break;
      if (outcome.kind !== 'failed') {
        this.failedStarts = 0;
        if (first) firstUp();
        first = false;
        const ended = await this.whileRunning(outcome, downSince);
        if (this.owner.stopping) break;
        this.current = null;
        // A hung part was down from its first unanswered check on (the outage its users saw),
        // not from the kill: its "is back" line counts from then.
        downSince = ended.hung?.since ?? Date.now();
        if (this.healthySince !== null && downSince - this.healthySince >= timing.resetAfterMs) {
          this.backoffMs = timing.initialBackoffMs;
        }
        this.healthySince = null;
        this.state = 'restarting';
        // A hung part's one line says why it was killed; its exit (the SIGKILL) goes without saying.
        this.owner.notify(
          ended.hung
            ? `${this.name} has not answered its health check for ${seconds(ended.hung.forMs)}; ` +
                `killed it (SIGKILL), restarting in ${seconds(this.backoffMs)}`
            : `${this.name} exited (${describeExit(ended.exit)}); restarting in ${seconds(this.backoffMs)}`,
        );
      } else {
        this.current = null;
        downSince ??= Date.now();
        this.failedStarts += 1;
        if (this.failedStarts >= timing.maxFailedStarts) {
          this.state = 'failed';
          const error = new PartFailedError(
            this.name,
            this.spec.logFile,
            `failed ${this.failedStarts} starts in a row (last: ${outcome.reason})`,
          );
          gaveUp(error);
          this.owner.partFailed(error);
          return;
        }
        this.owner.notify(
          `${this.name} did not start (${outcome.reason}); restarting in ${seconds(this.backoffMs)} ` +
            `(failed start ${this.failedStarts} of ${timing.maxFailedStarts})`,
        );
      }
      this.restarts += 1;
      await this.pause(this.backoffMs);
      this.backoffMs = Math.min(this.backoffMs * 2, timing.maxBackoffMs);
    }
    if (first) gaveUp(new ClawgateError(ERROR_CODES.partFailed, `${this.name}: stopped before it was up`));
  }

  /**
   * A started part until it exits: once healthy (at once, or later for one that came up
   * answering but not healthy), and after a restart, the "is back" line. Its health is asked
   * all along, one check at a time (every healthPollMs until healthy, every liveCheckMs then).
   * One that does not answer at all for hungAfterMs without a break, over two checks at least,
   * is hung and killed with SIGKILL (`hung` says since when it did not answer); an answer of any
   * kind, a 503 while it waits for Temporal say, is no hang.
   */
  private async whileRunning(
    started: { kind: 'healthy' | 'answering'; launched: Launched },
    downSince: number | null,
  ): Promise<{ exit: Exit; hung: { since: number; forMs: number } | null }> {
    const { timing } = this.owner;
    const seen: { exit: Exit | null } = { exit: null };
    const exited = started.launched.exited.then((e) => {
      seen.exit = e;
      return e;
    });
    const over = (): boolean => seen.exit !== null || this.owner.stopping;
    let healthy = started.kind === 'healthy';
    const becameHealthy = (): void => {
      this.state = 'up';
      this.healthySince = Date.now();
      if (downSince !== null) {
        this.owner.notify(`${this.name} is back (down ${seconds(Date.now() - downSince)})`);
      }
    };
    if (healthy) becameHealthy();
    else {
      this.state = 'starting';
      this.owner.notify(`${this.name} runs but is not healthy yet (see \`clawgate status\`)`);
    }
    // A check that outlives checkTimeoutMs counts as unreachable; the next one waits for it to end.
    let inFlight: Promise<Health> | null = null;
    let unansweredSince: number | null = null;
    // Unanswered checks in a row: a hang takes two at least, so that one check that failed only
    // because this process was held meanwhile (a SIGSTOP, a laptop's sleep: its timeout fires
    // first when it runs again, with the whole pause on the clock) kills nothing.
    let unanswered = 0;
    while (!over()) {
      // Once a check went unanswered, the next comes no later than the threshold.
      const every = healthy ? timing.liveCheckMs : timing.healthPollMs;
      const left = unansweredSince === null ? every : unansweredSince + timing.hungAfterMs - Date.now();
      await waitOrEnd(Math.max(0, Math.min(every, left)), exited);
      if (over()) break;
      const askedAt = Date.now();
      const asking = (inFlight ??= this.spec
        .check()
        .catch((): Health => 'unreachable')
        .finally(() => {
          inFlight = null;
        }));
      const health = await firstOf(asking, exited, timing.checkTimeoutMs);
      if (over()) break;
      if (health !== 'unreachable') {
        unansweredSince = null;
        unanswered = 0;
        if (health === 'healthy' && !healthy) {
          healthy = true;
          becameHealthy();
        }
        continue;
      }
      unansweredSince ??= askedAt;
      unanswered += 1;
      const forMs = Date.now() - unansweredSince;
      if (unanswered >= 2 && forMs >= timing.hungAfterMs) {
        started.launched.signal('SIGKILL');
        return { exit: await exited, hung: { since: unansweredSince, forMs } };
      }
    }
    return { exit: await exited, hung: null };
  }

  /**
   * One start: until healthy, or answering but not healthy for unhealthyGraceMs; a start that exits,
   * throws, or does not answer in time (it is killed then) is a failed start.
   */
  private async startOnce(): Promise<
    { kind: 'healthy' | 'answering'; launched: Launched } | { kind: 'failed'; reason: string }
  > {
    const { timing } = this.owner;
    const timeoutMs = this.spec.startTimeoutMs ?? timing.startTimeoutMs;
    const deadline = Date.now() + timeoutMs;
    let launched: Launched;
    try {
      this.launching = this.spec.launch();
      launched = await this.launching;
    } catch (error) {
      return { kind: 'failed', reason: (error as Error).message.split('\n')[0] ?? 'launch failed' };
    }
    this.current = launched;
    this.owner.pidChanged(this);
    const seen: { exit: Exit | null } = { exit: null };
    void launched.exited.then((e) => {
      seen.exit = e;
    });
    let answeredAt: number | null = null;
    for (;;) {
      if (seen.exit !== null) return { kind: 'failed', reason: `it exited, ${describeExit(seen.exit)}` };
      if (this.owner.stopping) return { kind: 'failed', reason: 'stopping' };
      const health = await this.spec.check().catch((): Health => 'unreachable');
      // It may have answered and died at once: the exit is then seen by the caller.
      if (health === 'healthy') return { kind: 'healthy', launched };
      if (health === 'answering') answeredAt ??= Date.now();
      if (answeredAt !== null && Date.now() - answeredAt >= timing.unhealthyGraceMs) {
        return { kind: 'answering', launched };
      }
      if (Date.now() > deadline) {
        if (answeredAt !== null) return { kind: 'answering', launched };
        launched.signal('SIGKILL');
        await launched.exited;
        return { kind: 'failed', reason: `no answer to its health check after ${seconds(timeoutMs)}` };
      }
      await sleep(timing.healthPollMs);
    }
  }

  /** A pause the supervisor's stop cuts short. */
  private pause(ms: number): Promise<void> {
    return new Promise<void>((resolve) => {
      const timer = setTimeout(done, ms);
      function done(): void {
        clearTimeout(timer);
        resolve();
      }
      this.wake = done;
    }).finally(() => {
      this.wake = null;
    });
  }

  /** Ends a pause before a restart now. */
  wakeUp(): void {
    this.wake?.();
  }

  /** SIGTERM, SIGKILL after the grace; resolves once the process has exited. */
  async stop(): Promise<void> {
    this.wake?.();
    await this.launching?.catch(() => undefined);
    const running = this.current;
    if (!running) {
      this.state = 'stopped';
      return;
    }
    this.state = 'stopping';
    running.signal('SIGTERM');
    const hard = setTimeout(() => running.signal('SIGKILL'), this.spec.stopGraceMs ?? 15_000);
    await running.exited;
    clearTimeout(hard);
    this.current = null;
    this.state = 'stopped';
  }
}

/** The parts of one stack. */
export class Supervisor {
  readonly timing: SupervisorTiming;
  readonly parts: SupervisedPart[] = [];
  stopping = false;
  /** Rejects when a part has failed too many starts (at any time, not only while starting). */
  readonly failed: Promise<never>;
  private fail!: (error: PartFailedError) => void;
  private readonly output: (line: string) => void;
  private readonly pidDir: string | undefined;

  constructor(opts: {
    /** One line for the terminal (no trailing newline). */
    notify: (line: string) => void;
    /** Where `<part>.pid` files are kept while each part runs (for `clawgate status` and tests). */
    pidDir?: string;
    timing?: Partial<SupervisorTiming>;
  }) {
    this.timing = { ...DEFAULT_TIMING, ...opts.timing };
    this.output = opts.notify;
    this.pidDir = opts.pidDir;
    if (this.pidDir) ensurePrivateDir(this.pidDir);
    this.failed = new Promise<never>((_, reject) => {
      this.fail = reject;
    });
    // Nobody need be listening before a part fails.
    this.failed.catch(() => undefined);
  }

  notify(line: string): void {
    if (!this.stopping) this.output(line);
  }

  /** Adds a part and starts it; resolves once it is healthy (see SupervisedPart.run). */
  start(spec: PartSpec): Promise<SupervisedPart> {
    const part = new SupervisedPart(spec, this);
    this.parts.push(part);
    return part.run().then(() => part);
  }

  get(name: string): SupervisedPart | undefined {
    return this.parts.find((p) => p.name === name);
  }

  /** Starts nothing more: the parts starting give up (their starts reject); stop() stops the rest. */
  abandon(): void {
    this.stopping = true;
    for (const part of this.parts) part.wakeUp();
  }

  /** @internal */
  partFailed(error: PartFailedError): void {
    this.fail(error);
  }

  /** @internal */
  pidChanged(part: SupervisedPart): void {
    if (!this.pidDir || part.pid === null) return;
    writeFileSync(join(this.pidDir, `${part.name}.pid`), `${part.pid}\n`, { mode: 0o600 });
  }

  /**
   * Stops every part, the last started first, except those in `together`, which are stopped
   * at the same time at the end (the servers the others talk to).
   */
  async stop(together: string[] = []): Promise<void> {
    this.stopping = true;
    const last = this.parts.filter((p) => together.includes(p.name));
    for (const part of [...this.parts].reverse()) {
      if (!last.includes(part)) await this.stopPart(part);
    }
    await Promise.all(last.map((part) => this.stopPart(part)));
  }

  private async stopPart(part: SupervisedPart): Promise<void> {
    await part.stop();
    if (this.pidDir) rmSync(join(this.pidDir, `${part.name}.pid`), { force: true });
  }
}
