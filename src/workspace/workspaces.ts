// One workspace per job. Each job gets a folder of its own under the workspaces root, made by
// cloning the job's source repository and checking out the requested ref (detached), and
// removed when the job is done; nothing a job writes there is seen by another job.
//
// The folder of a job is `<root>/<first 32 hex of sha256(workflowId)>`. It appears only by a
// rename of a finished clone (made in a temporary sibling, `<name>.tmp-<random>`), and a
// marker beside it, `<name>.done`, written after the rename, records the commit: folder and
// marker together mean complete; anything else under that name is what a crash left and is
// removed before the clone is made again. The marker lives outside the folder because the
// folder is written by sandboxed steps, and nothing here reads or runs git on a folder once it
// is handed out. One preparation per workflow runs at a time (an activity's retry).
//
// The worker's git is the host's, run without a shell and in an environment built from
// nothing (see `gitEnv`), with the settings of `HARDENED` from git-push.ts and a few more.
import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import {
  lstat,
  mkdir,
  mkdtemp,
  readdir,
  readFile,
  realpath,
  rename,
  rm,
  stat,
  writeFile,
} from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, isAbsolute, join, relative, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { ClawgateError, ERROR_CODES } from '../errors.ts';
import { GIT_IDENTITY, HARDENED } from '../tools/git-push.ts';

const execFileAsync = promisify(execFile);

export interface WorkspaceSource {
  /** A local path (absolute, or relative to the working directory), a `file://` URL or a remote URL. */
  repo: string;
  /** A branch, a tag or a commit id of `repo`. */
  ref: string;
}

export interface JobWorkspace {
  path: string;
  /** The commit checked out (detached) in `path`. */
  commit: string;
}

/** A clone of a large repository over a slow link takes a while; a hung one does not stall a worker for ever. */
const GIT_TIMEOUT_MS = 10 * 60_000;
const COMMIT_ID = /^(?:[0-9a-f]{40}|[0-9a-f]{64})$/;

/**
 * The settings on every git command line here, above any configuration file:
 * - `core.hooksPath=/dev/null`: no hook runs (a `post-checkout` the clone would otherwise run,
 *   or one a template or configuration supplies).
 * - `core.fsmonitor=false`: git starts no fsmonitor command of a configuration's choosing.
 * - `protocol.ext.allow=never`: an `ext::` source cannot make git run an arbitrary command.
 * - `transfer.fsckObjects=true`: malformed objects from the source are refused as they arrive.
 * - `protocol.file.allow=always`: local sources are meant; they are cloned over git's file
 *   transport (`--no-local`), allowed explicitly whatever a git version's default for it is.
 */
const GIT_CONFIG = [...HARDENED, '-c', 'protocol.file.allow=always'];

/**
 * The environment of every git command here, built from nothing so no `GIT_*` variable, proxy
 * or credential helper of the worker's reaches it.
 */
function gitEnv(home: string): Record<string, string> {
  return {
    PATH: process.env['PATH'] ?? '/usr/bin:/bin',
    // A throwaway folder: none of the operator's ~/.gitconfig, ~/.config/git or ~/.git-credentials.
    HOME: home,
    // git's messages in English: the errors below quote them.
    LANG: 'C',
    // /etc/gitconfig is not read (a system-wide hooksPath, filter or url rewrite).
    GIT_CONFIG_NOSYSTEM: '1',
    // Nor is any per-user configuration, wherever HOME or XDG_CONFIG_HOME point.
    GIT_CONFIG_GLOBAL: '/dev/null',
    // A source that asks for credentials fails at once instead of waiting on a prompt nobody sees.
    GIT_TERMINAL_PROMPT: '0',
  };
}

async function git(home: string, args: string[], extraEnv: Record<string, string> = {}): Promise<string> {
  const { stdout } = await execFileAsync('git', [...GIT_CONFIG, ...args], {
    env: { ...gitEnv(home), ...extraEnv },
    cwd: home,
    encoding: 'utf8',
    timeout: GIT_TIMEOUT_MS,
    maxBuffer: 16 * 1024 * 1024,
  });
  return stdout;
}

