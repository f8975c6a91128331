// Deciding one approval attempt against the job's pinned policy. Deterministic: the workflow
// calls it for every attempt it receives, in the order the server recorded them, and keeps
// every decision, accepted or refused, as evidence.
import type { ApprovalAttempt } from '../temporal/job-contract.ts';

/** What the pinned WPC says about approvals, as the workflow needs it. */
export interface ApprovalRules {
  approvers: readonly string[];
  /** Whether the requester may approve their own job (default no). */
  requesterMayApprove: boolean;
  /** Distinct approvers needed (default 1). */
  approvalsRequired: number;
  /** In encrypted rooms: count only approvals from devices verified through cross-signing. */
  requireVerifiedDevice: boolean;
}

export interface ApprovalContext {
  workflowId: string;
  /** The short job id shown in the room (`j` and nine letters or digits), when the job has one. */
  jobId?: string;
  roomId: string;
  requester: string;
  planHash: string;
  /** Server time (ms) the plan was posted; an approval sent before it approved something else. */
  planPostedAt: number;
  /** Event ids already decided (accepted or refused). */
  seenEventIds: ReadonlySet<string>;
  /** Approvers already counted. */
  acceptedApprovers: ReadonlySet<string>;
  approvalsFrozen: boolean;
}

export const APPROVAL_REFUSALS = {
  duplicateEvent: 'APPROVAL_DUPLICATE_EVENT',
  displayMismatch: 'APPROVAL_DISPLAY_MISMATCH',
  wrongRoom: 'APPROVAL_WRONG_ROOM',
  wrongJob: 'APPROVAL_WRONG_JOB',
  notApprover: 'APPROVAL_NOT_APPROVER',
  selfApproval: 'APPROVAL_BY_REQUESTER',
  planMismatch: 'APPROVAL_PLAN_MISMATCH',
  beforePlan: 'APPROVAL_PREDATES_PLAN',
  frozen: 'APPROVAL_FROZEN',
  unverifiedDevice: 'APPROVAL_DEVICE_UNVERIFIED',
  alreadyCounted: 'APPROVAL_ALREADY_COUNTED',
} as const;
export type ApprovalRefusalCode = (typeof APPROVAL_REFUSALS)[keyof typeof APPROVAL_REFUSALS];

export type ApprovalDecision =
  | { accepted: true; effect: 'approval' | 'denial'; reason: string }
  | { accepted: false; code: ApprovalRefusalCode; reason: string };

/**
 * The job id a person types: the short id shown in the room, the request event id (the workflow
 * id's last part) or the whole workflow id.
 */
export function jobMatches(named: string, workflowId: string, jobId?: string): boolean {
  return named === jobId || named === workflowId || workflowId.endsWith(`:${named}`);
}

export function decideApproval(
  attempt: ApprovalAttempt,
  rules: ApprovalRules,
  ctx: ApprovalContext,
): ApprovalDecision {
  const refuse = (code: ApprovalRefusalCode, reason: string): ApprovalDecision => ({
    accepted: false,
    code,
    reason,
  });
  const verb = attempt.decision === 'approve' ? 'approval' : 'denial';
  if (ctx.seenEventIds.has(attempt.eventId)) {
    return refuse(APPROVAL_REFUSALS.duplicateEvent, `event ${attempt.eventId} was already counted`);
  }
  // A command counts only as the room shows it: an approver who reads "I do NOT approve" did not.
  if (attempt.displayMismatch !== undefined) {
    return refuse(APPROVAL_REFUSALS.displayMismatch, attempt.displayMismatch);
  }
  if (attempt.roomId !== ctx.roomId) {
    return refuse(
      APPROVAL_REFUSALS.wrongRoom,
      `this job belongs to room ${ctx.roomId}, not ${attempt.roomId}`,
    );
  }
  if (attempt.jobId !== undefined && !jobMatches(attempt.jobId, ctx.workflowId, ctx.jobId)) {
    return refuse(APPROVAL_REFUSALS.wrongJob, `the ${verb} names job ${attempt.jobId}, not this job`);
  }
  const isApprover = rules.approvers.includes(attempt.sender);
  if (attempt.decision === 'deny') {
    // The requester may withdraw their own request; otherwise only approvers may deny.
    if (!isApprover && attempt.sender !== ctx.requester) {
      return refuse(
        APPROVAL_REFUSALS.notApprover,
        `${attempt.sender} is not an approver of this room's jobs`,
      );
    }
    return { accepted: true, effect: 'denial', reason: attempt.reason ?? 'denied' };
  }
  if (!isApprover) {
    return refuse(APPROVAL_REFUSALS.notApprover, `${attempt.sender} is not on the approver allowlist`);
  }
  if (attempt.sender === ctx.requester && !rules.requesterMayApprove) {
    return refuse(APPROVAL_REFUSALS.selfApproval, 'the requester may not approve their own job');
  }
  if (ctx.approvalsFrozen) {
    return refuse(
      APPROVAL_REFUSALS.frozen,
      'approvals are frozen by an operator; try again when the freeze is lifted',
    );
  }
  if (attempt.planHash !== undefined && !ctx.planHash.startsWith(attempt.planHash.toLowerCase())) {
    return refuse(
      APPROVAL_REFUSALS.planMismatch,
      `the approval quotes plan ${attempt.planHash}, but the plan awaiting approval is ${ctx.planHash.slice(0, 12)}`,
    );
  }
  if (attempt.originServerTs < ctx.planPostedAt) {
    return refuse(APPROVAL_REFUSALS.beforePlan, 'the approval was sent before this plan was posted');
  }
  if (rules.requireVerifiedDevice && attempt.senderDeviceVerified !== true) {
    return refuse(
      APPROVAL_REFUSALS.unverifiedDevice,
      'approvals here count only from a device verified through cross-signing; verify this device and approve again',
    );
  }
  if (ctx.acceptedApprovers.has(attempt.sender)) {
    return refuse(
      APPROVAL_REFUSALS.alreadyCounted,
      `${attempt.sender} already approved; a second approver is needed`,
    );
  }
  const count = ctx.acceptedApprovers.size + 1;
  return {
    accepted: true,
    effect: 'approval',
    reason: `approval ${count} of ${rules.approvalsRequired} from ${attempt.sender}`,
  };
}
