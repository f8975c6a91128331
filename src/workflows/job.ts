// One job, as the runbook has it: request → plan → wait for approval → mint → execute → seal →
// report. Deterministic code only; everything that touches the world is an activity.
import {
  CancellationScope,
  condition,
  isCancellation,
  patched,
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
  cancelSignal,
  MATRIX_TASK_QUEUE,
  statusQuery,
  type ApprovalAttempt,
  type CancelRequest,
  type JobRequest,
  type JobStatus,
  type JobStatusView,
} from '../temporal/job-contract.ts';
import type { BundleEntryInput, ControlState, PinnedPolicy, Plan } from '../temporal/job-types.ts';
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
/** Status-line edits are cosmetic: a few quick tries, so one that cannot land never holds the job up. */
function statusLineActivities(taskQueue: string): MatrixActivities {
  return proxyActivities<MatrixActivities>({
    taskQueue,
    startToCloseTimeout: '15 seconds',
    retry: { maximumAttempts: 3, maximumInterval: '5 seconds' },
  });
}
function matrixActivities(taskQueue: string): MatrixActivities {
  return proxyActivities<MatrixActivities>({
    taskQueue,
    // Short: a message takes well under a second, and a task handed to a gateway that was
    // killed is retried on the restarted one only once this has passed.
    startToCloseTimeout: '15 seconds',
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

/**
 * Changes that alter what a job does, introduced after jobs were recorded; `patched` keeps
 * older histories replaying as they ran.
 */
const PATCHES = {
  /** An attempt from another room is kept as evidence but not answered in this job's room. */
  foreignRoomQuiet: 'foreign-room-quiet-v1',
  /** The plan message carries a status line, edited in place as the job moves on. */
  statusLine: 'status-line-v1',
  /**
   * After the deciding approval: the reaction is posted while the token is minted (not before),
   * and the control state read for that approval also decides read-only mode (no second read).
   */
  approvedFastPath: 'approved-fast-path-v1',
} as const;

const STATUS_LINES: Partial<Record<JobStatus, string>> = {
  awaiting_approval: 'waiting for approval',
  frozen: 'approved; waiting for read-only mode to end',
  executing: 'approved; running',
  sealing: 'sealing the proof bundle',
  succeeded: 'succeeded',
  failed: 'failed',
  denied: 'denied',
  timed_out: 'timed out',
  cancelled: 'cancelled',
  refused: 'refused',
};

export async function jobWorkflow(request: JobRequest): Promise<JobResult> {
  const info = workflowInfo();
  const matrix = matrixActivities(request.matrixTaskQueue ?? MATRIX_TASK_QUEUE);
  const statusEditor = statusLineActivities(request.matrixTaskQueue ?? MATRIX_TASK_QUEUE);
  const job = { workflowId: info.workflowId, runId: info.runId };
  const shortId = request.jobId ?? request.eventId;
  const entries: BundleEntryInput[] = [
    { type: 'job', body: { workflow_id: job.workflowId, run_id: job.runId } },
    {
      type: 'request',
      body: {
        room_id: request.roomId,
        sender: request.requester,
        event_id: request.eventId,
        text: request.text,
        ...(request.content ? { content: request.content } : {}),
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
  // `!cancel` from the room: decided once the policy is pinned (requester or an approver, same
  // room); an accepted one cancels the job's work, which then ends as an operator cancel does.
  const cancels: CancelRequest[] = [];
  setHandler(cancelSignal, (req) => {
    cancels.push(req);
  });
  const work = new CancellationScope();
  let cancelledBy: string | null = null;
  let pinned: PinnedPolicy | null = null;
  const seenCancels = new Set<string>();
  let cancelsDone = 0;
  let finished = false;
  const cancelLoop = async (): Promise<void> => {
    for (;;) {
      await condition(() => finished || (pinned !== null && cancels.length > cancelsDone));
      if (finished || !pinned) return;
      const req = cancels[cancelsDone++] as CancelRequest;
      if (seenCancels.has(req.eventId)) continue;
      seenCancels.add(req.eventId);
      let refusal: string | null = null;
      if (req.roomId !== request.roomId) refusal = `this job belongs to room ${request.roomId}`;
      else if (req.sender !== request.requester && !pinned.rules.approvers.includes(req.sender)) {
        refusal = `${req.sender} is neither the requester nor an approver of this job`;
      } else if (cancelledBy !== null) refusal = `already cancelled by ${cancelledBy}`;
      entries.push({
        type: 'cancel_request',
        body: { ...req, accepted: refusal === null, reason: refusal ?? 'cancelled' },
      });
      if (refusal !== null) {
        if (req.roomId === request.roomId) {
          await say(`cancel-refusal/${req.eventId}`, `${req.sender}: !cancel not accepted. ${refusal}.`);
        }
        continue;
      }
      cancelledBy = req.sender;
      work.cancel();
    }
  };

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
  // The status line under the plan, edited in place; edits go out one after another, off the
  // job's own path, and a failed edit is not worth failing the job for.
  let planMessage: { eventId: string; body: string } | null = null;
  let statusEdits: Promise<void> = Promise.resolve();
  let editCount = 0;
  const editStatusLine = (status: JobStatus): void => {
    const line = STATUS_LINES[status];
    if (!planMessage || !line) return;
    const extra = status === 'executing' ? ` (step ${view.stepsDone + 1} of ${view.stepsTotal})` : '';
    const body = `${planMessage.body}\nStatus: ${line}${extra}`;
    const eventId = planMessage.eventId;
    const key = `${job.workflowId}/${job.runId}/status/${++editCount}`;
    statusEdits = statusEdits
      .then(() => statusEditor.editMessage({ roomId: request.roomId, eventId, body, txnKey: key }))
      .then(
        () => {},
        () => {},
      );
  };
  const seal = async (status: JobStatus, reason: string): Promise<JobResult> => {
    finished = true;
    setStatus('sealing');
    entries.push({ type: 'outcome', body: { status, reason } });
    const { digest } = await acts.sealJobBundle({ job, entries });
    view.bundleDigest = digest;
    setStatus(status);
    editStatusLine(status);
    await statusEdits;
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

  // The loop outlives an operator's cancel (it ends when the job is sealed); a notice it could
  // not post is not worth failing the job for.
  void CancellationScope.nonCancellable(cancelLoop).catch(() => {});
  try {
    return await work.run(() => runJob());
  } catch (error) {
    if (isCancellation(error)) {
      // Cancelled (from the Temporal Web UI, or by `!cancel` in the room): revoke, say so, seal.
      return await CancellationScope.nonCancellable(async () => {
        await acts.revokeJobTokens({ workflowId: job.workflowId, reason: 'cancelled' });
        return await seal(
          'cancelled',
          cancelledBy ? `cancelled by ${cancelledBy} in the room` : 'cancelled by an operator',
        );
      });
    }
    throw error;
  }

  async function runJob(): Promise<JobResult> {
    // 1. Pin the active policy.
    const policy = await acts.resolvePolicy({ channel: request.channel });
    pinned = policy;
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
    const planText = renderPlan(shortId, plan, planHash, policy, policy.rules.approvalExpirySeconds);
    const statusLine = patched(PATCHES.statusLine);
    const posted = await say(
      'plan',
      statusLine ? `${planText}\nStatus: ${STATUS_LINES.awaiting_approval}` : planText,
    );
    if (statusLine) planMessage = { eventId: posted.eventId, body: planText };

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
    // The control state read for the deciding attempt, and its reaction still being posted.
    let decidedUnder: ControlState | undefined;
    let pendingReaction: Promise<unknown> | undefined;
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
            jobId: request.jobId,
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
        // An attempt from another room is answered there, by the gateway, not in this job's room.
        if (attempt.roomId !== request.roomId && patched(PATCHES.foreignRoomQuiet)) continue;
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
        const reaction = matrix.react({
          roomId: request.roomId,
          eventId: attempt.eventId,
          key: '✅',
          txnKey: `${job.workflowId}/react/${attempt.eventId}`,
        });
        decidedUnder = control;
        const deciding =
          verdict.effect !== 'denial' &&
          new Set([...accepted, attempt.sender]).size >= policy.rules.approvalsRequired;
        if (deciding && patched(PATCHES.approvedFastPath)) {
          // Awaited after the mint; marked handled now so a failure meanwhile is not "unhandled".
          reaction.catch(() => undefined);
          pendingReaction = reaction;
        } else await reaction;
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
    let control =
      pendingReaction !== undefined && decidedUnder !== undefined
        ? decidedUnder
        : await acts.readControlState();
    while (control.readOnly) {
      if (!announced) {
        setStatus('frozen');
        editStatusLine('frozen');
        await say(
          'read-only',
          `Job ${shortId} is approved, but clawgate is in read-only mode; it waits until that ends.`,
        );
        announced = true;
      }
      await sleep(READ_ONLY_POLL);
      control = await acts.readControlState();
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
    // The approver's ✅ went out while the token was minted; it is done before any step runs.
    if (pendingReaction) await pendingReaction;

    // 6. Execute the approved steps in order; nothing a step returns can change the next one.
    setStatus('executing');
    editStatusLine('executing');
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
      if (index + 1 < plan.steps.length) editStatusLine('executing');
      excerpts.push(`${index + 1}. ${step.tool}: ${result.excerpt.trim().slice(0, 200)}`);
      if (!result.ok) {
        await acts.revokeJobTokens({ workflowId: job.workflowId, reason: 'job failed' });
        return await seal('failed', `step ${index + 1} (${step.tool}) failed.\n${excerpts.join('\n')}`);
      }
    }
    await acts.revokeJobTokens({ workflowId: job.workflowId, reason: 'job finished' });

    // 7. Seal and report.
    return await seal('succeeded', `${plan.steps.length} step(s) done.\n${excerpts.join('\n')}`);
  }
}
