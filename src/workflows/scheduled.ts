// A scheduled job's run: what a Temporal Schedule's action starts. A job's thread hangs from
// its request message, and the gateway finds a job from a thread root under either workflow id
// form of (room, root). A scheduled job has no request message, so this run posts one as the bot
// ("Scheduled job <name>: <text>") and then starts the job as a child under the id the gateway
// would give a request with that root (asked of an activity: workflow code cannot hash). Approvals, denials, cancels and
// cards in the thread then reach the job the way they reach any job, and the gateway needs no
// second way of finding jobs and trusts no field of a message's content for it.
import { executeChild, ParentClosePolicy, proxyActivities, workflowInfo } from '@temporalio/workflow';
import type { JobActivities } from '../activities/job-activities.ts';
import type { MatrixActivities } from '../ingress/matrix-io.ts';
import {
  MATRIX_TASK_QUEUE,
  SCHEDULED_ROOT_FIELD,
  scheduledRootText,
  type JobRequest,
  type ScheduledJobInput,
} from '../temporal/job-contract.ts';
import { startingSearchAttributes } from '../temporal/search-attributes.ts';
import { jobWorkflow, type JobResult } from './job.ts';

export async function scheduledJobWorkflow(input: ScheduledJobInput): Promise<JobResult> {
  const info = workflowInfo();
  const matrix = proxyActivities<MatrixActivities>({
    taskQueue: input.matrixTaskQueue ?? MATRIX_TASK_QUEUE,
    startToCloseTimeout: '15 seconds',
    retry: { maximumAttempts: 20, maximumInterval: '1 minute' },
  });
  // The transaction id is the run's own, so a retried post returns the message posted before.
  const root = await matrix.postToRoom({
    roomId: input.roomId,
    body: scheduledRootText(input.schedule, input.text),
    fields: { [SCHEDULED_ROOT_FIELD]: { schedule: input.schedule, workflow_id: info.workflowId } },
    txnKey: `${info.workflowId}/root`,
  });
  const ids = await proxyActivities<JobActivities>({
    startToCloseTimeout: '10 seconds',
    retry: { maximumAttempts: 10 },
  }).jobIdsOf({ roomId: input.roomId, eventId: root.eventId });
  const request: JobRequest = {
    jobId: ids.jobId,
    roomId: input.roomId,
    requester: input.requester,
    eventId: root.eventId,
    text: input.text,
    channel: input.channel,
    ...(input.matrixTaskQueue === undefined ? {} : { matrixTaskQueue: input.matrixTaskQueue }),
    originServerTs: root.originServerTs,
    scheduled: {
      schedule: input.schedule,
      runWorkflowId: info.workflowId,
      ...(input.preApproval ? { preApproval: input.preApproval } : {}),
    },
  };
  return await executeChild(jobWorkflow, {
    workflowId: ids.workflowId,
    args: [request],
    // The job is the unit people act on: it outlives this run if the run is terminated (a
    // schedule deleted with cancel-other, say), as a job started from a message would.
    parentClosePolicy: ParentClosePolicy.ABANDON,
    // What the gateway sets on a job it starts, so `clawgate jobs` lists this one alike.
    typedSearchAttributes: startingSearchAttributes({
      jobId: ids.jobId,
      roomId: input.roomId,
      requester: input.requester,
    }),
    staticSummary: `clawgate scheduled job ${input.schedule}: ${input.text.slice(0, 100)}`,
  });
}
