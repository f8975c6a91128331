// The tools that work on the job's workspace, each a command in the sandbox: read, search,
// exec, and write_pr. Paths are relative to the workspace and may not climb out of it; and
// since only the workspace is mounted in the sandbox, a symlink that points out of it finds
// nothing there to read.
import { z } from 'zod';
import { SANDBOX_WORKSPACE, type SandboxCommand, type SandboxResult } from '../sandbox/bubblewrap.ts';
import { fastImportData, GIT_IDENTITY, pushBranch } from './git-push.ts';
import { policyLimits, type ToolContext, type ToolDefinition, type ToolOutput } from './types.ts';

export const workspacePath = z
  .string()
  .min(1)
  .max(4096)
  .refine((p) => !p.startsWith('/'), 'must be relative to the workspace')
  .refine((p) => !p.split('/').includes('..'), 'may not contain ".." (it would leave the workspace)')
  .refine((p) => !p.includes('\0'), 'may not contain NUL');

/** Runs one sandbox command for a tool: its output as the tool reports it, and the raw result. */
async function runSandboxed(
  ctx: ToolContext,
  cmd: Omit<SandboxCommand, 'limits'>,
): Promise<{ tool: ToolOutput; raw: SandboxResult }> {
  const full: SandboxCommand = { ...cmd, limits: policyLimits(ctx.policy) };
  const r = await ctx.sandbox.run(full);
  return {
    raw: r,
    tool: {
      exitStatus: r.exitCode,
      signal: r.signal,
      output: r.exitCode === 0 ? r.stdout : `${r.stdout}${r.stderr}`,
      timedOut: r.timedOut,
      outputTruncated: r.outputTruncated,
      sandboxProfile: ctx.sandbox.profile(full),
    },
  };
}

async function inSandbox(
  ctx: ToolContext,
  argv: string[],
  access: 'none' | 'ro' | 'rw',
  env: Record<string, string> = {},
): Promise<ToolOutput> {
  return (await runSandboxed(ctx, { workspace: ctx.workspace, workspaceAccess: access, argv, env })).tool;
}

/** The policy's workspace access, never more than the tool needs. */
function access(ctx: ToolContext, needs: 'ro' | 'rw'): 'none' | 'ro' | 'rw' {
  const granted = ctx.policy.execution.sandbox.workspace_access;
  if (granted === 'none') return 'none';
  return needs === 'ro' ? 'ro' : granted;
}

const readArgs = z
  .object({ path: workspacePath })
  .strict()
  .describe('read: { path } — a file under the workspace');
export const readTool: ToolDefinition<typeof readArgs> = {
  name: 'read',
  description: 'Read a file under the job workspace.',
  args: readArgs,
  run: (args, ctx) => inSandbox(ctx, ['cat', '--', `${SANDBOX_WORKSPACE}/${args.path}`], access(ctx, 'ro')),
};

const searchArgs = z
  .object({ query: z.string().min(1).max(1000), path: workspacePath.optional() })
  .strict()
  .describe('search: { query, path? } — fixed-string search under the workspace');
export const searchTool: ToolDefinition<typeof searchArgs> = {
  name: 'search',
  description: 'Search the workspace for a fixed string; prints file:line:text.',
  args: searchArgs,
  run: (args, ctx) =>
    inSandbox(
      ctx,
      [
        'grep',
        '-rnIF',
        // git's own files are not the workspace's content (and hold sample hooks that match anything).
        '--exclude-dir=.git',
        '--',
        args.query,
        args.path ? `${SANDBOX_WORKSPACE}/${args.path}` : SANDBOX_WORKSPACE,
      ],
      access(ctx, 'ro'),
    ),
};

const execArgs = z
  .object({
    argv: z.array(z.string().max(10_000)).min(1).max(256),
    env: z.record(z.string().regex(/^[A-Z_][A-Z0-9_]*$/), z.string().max(10_000)).optional(),
  })
  .strict()
  .describe('exec: { argv, env? } — a command in the sandbox, nothing of the worker environment');
