// What the benchmarks of clawgate's own processes share: a part (`clawgate proxy|worker|gateway`)
// started as its own process from a configuration file, as users run it, and its resident
// memory read from /proc/<pid>/status (VmRSS), sampled while the benchmark runs.
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { startServerProcess, type ServerProcess } from '../src/devstack/process.ts';
import { waitUntil } from '../src/devstack/net.ts';

/** The clawgate command users run, with its memory settings (bin/clawgate). */
const clawgate = new URL('../bin/clawgate', import.meta.url).pathname;

/** Writes `config` as the part's configuration file (JSON, which the YAML loader reads too). */
export function writeConfig(dir: string, config: Record<string, unknown>): string {
  const path = join(dir, 'clawgate.json');
  writeFileSync(path, `${JSON.stringify(config, null, 2)}\n`, { mode: 0o600 });
  return path;
}

/**
 * Starts `clawgate <part> --config <file> ...args` (bin/clawgate, as users run it) and waits until
 * `healthUrl` answers 200. Its JSON log goes to `<dir>/<part>.log`.
 */
export async function startPart(opts: {
  part: 'proxy' | 'worker' | 'gateway';
  dir: string;
  configPath: string;
  healthUrl: string;
  args?: string[];
  env?: NodeJS.ProcessEnv;
}): Promise<ServerProcess> {
  const child = startServerProcess({
    name: `clawgate ${opts.part}`,
    command: clawgate,
    args: [opts.part, '--config', opts.configPath, ...(opts.args ?? [])],
    logFile: join(opts.dir, `${opts.part}.log`),
    cwd: opts.dir,
    env: { ...process.env, ...opts.env },
  });
  let exited = false;
  void child.exited.then(() => (exited = true));
  await waitUntil(
    async () => {
      const res = await fetch(opts.healthUrl);
      await res.body?.cancel();
      return res.ok;
    },
    {
      timeoutMs: 120_000,
      intervalMs: 200,
      message: `clawgate ${opts.part} healthy at ${opts.healthUrl} (log: ${child.logFile})`,
      failIf: () => (exited ? 'the process exited' : undefined),
    },
  );
  return child;
}

/** The process's resident set size in bytes (VmRSS), or NaN once it has gone. */
export function vmRss(pid: number): number {
  try {
    const line = readFileSync(`/proc/${pid}/status`, 'utf8')
      .split('\n')
      .find((l) => l.startsWith('VmRSS:'));
    return Number(line?.split(/\s+/)[1]) * 1024;
  } catch {
    return NaN;
  }
}

/** VmRSS of one process, read every `intervalMs` from start to stop. */
export class RssSampler {
  private readonly samples: Array<{ at: number; rss: number }> = [];
  private readonly timer: NodeJS.Timeout;
  readonly pid: number;

  constructor(pid: number, intervalMs = 100) {
    this.pid = pid;
    this.sample();
    this.timer = setInterval(() => this.sample(), intervalMs);
    this.timer.unref();
  }

  private sample(): void {
    const rss = vmRss(this.pid);
    if (Number.isFinite(rss)) this.samples.push({ at: performance.now(), rss });
  }

  /** A mark to measure from (`peak(since)`, `settled(since)`). */
  mark(): number {
    this.sample();
    return performance.now();
  }

  /** The highest sample since `from` (a mark). */
  peak(from = 0): number {
    return Math.max(...this.samples.filter((s) => s.at >= from).map((s) => s.rss));
  }

  /** The median of the samples since `from` (a mark): the level the process settled at. */
  settled(from: number): number {
    const xs = this.samples
      .filter((s) => s.at >= from)
      .map((s) => s.rss)
      .sort((a, b) => a - b);
    return xs[Math.floor(xs.length / 2)] ?? NaN;
  }

  stop(): void {
    clearInterval(this.timer);
  }
}

export const mib = (bytes: number): string => `${(bytes / 1024 / 1024).toFixed(0)} MiB`;
export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
