// The parts of the stack under chaos, each an OS process of its own that the run can kill and
// start again: the Temporal dev server (its file database, the same port), Synapse (its data
// folder, the same port), and `clawgate proxy`, `clawgate worker` and `clawgate gateway` from one
// configuration file. A part that exits by itself is started again a second later, as a
// supervisor would, and the exit is recorded: nothing should exit unasked. Each clawgate part's
// output (JSON log lines) is kept in a file per part and scanned at the end.
import { spawn, type ChildProcess } from 'node:child_process';
import { appendFileSync } from 'node:fs';
import { join } from 'node:path';
import { Connection } from '@temporalio/client';
import { startSynapse, type SynapseServer } from '../../src/devstack/synapse.ts';
import { startTemporalDevServer, type TemporalDevServer } from '../../src/devstack/temporal.ts';
import { serverLaunched } from '../../src/stack/parts.ts';
import type { Launched } from '../../src/stack/supervisor.ts';
import type { KillBase, PartName } from './schedule.ts';

const ROOT = new URL('../../', import.meta.url);

/** What a kill cost: when the part was down, started again, and healthy again. */
export interface Recovery {
  part: PartName;
  signal: string;
  killedAt: number;
  startedAt: number;
  healthyAt: number | null;
}

export interface UnplannedExit {
  part: PartName;
  at: number;
  code: number | null;
  signal: string | null;
  /** The end of what it wrote on stderr. */
  stderr: string;
}

/** One line a clawgate part wrote: JSON when it parses, else the text. */
export interface LogLine {
  part: PartName;
  stream: 'stdout' | 'stderr';
  at: number;
  /** Which start of the part wrote it (1 for the first). */
  start: number;
  json: Record<string, unknown> | null;
  text: string;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Every child of this run, killed if the run's own process goes away first. */
const children = new Set<ChildProcess>();
process.once('exit', () => {
  for (const child of children) child.kill('SIGKILL');
});
// Interrupted (Ctrl-C, a runner's timeout): exit, so that the handlers above and the dev
// servers' own (src/devstack/process.ts) kill what this run started.
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => process.exit(signal === 'SIGINT' ? 130 : 143));
}

export abstract class Part {
  readonly name: PartName;
  state: 'down' | 'starting' | 'up' | 'stopping' = 'down';
  starts = 0;
  kills = 0;
  readonly recoveries: Recovery[] = [];
  readonly unplannedExits: UnplannedExit[] = [];
  protected current: Launched | null = null;
  private expectingExit = false;
  private stopped = false;
  private bringingUp: Promise<void> | null = null;
  protected readonly note: (line: string) => void;

  protected constructor(name: PartName, note: (line: string) => void) {
    this.name = name;
    this.note = note;
  }

  /** Starts the process; resolves once it is running (not yet healthy). */
  protected abstract launch(): Promise<Launched>;
  /** Whether the part answers its health check now. */
  abstract healthy(): Promise<boolean>;

  /** Starts the part and waits until it is healthy; a start that fails is tried again. */
  up(timeoutMs = 180_000): Promise<void> {
    if (this.state === 'up' && this.current) return Promise.resolve();
    this.bringingUp ??= this.bringUp(timeoutMs).finally(() => {
      this.bringingUp = null;
    });
    return this.bringingUp;
  }

