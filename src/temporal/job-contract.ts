// What the job workflow and its callers share: the task queues, the workflow id of a job, the
// approval signal and the status query. Imported by workflow code, so it holds only
// deterministic definitions.
import { defineQuery, defineSignal } from '@temporalio/workflow';
import type { AgentPlan } from './job-types.ts';

/** The worker's queue: job workflows and the planning, token, tool and sealing activities. */
export const JOB_TASK_QUEUE = 'clawgate-jobs';
/** The gateway's queue: Matrix I/O activities, hosted by the process that holds the Matrix device. */
export const MATRIX_TASK_QUEUE = 'clawgate-matrix';

/**
 * The workflow id jobs were started under before the short form (`clawgate-<job id>`, made in
 * src/ingress/job-ids.ts, which needs a hash and so cannot live in workflow code). It is still
 * what the job id is a hash of, and jobs started under it must still be found. Matrix event ids
 * are unique per room version only, hence the room in the id.
 */
export function legacyJobWorkflowId(roomId: string, eventId: string): string {
  return `job:${roomId}:${eventId}`;
}

/** What the Temporal Web UI shows for a job from its start: a one-line summary and details. */
export function jobStaticSummary(request: JobRequest): { staticSummary: string; staticDetails: string } {
  const text = request.text.length > 120 ? `${request.text.slice(0, 117)}...` : request.text;
  return {
    staticSummary: `clawgate job: ${text}`,
    staticDetails: `Requested by ${request.requester} in ${request.roomId} (event ${request.eventId}), policy channel ${request.channel}.`,
  };
}

/** A request from a room: the start input of a job. */
export interface JobRequest {
  roomId: string;
  /** Matrix user id of the requester (never a display name). */
  requester: string;
  /** Event id of the request message; the job's thread is rooted at it. */
  eventId: string;
  text: string;
  /** Policy channel to resolve the active WPC in. */
  channel: string;
  /** Task queue of the gateway account that holds this room (default MATRIX_TASK_QUEUE). */
  matrixTaskQueue?: string;
  /** The short job id people type (`!approve j4k2...`); see shortJobId. Absent in older jobs. */
  jobId?: string;
  /** What the request's event said. Absent in older jobs. */
  content?: MessageContentEvidence;
  /** Server timestamp of the request's event, ms since the epoch. Absent in older jobs. */
  originServerTs?: number;
  /** Set when a schedule started the job: the request's event is then the bot's own root message. */
  scheduled?: ScheduledOrigin;
}

/** A schedule's plan approval given in advance, when the schedule was created. */
export interface PreApproval {
  /** Matrix user id of the approver who pre-approved. */
  approver: string;
  /** When the schedule was created with it (ISO 8601). */
  at: string;
  /** The hash of the policy that allowed it at creation. */
  policyHash: string;
}

/** Which schedule started a job, and its pre-approval if it has one. */
export interface ScheduledOrigin {
  schedule: string;
  /** The workflow id of the scheduled run (Temporal's, unique per run). */
  runWorkflowId: string;
  preApproval?: PreApproval;
}

/**
 * What a schedule's action starts (scheduledJobWorkflow): a job's request without a Matrix
 * event, since no one wrote one; the run posts the root message itself.
 */
export interface ScheduledJobInput {
  schedule: string;
  roomId: string;
  /** The schedule's creator, checked against the room's policy as a requester. */
  requester: string;
  text: string;
  channel: string;
  matrixTaskQueue?: string;
  preApproval?: PreApproval;
}

/** The content field of a scheduled job's root message: the schedule and the run's workflow id. */
export const SCHEDULED_ROOT_FIELD = 'org.clawgate.scheduled_job';

/** The body of a scheduled job's root message. */
export function scheduledRootText(schedule: string, text: string): string {
  return `Scheduled job ${schedule}: ${text}`;
}

/** What a pre-approval is checked against: the policy's approvers and its schedules rule. */
export interface PreApprovalRules {
  approvers: string[];
  requesterMayApprove: boolean;
  /** The policy's schedules.pre_approval; absent when the policy has no schedules rule. */
  preApproval?: { allowed: boolean; approvers: string[] };
}

/**
 * Why a schedule's plans may not be pre-approved by `approver` for `requester` under a policy,
 * or null when they may. Checked when the schedule is created and again in each run, against
 * the policy pinned for that run.
 */
export function preApprovalRefusal(
  rules: PreApprovalRules,
  approver: string,
  requester: string,
): string | null {
  if (!rules.preApproval?.allowed) {
    return 'the policy does not allow pre-approved schedules (schedules.pre_approval.allowed is not true)';
  }
  if (!rules.preApproval.approvers.includes(approver)) {
    return `${approver} is not in the policy's schedules.pre_approval.approvers`;
  }
  if (!rules.approvers.includes(approver)) {
    return `${approver} is not in the policy's matrix.approval.approver_user_ids_allowlist`;
  }
  if (approver === requester && !rules.requesterMayApprove) {
    return `${approver} is the schedule's requester, and the policy does not let requesters approve`;
  }
  return null;
}

