// The sandbox every tool command runs in, behind one interface with two backends.
//
// bubblewrap (default): the system read-only (/usr and the few /etc files programs need), the
// job's workspace mounted read-only or read-write (or not at all), a private /tmp, the root
// read-only, no network (an empty network namespace), its own PID, IPC and UTS namespaces, an
// empty environment but for what the tool passes, and limits: CPU seconds and file size by
// setrlimit (prlimit) inside, processes and memory by a cgroup made for the run, captured output
// by a cap that kills the run when it is reached, and a wall-clock timeout.
//
// Docker: the same contract with `docker run --network none --read-only`, for hosts that run
// a Docker engine.
import { spawn, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { existsSync, lstatSync, readlinkSync } from 'node:fs';
import { ClawgateError, ERROR_CODES } from '../errors.ts';
import { createRunCgroup } from './cgroup.ts';

export const SANDBOX_WORKSPACE = '/workspace';

export interface SandboxLimits {
  cpuSeconds: number;
  memoryBytes: number;
  processes: number;
  /** Bytes of stdout and of stderr each; a run that writes more is killed. */
  outputBytes: number;
  wallMs: number;
}

export const DEFAULT_LIMITS: SandboxLimits = {
  cpuSeconds: 30,
  memoryBytes: 512 * 1024 * 1024,
  processes: 64,
  outputBytes: 1024 * 1024,
  wallMs: 60_000,
};

export interface SandboxCommand {
  /** Host folder mounted at /workspace inside the sandbox. */
  workspace: string;
  workspaceAccess: 'none' | 'ro' | 'rw';
  /** argv; argv[0] is looked up on PATH inside the sandbox. */
  argv: string[];
  /** The whole environment of the command (nothing of the parent's leaks in). */
  env?: Record<string, string>;
  /** Bytes given to the command on its standard input (none: stdin is empty). */
  stdin?: Uint8Array;
  limits?: Partial<SandboxLimits>;
  /** Kept for the smoke test's shorthand; same as limits.wallMs. */
  timeoutMs?: number;
  /** Same as limits.outputBytes. */
  maxOutputBytes?: number;
}

export interface SandboxResult {
  exitCode: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  timedOut: boolean;
  outputTruncated: boolean;
  memoryExceeded: boolean;
  durationMs: number;
}

export interface Sandbox {
  readonly backend: 'bubblewrap' | 'docker';
  /** A one-line description of what a run of this command is confined to, for its record. */
  profile(cmd: SandboxCommand): string;
  run(cmd: SandboxCommand): Promise<SandboxResult>;
}

export function limitsOf(cmd: SandboxCommand): SandboxLimits {
  return {
    ...DEFAULT_LIMITS,
    ...(cmd.timeoutMs === undefined ? {} : { wallMs: cmd.timeoutMs }),
    ...(cmd.maxOutputBytes === undefined ? {} : { outputBytes: cmd.maxOutputBytes }),
    ...cmd.limits,
  };
}

/** The read-only system the sandbox sees: /usr and the few /etc files programs need to start. */
const SYSTEM_READ_ONLY = [
  '/usr',
  '/etc/alternatives',
  '/etc/ld.so.cache',
  '/etc/ld.so.conf',
  '/etc/ld.so.conf.d',
  '/etc/localtime',
];

/** Top-level paths that are symlinks into /usr on merged-/usr systems (/bin -> usr/bin). */
const MERGED_USR_LINKS = ['/bin', '/sbin', '/lib', '/lib32', '/lib64', '/libx32'];

export function bubblewrapArgs(cmd: SandboxCommand): string[] {
  const limits = limitsOf(cmd);
  const args = [
    '--unshare-all',
    '--die-with-parent',
    '--new-session',
    '--clearenv',
    '--proc',
    '/proc',
    '--dev',
    '/dev',
    '--tmpfs',
    '/tmp',
  ];
  for (const path of SYSTEM_READ_ONLY) {
    if (existsSync(path)) args.push('--ro-bind', path, path);
  }
  for (const path of MERGED_USR_LINKS) {
    if (!existsSync(path)) continue;
    if (lstatSync(path).isSymbolicLink()) args.push('--symlink', readlinkSync(path), path);
    else args.push('--ro-bind', path, path);
  }
  if (cmd.workspaceAccess === 'none') args.push('--dir', SANDBOX_WORKSPACE);
  else args.push(cmd.workspaceAccess === 'rw' ? '--bind' : '--ro-bind', cmd.workspace, SANDBOX_WORKSPACE);
  args.push('--chdir', SANDBOX_WORKSPACE);
  // The root bwrap builds is a writable tmpfs; once every mount is in place it becomes read-only.
  args.push('--remount-ro', '/');
  const env = { PATH: '/usr/local/bin:/usr/bin:/bin', HOME: '/tmp', LANG: 'C.UTF-8', ...cmd.env };
  for (const [name, value] of Object.entries(env)) args.push('--setenv', name, value);
  args.push(
    '--',
    '/usr/bin/prlimit',
    `--cpu=${limits.cpuSeconds}`,
    `--fsize=${Math.max(limits.outputBytes, 64 * 1024 * 1024)}`,
    '--core=0',
    '--nofile=256',
    '--',
    ...cmd.argv,
  );
  return args;
}

/** Runs a child, capturing capped output; kills it at the output cap or the wall-clock limit. */
async function supervise(
  child: ChildProcess,
  limits: SandboxLimits,
  stdin?: Uint8Array,
): Promise<Omit<SandboxResult, 'memoryExceeded' | 'durationMs'>> {
  if (child.stdin) {
    // A command that exits without reading all of its input is not an error of the sandbox.
    child.stdin.on('error', () => {});
    child.stdin.end(stdin);
  }
  let outputTruncated = false;
  let timedOut = false;
  const collect = (stream: NodeJS.ReadableStream | null): Promise<string> =>
    new Promise((resolve) => {
      if (!stream) return resolve('');
      const chunks: Buffer[] = [];
      let kept = 0;
      stream.on('data', (chunk: Buffer) => {
        const room = limits.outputBytes - kept;
        if (chunk.length > room) {
          outputTruncated = true;
          if (room > 0) chunks.push(chunk.subarray(0, room));
          kept = limits.outputBytes;
          child.kill('SIGKILL'); // more output than allowed: the run ends here
          return;
        }
        chunks.push(chunk);
        kept += chunk.length;
      });
      stream.on('close', () => resolve(Buffer.concat(chunks).toString('utf8')));
    });
  const stdout = collect(child.stdout);
  const stderr = collect(child.stderr);
  const timer = setTimeout(() => {
    timedOut = true;
    child.kill('SIGKILL');
  }, limits.wallMs);
  const [exitCode, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (code, sig) => resolve([code, sig]));
  });
  clearTimeout(timer);
  return { exitCode, signal, stdout: await stdout, stderr: await stderr, timedOut, outputTruncated };
}