  private async bringUp(timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!this.stopped) {
      this.state = 'starting';
      this.starts += 1;
      let launched: Launched;
      try {
        launched = await this.launch();
      } catch (error) {
        this.note(`${this.name}: start failed (${(error as Error).message.split('\n')[0]}); trying again`);
        if (Date.now() > deadline) {
          throw new Error(`${this.name} did not start within ${timeoutMs} ms`, { cause: error });
        }
        await sleep(1000);
        continue;
      }
      this.current = launched;
      this.watchExit(launched);
      let ended = false;
      void launched.exited.then(() => {
        ended = true;
      });
      while (!ended && !this.stopped) {
        if (await this.healthy().catch(() => false)) {
          this.state = 'up';
          return;
        }
        if (Date.now() > deadline) throw new Error(`${this.name} was not healthy within ${timeoutMs} ms`);
        await sleep(100);
      }
      // It exited while starting: the exit is recorded by watchExit; start it again.
      await sleep(1000);
    }
  }

  private watchExit(launched: Launched): void {
    void launched.exited.then(({ code, signal }) => {
      if (this.current !== launched) return;
      this.current = null;
      if (this.expectingExit || this.stopped) return;
      this.state = 'down';
      this.unplannedExits.push({ part: this.name, at: Date.now(), code, signal, stderr: this.stderrTail() });
      this.note(`${this.name}: exited by itself (code ${code}, signal ${signal}); starting it again`);
      void sleep(1000).then(() => (this.stopped ? undefined : this.up().catch(() => undefined)));
    });
  }

  protected stderrTail(): string {
    return '';
  }

  /** The kill: the signal, the pause, the start, until healthy; what it cost is recorded. */
  async crash(kill: KillBase): Promise<Recovery | null> {
    const running = this.current;
    if (this.state !== 'up' || !running) return null;
    this.kills += 1;
    this.state = 'down';
    const recovery: Recovery = {
      part: this.name,
      signal: kill.signal,
      killedAt: Date.now(),
      startedAt: 0,
      healthyAt: null,
    };
    this.recoveries.push(recovery);
    this.expectingExit = true;
    running.signal(kill.signal);
    const hardStop = setTimeout(() => running.signal('SIGKILL'), 15_000);
    await running.exited;
    clearTimeout(hardStop);
    this.expectingExit = false;
    await sleep(kill.pauseMs);
    if (this.stopped) return recovery;
    recovery.startedAt = Date.now();
    try {
      await this.up();
      recovery.healthyAt = Date.now();
    } catch (error) {
      this.note(`${this.name}: ${(error as Error).message}`);
    }
    return recovery;
  }

  /** A clean stop at the end of the run (SIGTERM, then SIGKILL after a grace). */
  async stop(graceMs = 15_000): Promise<{ code: number | null; signal: string | null } | null> {
    this.stopped = true;
    await this.bringingUp?.catch(() => undefined);
    const running = this.current;
    if (!running) return null;
    this.state = 'stopping';
    this.expectingExit = true;
    running.signal('SIGTERM');
    const hardStop = setTimeout(() => running.signal('SIGKILL'), graceMs);
    const ended = await running.exited;
    clearTimeout(hardStop);
    this.state = 'down';
    return ended;
  }
}

// --- The servers --------------------------------------------------------------------------------

export class TemporalPart extends Part {
  private server: TemporalDevServer | null = null;
  private readonly opts: { cliPath: string; dir: string; dbFile: string; port: number };

  constructor(
    opts: { cliPath: string; dir: string; dbFile: string; port: number },
    note: (line: string) => void,
  ) {
    super('temporal', note);
    this.opts = opts;
  }

  get address(): string {
    return `127.0.0.1:${this.opts.port}`;
  }

  protected async launch(): Promise<Launched> {
    // The project's own start: same port, same database file, search attributes registered.
    const server = await startTemporalDevServer({
      cliPath: this.opts.cliPath,
      dir: this.opts.dir,
      dbFile: this.opts.dbFile,
      port: this.opts.port,
      startTimeoutMs: 90_000,
    });
    this.server = server;
    return serverLaunched(server.process);
  }

  async healthy(): Promise<boolean> {
    const connection = await Connection.connect({ address: this.address, connectTimeout: 1_000 });
    try {
      await connection.workflowService.describeNamespace({ namespace: 'default' });
      return true;
    } finally {
      await connection.close();
    }
  }

  get logFile(): string | undefined {
    return this.server?.process.logFile;
  }
}

export class SynapsePart extends Part {
  server: SynapseServer | null = null;
  private readonly opts: { python: string; dir: string; port: number };

  constructor(opts: { python: string; dir: string; port: number }, note: (line: string) => void) {
    super('synapse', note);
    this.opts = opts;
  }

  get baseUrl(): string {
    return `http://127.0.0.1:${this.opts.port}`;
  }

  protected async launch(): Promise<Launched> {
    const server = await startSynapse({
      python: this.opts.python,
      dir: this.opts.dir,
      port: this.opts.port,
      liftRateLimits: true,
      startTimeoutMs: 120_000,
    });
    this.server = server;
    return serverLaunched(server.process);
  }