/** What a failed git command said: its stderr, trimmed (the tail of a long one), or why it stopped. */
function gitError(err: unknown): string {
  const e = err as { stderr?: unknown; killed?: boolean; signal?: unknown; code?: unknown };
  if (e.killed) return `git did not finish within ${GIT_TIMEOUT_MS / 1000} seconds`;
  const stderr = typeof e.stderr === 'string' ? e.stderr.trim() : '';
  if (stderr) return stderr.length > 2000 ? `...${stderr.slice(-2000)}` : stderr;
  if (e.code === 'ENOENT') return 'git is not installed (not found on PATH)';
  return err instanceof Error ? err.message : String(err);
}

async function withGitHome<T>(fn: (home: string) => Promise<T>): Promise<T> {
  const home = await mkdtemp(join(tmpdir(), 'clawgate-git-home-'));
  try {
    return await fn(home);
  } finally {
    await rm(home, { recursive: true, force: true });
  }
}

function randomSuffix(): string {
  return randomBytes(8).toString('hex');
}

/** The name of a job's folder under the root: the first 32 hex digits of sha256(workflowId). */
function workspaceName(workflowId: string): string {
  if (typeof workflowId !== 'string' || workflowId === '') {
    throw new Error('a job workspace needs a non-empty workflow id');
  }
  return createHash('sha256').update(workflowId, 'utf8').digest('hex').slice(0, 32);
}

export function jobWorkspacePath(root: string, workflowId: string): string {
  return join(resolve(root), workspaceName(workflowId));
}

// ---------------------------------------------------------------------------------------------
// Removal

/** True for the entries of a job under the root: its folder, its marker, its temporary siblings. */
function isJobEntry(entry: string, name: string): boolean {
  return entry === name || entry.startsWith(`${name}.`);
}

/**
 * Removes every entry of the job `name` under `root`. Each is a direct child of the root's real
 * path, checked to be so; `rm` removes a symlink itself, never what it points to.
 */
async function removeJobEntries(root: string, name: string): Promise<void> {
  let realRoot: string;
  try {
    realRoot = await realpath(root);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw err;
  }
  for (const entry of await readdir(realRoot)) {
    if (!isJobEntry(entry, name)) continue;
    const target = resolve(realRoot, entry);
    const rel = relative(realRoot, target);
    if (rel === '' || rel.startsWith('..') || isAbsolute(rel) || rel.includes(sep)) {
      throw new Error(`refusing to remove ${target}: it is not inside the workspaces root ${realRoot}`);
    }
    await rm(target, { recursive: true, force: true });
  }
}

/** Removes a job's folder and anything else of it under the root. Removing what is not there is fine. */
export async function removeJobWorkspace(opts: { root: string; workflowId: string }): Promise<void> {
  await removeJobEntries(resolve(opts.root), workspaceName(opts.workflowId));
}

// ---------------------------------------------------------------------------------------------
// Preparation

interface Marker {
  commit: string;
  repo: string;
  ref: string;
}

async function readMarker(file: string): Promise<Marker | null> {
  try {
    const value = JSON.parse(await readFile(file, 'utf8')) as Partial<Marker> | null;
    if (value && typeof value.commit === 'string' && COMMIT_ID.test(value.commit)) {
      return { commit: value.commit, repo: String(value.repo), ref: String(value.ref) };
    }
  } catch {
    // Missing or half-written: not complete.
  }
  return null;
}

async function isDirectory(path: string): Promise<boolean> {
  try {
    return (await lstat(path)).isDirectory();
  } catch {
    return false;
  }
}

/**
 * How git sees `repo`, as git does: a local path has no `:` before its first `/` (or is a
 * `file://` URL); anything else is a URL or `host:path` for git's transports.
 */
function localPath(repo: string): string | null {
  if (repo.startsWith('file://')) {
    try {
      return fileURLToPath(repo);
    } catch {
      throw new ClawgateError(
        ERROR_CODES.workspaceSourceInvalid,
        `source repository ${repo} is not a usable file:// URL`,
      );
    }
  }
  if (repo.includes('://')) return null;
  const colon = repo.indexOf(':');
  const slash = repo.indexOf('/');
  if (colon !== -1 && (slash === -1 || colon < slash)) return null;
  return resolve(repo);
}