/**
 * Joins the cgroup (one or two cgroup.procs files), then execs the rest of its arguments with
 * an empty environment: bwrap stays in the sandbox as its PID 1, and a step can read that
 * process's environment and command line.
 */
const JOIN_CGROUP =
  'n=$1; shift; while [ "$n" -gt 0 ]; do echo $$ > "$1" || exit 125; shift; n=$((n-1)); done; exec /usr/bin/env -i "$@"';

/**
 * bwrap's own arguments, which name host paths (the workspace's), go through a pipe (`--args`)
 * rather than its command line, which a step reads as /proc/1/cmdline.
 */
const ARGS_FD = 3;

export function bubblewrapSandbox(bwrapPath: string): Sandbox {
  return {
    backend: 'bubblewrap',
    profile(cmd) {
      const l = limitsOf(cmd);
      return (
        `bubblewrap: ro system, workspace ${cmd.workspaceAccess}, no network, private /tmp, empty env; ` +
        `cpu ${l.cpuSeconds}s, memory ${l.memoryBytes}B, processes ${l.processes}, output ${l.outputBytes}B, wall ${l.wallMs}ms`
      );
    },
    async run(cmd) {
      const limits = limitsOf(cmd);
      const cgroup = createRunCgroup(randomUUID(), {
        processes: limits.processes,
        memoryBytes: limits.memoryBytes,
      });
      if (!cgroup) {
        // Fail closed: without a process and memory limit a fork bomb would reach the host.
        throw new ClawgateError(
          ERROR_CODES.sandboxLimitsUnavailable,
          'the sandbox cannot limit processes and memory on this host (no writable cgroup pids and memory controllers); refusing to run',
        );
      }
      const started = performance.now();
      // The options (mounts, environment) through the pipe; bwrap takes the command itself
      // (the limits and the step's own argv, nothing of the host) on its command line.
      const all = bubblewrapArgs(cmd);
      const split = all.indexOf('--');
      const options = all.slice(0, split);
      const command = all.slice(split);
      try {
        const child = spawn(
          '/bin/sh',
          [
            '-c',
            JOIN_CGROUP,
            'sh',
            String(cgroup.procsFiles.length),
            ...cgroup.procsFiles,
            bwrapPath,
            '--args',
            String(ARGS_FD),
            ...command,
          ],
          // From /, so no host folder is the sandbox's PID 1's working directory.
          { stdio: [cmd.stdin ? 'pipe' : 'ignore', 'pipe', 'pipe', 'pipe'], env: {}, cwd: '/' },
        );
        const argsPipe = child.stdio[ARGS_FD] as NodeJS.WritableStream & {
          on(e: 'error', f: () => void): void;
        };
        argsPipe.on('error', () => {});
        argsPipe.end(Buffer.from(options.map((a) => `${a}\0`).join(''), 'utf8'));
        const result = await supervise(child, limits, cmd.stdin);
        return {
          ...result,
          memoryExceeded: cgroup.memoryExceeded(),
          durationMs: performance.now() - started,
        };
      } finally {
        cgroup.remove();
      }
    },
  };
}

