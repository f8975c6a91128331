// The tools that work on the job's workspace, each a command in the sandbox: read, search,
// exec, and write_pr. Paths are relative to the workspace and may not climb out of it; and
// since only the workspace is mounted in the sandbox, a symlink that points out of it finds
// nothing there to read.
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { z } from 'zod';
import { SANDBOX_WORKSPACE } from '../sandbox/bubblewrap.ts';
import { policyLimits, type ToolContext, type ToolDefinition, type ToolOutput } from './types.ts';

export const workspacePath = z
  .string()
  .min(1)
  .max(4096)
  .refine((p) => !p.startsWith('/'), 'must be relative to the workspace')
  .refine((p) => !p.split('/').includes('..'), 'may not contain ".." (it would leave the workspace)')
  .refine((p) => !p.includes('\0'), 'may not contain NUL');

async function inSandbox(
  ctx: ToolContext,
  argv: string[],
  access: 'none' | 'ro' | 'rw',
  env: Record<string, string> = {},
): Promise<ToolOutput> {
  const cmd = {
    workspace: ctx.workspace,
    workspaceAccess: access,
    argv,
    env,
    limits: policyLimits(ctx.policy),
  };
  const r = await ctx.sandbox.run(cmd);
  return {
    exitStatus: r.exitCode,
    signal: r.signal,
    output: r.exitCode === 0 ? r.stdout : `${r.stdout}${r.stderr}`,
    timedOut: r.timedOut,
    outputTruncated: r.outputTruncated,
    sandboxProfile: ctx.sandbox.profile(cmd),
  };
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

const writePrArgs = z
  .object({
    branch: z
      .string()
      .regex(/^[a-z0-9][a-z0-9._/-]{0,99}$/, 'a branch name: lowercase letters, digits, . _ / -'),
    message: z.string().min(1).max(5000),
    files: z
      .array(z.object({ path: workspacePath, content: z.string().max(1024 * 1024) }).strict())
      .min(1)
      .max(100),
  })
  .strict()
  .describe('write_pr: { branch, message, files: [{ path, content }] } — a branch, a commit and its patch');
export const writePrTool: ToolDefinition<typeof writePrArgs> = {
  name: 'write_pr',
  description: 'Make a branch and a commit in the git workspace and print the patch (git format-patch).',
  args: writePrArgs,
  run: async (args, ctx) => {
    // The script gets its data through the environment, never through the shell text.
    const env: Record<string, string> = {
      BRANCH: args.branch,
      MESSAGE: args.message,
      COUNT: String(args.files.length),
      GIT_AUTHOR_NAME: 'clawgate',
      GIT_AUTHOR_EMAIL: 'clawgate@localhost',
      GIT_COMMITTER_NAME: 'clawgate',
      GIT_COMMITTER_EMAIL: 'clawgate@localhost',
      GIT_CONFIG_NOSYSTEM: '1',
    };
    args.files.forEach((f, i) => {
      env[`FILE_PATH_${i}`] = f.path;
      env[`FILE_CONTENT_${i}`] = f.content;
    });
    const script = [
      'set -e',
      'git -c safe.directory=* checkout -q -b "$BRANCH"',
      'i=0',
      'while [ "$i" -lt "$COUNT" ]; do',
      '  eval "p=\\$FILE_PATH_$i; c=\\$FILE_CONTENT_$i"',
      '  mkdir -p "$(dirname -- "$p")"',
      '  printf "%s" "$c" > "$p"',
      '  git -c safe.directory=* add -- "$p"',
      '  i=$((i+1))',
      'done',
      'git -c safe.directory=* commit -q -m "$MESSAGE"',
      'git -c safe.directory=* format-patch -1 --stdout',
    ].join('\n');
    const result = await inSandbox(ctx, ['sh', '-c', script], access(ctx, 'rw'), env);
    if (result.exitStatus !== 0 || !ctx.prRemote) return result;
    // The pull request: the branch goes to the configured remote, from the worker, since the
    // sandbox has no network. The branch name was validated; the remote comes from config.
    try {
      await promisify(execFile)(
        'git',
        [
          '-C',
          ctx.workspace,
          '-c',
          'safe.directory=*',
          'push',
          '--quiet',
          ctx.prRemote,
          `${args.branch}:${args.branch}`,
        ],
        {
          env: { PATH: process.env['PATH'] ?? '/usr/bin:/bin', GIT_TERMINAL_PROMPT: '0' },
          timeout: 60_000,
        },
      );
      return { ...result, output: `${result.output}\npushed ${args.branch} to ${ctx.prRemote}\n` };
    } catch (error) {
      return {
        ...result,
        exitStatus: 1,
        output: `${result.output}\npush to ${ctx.prRemote} failed: ${error instanceof Error ? error.message : String(error)}\n`,
      };
    }
  },
};