/** The source as git gets it; a local one is checked to be there and to be a git repository. */
async function checkSource(repo: string): Promise<string> {
  if (typeof repo !== 'string' || repo.trim() === '') {
    throw new ClawgateError(
      ERROR_CODES.workspaceSourceInvalid,
      'no source repository given for the workspace',
    );
  }
  const local = localPath(repo);
  if (local === null) return repo;
  let info;
  try {
    info = await stat(local);
  } catch {
    throw new ClawgateError(
      ERROR_CODES.workspaceSourceInvalid,
      `source repository ${local} not found: there is nothing at that path`,
    );
  }
  if (!info.isDirectory()) {
    throw new ClawgateError(
      ERROR_CODES.workspaceSourceInvalid,
      `source repository ${local} is not a git repository: it is a file, not a folder`,
    );
  }
  if (!(await isGitRepository(local))) {
    throw new ClawgateError(
      ERROR_CODES.workspaceSourceInvalid,
      `source repository ${local} is not a git repository: it has no .git, and no HEAD and objects of a bare repository`,
    );
  }
  return local;
}

async function exists(path: string): Promise<boolean> {
  try {
    await lstat(path);
    return true;
  } catch {
    return false;
  }
}

/** A working tree (`.git` folder or file) or a bare repository (`HEAD` and `objects`). */
async function isGitRepository(dir: string): Promise<boolean> {
  if (await exists(join(dir, '.git'))) return true;
  return (await exists(join(dir, 'HEAD'))) && (await isDirectory(join(dir, 'objects')));
}

/** A ref name as git would take it for a branch, tag or commit id; nothing git would read as an option. */
async function checkRef(home: string, ref: string, repo: string): Promise<void> {
  const bad = (): ClawgateError =>
    new ClawgateError(
      ERROR_CODES.workspaceRefNotFound,
      `ref "${String(ref).slice(0, 200)}" of ${repo} is not a branch, tag or commit name`,
    );
  if (typeof ref !== 'string' || ref === '' || ref.startsWith('-')) throw bad();
  try {
    await git(home, ['check-ref-format', '--allow-onelevel', ref]);
  } catch {
    throw bad();
  }
}

/**
 * The commit `ref` names in the fresh clone `dir`: a full commit id as it is; otherwise the
 * source's branch (`origin/<ref>`), then its tag, then whatever git makes of it (an
 * abbreviated commit id, a full ref name).
 */
async function resolveRef(home: string, dir: string, ref: string, repo: string): Promise<string> {
  const candidates = COMMIT_ID.test(ref) ? [ref] : [`refs/remotes/origin/${ref}`, `refs/tags/${ref}`, ref];
  for (const candidate of candidates) {
    try {
      const commit = (
        await git(home, ['-C', dir, 'rev-parse', '--verify', '--quiet', `${candidate}^{commit}`])
      ).trim();
      if (COMMIT_ID.test(commit)) return commit;
    } catch {
      // Not this one.
    }
  }
  throw new ClawgateError(
    ERROR_CODES.workspaceRefNotFound,
    `ref "${ref}" not found in ${repo}: it is not a branch, tag or commit id there`,
  );
}

/**
 * The job's folder, made when missing: a clone of `source.repo` checked out detached at
 * `source.ref`. A call after a completed one returns the same folder and commit without
 * touching it; what an interrupted one left is removed and the clone made again. On failure
 * nothing of the job is left under the root.
 */
