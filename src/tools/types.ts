// What every tool shares: its context (the job, its pinned policy and verified token, the
// sandbox and workspace), its output, and how the policy's limits become sandbox limits.
import type { z } from 'zod';
import type { Wpc } from '../policy/wpc.ts';
import type { Sandbox, SandboxLimits } from '../sandbox/bubblewrap.ts';
import type { CstClaims } from '../tokens/cst.ts';

export interface ToolContext {
  workflowId: string;
  policy: Wpc;
  /** The verified capability token of the job (verifyCapabilityToken), or null. */
  token: CstClaims | null;
  sandbox: Sandbox;
  /** Host folder of the job's workspace. */
  workspace: string;
  /** Resolver for the http tool (tests inject one to play DNS rebinding). */
  lookup?: (host: string) => Promise<Array<{ address: string; family: number }>>;
  /** Why the token is null, when its verification failed: the refusal records this reason. */
  tokenError?: { code: string; reason: string };
  /** Where write_pr pushes its branch (a local bare repository or a configured remote URL). */
  prRemote?: string;
  /**
   * The worker's own bare repository write_pr pushes from (a host folder no sandbox mounts);
   * the worker never runs git on a workspace.
   */
  pushRepo?: string;
}

export interface ToolOutput {
  exitStatus: number | null;
  signal: string | null;
  output: string;
  timedOut: boolean;
  outputTruncated: boolean;
  sandboxProfile: string | null;
}

export interface ToolDefinition<A extends z.ZodType = z.ZodType> {
  name: string;
  description: string;
  args: A;
  run(args: z.infer<A>, ctx: ToolContext): Promise<ToolOutput>;
}

/** Sandbox limits from the policy's execution.sandbox.limits. */
export function policyLimits(policy: Wpc): SandboxLimits {
  const l = policy.execution.sandbox.limits;
  return {
    cpuSeconds: l.cpu_seconds,
    memoryBytes: l.memory_mb * 1024 * 1024,
    processes: l.processes,
    outputBytes: l.output_bytes,
    wallMs: l.wall_seconds * 1000,
  };
}
