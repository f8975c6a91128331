// The bubblewrap sandbox: a command runs with the system read-only, only the job's workspace
// mounted (read-only or read-write), a private /tmp, no network (its own empty network
// namespace), its own PID namespace, an empty environment but for what the caller passes, and
// a wall-clock timeout with a cap on captured output.
import { spawn } from 'node:child_process';
import { existsSync, lstatSync, readlinkSync } from 'node:fs';

export const SANDBOX_WORKSPACE = '/workspace';

export interface SandboxCommand {
  /** Host folder mounted at /workspace inside the sandbox. */
  workspace: string;
  workspaceAccess: 'ro' | 'rw';
  /** argv; argv[0] is looked up on PATH inside the sandbox. */
  argv: string[];
  /** The whole environment of the command (nothing of the parent's leaks in). */
  env?: Record<string, string>;
  timeoutMs?: number;
  /** Bytes kept of stdout and of stderr each; the rest is counted and dropped. */
  maxOutputBytes?: number;
}

export interface SandboxResult {
  exitCode: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  timedOut: boolean;
  outputTruncated: boolean;
  durationMs: number;
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
  args.push(cmd.workspaceAccess === 'rw' ? '--bind' : '--ro-bind', cmd.workspace, SANDBOX_WORKSPACE);
  args.push('--chdir', SANDBOX_WORKSPACE);
  // The root bwrap builds is a writable tmpfs; once every mount is in place it becomes read-only.
  args.push('--remount-ro', '/');
  const env = { PATH: '/usr/local/bin:/usr/bin:/bin', HOME: '/tmp', ...cmd.env };
  for (const [name, value] of Object.entries(env)) args.push('--setenv', name, value);
  args.push('--', ...cmd.argv);
  return args;
}

export async function runInBubblewrap(bwrapPath: string, cmd: SandboxCommand): Promise<SandboxResult> {
  const maxOutput = cmd.maxOutputBytes ?? 1024 * 1024;
  const started = performance.now();
  const child = spawn(bwrapPath, bubblewrapArgs(cmd), { stdio: ['ignore', 'pipe', 'pipe'], env: {} });
  let outputTruncated = false;
  const collect = (stream: NodeJS.ReadableStream): Promise<string> =>
    new Promise((resolve) => {
      const chunks: Buffer[] = [];
      let kept = 0;
      stream.on('data', (chunk: Buffer) => {
        const room = maxOutput - kept;
        if (room <= 0) {
          outputTruncated = true;
          return;
        }
        if (chunk.length > room) outputTruncated = true;
        const part = chunk.subarray(0, room);
        chunks.push(part);
        kept += part.length;
      });
      stream.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    });
  const stdout = collect(child.stdout);
  const stderr = collect(child.stderr);
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    child.kill('SIGKILL');
  }, cmd.timeoutMs ?? 30_000);
  const [exitCode, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (code, sig) => resolve([code, sig]));
  });
  clearTimeout(timer);
  return {
    exitCode,
    signal,
    stdout: await stdout,
    stderr: await stderr,
    timedOut,
    outputTruncated,
    durationMs: performance.now() - started,
  };
}
