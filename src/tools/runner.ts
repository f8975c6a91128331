// The tool layer: every tool call is authorized first (the job's pinned policy and its verified
// capability token), its arguments validated, and only then run, in the sandbox or (http) with
// the egress rules. Every call, allowed or denied, leaves a record for the proof bundle.
import { createHash } from 'node:crypto';
import { z } from 'zod';
import { ClawgateError, ERROR_CODES, formatPath } from '../errors.ts';
import { authorize } from '../policy/authorize.ts';
import { canonicalHash } from '../policy/canonical.ts';
import { httpTool } from './http.ts';
import type { ToolContext, ToolDefinition, ToolOutput } from './types.ts';
import { execTool, readTool, searchTool, writePrTool } from './workspace-tools.ts';

export type { ToolContext, ToolDefinition, ToolOutput };

export const toolRecordSchema = z
  .object({
    tool: z.string(),
    args_sha256: z.string().regex(/^[0-9a-f]{64}$/),
    output_sha256: z
      .string()
      .regex(/^[0-9a-f]{64}$/)
      .nullable(),
    exit_status: z.number().int().nullable(),
    signal: z.string().nullable(),
    timed_out: z.boolean(),
    output_truncated: z.boolean(),
    duration_ms: z.number().nonnegative(),
    sandbox_profile: z.string().nullable(),
    denial: z.object({ code: z.string(), reason: z.string() }).strict().nullable(),
    started_at: z.iso.datetime(),
  })
  .strict();
export type ToolRecord = z.infer<typeof toolRecordSchema>;

export const TOOLS: Record<string, ToolDefinition> = Object.fromEntries(
  [readTool, searchTool, execTool, writePrTool, httpTool].map((t) => [t.name, t as ToolDefinition]),
);

function argsHash(args: unknown): string {
  try {
    return canonicalHash(args);
  } catch {
    // Arguments that have no canonical form are still recorded, by their JSON text.
    return createHash('sha256')
      .update(String(JSON.stringify(args)))
      .digest('hex');
  }
}

export async function runTool(
  call: { tool: string; args: unknown },
  ctx: ToolContext,
  now: () => Date = () => new Date(),
): Promise<{ record: ToolRecord; output: string | null }> {
  const started = performance.now();
  const startedAt = now().toISOString();
  const base = {
    tool: call.tool,
    args_sha256: argsHash(call.args),
    started_at: startedAt,
  };
  const refused = (code: string, reason: string): { record: ToolRecord; output: null } => ({
    record: {
      ...base,
      output_sha256: null,
      exit_status: null,
      signal: null,
      timed_out: false,
      output_truncated: false,
      duration_ms: performance.now() - started,
      sandbox_profile: null,
      denial: { code, reason },
    },
    output: null,
  });

  if (!ctx.token && ctx.tokenError) return refused(ctx.tokenError.code, ctx.tokenError.reason);
  const decision = authorize(
    { kind: 'tool', tool: call.tool, workflowId: ctx.workflowId },
    ctx.policy,
    ctx.token,
  );
  if (!decision.allow) return refused(decision.code, decision.reason);
  const tool = TOOLS[call.tool];
  if (!tool) return refused(ERROR_CODES.toolUnknown, `clawgate has no tool named ${call.tool}`);
  const parsed = tool.args.safeParse(call.args);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    return refused(
      ERROR_CODES.toolArgumentsInvalid,
      `${call.tool} ${formatPath(issue?.path ?? []) || 'arguments'}: ${issue?.message ?? 'invalid'}`,
    );
  }
  let result: ToolOutput;
  try {
    result = await tool.run(parsed.data, ctx);
  } catch (error) {
    if (error instanceof ClawgateError) return refused(error.code, error.message);
    throw error;
  }
  return {
    record: {
      ...base,
      output_sha256: createHash('sha256').update(result.output).digest('hex'),
      exit_status: result.exitStatus,
      signal: result.signal,
      timed_out: result.timedOut,
      output_truncated: result.outputTruncated,
      duration_ms: performance.now() - started,
      sandbox_profile: result.sandboxProfile,
      denial: null,
    },
    output: result.output,
  };
}
