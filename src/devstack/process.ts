// A child process for a dev-stack server: output goes to a log file, and stop() ends it with
// SIGTERM, then SIGKILL if it does not exit in time. Every child is also killed when this
// process exits, so an interrupted test run leaves no server behind. One started to die with its
// parent also gets SIGTERM when this process is killed outright (kill -9), which no handler here
// can see.
import { spawn, type ChildProcess } from 'node:child_process';
import { accessSync, constants, openSync, closeSync } from 'node:fs';
import { delimiter, join } from 'node:path';

export interface ServerProcess {
  readonly name: string;
  readonly pid: number;
  readonly logFile: string;
  /** Resolves when the process has exited; its exit code, or the signal that ended it. */
  readonly exited: Promise<number | NodeJS.Signals>;
  stop(graceMs?: number): Promise<void>;
  /** SIGKILL, for tests that simulate a crash. */
  kill(): Promise<void>;
}

let setprivPath: string | null | undefined;

/**
 * util-linux's setpriv, when it is on PATH (Linux): `setpriv --pdeathsig SIGTERM -- <command>`
 * asks the kernel to send SIGTERM to the command when its parent is gone, and then execs the
 * command (its pid stays the one spawned). Null elsewhere.
 */
export function setpriv(): string | null {
  if (setprivPath !== undefined) return setprivPath;
  setprivPath = null;
  if (process.platform !== 'linux') return setprivPath;
  for (const dir of (process.env['PATH'] ?? '').split(delimiter)) {
    if (!dir) continue;
    try {
      accessSync(join(dir, 'setpriv'), constants.X_OK);
      setprivPath = join(dir, 'setpriv');
      break;
    } catch {
      // not there
    }
  }
  return setprivPath;
}

const running = new Set<ChildProcess>();
process.once('exit', () => {
  for (const child of running) child.kill('SIGKILL');
});

export function startServerProcess(opts: {
  name: string;
  command: string;
  args: string[];
  logFile: string;
  cwd?: string;
  env?: NodeJS.ProcessEnv;
  /**
   * A process group of its own: a Ctrl-C at the terminal then reaches the process that started
   * it only, which stops it in its turn (`clawgate start` stops its parts in order).
   */
  detached?: boolean;
  /**
   * SIGTERM to it when this process is gone, however it went (kill -9 included), through setpriv
   * when there is one (see setpriv()); without it, as if false. The kernel sends it when the
   * thread that forked the child exits: child_process.spawn forks from the main thread, whose end
   * is the process's end.
   */
  dieWithParent?: boolean;
}): ServerProcess {
  const fd = openSync(opts.logFile, 'a', 0o600);
  const wrapper = opts.dieWithParent ? setpriv() : null;
  const [command, args] = wrapper
    ? [wrapper, ['--pdeathsig', 'SIGTERM', '--', opts.command, ...opts.args]]
    : [opts.command, opts.args];
  const child = spawn(command, args, {
    cwd: opts.cwd,
    env: opts.env ?? process.env,
    stdio: ['ignore', fd, fd],
    detached: opts.detached ?? false,
  });
  closeSync(fd);
  if (child.pid === undefined) {
    throw new Error(`${opts.name}: could not start ${opts.command} (see ${opts.logFile})`);
  }
  running.add(child);
  const exited = new Promise<number | NodeJS.Signals>((resolve) => {
    child.once('exit', (code, signal) => {
      running.delete(child);
      resolve(code ?? signal ?? 0);
    });
    child.once('error', () => {
      running.delete(child);
      resolve(-1);
    });
  });
  const pid = child.pid;
  async function stop(graceMs = 10_000): Promise<void> {
    if (child.exitCode !== null || child.signalCode !== null) return;
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
    await exited;
    clearTimeout(timer);
  }
  async function kill(): Promise<void> {
    if (child.exitCode !== null || child.signalCode !== null) return;
    child.kill('SIGKILL');
    await exited;
  }
  return { name: opts.name, pid, logFile: opts.logFile, exited, stop, kill };
}