export const execTool: ToolDefinition<typeof execArgs> = {
  name: 'exec',
  description: 'Run a command in the sandbox, with the workspace as the policy allows.',
  args: execArgs,
  run: (args, ctx) => inSandbox(ctx, args.argv, access(ctx, 'rw'), args.env ?? {}),
};

/** Characters clients and file systems treat as nothing in a name (HFS+ ignores them). */
const IGNORABLE = /[\u200c-\u200f\u202a-\u202e\u206a-\u206f\ufeff]/gu;

/**
 * Whether a path component names a git directory on some file system: `.git` in any case, with
 * the trailing dots and spaces NTFS drops, its 8.3 short name `git~1`, an NTFS stream
 * (`.git::$INDEX_ALLOCATION`), or characters HFS+ ignores inside it. Git refuses to check out
 * such paths; clawgate refuses to write them.
 */
export function namesGitDir(component: string): boolean {
  const c = component.replace(IGNORABLE, '').toLowerCase();
  return /^\.git[. ]*$/.test(c) || /^git~\d+$/.test(c) || c.startsWith('.git:');
}

/** A path write_pr may write: under the workspace, a file of the work tree, never git's own. */
export const writablePath = workspacePath
  // eslint-disable-next-line no-control-regex
  .refine((p) => !/[\u0000-\u001f\u007f]/.test(p), 'may not contain control characters')
  .refine((p) => !p.includes('\\'), 'may not contain "\\" (a separator on other systems)')
  .refine(
    (p) => p.split('/').every((c) => c !== '' && c !== '.'),
    'may not have empty or "." parts (nor end with "/")',
  )
  .refine(
    (p) => !p.split('/').some(namesGitDir),
    "may not name a .git folder or file (any case, or a name a file system reads as .git): git's own files are not part of a change",
  );

const writePrArgs = z
  .object({
    branch: z
      .string()
      .regex(/^[a-z0-9][a-z0-9._/-]{0,99}$/, 'a branch name: lowercase letters, digits, . _ / -')
      .refine(
        (b) =>
          !b.includes('..') &&
          !b.includes('//') &&
          !b.endsWith('/') &&
          !b.endsWith('.lock') &&
          !b.endsWith('.'),
        'a branch name git accepts (no "..", "//", and no "/", "." or ".lock" at the end)',
      ),
    message: z
      .string()
      .min(1)
      .max(5000)
      .refine((m) => !m.includes('\0'), 'may not contain NUL'),
    files: z
      .array(
        z
          .object({
            path: writablePath,
            content: z
              .string()
              .max(1024 * 1024)
              .refine((c) => !c.includes('\0'), 'may not contain NUL (text files only)'),
          })
          .strict(),
      )
      .min(1)
      .max(100)
      .refine((files) => new Set(files.map((f) => f.path)).size === files.length, 'each path at most once'),
  })
  .strict()
  .describe('write_pr: { branch, message, files: [{ path, content }] } — a branch, a commit and its patch');

/**
 * The sandboxed half of write_pr. It writes nothing to the work tree: the files arrive on stdin
 * as a fast-import stream of blobs, and the commit is made with plumbing (a private index,
 * commit-tree, update-ref) on top of HEAD, on a new branch. Git runs without hooks or fsmonitor
 * whatever the workspace's configuration says. The last line of stderr names the base and
 * the commit.
 */
