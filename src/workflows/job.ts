// One job, as the runbook has it: request → plan → wait for approval → mint → execute → seal →
// report. Deterministic code only; everything that touches the world is an activity.
import {
  CancellationScope,
  condition,
  isCancellation,
  proxyActivities,
  setCurrentDetails,
  setHandler,
  sleep,
  upsertSearchAttributes,
  workflowInfo,
} from '@temporalio/workflow';
import type { JobActivities } from '../activities/job-activities.ts';
import type { MatrixActivities } from '../ingress/matrix-io.ts';
import {
  approvalSignal,
  MATRIX_TASK_QUEUE,
  statusQuery,
  type ApprovalAttempt,
  type JobRequest,
  type JobStatus,
  type JobStatusView,
} from '../temporal/job-contract.ts';
import type { BundleEntryInput, PinnedPolicy, Plan } from '../temporal/job-types.ts';
import {
  JOB_APPROVERS,
  JOB_POLICY_HASH,
  JOB_REQUESTER,
  JOB_ROOM,
  JOB_STATUS,
} from '../temporal/search-attributes.ts';
import { decideApproval } from './approval.ts';

const acts = proxyActivities<JobActivities>({
  startToCloseTimeout: '2 minutes',
  retry: { maximumAttempts: 5, nonRetryableErrorTypes: ['NO_ACTIVE_POLICY', 'PLANNING_MODEL_NOT_ALLOWED'] },
});
/**
 * A tool step is attempted once: a step that may have had effects is not silently run again,
 * and one that was under way when its worker died ends the job, once its time limit (the
 * sandbox's wall clock plus a margin) has passed.
 */
function stepActivities(wallSeconds: number): JobActivities {
  return proxyActivities<JobActivities>({
    startToCloseTimeout: `${wallSeconds + 20} seconds`,
    retry: { maximumAttempts: 1 },
  });
}
function matrixActivities(taskQueue: string): MatrixActivities {
  return proxyActivities<MatrixActivities>({
    taskQueue,
    startToCloseTimeout: '1 minute',
    retry: { maximumAttempts: 20, maximumInterval: '1 minute' },
  });
}

export interface JobResult {
  status: JobStatus;
  bundleDigest: string | null;
  reason: string;
}

/** While read-only triage mode is on, a job re-checks this often. */
const READ_ONLY_POLL = '5 seconds';

function renderPlan(
  jobId: string,
  plan: Plan,
  planHash: string,
  policy: PinnedPolicy,
  deadlineSeconds: number,
): string {
  const lines = plan.steps.map((s, i) => `  ${i + 1}. ${s.tool} ${JSON.stringify(s.args)}`);
  const hours = Math.round((deadlineSeconds / 3600) * 10) / 10;
  return [
    `Plan for job ${jobId}: ${plan.summary}`,
    ...lines,
    `plan ${planHash.slice(0, 12)} · policy ${policy.hash.slice(0, 12)}`,
    `Approvers: ${policy.rules.approvers.join(', ')} (${policy.rules.approvalsRequired} needed).`,
    `Reply in this thread with !approve (or !deny <reason>) within ${hours} h.`,
  ].join('\n');
}

