// Every way an approval can be spoofed or misplaced is refused with its own code; the genuine
// one is accepted. The workflow applies this to each attempt against the pinned policy.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  APPROVAL_REFUSALS,
  decideApproval,
  type ApprovalContext,
  type ApprovalRules,
} from '../../../src/workflows/approval.ts';
import type { ApprovalAttempt } from '../../../src/temporal/job-contract.ts';

const rules: ApprovalRules = {
  approvers: ['@alice:example.com', '@oncall:example.com'],
  requesterMayApprove: false,
  approvalsRequired: 2,
  requireVerifiedDevice: false,
};
const ctx: ApprovalContext = {
  workflowId: 'job:!ops:example.com:$req1',
  roomId: '!ops:example.com',
  requester: '@oncall:example.com',
  planHash: 'abcdef0123456789'.repeat(4),
  planPostedAt: 1_000,
  seenEventIds: new Set(['$seen']),
  acceptedApprovers: new Set(),
  approvalsFrozen: false,
};
const genuine: ApprovalAttempt = {
  eventId: '$a1',
  sender: '@alice:example.com',
  roomId: '!ops:example.com',
  decision: 'approve',
  originServerTs: 2_000,
};

test('a genuine approval from an allowlisted approver is accepted', () => {
  const d = decideApproval(genuine, rules, ctx);
  assert.deepEqual(d, {
    accepted: true,
    effect: 'approval',
    reason: 'approval 1 of 2 from @alice:example.com',
  });
});

test('the job may be named by its request event id or its full id, and the plan by a hash prefix', () => {
  assert.ok(decideApproval({ ...genuine, jobId: '$req1', planHash: 'ABCDEF01' }, rules, ctx).accepted);
  assert.ok(decideApproval({ ...genuine, jobId: ctx.workflowId }, rules, ctx).accepted);
});

const refusals: Array<
  [string, Partial<ApprovalAttempt>, Partial<ApprovalContext>, Partial<ApprovalRules>, string]
> = [
  ['a redelivered event', { eventId: '$seen' }, {}, {}, APPROVAL_REFUSALS.duplicateEvent],
  [
    'an approval whose shown text says otherwise',
    {
      displayMismatch: 'what the room shows is not this command: the formatted text says "I do NOT approve"',
    },
    {},
    {},
    APPROVAL_REFUSALS.displayMismatch,
  ],
  [
    'a denial whose shown text says otherwise',
    { decision: 'deny', displayMismatch: 'the formatted text says "!approve"' },
    {},
    {},
    APPROVAL_REFUSALS.displayMismatch,
  ],
  ['an approval from another room', { roomId: '!other:example.com' }, {}, {}, APPROVAL_REFUSALS.wrongRoom],
  ['an approval naming another job', { jobId: '$other' }, {}, {}, APPROVAL_REFUSALS.wrongJob],
  ['a non-approver', { sender: '@mallory:example.com' }, {}, {}, APPROVAL_REFUSALS.notApprover],
  [
    'the requester approving their own job',
    { sender: '@oncall:example.com' },
    {},
    {},
    APPROVAL_REFUSALS.selfApproval,
  ],
  ['an approval during a freeze', {}, { approvalsFrozen: true }, {}, APPROVAL_REFUSALS.frozen],
  ['an approval of another plan', { planHash: 'ffff' }, {}, {}, APPROVAL_REFUSALS.planMismatch],
  ['an old approval replayed', { originServerTs: 500 }, {}, {}, APPROVAL_REFUSALS.beforePlan],
  [
    'an unverified device where verification is required',
    {},
    {},
    { requireVerifiedDevice: true },
    APPROVAL_REFUSALS.unverifiedDevice,
  ],
  [
    'the same approver twice',
    {},
    { acceptedApprovers: new Set(['@alice:example.com']) },
    {},
    APPROVAL_REFUSALS.alreadyCounted,
  ],
];
for (const [what, attempt, context, rule, code] of refusals) {
  test(`${what} is refused with ${code} and a reason`, () => {
    const d = decideApproval({ ...genuine, ...attempt }, { ...rules, ...rule }, { ...ctx, ...context });
    assert.equal(d.accepted, false);
    assert.equal(!d.accepted && d.code, code);
    assert.ok(d.reason.length > 10);
  });
}

test('the requester may approve when the policy allows it', () => {
  assert.ok(
    decideApproval(
      { ...genuine, sender: '@oncall:example.com' },
      { ...rules, requesterMayApprove: true },
      ctx,
    ).accepted,
  );
});

test('a denial is accepted from an approver or the requester, and refused from anyone else', () => {
  assert.deepEqual(decideApproval({ ...genuine, decision: 'deny', reason: 'too broad' }, rules, ctx), {
    accepted: true,
    effect: 'denial',
    reason: 'too broad',
  });
  assert.ok(
    decideApproval({ ...genuine, decision: 'deny', sender: '@oncall:example.com' }, rules, ctx).accepted,
  );
  assert.equal(
    decideApproval({ ...genuine, decision: 'deny', sender: '@mallory:example.com' }, rules, ctx).accepted,
    false,
  );
});
