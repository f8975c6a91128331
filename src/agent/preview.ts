// What an approval card shows of a call with side effects, so an approver sees what would
// change rather than a JSON blob: for write_pr a unified diff of each file against the job's
// workspace (read in the sandbox, never on the host), for exec the command line, for http the
// request. Anything else, or arguments the tool would refuse, as the model sent them.
import { createTwoFilesPatch } from 'diff';
import { SANDBOX_WORKSPACE, type Sandbox } from '../sandbox/bubblewrap.ts';
import type { Wpc } from '../policy/wpc.ts';
import { TOOLS } from '../tools/runner.ts';
import { policyLimits } from '../tools/types.ts';

/** The most of a preview a card carries (the approver can ask for the rest in the evidence). */
export const PREVIEW_MAX_CHARS = 20_000;

const quote = (arg: string): string =>
  /^[A-Za-z0-9_@%+=:,./-]+$/.test(arg) ? arg : `'${arg.replace(/'/g, `'\\''`)}'`;

function cut(text: string): string {
  return text.length > PREVIEW_MAX_CHARS
    ? `${text.slice(0, PREVIEW_MAX_CHARS)}\n… (${text.length} characters in all)`
    : text;
}

export async function previewCall(input: {
  tool: string;
  args: unknown;
  raw: string;
  policy: Wpc;
  sandbox: Sandbox;
  workspace: string;
}): Promise<string> {
  const tool = TOOLS[input.tool];
  const parsed = tool?.args.safeParse(input.args);
  if (!tool || !parsed?.success) {
    const why =
      parsed && !parsed.success
        ? ` (the tool refuses these arguments: ${parsed.error.issues[0]?.message ?? 'invalid'})`
        : '';
    return cut(`${input.raw}${why}`);
  }
  const args = parsed.data as Record<string, unknown>;
  if (input.tool === 'write_pr') {
    const { branch, message, files } = args as {
      branch: string;
      message: string;
      files: Array<{ path: string; content: string }>;
    };
    const patches: string[] = [`branch ${branch}: ${message}`];
    for (const file of files) {
      // The file as the workspace has it now, read in the sandbox (read-only); none: a new file.
      const r = await input.sandbox.run({
        workspace: input.workspace,
        workspaceAccess: 'ro',
        argv: ['cat', '--', `${SANDBOX_WORKSPACE}/${file.path}`],
        env: {},
        limits: policyLimits(input.policy),
      });
      const old = r.exitCode === 0 && !r.outputTruncated ? r.stdout : null;
      patches.push(
        createTwoFilesPatch(
          old === null ? '/dev/null' : `a/${file.path}`,
          `b/${file.path}`,
          old ?? '',
          file.content,
          '',
          '',
          {
            context: 3,
          },
        )
          .split('\n')
          .filter((line) => !/^={10,}$/.test(line))
          .join('\n'),
      );
    }
    return cut(patches.join('\n'));
  }
  if (input.tool === 'exec') {
    const { argv, env } = args as { argv: string[]; env?: Record<string, string> };
    const vars = Object.entries(env ?? {}).map(([k, v]) => `${k}=${quote(v)} `);
    const access = input.policy.execution.sandbox.workspace_access;
    return cut(
      `$ ${vars.join('')}${argv.map(quote).join(' ')}\n(in the sandbox: working directory /, the workspace at ${SANDBOX_WORKSPACE}, ${access})`,
    );
  }
  if (input.tool === 'http') {
    const { method, url, headers, body } = args as {
      method: string;
      url: string;
      headers?: Record<string, string>;
      body?: string;
    };
    const lines = [`${method} ${url}`, ...Object.entries(headers ?? {}).map(([k, v]) => `${k}: ${v}`)];
    return cut(body === undefined ? lines.join('\n') : `${lines.join('\n')}\n\n${body}`);
  }
  return cut(JSON.stringify(args, null, 2));
}
