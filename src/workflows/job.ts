// One job, as the runbook has it: request → plan → wait for approval → mint → execute → seal →
// report. Deterministic code only; everything that touches the world is an activity.
import {
  ActivityFailure,
  CancellationScope,
  condition,
  continueAsNew,
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
import { agentPrompt, plannerPrompt } from '../agent/protocol.ts';
import { readAgentPlan, renderAgentPlan, renderAnswer, renderCard } from '../agent/plan.ts';
import { PLANNING_TOOLS } from '../tools/kinds.ts';
import { outputsUsed, showArgs } from '../policy/step-outputs.ts';
import type { MatrixActivities } from '../ingress/matrix-io.ts';
import {
  approvalSignal,
  CALL_CARD_FIELD,
  callDecisionSignal,
  cancelSignal,
  type CallDecisionAttempt,
  MATRIX_TASK_QUEUE,
  preApprovalRefusal,
  statusQuery,
  type ApprovalAttempt,
  type CancelRequest,
  type JobRequest,
  type JobStatus,
  type JobStatusView,
} from '../temporal/job-contract.ts';
import type {
  AgentPlan,
  ToolCallRef,
  BundleEntryInput,
  ControlState,
  JobRef,
  ModelTurnResult,
  PinnedPolicy,
  Plan,
} from '../temporal/job-types.ts';
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
  // Every activity heartbeats while it runs (job-activities.ts): one whose worker died is tried
  // again elsewhere within seconds, not after the whole time limit.
  heartbeatTimeout: '15 seconds',
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
/**
 * A model turn: retried (a turn whose answer was kept is not asked again), and it heartbeats,
 * so a turn whose worker died moves to another worker within seconds.
 */
export const TURN_ACTIVITY_OPTIONS = {
  startToCloseTimeout: '4 minutes',
  heartbeatTimeout: '15 seconds',
  retry: { maximumAttempts: 4, initialInterval: '1 second' },
} as const;
const turnActivities = outlivingWorkers(proxyActivities<JobActivities>(TURN_ACTIVITY_OPTIONS));
/**
 * A tool call of the loop: a second attempt (after its worker died) never runs the call again,
 * it reports it as interrupted (the activity's claim in the evidence store decides).
 */
export function toolCallActivityOptions(wallSeconds: number) {
  return {
    startToCloseTimeout: `${wallSeconds + 20} seconds`,
    heartbeatTimeout: '10 seconds',
    retry: { maximumAttempts: 3, initialInterval: '1 second' },
  } as const;
}
function toolCallActivities(wallSeconds: number): JobActivities {
  return outlivingWorkers(proxyActivities<JobActivities>(toolCallActivityOptions(wallSeconds)));
}
/** How many times a turn or tool call is run again because its last attempt died with its worker. */
const WORKER_LOSSES = 5;
/**
 * Activities run again, as a new activity, when their last attempt was lost with its worker (a
 * heartbeat timeout), up to WORKER_LOSSES times: workers killed one after another must not use
 * up the few attempts a model turn or a tool call has for its own failures (a job whose worker
 * was killed four times during one turn failed, without its bundle). A turn asked again returns
 * the answer an earlier attempt kept; a tool call run again reports the interrupted call and
 * never runs it twice (src/activities/agent-activities.ts).
 */
function outlivingWorkers(activities: JobActivities): JobActivities {
  return new Proxy(activities, {
    get(target, name) {
      const activity = Reflect.get(target, name) as (...args: unknown[]) => Promise<unknown>;
      return async (...args: unknown[]) => {
        for (let lost = 0; ; lost++) {
          try {
            return await activity(...args);
          } catch (error) {
            const withItsWorker =
              error instanceof ActivityFailure &&
              (error.cause as { timeoutType?: unknown } | undefined)?.timeoutType === 'HEARTBEAT';
            if (!withItsWorker || lost >= WORKER_LOSSES || !patched(PATCHES.outliveWorkers)) throw error;
          }
        }
      };
    },
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

/**
 * What an agent job carries into its next run when its history grows (continue-as-new): the
 * loop's state, the evidence so far, and what the room was shown.
 */
export interface AgentCarry {
  job: JobRef;
  entries: BundleEntryInput[];
  view: JobStatusView;
  policy: PinnedPolicy;
  seenCancels: string[];
  /** Answers to approval cards already decided (by event id). */
  seenCallEvents?: string[];
  planMessage: { eventId: string; body: string; html?: string } | null;
  editCount: number;
  loop: AgentLoopState;
}

interface AgentLoopState {
  plan: AgentPlan;
  planHash: string;
  model: string;
  token: string;
  tokenExp: number;
  approvers: string[];
  approvalEvents: string[];
  prelude: Array<{ role: 'system' | 'user'; content: string }>;
  refs: string[];
  turn: number;
  toolCalls: number;
  tokensUsed: number;
  receipts: number;
  lastReceiptId: string | null;
  /** When the loop started and the latest time an activity reported (ms): workflow code reads no clock. */
  startedAt: number;
  now: number;
  workspace: boolean;
  /** "Allow for this job" approvals: later calls of that tool and argument shape need no card. */
  grants?: Grant[];
}

interface Grant {
  tool: string;
  shapeSha256: string;
  cardId: string;
  approver: string;
  eventId: string;
}

/** An approval card: one gated call, waiting for a person's decision in the thread. */
interface Card {
  cardId: string;
  call: ToolCallRef;
  eventId: string;
  postedAt: number;
  state: 'waiting' | 'approved' | 'denied' | 'expired';
  decision?: { sender: string; eventId: string; scope: 'call' | 'job'; reason: string };
}

/** An agent job continues as new once its history has this many events (Temporal allows 51,200). */
export const AGENT_CONTINUE_AS_NEW_EVENTS = 2000;

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
  const lines = plan.steps.map((s, i) => `  ${i + 1}. ${s.tool} ${showArgs(s.args)}`);
  const data = plan.steps.some((s) => outputsUsed(s.args).length > 0)
    ? ["‹output of step n› is that step's output, used as data: which steps run never depends on it."]
    : [];
  const hours = Math.round((deadlineSeconds / 3600) * 10) / 10;
  return [
    `Plan for job ${jobId}: ${plan.summary}`,
    ...lines,
    ...data,
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
  /**
   * Each job works in its own fresh workspace, removed once it is over; and a policy in agent
   * mode runs the agent loop.
   */
  agentLoop: 'agent-loop-v1',
  /** A turn or tool call whose last attempt died with its worker is run again (outlivingWorkers). */
  outliveWorkers: 'outlive-workers-v1',
  /** An answer to a card that came while the card was being posted waits for it (decideCall). */
  answerAwaitsCard: 'answer-awaits-card-v1',
  /** A scheduled job whose schedule was pre-approved runs without waiting, if its policy allows it. */
  scheduledPreApproval: 'scheduled-pre-approval-v1',
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
  budget_exhausted: 'stopped: budget exhausted',
};

export async function jobWorkflow(request: JobRequest, carry?: AgentCarry): Promise<JobResult> {
  const info = workflowInfo();
  const matrix = matrixActivities(request.matrixTaskQueue ?? MATRIX_TASK_QUEUE);
  const statusEditor = statusLineActivities(request.matrixTaskQueue ?? MATRIX_TASK_QUEUE);
  // A job keeps the ids of its first run through continue-as-new: its tokens and its bundle name it.
  const job: JobRef = carry?.job ?? { workflowId: info.workflowId, runId: info.runId };
  const shortId = request.jobId ?? request.eventId;
  const entries: BundleEntryInput[] = carry?.entries ?? [
    { type: 'job', body: { workflow_id: job.workflowId, run_id: job.runId } },
    {
      type: 'request',
      body: {
        room_id: request.roomId,
        sender: request.requester,
        event_id: request.eventId,
        text: request.text,
        ...(request.content ? { content: request.content } : {}),
        ...(request.originServerTs !== undefined ? { origin_server_ts: request.originServerTs } : {}),
        // A scheduled job's event is the bot's root message: the bundle says which schedule asked.
        ...(request.scheduled
          ? {
              scheduled: {
                schedule: request.scheduled.schedule,
                run_workflow_id: request.scheduled.runWorkflowId,
              },
            }
          : {}),
      },
    },
  ];
  const view: JobStatusView = carry?.view ?? {
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
  // Answers to approval cards: each decided once, against the card it names (src/workflows/job.ts
  // holdOnCard posts them); one for a card this job does not have is refused and kept.
  const callAttempts: CallDecisionAttempt[] = [];
  setHandler(callDecisionSignal, (attempt) => {
    callAttempts.push(attempt);
  });
  const cards = new Map<string, Card>();
  /** Card messages being posted: an answer to one can come before the job hears it is posted. */
  let cardPosts = 0;
  const grants: Grant[] = carry?.loop.grants ?? [];
  const seenCallEvents = new Set<string>(carry?.seenCallEvents ?? []);
  let callsDone = 0;
  const work = new CancellationScope();
  let cancelledBy: string | null = null;
  let pinned: PinnedPolicy | null = carry?.policy ?? null;
  const seenCancels = new Set<string>(carry?.seenCancels ?? []);
  let cancelsDone = 0;
  let finished = false;
  const callLoop = async (): Promise<void> => {
    for (;;) {
      await condition(() => finished || callAttempts.length > callsDone);
      if (finished) return;
      const attempt = callAttempts[callsDone++] as CallDecisionAttempt;
      if (seenCallEvents.has(attempt.eventId)) continue; // a redelivered event: decided once
      seenCallEvents.add(attempt.eventId);
      await decideCall(attempt);
    }
  };
  /** One answer to a card: the same checks as a plan's approval, against that card. */
  const decideCall = async (attempt: CallDecisionAttempt): Promise<void> => {
    // The gateway posted the card and was lost before it said so; the person answered the card
    // while the post was tried again. The answer is decided once the card is known, not refused.
    if (patched(PATCHES.answerAwaitsCard)) await condition(() => cardPosts === 0 || finished);
    const card =
      attempt.cardId !== undefined
        ? cards.get(attempt.cardId)
        : [...cards.values()].find((c) => c.eventId === attempt.cardEventId);
    const named = attempt.cardId ?? card?.cardId ?? null;
    let refusal: { code: string; reason: string } | null = null;
    if (!card) {
      refusal = {
        code: 'CALL_CARD_UNKNOWN',
        reason: attempt.cardId
          ? `this job has no card ${attempt.cardId}`
          : 'that message is not a card of this job',
      };
    } else if (card.state !== 'waiting') {
      refusal = { code: 'CALL_CARD_DECIDED', reason: `card ${card.cardId} is ${card.state} already` };
    } else if (!pinned) {
      refusal = { code: 'CALL_CARD_UNKNOWN', reason: 'the job has no policy yet' };
    } else {
      const control = await acts.readControlState();
      const verdict = decideApproval(
        {
          eventId: attempt.eventId,
          sender: attempt.sender,
          roomId: attempt.roomId,
          decision: attempt.decision,
          originServerTs: attempt.originServerTs,
          ...(attempt.reason !== undefined ? { reason: attempt.reason } : {}),
          ...(attempt.senderDeviceVerified !== undefined
            ? { senderDeviceVerified: attempt.senderDeviceVerified }
            : {}),
          ...(attempt.displayMismatch !== undefined ? { displayMismatch: attempt.displayMismatch } : {}),
        },
        {
          approvers: pinned.rules.approvers,
          requesterMayApprove: pinned.rules.requesterMayApprove,
          approvalsRequired: 1,
          requireVerifiedDevice: pinned.rules.requireVerifiedDevice,
        },
        {
          workflowId: job.workflowId,
          jobId: request.jobId,
          roomId: request.roomId,
          requester: request.requester,
          planHash: '',
          planPostedAt: card.postedAt,
          seenEventIds: new Set(),
          acceptedApprovers: new Set(),
          approvalsFrozen: control.approvalsFrozen,
        },
      );
      if (!verdict.accepted) refusal = { code: verdict.code, reason: verdict.reason };
      else {
        card.state = attempt.decision === 'approve' ? 'approved' : 'denied';
        card.decision = {
          sender: attempt.sender,
          eventId: attempt.eventId,
          scope: attempt.scope ?? 'call',
          reason: attempt.reason ?? '',
        };
      }
    }
    const reason =
      refusal?.reason ??
      (attempt.decision === 'approve'
        ? `approved by ${attempt.sender}${attempt.scope === 'job' ? ' for this job' : ''}`
        : `denied by ${attempt.sender}${attempt.reason ? `: ${attempt.reason}` : ''}`);
    entries.push({
      type: 'call_decision',
      body: {
        card_id: named,
        event_id: attempt.eventId,
        sender: attempt.sender,
        via: attempt.via,
        decision: attempt.decision,
        scope: attempt.scope ?? 'call',
        accepted: refusal === null,
        code: refusal?.code ?? null,
        reason,
        origin_server_ts: attempt.originServerTs,
        ...(attempt.content ? { content: attempt.content } : {}),
      },
    });
    (view.callDecisions ??= []).push({
      eventId: attempt.eventId,
      sender: attempt.sender,
      cardId: named,
      accepted: refusal === null,
      reason,
    });
    if (attempt.roomId !== request.roomId) return; // answered in its own room, by the gateway
    if (attempt.via === 'command') {
      await matrix.react({
        roomId: request.roomId,
        eventId: attempt.eventId,
        key: refusal ? '❌' : '✅',
        txnKey: `${job.workflowId}/react/${attempt.eventId}`,
        verdict: { subject: 'call', accepted: refusal === null, code: refusal?.code ?? null },
      });
    }
    if (refusal)
      await say(`call-refusal/${attempt.eventId}`, `${attempt.sender}: not counted. ${refusal.reason}.`);
  };
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
        !view.planHash
          ? ''
          : view.mode === 'agent'
            ? `plan ${view.planHash.slice(0, 12)} · turns ${view.used?.model_turns ?? 0} · tool calls ${view.used?.tool_calls ?? 0}`
            : `plan ${view.planHash.slice(0, 12)} · steps ${view.stepsDone}/${view.stepsTotal}`,
        view.policyHash ? `policy ${view.policyHash.slice(0, 12)}` : '',
        view.bundleDigest ? `bundle ${view.bundleDigest}` : '',
      ]
        .filter(Boolean)
        .join('\n'),
    );
  };
  const say = (key: string, body: string, html?: string, fields?: Record<string, unknown>) =>
    matrix.postToThread({
      roomId: request.roomId,
      threadRoot: request.eventId,
      body,
      ...(html === undefined ? {} : { html }),
      ...(fields === undefined ? {} : { fields }),
      txnKey: `${job.workflowId}/${job.runId}/${key}`,
    });
  // The status line under the plan, edited in place; edits go out one after another, off the
  // job's own path, and a failed edit is not worth failing the job for.
  let planMessage: { eventId: string; body: string; html?: string } | null = carry?.planMessage ?? null;
  let statusEdits: Promise<void> = Promise.resolve();
  let editCount = carry?.editCount ?? 0;
  // Whether this job made its own workspace (removed when it is sealed).
  let workspaceMade = carry?.loop.workspace ?? false;
  /**
   * `last`: the edit made once the job has ended, which says how it ended; it gets the retries
   * of a message (a homeserver away for a while), not the few quick tries of one on the way.
   */
  const editStatusLine = (status: JobStatus, last = false): void => {
    const line = STATUS_LINES[status];
    if (!planMessage || !line) return;
    const extra =
      status !== 'executing'
        ? ''
        : view.mode === 'agent'
          ? ` (turn ${(view.used?.model_turns ?? 0) + 1} of at most ${view.plan?.budget.model_turns ?? '?'})${view.waitingCard ? `; waiting for approval of card ${view.waitingCard}` : ''}`
          : ` (step ${view.stepsDone + 1} of ${view.stepsTotal})`;
    const tainted = view.taint
      ? ` · context holds tool output since ${view.taint.phase} turn ${view.taint.turn + 1} (${view.taint.tool})`
      : '';
    const body = `${planMessage.body}\nStatus: ${line}${extra}${tainted}`;
    const html =
      planMessage.html === undefined
        ? undefined
        : `${planMessage.html}<p>Status: ${line}${extra}${tainted}</p>`;
    const eventId = planMessage.eventId;
    const key = `${job.workflowId}/${job.runId}/status/${++editCount}`;
    statusEdits = statusEdits
      .then(() =>
        (last ? matrix : statusEditor).editMessage({
          roomId: request.roomId,
          eventId,
          body,
          ...(html === undefined ? {} : { html }),
          txnKey: key,
        }),
      )
      .then(
        () => {},
        () => {},
      );
  };
  const seal = async (status: JobStatus, reason: string): Promise<JobResult> => {
    finished = true;
    setStatus('sealing');
    if (workspaceMade) {
      // The job's working tree goes with the job; what it produced is in the evidence store.
      await acts.removeWorkspace({ job });
      workspaceMade = false;
    }
    entries.push({ type: 'outcome', body: { status, reason } });
    const { digest, pageUrl } = await acts.sealJobBundle({ job, entries });
    view.bundleDigest = digest;
    setStatus(status);
    editStatusLine(status, true);
    await statusEdits;
    await say(
      'result',
      `Job ${shortId}: ${status}. ${reason}\npolicy ${view.policyHash?.slice(0, 12) ?? '-'} · bundle ${digest}` +
        (pageUrl ? `\nevidence: ${pageUrl}` : ''),
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
  void CancellationScope.nonCancellable(callLoop).catch(() => {});
  try {
    return await work.run(() => (carry ? agentExecute(carry.loop) : runJob()));
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

    // The job's own workspace, fresh from the source (jobs recorded before it had one shared one).
    const ownWorkspace = patched(PATCHES.agentLoop);
    if (ownWorkspace) {
      const made = await acts.prepareWorkspace({ job });
      workspaceMade = true;
      entries.push({ type: 'workspace', body: { commit: made.commit } });
    }
    const agentMode = ownWorkspace && policy.rules.mode === 'agent' && policy.rules.agent !== undefined;

    // 2. Plan, with a planning-only token; 3. post it in the request's thread.
    let plan: Plan | null = null;
    let planHash: string;
    let posted: { eventId: string; originServerTs: number };
    let agentPlanning: Awaited<ReturnType<typeof draftAgentPlan>> | null = null;
    if (agentMode) {
      const drafted = await draftAgentPlan(policy);
      if ('status' in drafted) return drafted;
      agentPlanning = drafted;
      planHash = drafted.planHash;
      const shown = renderAgentPlan({
        jobId: shortId,
        plan: drafted.plan,
        planHash,
        policyHash: policy.hash,
        dropped: drafted.dropped,
        approvers: policy.rules.approvers,
        approvalsRequired: policy.rules.approvalsRequired,
        expirySeconds: policy.rules.approvalExpirySeconds,
      });
      const waiting = `Status: ${STATUS_LINES.awaiting_approval}`;
      posted = await say('plan', `${shown.body}\n${waiting}`, `${shown.html}<p>${waiting}</p>`);
      planMessage = { eventId: posted.eventId, body: shown.body, html: shown.html };
    } else {
      const draft = await acts.draftPlan({ job, roomId: request.roomId, text: request.text, policy });
      entries.push({ type: 'token', body: { purpose: 'planning', jwt: draft.planningToken } });
      for (const jws of draft.receipts) entries.push({ type: 'model_receipt', body: { jws } });
      if (!draft.ok) return await seal('failed', `no usable plan: ${draft.reason}`);
      plan = draft.plan;
      planHash = draft.planHash;
      view.planHash = planHash;
      view.stepsTotal = plan.steps.length;
      entries.push({ type: 'plan', body: plan });
      const planText = renderPlan(shortId, plan, planHash, policy, policy.rules.approvalExpirySeconds);
      const statusLine = patched(PATCHES.statusLine);
      posted = await say(
        'plan',
        statusLine ? `${planText}\nStatus: ${STATUS_LINES.awaiting_approval}` : planText,
      );
      if (statusLine) planMessage = { eventId: posted.eventId, body: planText };
    }

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
    // The homeserver's time of the deciding approval (for the worker's plan-to-approval metric).
    let approvedAt = 0;
    let processed = 0;
    // The control state read for the deciding attempt, and its reaction still being posted.
    let decidedUnder: ControlState | undefined;
    let pendingReaction: Promise<unknown> | undefined;
    const pre = request.scheduled?.preApproval;
    if (pre && patched(PATCHES.scheduledPreApproval)) {
      // Checked again here, against the policy pinned for this run: a policy activated since the
      // schedule was made may no longer allow it, and then the run does not run.
      const refusal = preApprovalRefusal(
        {
          approvers: policy.rules.approvers,
          requesterMayApprove: policy.rules.requesterMayApprove,
          ...(policy.rules.preApproval ? { preApproval: policy.rules.preApproval } : {}),
        },
        pre.approver,
        request.requester,
      );
      if (refusal) {
        deadline.cancel();
        return await seal(
          'refused',
          `the schedule's pre-approval by ${pre.approver} does not hold under policy ${policy.hash}: ${refusal}`,
        );
      }
      const control = await acts.readControlState();
      if (control.approvalsFrozen) {
        // A frozen clawgate counts no approval, a pre-approval neither: the plan waits in the room.
        await say(
          'pre-approval-frozen',
          `Job ${shortId}: approvals are frozen, so the schedule's pre-approval does not count; the plan waits for an approval here.`,
        );
      } else {
        entries.push({
          type: 'pre_approval',
          body: {
            schedule: request.scheduled?.schedule ?? null,
            run_workflow_id: request.scheduled?.runWorkflowId ?? null,
            approver: pre.approver,
            event_id: request.eventId,
            pre_approved_at: pre.at,
            created_under_policy_hash: pre.policyHash,
            policy_hash: policy.hash,
            plan_hash: planHash,
          },
        });
        accepted.add(pre.approver);
        // A token names the events its approval was given in; a pre-approval takes effect in
        // this run's root message, so that is the event (the pre_approval entry names it too).
        approvalEvents.push(request.eventId);
        decision = 'approved';
        approvedAt = posted.originServerTs;
        decidedUnder = control;
        await say(
          'pre-approved',
          `Job ${shortId}: pre-approved by ${pre.approver} when schedule ${request.scheduled?.schedule ?? '?'} ` +
            `was created (${pre.at}); policy ${policy.hash.slice(0, 12)} allows it, so it runs without waiting.`,
        );
      }
    }
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
            verdict: { subject: 'plan', accepted: false, code: verdict.code },
          });
          await say(`refusal/${attempt.eventId}`, `${attempt.sender}: not counted. ${reason}`);
          continue;
        }
        const reaction = matrix.react({
          roomId: request.roomId,
          eventId: attempt.eventId,
          key: '✅',
          txnKey: `${job.workflowId}/react/${attempt.eventId}`,
          verdict: { subject: 'plan', accepted: true, code: null },
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
          if (accepted.size >= policy.rules.approvalsRequired) {
            decision = 'approved';
            approvedAt = attempt.originServerTs;
          }
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

    if (agentPlanning) {
      // 5. Mint the execution token: this job, this plan, its tools and model, the job's budget.
      const budget = agentPlanning.plan.budget;
      const minted = await acts.mintExecutionToken({
        job,
        roomId: request.roomId,
        policy,
        planHash,
        tools: agentPlanning.plan.tools,
        approvers: [...accepted],
        eventIds: approvalEvents,
        models: [agentPlanning.model],
        modelCalls: agentPlanning.receipts + budget.model_turns,
        approvalTimes: { planPostedAt: posted.originServerTs, approvedAt },
      });
      entries.push({ type: 'token', body: { purpose: 'execution', jwt: minted.token } });
      if (pendingReaction) await pendingReaction;
      return await agentExecute({
        plan: agentPlanning.plan,
        planHash,
        model: agentPlanning.model,
        token: minted.token,
        tokenExp: minted.exp,
        approvers: [...accepted],
        approvalEvents,
        prelude: [
          { role: 'system', content: agentPrompt(agentPlanning.plan) },
          { role: 'user', content: request.text },
        ],
        refs: [],
        turn: 0,
        toolCalls: 0,
        tokensUsed: agentPlanning.tokensUsed,
        receipts: agentPlanning.receipts,
        lastReceiptId: agentPlanning.lastReceiptId,
        startedAt: minted.iat * 1000,
        now: minted.iat * 1000,
        workspace: workspaceMade,
      });
    }
    if (!plan) throw new Error('unreachable: a fixed-step job without a plan');

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
      approvalTimes: { planPostedAt: posted.originServerTs, approvedAt },
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
    // Steps' outputs (in the evidence store, by step number) for later steps that take them as data.
    const outputs: Record<string, string> = {};
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
          ...(outputsUsed(step.args).length > 0 ? { outputs } : {}),
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
      const produced = result.record['output_sha256'];
      if (typeof produced === 'string') outputs[String(index + 1)] = produced;
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

  /** Receipts, the turn's entry and its token use, kept as evidence. */
  function recordTurn(
    state: { receipts: number; lastReceiptId: string | null; tokensUsed: number },
    result: ModelTurnResult,
  ): void {
    for (const r of result.receipts) {
      entries.push({ type: 'model_receipt', body: { jws: r.jws } });
      state.receipts += 1;
      state.lastReceiptId = r.id;
    }
    entries.push({ type: 'model_turn', body: result.entry });
    state.tokensUsed += result.usage?.total_tokens ?? 0;
  }

  /** Runs the tool calls a turn asked for; each result joins the conversation. */
  async function runCalls(
    phase: 'planning' | 'execution',
    turn: number,
    result: ModelTurnResult,
    refs: string[],
    token: string,
    offered: string[],
    policy: PinnedPolicy,
  ): Promise<void> {
    const calls = toolCallActivities(policy.rules.stepWallSeconds ?? 60);
    refs.push(result.assistantRef as string);
    let gated = 0;
    for (const call of result.toolCalls) {
      // A call with side effects once untrusted text is in the context (or one the policy always
      // gates) runs only with a call token from a person's approval of exactly this call.
      let approval: {
        callToken?: string;
        allowedBy?: { cardId: string };
        denied?: { code: string; reason: string };
      } = {};
      const needs =
        phase === 'execution' &&
        (call.gate === 'always' ||
          (call.gate === 'when_tainted' && view.taint !== undefined && view.taint !== null));
      if (needs) {
        const grant = grants.find((g) => g.tool === call.name && g.shapeSha256 === call.shapeSha256);
        const card = grant
          ? undefined
          : await holdOnCard(turn, ++gated, call, result.said ?? null, result.assistantRef as string);
        const by = grant ?? (card?.state === 'approved' ? card : undefined);
        if (by) {
          const decision = grant
            ? { sender: grant.approver, eventId: grant.eventId, scope: 'job' as const }
            : (card?.decision as NonNullable<Card['decision']>);
          const cardId = grant ? grant.cardId : (card as Card).cardId;
          const minted = await acts.mintCallToken({
            job,
            roomId: request.roomId,
            policy,
            planHash: view.planHash ?? '',
            tool: call.name,
            card: { cardId, callId: call.id, argsSha256: call.argsSha256 },
            approver: decision.sender,
            decisionEventId: decision.eventId,
          });
          entries.push({ type: 'token', body: { purpose: 'call', jwt: minted.token } });
          approval = { callToken: minted.token, ...(grant ? { allowedBy: { cardId } } : {}) };
          if (!grant && decision.scope === 'job' && call.shapeSha256) {
            grants.push({
              tool: call.name,
              shapeSha256: call.shapeSha256,
              cardId,
              approver: decision.sender,
              eventId: decision.eventId,
            });
          }
        } else {
          const c = card as Card;
          approval = {
            denied:
              c.state === 'expired'
                ? {
                    code: 'CALL_APPROVAL_EXPIRED',
                    reason: `card ${c.cardId} expired: no approver answered within ${policy.rules.agent?.call_approval_seconds ?? 3600} s; the call did not run`,
                  }
                : {
                    code: 'CALL_DENIED',
                    reason: `denied by ${c.decision?.sender ?? '?'}${c.decision?.reason ? `: ${c.decision.reason}` : ''}`,
                  },
          };
        }
      }
      const done = await calls.runToolCall({
        job,
        phase,
        turn,
        call,
        assistantRef: result.assistantRef as string,
        token,
        policyHash: policy.hash,
        channel: request.channel,
        offered,
        resultBytes: policy.rules.agent?.tool_result_bytes ?? 16 * 1024,
        tainted: view.taint !== undefined && view.taint !== null,
        ...approval,
      });
      entries.push({ type: 'tool_record', body: done.record });
      refs.push(done.messageRef);
      (view.turns ??= []).push({ phase, turn, tool: call.name, args: call.argsShort, outcome: done.outcome });
      // The first output of a tool that ran is the first text in the job's context that is not
      // the requester's own words (a plan drafted after it is tainted too): recorded once.
      if (!view.taint && done.record['denial'] === null) {
        view.taint = { phase, turn, tool: call.name, callId: call.id };
        entries.push({
          type: 'taint',
          body: { phase, turn, tool: call.name, call_id: call.id, source: `output of tool ${call.name}` },
        });
      }
    }
  }

  /** Posts a gated call's approval card in the thread and waits for its decision, or its expiry. */
  async function holdOnCard(
    turn: number,
    n: number,
    call: ToolCallRef,
    said: string | null,
    assistantRef: string,
  ): Promise<Card> {
    const policy = pinned as PinnedPolicy;
    const cardId = `c${turn + 1}.${n}`;
    const seconds = policy.rules.agent?.call_approval_seconds ?? 3600;
    const { preview } = await acts.previewCall({
      job,
      call,
      assistantRef: assistantRef,
      policyHash: policy.hash,
    });
    const shown = renderCard({
      jobId: shortId,
      cardId,
      call: { ...call, argsPreview: preview },
      said,
      taint: view.taint ?? null,
      expirySeconds: seconds,
    });
    cardPosts += 1;
    let posted: Awaited<ReturnType<typeof say>>;
    try {
      posted = await say(`card/${cardId}`, shown.body, shown.html, {
        [CALL_CARD_FIELD]: { card_id: cardId, workflow_id: job.workflowId },
      });
    } finally {
      cardPosts -= 1;
    }
    const card: Card = {
      cardId,
      call,
      eventId: posted.eventId,
      postedAt: posted.originServerTs,
      state: 'waiting',
    };
    cards.set(cardId, card);
    entries.push({
      type: 'call_card',
      body: {
        card_id: cardId,
        phase: 'execution',
        turn,
        call_id: call.id,
        tool: call.name,
        args_sha256: call.argsSha256,
        preview,
        shape_sha256: call.shapeSha256 ?? null,
        effect: call.effect ?? 'write',
        gate: call.gate ?? 'when_tainted',
        taint: view.taint
          ? { phase: view.taint.phase, turn: view.taint.turn, call_id: view.taint.callId }
          : null,
        event_id: posted.eventId,
        expires_at: posted.originServerTs + seconds * 1000,
      },
    });
    const listed = { cardId, tool: call.name, argsSha256: call.argsSha256, state: card.state };
    (view.cards ??= []).push(listed);
    view.waitingCard = cardId;
    editStatusLine('executing');
    const answered = await condition(() => card.state !== 'waiting', seconds * 1000);
    if (!answered) card.state = 'expired';
    listed.state = card.state;
    view.waitingCard = null;
    entries.push({
      type: 'card_outcome',
      body: {
        card_id: cardId,
        state: card.state,
        by: card.decision?.sender ?? null,
        reason:
          card.state === 'expired'
            ? `no approver answered within ${seconds} s`
            : (card.decision?.reason ?? ''),
      },
    });
    return card;
  }

  /**
   * Agent mode, planning: the model may look with the read-only tools (under the planning
   * token, inside the job's workspace, receipted and recorded), then answers with its plan.
   */
  async function draftAgentPlan(policy: PinnedPolicy) {
    const limits = policy.rules.agent as NonNullable<PinnedPolicy['rules']['agent']>;
    const allowed = (t: string): boolean =>
      policy.rules.allowedTools.includes(t) && !policy.rules.deniedTools.includes(t);
    const look = PLANNING_TOOLS.filter(allowed);
    // Every tool the policy allows may be in the plan: calls with side effects wait for a person's
    // approval of the exact call once the context holds untrusted text (or always, as the policy says).
    const offer = policy.rules.allowedTools.filter(allowed);
    view.mode = 'agent';
    view.turns = [];
    const { token, model } = await acts.mintPlanningToken({
      job,
      roomId: request.roomId,
      policy,
      tools: look,
      modelCalls: limits.planning_turns,
    });
    entries.push({ type: 'token', body: { purpose: 'planning', jwt: token } });
    const prelude: AgentLoopState['prelude'] = [
      { role: 'system', content: plannerPrompt(offer) },
      { role: 'user', content: request.text },
    ];
    const refs: string[] = [];
    const state = { receipts: 0, lastReceiptId: null as string | null, tokensUsed: 0 };
    for (let turn = 0; turn < limits.planning_turns; turn++) {
      const result = await turnActivities.modelTurn({
        job,
        phase: 'planning',
        turn,
        token,
        model,
        prelude,
        refs,
        tools: turn + 1 < limits.planning_turns ? look : [],
        lastReceiptId: state.lastReceiptId,
        policyHash: policy.hash,
      });
      recordTurn(state, result);
      if (!result.ok) {
        const error = result.error ?? { code: '?', message: '' };
        return await seal(
          'failed',
          `no usable plan: the model proxy answered ${result.httpStatus} (${error.code}: ${error.message})`,
        );
      }
      if (result.toolCalls.length > 0) {
        await runCalls('planning', turn, result, refs, token, look, policy);
        continue;
      }
      const budget = {
        model_turns: limits.model_turns,
        tool_calls: limits.tool_calls,
        model_tokens: limits.model_tokens,
        wall_seconds: limits.wall_seconds,
      };
      const reading = readAgentPlan(result.answer?.text ?? '', offer, budget);
      if (!reading.ok) return await seal('failed', `no usable plan: ${reading.reason}`);
      entries.push({ type: 'plan', body: reading.plan });
      const planHash = await acts.hashPlan({ plan: reading.plan });
      view.planHash = planHash;
      view.plan = reading.plan;
      return { plan: reading.plan, planHash, dropped: reading.dropped, model, ...state };
    }
    return await seal('failed', `no plan within the policy's ${limits.planning_turns} planning turns`);
  }

  /** Agent mode, after approval: the loop of model turns and tool calls, until an answer or a limit. */
  async function agentExecute(state: AgentLoopState): Promise<JobResult> {
    const policy = pinned as PinnedPolicy;
    const { plan } = state;
    const budget = plan.budget;
    view.mode = 'agent';
    const used = () => ({
      model_turns: state.turn,
      tool_calls: state.toolCalls,
      model_tokens: state.tokensUsed,
      wall_seconds: Math.floor((state.now - state.startedAt) / 1000),
    });
    const stop = async (status: JobStatus, why: string, exhausted: string | null): Promise<JobResult> => {
      await acts.revokeJobTokens({ workflowId: job.workflowId, reason: 'job finished' });
      entries.push({ type: 'budget', body: { limits: budget, used: used(), exhausted } });
      return await seal(status, why);
    };
    setStatus('executing');
    for (;;) {
      view.used = used();
      if (state.turn >= budget.model_turns) {
        return await stop(
          'budget_exhausted',
          `stopped after ${state.turn} model turns, the plan's budget`,
          'model_turns',
        );
      }
      if (state.tokensUsed >= budget.model_tokens) {
        return await stop(
          'budget_exhausted',
          `stopped after ${state.tokensUsed} model tokens (budget ${budget.model_tokens})`,
          'model_tokens',
        );
      }
      if (state.now - state.startedAt >= budget.wall_seconds * 1000) {
        return await stop(
          'budget_exhausted',
          `stopped after ${budget.wall_seconds} s, the plan's time budget`,
          'wall_seconds',
        );
      }
      const info = workflowInfo();
      if (info.continueAsNewSuggested || info.historyLength >= AGENT_CONTINUE_AS_NEW_EVENTS) {
        // Cancels already signalled are decided here, not carried half-done.
        await condition(() => cancels.length === cancelsDone);
        await statusEdits;
        await continueAsNew<typeof jobWorkflow>(request, {
          job,
          entries,
          view,
          policy,
          seenCancels: [...seenCancels],
          seenCallEvents: [...seenCallEvents],
          planMessage,
          editCount,
          loop: { ...state, grants },
        });
      }
      // A fresh token before this one runs out (the approval it carries is the same).
      const margin = Math.min(60, Math.floor(policy.rules.tokenTtlSeconds / 3));
      if (state.now / 1000 >= state.tokenExp - margin) {
        const minted = await acts.mintExecutionToken({
          job,
          roomId: request.roomId,
          policy,
          planHash: state.planHash,
          tools: plan.tools,
          approvers: state.approvers,
          eventIds: state.approvalEvents,
          models: [state.model],
          modelCalls: state.receipts + budget.model_turns - state.turn,
        });
        entries.push({ type: 'token', body: { purpose: 'execution', jwt: minted.token } });
        state.token = minted.token;
        state.tokenExp = minted.exp;
      }
      editStatusLine('executing');
      const turn = state.turn;
      const result = await turnActivities.modelTurn({
        job,
        phase: 'execution',
        turn,
        token: state.token,
        model: state.model,
        prelude: state.prelude,
        refs: state.refs,
        tools: plan.tools,
        lastReceiptId: state.lastReceiptId,
        policyHash: policy.hash,
      });
      recordTurn(state, result);
      state.now = Math.max(state.now, result.at);
      state.turn += 1;
      if (!result.ok) {
        const error = result.error ?? { code: '?', message: '' };
        if (error.code === 'MODEL_BUDGET_EXHAUSTED') {
          return await stop(
            'budget_exhausted',
            `the model proxy refused turn ${turn + 1}: ${error.message}`,
            'model_calls',
          );
        }
        return await stop(
          'failed',
          `turn ${turn + 1}: the model proxy answered ${result.httpStatus} (${error.code}: ${error.message})`,
          null,
        );
      }
      if (result.toolCalls.length === 0) {
        const answer = result.answer ?? { text: '', sha256: '', bytes: 0, truncated: false };
        view.answer = answer.text.slice(0, 4000);
        (view.turns ??= []).push({
          phase: 'execution',
          turn,
          tool: null,
          args: '',
          outcome: `answer, ${answer.bytes} bytes`,
        });
        entries.push({ type: 'answer', body: { turn, sha256: answer.sha256, bytes: answer.bytes } });
        const shown = renderAnswer({ jobId: shortId, ...answer });
        await say('answer', shown.body, shown.html);
        view.used = used();
        return await stop(
          'succeeded',
          `answered after ${state.turn} model turn(s) and ${state.toolCalls} tool call(s).`,
          null,
        );
      }
      if (state.toolCalls + result.toolCalls.length > budget.tool_calls) {
        return await stop(
          'budget_exhausted',
          `turn ${turn + 1} asked for ${result.toolCalls.length} tool call(s) with ${budget.tool_calls - state.toolCalls} left of the plan's ${budget.tool_calls}; none of them ran`,
          'tool_calls',
        );
      }
      await runCalls('execution', turn, result, state.refs, state.token, plan.tools, policy);
      state.toolCalls += result.toolCalls.length;
    }
  }
}
