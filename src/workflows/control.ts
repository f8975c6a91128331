// The control workflow: the incident controls every process and every running job must see,
// durable in Temporal (DESIGN decision 7). Operators change it with signals (`clawgate mode`,
// `clawgate freeze`, `clawgate revoke`, `clawgate policy activate|rollback`); jobs read mode and
// freeze through an activity; every process mirrors its revocations and active policies into
// its own state folder (src/control/mirror.ts), so they reach machines that share no files. Its
// history is the audit trail of who changed what, when and why.
import {
  condition,
  continueAsNew,
  defineQuery,
  defineSignal,
  setHandler,
  workflowInfo,
} from '@temporalio/workflow';

/** The one control workflow of a namespace. */
export const CONTROL_WORKFLOW_ID = 'clawgate-control';

export interface ControlChange {
  by: string;
  reason: string;
}

/** A token revocation, as the revocation log holds it. */
export interface SharedRevocation {
  kind: 'token' | 'job';
  id: string;
  reason: string;
  at: string;
  by?: string;
}

/** The active policy of a channel, with its signed document so any machine can check it. */
export interface SharedPolicy {
  hash: string;
  jws: string;
  by: string;
  reason: string;
}

/** A policy change on one channel, as it is shared: the policy, where, and whether it went back. */
export type PolicyActivation = SharedPolicy & { channel: string; rollback: boolean };

export interface ControlSnapshot {
  readOnly: boolean;
  approvalsFrozen: boolean;
  changes: Array<ControlChange & { what: string }>;
  /** Absent in the state of a control workflow that started before they were shared. */
  revocations?: SharedRevocation[];
  policies?: Record<string, SharedPolicy>;
}

export const setModeSignal = defineSignal<[ControlChange & { mode: 'read-only' | 'normal' }]>('setMode');
export const setFreezeSignal = defineSignal<[ControlChange & { frozen: boolean }]>('setFreeze');
export const revokeSignal = defineSignal<[SharedRevocation]>('revoke');
export const activatePolicySignal = defineSignal<[PolicyActivation]>('activatePolicy');
export const controlStateQuery = defineQuery<ControlSnapshot>('controlState');

/** Changes kept in the query answer; the full record is the workflow history. */
const KEPT_CHANGES = 50;
/**
 * Revocations kept. A token lives an hour at most, so only the recent ones can still refuse
 * anything; each process also keeps every revocation it has seen in its own log.
 */
const KEPT_REVOCATIONS = 10_000;

export async function controlWorkflow(initial?: ControlSnapshot): Promise<void> {
  const state: ControlSnapshot = initial ?? { readOnly: false, approvalsFrozen: false, changes: [] };
  const record = (what: string, change: ControlChange): void => {
    state.changes = [...state.changes, { what, by: change.by, reason: change.reason }].slice(-KEPT_CHANGES);
  };
  setHandler(setModeSignal, (change) => {
    state.readOnly = change.mode === 'read-only';
    record(`mode ${change.mode}`, change);
  });
  setHandler(setFreezeSignal, (change) => {
    state.approvalsFrozen = change.frozen;
    record(change.frozen ? 'approvals frozen' : 'approvals unfrozen', change);
  });
  setHandler(revokeSignal, (revocation) => {
    const kept = state.revocations ?? [];
    if (!kept.some((r) => r.kind === revocation.kind && r.id === revocation.id)) {
      state.revocations = [...kept, revocation].slice(-KEPT_REVOCATIONS);
    }
    record(`${revocation.kind} ${revocation.id} revoked`, {
      by: revocation.by ?? 'unknown',
      reason: revocation.reason,
    });
  });
  setHandler(activatePolicySignal, ({ channel, rollback, ...policy }) => {
    state.policies = { ...(state.policies ?? {}), [channel]: policy };
    record(`${channel}: policy ${policy.hash} ${rollback ? 'rolled back to' : 'activated'}`, policy);
  });
  setHandler(controlStateQuery, () => state);
  // Runs for ever; starts afresh (same state) before its history grows large.
  await condition(() => workflowInfo().continueAsNewSuggested);
  await continueAsNew<typeof controlWorkflow>(state);
}