/** The workflow id a schedule gives its runs (Temporal appends each run's scheduled time). */
export function scheduleWorkflowId(schedule: string): string {
  return `schedule:${schedule}`;
}

/** The evidence of what a command's Matrix event said, kept with what was decided on it. */
export interface MessageContentEvidence {
  /** SHA-256 of the event's (decrypted) content as RFC 8785 canonical JSON. */
  sha256: string;
  /** The text the room showed (the formatted body's text when there was one), cut to 2,000 characters. */
  shown: string;
}

/** A `!cancel` from the room; the workflow decides whether the sender may cancel. */
export interface CancelRequest {
  eventId: string;
  sender: string;
  roomId: string;
  originServerTs: number;
}

export const cancelSignal = defineSignal<[CancelRequest]>('cancel');

/** One approval or denial as the gateway saw it in the room. */
export interface ApprovalAttempt {
  /** Matrix event id of the command; attempts are deduplicated by it. */
  eventId: string;
  sender: string;
  roomId: string;
  decision: 'approve' | 'deny';
  /** The job id the command named, if it named one (`!approve <job>`). */
  jobId?: string;
  /** The plan hash the approver quoted, if any (`!approve <job> <plan hash prefix>`). */
  planHash?: string;
  reason?: string;
  /** When the room is encrypted: whether the sender's device is verified by cross-signing. */
  senderDeviceVerified?: boolean;
  /** Server timestamp of the event, ms since the epoch. */
  originServerTs: number;
  /** What the event said. Absent in attempts recorded before it was kept. */
  content?: MessageContentEvidence;
  /**
   * Why what the room showed is not this command (a formatted body that says otherwise, hidden
   * text): the workflow refuses such an attempt and keeps it as evidence.
   */
  displayMismatch?: string;
}

export const approvalSignal = defineSignal<[ApprovalAttempt]>('approval');

/**
 * The id of an approval card, as people type it: `c<turn>.<n>`, the n-th gated call the model
 * asked for in that execution turn (both from 1), e.g. `!approve c3.1`.
 */
export const CALL_CARD_ID = /^c[1-9][0-9]{0,3}\.[1-9][0-9]?$/;

/** The content field of a card message that names its card and job, for the gateway's routing of reactions. */
export const CALL_CARD_FIELD = 'org.clawgate.call_card';

/**
 * An answer to an approval card, as the gateway saw it in the job's thread: `!approve <card>`,
 * `!approve <card> job`, `!deny <card> <reason>`, or a ✅ / ❌ reaction on the card message.
 * The workflow decides (the same checks as a plan's approval, plus the card's own).
 */
export interface CallDecisionAttempt {
  eventId: string;
  sender: string;
  roomId: string;
  decision: 'approve' | 'deny';
  /** The card a command names (`c3.1`); absent for a reaction. */
  cardId?: string;
  /** The card message a reaction is on; absent for a command. */
  cardEventId?: string;
  /** `job`: later calls of the same tool and argument shape in this job need no card. */
  scope?: 'call' | 'job';
  reason?: string;
  via: 'command' | 'reaction';
  senderDeviceVerified?: boolean;
  originServerTs: number;
  content?: MessageContentEvidence;
  displayMismatch?: string;
}

export const callDecisionSignal = defineSignal<[CallDecisionAttempt]>('call-decision');

export const JOB_STATUSES = [
  'planning',
  'awaiting_approval',
  'frozen',
  'executing',
  'sealing',
  'succeeded',
  'failed',
  'denied',
  'timed_out',
  'cancelled',
  'refused',
  'budget_exhausted',
] as const;
export type JobStatus = (typeof JOB_STATUSES)[number];

export interface JobStatusView {
  status: JobStatus;
  planHash: string | null;
  policyHash: string | null;
  approvals: Array<{ eventId: string; sender: string; accepted: boolean; reason: string }>;
  stepsDone: number;
  stepsTotal: number;
  bundleDigest: string | null;
  /** Agent mode: the approved plan, each turn (a tool call or the answer), and the answer. */
  mode?: 'agent' | 'plan';
  plan?: AgentPlan | null;
  turns?: Array<{
    phase: 'planning' | 'execution';
    turn: number;
    tool: string | null;
    args: string;
    outcome: string;
  }>;
  answer?: string | null;
  /** Agent mode: the tool call whose output first entered the job's context (untrusted text), if any. */
  taint?: { phase: 'planning' | 'execution'; turn: number; tool: string; callId: string } | null;
  /** Agent mode: approval cards posted, and every answer to one as it arrived. */
  cards?: Array<{
    cardId: string;
    tool: string;
    argsSha256: string;
    state: 'waiting' | 'approved' | 'denied' | 'expired';
  }>;
  /** The card the job waits on now, if any. */
  waitingCard?: string | null;
  callDecisions?: Array<{
    eventId: string;
    sender: string;
    cardId: string | null;
    accepted: boolean;
    reason: string;
  }>;
  /** The budget used so far (agent mode). */
  used?: { model_turns: number; tool_calls: number; model_tokens: number; wall_seconds: number };
}

export const statusQuery = defineQuery<JobStatusView>('status');