  async healthy(): Promise<boolean> {
    return (await fetch(`${this.baseUrl}/health`, { signal: AbortSignal.timeout(2_000) })).ok;
  }
}

// --- clawgate's parts -------------------------------------------------------------------------

export interface ClawgatePartOptions {
  /** After `clawgate <part>`. */
  args: string[];
  env: NodeJS.ProcessEnv;
  cwd: string;
  logDir: string;
  /** Answers 200 when the part is healthy. */
  healthUrl: string;
}

export class ClawgatePart extends Part {
  readonly lines: LogLine[] = [];
  private stderrRecent = '';
  private readonly listeners: Array<(line: LogLine) => void> = [];

  private readonly opts: ClawgatePartOptions;

  constructor(name: 'proxy' | 'worker' | 'gateway', opts: ClawgatePartOptions, note: (line: string) => void) {
    super(name, note);
    this.opts = opts;
  }

  get logFile(): string {
    return join(this.opts.logDir, `${this.name}.log`);
  }

  onLine(listener: (line: LogLine) => void): void {
    this.listeners.push(listener);
  }

  protected override stderrTail(): string {
    return this.stderrRecent.slice(-2000);
  }

  protected launch(): Promise<Launched> {
    const start = this.starts;
    const child = spawn(
      new URL('scripts/node', ROOT).pathname,
      [new URL('src/cli/main.ts', ROOT).pathname, this.name, ...this.opts.args],
      { cwd: this.opts.cwd, env: this.opts.env, stdio: ['ignore', 'pipe', 'pipe'] },
    );
    if (child.pid === undefined) return Promise.reject(new Error(`clawgate ${this.name} did not spawn`));
    children.add(child);
    this.stderrRecent = '';
    appendFileSync(this.logFile, '');
    this.capture(child, 'stdout', start);
    this.capture(child, 'stderr', start);
    const exited = new Promise<{ code: number | null; signal: string | null }>((resolve) => {
      child.once('exit', (code, signal) => {
        children.delete(child);
        resolve({ code, signal });
      });
    });
    return Promise.resolve({
      pid: child.pid,
      exited,
      signal: (sig) => {
        if (child.exitCode === null && child.signalCode === null) child.kill(sig);
      },
    });
  }

  private capture(child: ChildProcess, stream: 'stdout' | 'stderr', start: number): void {
    let buffer = '';
    const source = stream === 'stdout' ? child.stdout : child.stderr;
    source?.setEncoding('utf8').on('data', (chunk: string) => {
      if (stream === 'stderr') this.stderrRecent = (this.stderrRecent + chunk).slice(-8000);
      buffer += chunk;
      let nl: number;
      while ((nl = buffer.indexOf('\n')) >= 0) {
        this.take(buffer.slice(0, nl), stream, start);
        buffer = buffer.slice(nl + 1);
      }
    });
    source?.on('end', () => {
      if (buffer) this.take(buffer, stream, start);
      buffer = '';
    });
  }

  private take(text: string, stream: 'stdout' | 'stderr', start: number): void {
    if (text.trim() === '') return;
    let json: Record<string, unknown> | null = null;
    try {
      const parsed = JSON.parse(text) as unknown;
      if (typeof parsed === 'object' && parsed !== null && !Array.isArray(parsed)) {
        json = parsed as Record<string, unknown>;
      }
    } catch {
      json = null;
    }
    const line: LogLine = { part: this.name, stream, at: Date.now(), start, json, text };
    this.lines.push(line);
    appendFileSync(this.logFile, stream === 'stdout' ? `${text}\n` : `[stderr of start ${start}] ${text}\n`);
    for (const listener of this.listeners) listener(line);
  }

  async healthy(): Promise<boolean> {
    return (await fetch(this.opts.healthUrl, { signal: AbortSignal.timeout(2_000) })).status === 200;
  }
}

/** The health answer of every part, for a failure report. */
export async function healthReport(parts: Part[]): Promise<string> {
  const rows = await Promise.all(
    parts.map(
      async (p) =>
        `${p.name}: ${p.state}, ${(await p.healthy().catch(() => false)) ? 'healthy' : 'not healthy'}`,
    ),
  );
  return rows.join('; ');
}