export async function prepareJobWorkspace(opts: {
  root: string;
  workflowId: string;
  source: WorkspaceSource;
}): Promise<JobWorkspace> {
  const root = resolve(opts.root);
  const name = workspaceName(opts.workflowId);
  const path = join(root, name);
  const markerFile = join(root, `${name}.done`);

  const done = await readMarker(markerFile);
  if (done && (await isDirectory(path))) return { path, commit: done.commit };

  const repo = await checkSource(opts.source.repo);
  const ref = opts.source.ref;
  await mkdir(root, { recursive: true, mode: 0o700 });
  await removeJobEntries(root, name);

  return await withGitHome(async (home) => {
    await checkRef(home, ref, repo);
    const tmp = join(root, `${name}.tmp-${randomSuffix()}`);
    try {
      try {
        // --no-local: a local source goes through git's transport like a remote one, so the
        // clone neither hardlinks the source's object files (a job writing to its folder
        // could otherwise change them for every later job) nor copies whatever else is there.
        await git(home, ['clone', '--no-checkout', '--no-local', '--quiet', '--', repo, tmp]);
      } catch (err) {
        throw new ClawgateError(
          ERROR_CODES.workspaceCloneFailed,
          `cloning ${repo} failed: ${gitError(err)}`,
          { cause: err },
        );
      }
      const commit = await resolveRef(home, tmp, ref, repo);
      try {
        await git(home, ['-C', tmp, 'checkout', '--quiet', '--detach', commit]);
      } catch (err) {
        throw new ClawgateError(
          ERROR_CODES.workspaceCloneFailed,
          `checking out ${ref} (${commit}) of ${repo} failed: ${gitError(err)}`,
          { cause: err },
        );
      }
      await rename(tmp, path);
      const markerTmp = join(root, `${name}.tmp-${randomSuffix()}`);
      await writeFile(markerTmp, `${JSON.stringify({ commit, repo, ref } satisfies Marker)}\n`, {
        mode: 0o600,
      });
      await rename(markerTmp, markerFile);
      return { path, commit };
    } catch (err) {
      await removeJobEntries(root, name);
      throw err;
    }
  });
}

// ---------------------------------------------------------------------------------------------
// The demo's source repository

export const DEMO_REF = 'main';

export const DEMO_README = `# Tidewater

Tidewater is a small webhook relay. It accepts HTTP deliveries from upstream services, writes
each one to an on-disk queue before answering, and forwards it to every subscriber configured
for the delivery's topic. A delivery that a subscriber refuses, or does not answer within 10
seconds, is retried with exponential backoff; one that still fails after the last retry is
moved to the dead-letter folder, where an operator can look at it and send it again.

## Running

\`tidewater serve\` listens on port 8417 by default; \`--port\` or the \`TIDEWATER_PORT\`
environment variable changes it. Configuration is read from \`tidewater.toml\` in the working
directory, and the queue lives in \`./data/queue\` unless \`queue_dir\` says otherwise.
\`GET /healthz\` on the same port answers \`ok\` while the queue is writable.

## Retries

A failed delivery is retried at most 5 times. The first retry waits 2 seconds and each later
one waits twice as long as the one before, never more than 60 seconds. After the last failed
retry the delivery goes to \`./data/dead-letter\`; \`tidewater replay <id>\` sends it again.
See \`docs/operations.md\` for running Tidewater in production.

## Requirements

Node.js 20 or later. Tidewater keeps everything in files and needs no database.

## Licence

Tidewater is released under the MIT licence; see \`LICENSE\`.

## TODO

- TODO: sign outgoing deliveries with an HMAC header so subscribers can tell where they came from.
- TODO: make the retry limit configurable per subscriber instead of the fixed 5.
- TODO: expose the queue depth and the dead-letter count as Prometheus metrics.
`;

