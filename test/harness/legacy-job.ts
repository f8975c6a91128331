// A job as the gateway started it before the short workflow id: under the old form
// `job:<room>:<request event id>`, with the request the gateway made then, for tests that check
// that whatever finds a job from its thread or its card still finds this one.
import { WorkflowIdReusePolicy } from '@temporalio/client';
import { jobWorkflowIds, shortJobId } from '../../src/ingress/job-ids.ts';
import { canonicalHash } from '../../src/policy/canonical.ts';
import { jobStaticSummary, MATRIX_TASK_QUEUE, type JobRequest } from '../../src/temporal/job-contract.ts';
import { startingSearchAttributes } from '../../src/temporal/search-attributes.ts';
import type { WorkerStack } from './stack.ts';

export interface LegacyJob {
  /** The old-form id the job runs under. */
  legacy: string;
  /** The short id a job of this request would have now; no workflow has it. */
  workflowId: string;
  jobId: string;
}

/**
 * Starts the job of a request event (a plain `m.text` message whose body is `text`, so no
 * gateway started a job for it) under the old id form, as the gateway of account `account` did.
 */
export async function startLegacyJob(
  stack: WorkerStack,
  opts: { roomId: string; requester: string; eventId: string; text: string; account: string },
): Promise<LegacyJob> {
  const { workflowId, legacy } = jobWorkflowIds(opts.roomId, opts.eventId);
  const jobId = shortJobId(legacy);
  const request: JobRequest = {
    roomId: opts.roomId,
    requester: opts.requester,
    eventId: opts.eventId,
    text: opts.text,
    channel: 'matrix',
    // The account's own queue, as matrixTaskQueueOf names it.
    matrixTaskQueue: `${MATRIX_TASK_QUEUE}-${opts.account}`,
    jobId,
    content: { sha256: canonicalHash({ msgtype: 'm.text', body: opts.text }), shown: opts.text },
  };
  await stack.temporal.client.workflow.start('jobWorkflow', {
    taskQueue: stack.taskQueue,
    workflowId: legacy,
    args: [request],
    workflowIdReusePolicy: WorkflowIdReusePolicy.REJECT_DUPLICATE,
    typedSearchAttributes: startingSearchAttributes({
      jobId,
      roomId: opts.roomId,
      requester: opts.requester,
    }),
    ...jobStaticSummary(request),
  });
  return { legacy, workflowId, jobId };
}