const WRITE_PR_SCRIPT = [
  'set -e',
  'g() { git -c safe.directory=\'*\' -c core.hooksPath=/dev/null -c core.fsmonitor=false "$@"; }',
  'export GIT_INDEX_FILE=/tmp/write_pr.index',
  'g rev-parse --git-dir >/dev/null',
  "base=$(g rev-parse -q --verify 'HEAD^{commit}' || true)",
  'if [ -n "$base" ]; then g read-tree "$base"; else g read-tree --empty; fi',
  'g fast-import --quiet --done --export-marks=/tmp/write_pr.marks',
  'i=0',
  'while [ "$i" -lt "$COUNT" ]; do',
  '  eval "p=\\$FILE_PATH_$i"',
  '  blob=$(sed -n "s/^:$((i+1)) //p" /tmp/write_pr.marks)',
  '  g update-index --add --cacheinfo 100644 "$blob" "$p"',
  '  i=$((i+1))',
  'done',
  'tree=$(g write-tree)',
  'if [ -n "$base" ]; then set -- -p "$base"; root=; else set --; root=--root; fi',
  'commit=$(printf "%s" "$MESSAGE" | g commit-tree "$tree" "$@")',
  'g update-ref "refs/heads/$BRANCH" "$commit" ""',
  'g format-patch -1 $root --stdout "$commit"',
  'echo "write_pr base=${base:-none} commit=$commit" >&2',
].join('\n');

export const writePrTool: ToolDefinition<typeof writePrArgs> = {
  name: 'write_pr',
  description:
    "Make a branch with one commit of the given files (on top of the workspace's HEAD, work tree untouched) and print the patch; with a remote configured, push the branch.",
  args: writePrArgs,
  run: async (args, ctx) => {
    const time = Math.floor(Date.now() / 1000);
    // Data reaches the script through the environment and stdin, never through the shell text.
    const env: Record<string, string> = {
      BRANCH: args.branch,
      MESSAGE: args.message,
      COUNT: String(args.files.length),
      GIT_AUTHOR_NAME: GIT_IDENTITY.name,
      GIT_AUTHOR_EMAIL: GIT_IDENTITY.email,
      GIT_COMMITTER_NAME: GIT_IDENTITY.name,
      GIT_COMMITTER_EMAIL: GIT_IDENTITY.email,
      GIT_AUTHOR_DATE: `@${time} +0000`,
      GIT_COMMITTER_DATE: `@${time} +0000`,
      GIT_CONFIG_NOSYSTEM: '1',
    };
    args.files.forEach((f, i) => {
      env[`FILE_PATH_${i}`] = f.path;
    });
    const blobs = Buffer.concat(
      args.files.flatMap((f, i) => [Buffer.from(`blob\nmark :${i + 1}\n`), fastImportData(f.content)]),
    );
    const { tool: result, raw: r } = await runSandboxed(ctx, {
      workspace: ctx.workspace,
      workspaceAccess: access(ctx, 'rw'),
      argv: ['sh', '-c', WRITE_PR_SCRIPT],
      env,
      stdin: Buffer.concat([blobs, Buffer.from('done\n')]),
    });
    if (result.exitStatus !== 0 || !ctx.prRemote) return result;
    const made = /write_pr base=(\S+) commit=(\S+)\s*$/.exec(r.stderr);
    const fail = (why: string): ToolOutput => ({
      ...result,
      exitStatus: 1,
      output: `${result.output}\npush to ${ctx.prRemote} failed: ${why}\n`,
    });
    if (!made) return fail('the sandboxed step did not say which commit it made');
    if (!ctx.pushRepo) return fail('the worker has no repository of its own to push from (pushRepo)');
    // The pull request: made again and pushed from the worker's own repository (see git-push.ts),
    // since the sandbox has no network and the workspace is not trusted.
    try {
      const pushed = await pushBranch({
        remote: ctx.prRemote,
        repoDir: ctx.pushRepo,
        base: made[1] === 'none' ? null : (made[1] as string),
        branch: args.branch,
        message: args.message,
        files: args.files,
        time,
      });
      return {
        ...result,
        output: `${pushed.patch}\npushed ${args.branch} (${pushed.commit}) to ${ctx.prRemote}\n`,
      };
    } catch (error) {
      return fail(error instanceof Error ? error.message : String(error));
    }
  },
};
