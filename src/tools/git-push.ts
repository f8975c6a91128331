// write_pr's push, from a repository the worker controls. The workspace is written by sandboxed
// steps (an `exec` with a writable workspace can plant `.git/config`, hooks, `core.fsmonitor`,
// `url.*.insteadOf`, a `.git` file pointing elsewhere), so the worker never runs git on it. It
// keeps a bare repository of its own (its configuration and hooks out of any sandbox's reach),
// fetches the remote into it, makes the commit there from the approved arguments alone (the
// files, the message, the branch) on top of the workspace's base commit as the remote has it,
// and pushes that. Nothing of the workspace but the base commit's id is read, and that id must
// name a commit the remote already has.
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';

export interface PushRequest {
  /** The remote the branch goes to (a URL or a local bare repository), from configuration. */
  remote: string;
  /** The worker's own bare repository for pushes to this remote (made when missing). */
  repoDir: string;
  /** The commit the workspace's branch was made on, as the sandbox reported it; null for none. */
  base: string | null;
  branch: string;
  message: string;
  files: Array<{ path: string; content: string }>;
  /** Author and committer time, seconds since the epoch (the same as the workspace's commit). */
  time: number;
}

export interface PushResult {
  commit: string;
  /** `git format-patch` of the pushed commit, made in the worker's repository. */
  patch: string;
}

export const GIT_IDENTITY = { name: 'clawgate', email: 'clawgate@localhost' };

/**
 * Settings every git command the worker runs carries, whatever any configuration says: no
 * hooks, no fsmonitor, no `ext::` transport, and objects checked as they arrive.
 */
export const HARDENED = [
  '-c',
  'core.hooksPath=/dev/null',
  '-c',
  'core.fsmonitor=false',
  '-c',
  'protocol.ext.allow=never',
  '-c',
  'transfer.fsckObjects=true',
];

/** The environment of the worker's git: the operator's own credentials (HOME, an ssh agent), nothing of a job's. */
function gitEnv(): Record<string, string> {
  const env: Record<string, string> = {
    PATH: process.env['PATH'] ?? '/usr/bin:/bin',
    HOME: process.env['HOME'] ?? '/nonexistent',
    GIT_TERMINAL_PROMPT: '0',
    LANG: 'C',
  };
  if (process.env['SSH_AUTH_SOCK']) env['SSH_AUTH_SOCK'] = process.env['SSH_AUTH_SOCK'];
  return env;
}

async function git(repoDir: string, args: string[], input?: Buffer): Promise<string> {
  return await new Promise((resolve, reject) => {
    const child = spawn('git', [`--git-dir=${repoDir}`, ...HARDENED, ...args], {
      env: gitEnv(),
      cwd: repoDir,
      stdio: [input ? 'pipe' : 'ignore', 'pipe', 'pipe'],
      timeout: 60_000,
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout?.on('data', (c: Buffer) => out.push(c));
    child.stderr?.on('data', (c: Buffer) => err.push(c));
    if (input && child.stdin) {
      child.stdin.on('error', () => {});
      child.stdin.end(input);
    }
    child.once('error', reject);
    child.once('close', (code, signal) => {
      if (code === 0) return resolve(Buffer.concat(out).toString('utf8'));
      const why = Buffer.concat(err).toString('utf8').trim() || `exit ${code ?? signal}`;
      reject(new Error(`git ${args[0]}: ${why}`));
    });
  });
}

/** A path as fast-import reads it: C-style quoted (paths hold no control characters). */
function quotePath(path: string): string {
  return `"${path.replace(/[\\"]/g, (c) => `\\${c}`)}"`;
}

/** One `data` command of a fast-import stream: the exact byte count, the bytes, a newline. */
export function fastImportData(text: string): Buffer {
  const bytes = Buffer.from(text, 'utf8');
  return Buffer.concat([Buffer.from(`data ${bytes.length}\n`), bytes, Buffer.from('\n')]);
}

/** The fast-import stream of one commit: the approved files on top of `base`. */
export function commitStream(req: PushRequest, ref: string): Buffer {
  const who = `${GIT_IDENTITY.name} <${GIT_IDENTITY.email}> ${req.time} +0000`;
  const parts: Buffer[] = [
    Buffer.from(`commit ${ref}\nauthor ${who}\ncommitter ${who}\n`),
    fastImportData(req.message),
  ];
  if (req.base) parts.push(Buffer.from(`from ${req.base}\n`));
  for (const file of req.files) {
    parts.push(Buffer.from(`M 100644 inline ${quotePath(file.path)}\n`), fastImportData(file.content));
  }
  parts.push(Buffer.from('done\n'));
  return Buffer.concat(parts);
}

export async function pushBranch(req: PushRequest): Promise<PushResult> {
  if (req.base !== null && !/^([0-9a-f]{40}|[0-9a-f]{64})$/.test(req.base)) {
    throw new Error(
      `the workspace reported "${req.base.slice(0, 80)}" as its base commit, which is not a commit id`,
    );
  }
  if (!existsSync(join(req.repoDir, 'HEAD'))) {
    mkdirSync(req.repoDir, { recursive: true, mode: 0o700 });
    await git(req.repoDir, ['init', '--quiet', '--bare']);
  }
  await git(req.repoDir, [
    'fetch',
    '--quiet',
    '--no-tags',
    '--prune',
    req.remote,
    '+refs/heads/*:refs/remote/*',
  ]);
  if (req.base !== null) {
    try {
      await git(req.repoDir, ['cat-file', '-e', `${req.base}^{commit}`]);
    } catch {
      throw new Error(
        `the workspace's commit ${req.base.slice(0, 12)} is not on ${req.remote}: write_pr pushes the approved files on top of a commit the remote has (history made in the workspace is not pushed)`,
      );
    }
  }
  const ref = 'refs/clawgate/outgoing';
  await git(req.repoDir, ['fast-import', '--quiet', '--force', '--done'], commitStream(req, ref));
  const commit = (await git(req.repoDir, ['rev-parse', '--verify', `${ref}^{commit}`])).trim();
  const patch = await git(req.repoDir, [
    'format-patch',
    '--stdout',
    '-1',
    ...(req.base ? [] : ['--root']),
    commit,
  ]);
  await git(req.repoDir, [
    'push',
    '--quiet',
    '--no-verify',
    req.remote,
    `${commit}:refs/heads/${req.branch}`,
  ]);
  return { commit, patch };
}