export async function jobWorkflow(request: JobRequest): Promise<JobResult> {
  const info = workflowInfo();
  const matrix = matrixActivities(request.matrixTaskQueue ?? MATRIX_TASK_QUEUE);
  const job = { workflowId: info.workflowId, runId: info.runId };
  const shortId = request.eventId;
  const entries: BundleEntryInput[] = [
    { type: 'job', body: { workflow_id: job.workflowId, run_id: job.runId } },
    {
      type: 'request',
      body: {
        room_id: request.roomId,
        sender: request.requester,
        event_id: request.eventId,
        text: request.text,
      },
    },
  ];
  const view: JobStatusView = {
    status: 'planning',
    planHash: null,
    policyHash: null,
    approvals: [],
    stepsDone: 0,
    stepsTotal: 0,
    bundleDigest: null,
  };
  const attempts: ApprovalAttempt[] = [];
  setHandler(approvalSignal, (attempt) => {
    attempts.push(attempt);
  });
  setHandler(statusQuery, () => view);

  const setStatus = (status: JobStatus): void => {
    view.status = status;
    upsertSearchAttributes([{ key: JOB_STATUS, value: status }]);
    // What the Temporal Web UI shows as the job's current details.
    setCurrentDetails(
      [
        `**${status}** · room ${request.roomId} · requested by ${request.requester}`,
        view.planHash
          ? `plan ${view.planHash.slice(0, 12)} · steps ${view.stepsDone}/${view.stepsTotal}`
          : '',
        view.policyHash ? `policy ${view.policyHash.slice(0, 12)}` : '',
        view.bundleDigest ? `bundle ${view.bundleDigest}` : '',
      ]
        .filter(Boolean)
        .join('\n'),
    );
  };
  const say = (key: string, body: string) =>
    matrix.postToThread({
      roomId: request.roomId,
      threadRoot: request.eventId,
      body,
      txnKey: `${job.workflowId}/${job.runId}/${key}`,
    });
  const seal = async (status: JobStatus, reason: string): Promise<JobResult> => {
    setStatus('sealing');
    entries.push({ type: 'outcome', body: { status, reason } });
    const { digest } = await acts.sealJobBundle({ job, entries });
    view.bundleDigest = digest;
    setStatus(status);
    await say(
      'result',
      `Job ${shortId}: ${status}. ${reason}\npolicy ${view.policyHash?.slice(0, 12) ?? '-'} · bundle ${digest}`,
    );
    return { status, bundleDigest: digest, reason };
  };

  upsertSearchAttributes([
    { key: JOB_ROOM, value: request.roomId },
    { key: JOB_REQUESTER, value: request.requester },
    { key: JOB_STATUS, value: 'planning' },
  ]);

  try {
    // 1. Pin the active policy.
    const policy = await acts.resolvePolicy({ channel: request.channel });
    view.policyHash = policy.hash;
    upsertSearchAttributes([{ key: JOB_POLICY_HASH, value: policy.hash }]);
    entries.push({ type: 'policy', body: { document: policy.document, hash: policy.hash, jws: policy.jws } });
    if (!policy.rules.roomsAllowlist.includes(request.roomId)) {
      return await seal('refused', `room ${request.roomId} is not on the policy's room allowlist`);
    }
    if (!policy.rules.requestersAllowlist.includes(request.requester)) {
      return await seal('refused', `${request.requester} may not request work here`);
    }

    // 2. Plan, with a planning-only token.
    const draft = await acts.draftPlan({ job, roomId: request.roomId, text: request.text, policy });
    entries.push({ type: 'token', body: { purpose: 'planning', jwt: draft.planningToken } });
    for (const jws of draft.receipts) entries.push({ type: 'model_receipt', body: { jws } });
    if (!draft.ok) return await seal('failed', `no usable plan: ${draft.reason}`);
    const { plan, planHash } = draft;
    view.planHash = planHash;
    view.stepsTotal = plan.steps.length;
    entries.push({ type: 'plan', body: plan });

    // 3. Post it in the request's thread.
    const posted = await say(
      'plan',
      renderPlan(shortId, plan, planHash, policy, policy.rules.approvalExpirySeconds),
    );

    // 4. Wait for approval, each attempt decided against the pinned policy.
    setStatus('awaiting_approval');
    let expired = false;
    const deadline = new CancellationScope();
    void deadline
      .run(() => sleep(policy.rules.approvalExpirySeconds * 1000))
      .then(
        () => {
          expired = true;
        },
        () => {},
      );
    const seen = new Set<string>();
    const accepted = new Set<string>();
    const approvalEvents: string[] = [];
    let decision: 'approved' | 'denied' | undefined;
    let denialReason = '';
    let processed = 0;
    while (!decision && !expired) {
      await condition(() => attempts.length > processed || expired);
      while (processed < attempts.length && !decision) {
        const attempt = attempts[processed++] as ApprovalAttempt;
        const duplicate = seen.has(attempt.eventId);
        const control = await acts.readControlState();
        const verdict = decideApproval(
          attempt,
          {
            approvers: policy.rules.approvers,
            requesterMayApprove: policy.rules.requesterMayApprove,
            approvalsRequired: policy.rules.approvalsRequired,
            requireVerifiedDevice: policy.rules.requireVerifiedDevice,
          },
          {
            workflowId: job.workflowId,
            roomId: request.roomId,
            requester: request.requester,
            planHash,
            planPostedAt: posted.originServerTs,
            seenEventIds: seen,
            acceptedApprovers: accepted,
            approvalsFrozen: control.approvalsFrozen,
          },
        );
        seen.add(attempt.eventId);
        const reason = verdict.reason;
        entries.push({
          type: 'approval_attempt',
          body: {
            ...attempt,
            accepted: verdict.accepted,
            code: verdict.accepted ? null : verdict.code,
            reason,
          },
        });
        view.approvals.push({
          eventId: attempt.eventId,
          sender: attempt.sender,
          accepted: verdict.accepted,
          reason,
        });
        if (duplicate) continue; // a redelivered event: kept as evidence, answered once
        if (!verdict.accepted) {
          await matrix.react({
            roomId: request.roomId,
            eventId: attempt.eventId,
            key: '❌',
            txnKey: `${job.workflowId}/react/${attempt.eventId}`,
          });
          await say(`refusal/${attempt.eventId}`, `${attempt.sender}: not counted. ${reason}`);
          continue;
        }
        await matrix.react({
          roomId: request.roomId,
          eventId: attempt.eventId,
          key: '✅',
          txnKey: `${job.workflowId}/react/${attempt.eventId}`,
        });
        if (verdict.effect === 'denial') {
          decision = 'denied';
          denialReason = `denied by ${attempt.sender}: ${reason}`;
        } else {
          accepted.add(attempt.sender);
          approvalEvents.push(attempt.eventId);
          if (accepted.size >= policy.rules.approvalsRequired) decision = 'approved';
        }
      }
    }
    deadline.cancel();
    if (decision === 'denied') return await seal('denied', denialReason);
    if (decision !== 'approved') {
      return await seal('timed_out', `no approval within ${policy.rules.approvalExpirySeconds} s`);
    }
    upsertSearchAttributes([{ key: JOB_APPROVERS, value: [...accepted] }]);

    // Read-only triage mode: no token is minted until it is lifted (or the job is cancelled).
    let announced = false;
    while ((await acts.readControlState()).readOnly) {
      if (!announced) {
        setStatus('frozen');
        await say(
          'read-only',
          `Job ${shortId} is approved, but clawgate is in read-only mode; it waits until that ends.`,
        );
        announced = true;
      }
      await sleep(READ_ONLY_POLL);
    }

    // 5. Mint the execution token: this job, this plan, the tools it needs, the pinned policy.
    const tools = [...new Set(plan.steps.map((s) => s.tool).filter((t) => t !== 'model'))];
    const { token } = await acts.mintExecutionToken({
      job,
      roomId: request.roomId,
      policy,
      planHash,
      tools,
      approvers: [...accepted],
      eventIds: approvalEvents,
    });
    entries.push({ type: 'token', body: { purpose: 'execution', jwt: token } });

    // 6. Execute the approved steps in order; nothing a step returns can change the next one.
    setStatus('executing');
    const excerpts: string[] = [];
    // Jobs pinned before stepWallSeconds existed have none: the default sandbox wall clock.
    const steps = stepActivities(policy.rules.stepWallSeconds ?? 60);
    for (const [index, step] of plan.steps.entries()) {
      let result;
      try {
        result = await steps.runStep({
          job,
          index,
          step,
          token,
          policyHash: policy.hash,
          channel: request.channel,
        });
      } catch (error) {
        if (isCancellation(error)) throw error;
        // The step's worker died or the step overran: it is not run again.
        await acts.revokeJobTokens({ workflowId: job.workflowId, reason: 'job failed' });
        const why = error instanceof Error ? error.message : String(error);
        return await seal(
          'failed',
          `step ${index + 1} (${step.tool}) did not finish and is not run again (${why}).`,
        );
      }
      entries.push({ type: 'tool_record', body: result.record });
      for (const jws of result.receipts ?? []) entries.push({ type: 'model_receipt', body: { jws } });
      view.stepsDone = index + 1;
      excerpts.push(`${index + 1}. ${step.tool}: ${result.excerpt.trim().slice(0, 200)}`);
      if (!result.ok) {
        await acts.revokeJobTokens({ workflowId: job.workflowId, reason: 'job failed' });
        return await seal('failed', `step ${index + 1} (${step.tool}) failed.\n${excerpts.join('\n')}`);
      }
    }
    await acts.revokeJobTokens({ workflowId: job.workflowId, reason: 'job finished' });

    // 7. Seal and report.
    return await seal('succeeded', `${plan.steps.length} step(s) done.\n${excerpts.join('\n')}`);
  } catch (error) {
    if (isCancellation(error)) {
      // Cancelled (for example from the Temporal Web UI): revoke, say so, seal.
      return await CancellationScope.nonCancellable(async () => {
        await acts.revokeJobTokens({ workflowId: job.workflowId, reason: 'cancelled' });
        return await seal('cancelled', 'cancelled by an operator');
      });
    }
    throw error;
  }
}