/** The smoke test's entry point: one run in a bubblewrap sandbox. */
export async function runInBubblewrap(bwrapPath: string, cmd: SandboxCommand): Promise<SandboxResult> {
  return await bubblewrapSandbox(bwrapPath).run(cmd);
}

/** `docker run` arguments with the same confinement as the bubblewrap backend. */
export function dockerArgs(cmd: SandboxCommand, image: string): string[] {
  const l = limitsOf(cmd);
  const args = [
    'run',
    '--rm',
    ...(cmd.stdin ? ['--interactive'] : []),
    '--network',
    'none',
    '--read-only',
    '--cap-drop',
    'ALL',
    '--security-opt',
    'no-new-privileges',
    '--user',
    '65534:65534',
    '--pids-limit',
    String(l.processes),
    '--memory',
    String(l.memoryBytes),
    '--memory-swap',
    String(l.memoryBytes),
    '--ulimit',
    `cpu=${l.cpuSeconds}:${l.cpuSeconds}`,
    '--tmpfs',
    '/tmp:rw,nosuid,nodev,size=64m',
    '--workdir',
    SANDBOX_WORKSPACE,
    '--env-file',
    '/dev/null',
  ];
  if (cmd.workspaceAccess !== 'none') {
    args.push(
      '--volume',
      `${cmd.workspace}:${SANDBOX_WORKSPACE}:${cmd.workspaceAccess === 'rw' ? 'rw' : 'ro'}`,
    );
  }
  for (const [name, value] of Object.entries({
    PATH: '/usr/local/bin:/usr/bin:/bin',
    HOME: '/tmp',
    ...cmd.env,
  })) {
    args.push('--env', `${name}=${value}`);
  }
  args.push(image, ...cmd.argv);
  return args;
}

export function dockerSandbox(dockerPath = 'docker', image = 'debian:bookworm-slim'): Sandbox {
  return {
    backend: 'docker',
    profile(cmd) {
      const l = limitsOf(cmd);
      return `docker ${image}: read-only root, network none, workspace ${cmd.workspaceAccess}, cpu ${l.cpuSeconds}s, memory ${l.memoryBytes}B, processes ${l.processes}`;
    },
    async run(cmd) {
      const limits = limitsOf(cmd);
      const started = performance.now();
      const child = spawn(dockerPath, dockerArgs(cmd, image), {
        stdio: [cmd.stdin ? 'pipe' : 'ignore', 'pipe', 'pipe'],
      });
      const result = await supervise(child, limits, cmd.stdin);
      return {
        ...result,
        memoryExceeded: result.exitCode === 137 && !result.timedOut,
        durationMs: performance.now() - started,
      };
    },
  };
}