/** The files of the demo's source repository, by path. */
export const DEMO_FILES: Readonly<Record<string, string>> = {
  'README.md': DEMO_README,
  LICENSE: `MIT License

Copyright (c) 2025 The Tidewater authors

Permission is hereby granted, free of charge, to any person obtaining a copy of this software
and associated documentation files (the "Software"), to deal in the Software without
restriction, including without limitation the rights to use, copy, modify, merge, publish,
distribute, sublicense, and/or sell copies of the Software, and to permit persons to whom the
Software is furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all copies or
substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING
BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND
NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM,
DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.
`,
  'docs/operations.md': `# Operating Tidewater

## Dead letters

A delivery lands in \`./data/dead-letter\` once the retry limit is used up. Each file there is
the delivery as received, with a \`.why\` file beside it holding the last subscriber's answer.
\`tidewater replay <id>\` queues it again with a fresh retry count.

## Retry limit

The retry limit is \`MAX_RETRIES\` in \`src/retry.ts\` (the comment there says why it is what it
is). It is fixed at build time; changing it means a new release.

## Backups

Stop the relay, then copy \`./data\` as a whole: the queue and the dead letters are plain files.
`,
  'src/retry.ts': `// The retry schedule of a failed delivery.

// Five retries wait 2 + 4 + 8 + 16 + 32 = 62 seconds in all: longer than a subscriber's usual
// restart (under a minute), short enough that a delivery nobody will take reaches the
// dead-letter folder within about a minute.
export const MAX_RETRIES = 5;

/** The first wait, in milliseconds; each later one doubles. */
export const BASE_DELAY_MS = 2_000;

/** No wait is longer than this. */
export const MAX_DELAY_MS = 60_000;

/** The wait before retry number \`attempt\` (1 for the first). */
export function retryDelay(attempt: number): number {
  return Math.min(BASE_DELAY_MS * 2 ** (attempt - 1), MAX_DELAY_MS);
}
`,
  'src/server.ts': `import { createServer } from 'node:http';

export const DEFAULT_PORT = 8417;

export function listen(port = Number(process.env.TIDEWATER_PORT ?? DEFAULT_PORT)) {
  const server = createServer((req, res) => {
    if (req.url === '/healthz') return void res.end('ok');
    res.statusCode = 202;
    res.end();
  });
  return server.listen(port);
}
`,
};

/** One author, one date: the demo's commit id is the same wherever and whenever it is made. */
const DEMO_COMMIT_ENV = {
  GIT_AUTHOR_NAME: GIT_IDENTITY.name,
  GIT_AUTHOR_EMAIL: GIT_IDENTITY.email,
  GIT_AUTHOR_DATE: '2025-01-01T12:00:00+00:00',
  GIT_COMMITTER_NAME: GIT_IDENTITY.name,
  GIT_COMMITTER_EMAIL: GIT_IDENTITY.email,
  GIT_COMMITTER_DATE: '2025-01-01T12:00:00+00:00',
};

/**
 * The demo's source repository at `dir`, made when missing (a repository already there is
 * left as it is): Tidewater, a fictional project, in one commit on `main`.
 */
export async function ensureDemoRepository(dir: string): Promise<{ repo: string; ref: string }> {
  const repo = resolve(dir);
  const result = { repo, ref: DEMO_REF };
  if (await isGitRepository(repo)) return result;
  await mkdir(dirname(repo), { recursive: true });
  const tmp = `${repo}.tmp-${randomSuffix()}`;
  try {
    await withGitHome(async (home) => {
      await git(home, ['init', '--quiet', '--object-format=sha1', `--initial-branch=${DEMO_REF}`, tmp]);
      for (const [file, content] of Object.entries(DEMO_FILES)) {
        await mkdir(dirname(join(tmp, file)), { recursive: true });
        await writeFile(join(tmp, file), content, { mode: 0o644 });
      }
      await git(home, ['-C', tmp, 'add', '--all']);
      await git(
        home,
        ['-C', tmp, 'commit', '--quiet', '--no-verify', '--no-gpg-sign', '-m', 'Tidewater 1.0'],
        DEMO_COMMIT_ENV,
      );
    });
    // Into place whole; onto an empty folder too, never onto one with something in it.
    await rename(tmp, repo);
  } catch (err) {
    await rm(tmp, { recursive: true, force: true });
    if (await isGitRepository(repo)) return result;
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOTEMPTY' || code === 'EEXIST' || code === 'ENOTDIR') {
      throw new ClawgateError(
        ERROR_CODES.workspaceSourceInvalid,
        `cannot make the demo repository at ${repo}: something that is not a git repository is there`,
        { cause: err },
      );
    }
    throw err;
  }
  return result;
}
