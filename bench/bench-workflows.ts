// The workflows the job benchmarks run: clawgate's own, and bare baselines.
import { ApplicationFailure, proxyActivities } from '@temporalio/workflow';
import type { JobActivities } from '../src/activities/job-activities.ts';
import type { JobRef, ModelTurnResult } from '../src/temporal/job-types.ts';

import { TURN_ACTIVITY_OPTIONS, toolCallActivityOptions } from '../src/workflows/job.ts';

export { jobWorkflow } from '../src/workflows/job.ts';

const { noop } = proxyActivities<{ noop(): Promise<void> }>({ startToCloseTimeout: '1 minute' });

/** The baseline: the same number of activities as a job, doing nothing. */
export async function bareWorkflow(activities: number): Promise<void> {
  for (let i = 0; i < activities; i++) await noop();
}

export interface BareAgentLoopInput {
  /** The job the token names (the activities key their evidence by its workflow id). */
  job: JobRef;
  /** An execution token for `job`, minted by the caller. */
  token: string;
  model: string;
  policyHash: string;
  channel: string;
  prelude: Array<{ role: 'system' | 'user'; content: string }>;
  /** The tools offered to the model, and the ones a call may use. */
  tools: string[];
  /** The most model turns to run. */
  maxTurns: number;
  /** The sandbox's wall clock (the tool calls' time limit is this plus a margin, as in a job). */
  wallSeconds: number;
  /** The most of a tool result the model is sent. */
  resultBytes: number;
}

export interface BareAgentLoopResult {
  turns: number;
  toolCalls: number;
  /** Each tool call's outcome, as the loop shows it. */
  outcomes: string[];
  answer: string | null;
}

// The activity options of the job's loop (src/workflows/job.ts).
const setup = proxyActivities<JobActivities>({
  startToCloseTimeout: '2 minutes',
  retry: { maximumAttempts: 5 },
});
const turnActivities = proxyActivities<JobActivities>(TURN_ACTIVITY_OPTIONS);
function toolCallActivities(wallSeconds: number): JobActivities {
  return proxyActivities<JobActivities>(toolCallActivityOptions(wallSeconds));
}

/**
 * The agent loop's baseline: per turn the two activities a job runs, with the inputs it would
 * pass (a model turn, then each tool call it asked for), and nothing else: no bundle entries,
 * no status line, no budget checks, no approval, no seal. The workspace is made first.
 */
export async function bareAgentLoopWorkflow(input: BareAgentLoopInput): Promise<BareAgentLoopResult> {
  const { job, token } = input;
  await setup.prepareWorkspace({ job });
  const calls = toolCallActivities(input.wallSeconds);
  const refs: string[] = [];
  const outcomes: string[] = [];
  let lastReceiptId: string | null = null;
  for (let turn = 0; turn < input.maxTurns; turn++) {
    const result: ModelTurnResult = await turnActivities.modelTurn({
      job,
      phase: 'execution',
      turn,
      token,
      model: input.model,
      prelude: input.prelude,
      refs,
      tools: input.tools,
      lastReceiptId,
    });
    for (const r of result.receipts) lastReceiptId = r.id;
    if (!result.ok) {
      throw ApplicationFailure.nonRetryable(
        `turn ${turn + 1}: the model proxy answered ${result.httpStatus} (${result.error?.code ?? '?'}: ${result.error?.message ?? ''})`,
      );
    }
    if (result.toolCalls.length === 0) {
      return { turns: turn + 1, toolCalls: outcomes.length, outcomes, answer: result.answer?.text ?? null };
    }
    refs.push(result.assistantRef as string);
    for (const call of result.toolCalls) {
      const done = await calls.runToolCall({
        job,
        phase: 'execution',
        turn,
        call,
        assistantRef: result.assistantRef as string,
        token,
        policyHash: input.policyHash,
        channel: input.channel,
        offered: input.tools,
        resultBytes: input.resultBytes,
      });
      refs.push(done.messageRef);
      outcomes.push(done.outcome);
    }
  }
  return { turns: input.maxTurns, toolCalls: outcomes.length, outcomes, answer: null };
}
