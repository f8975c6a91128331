// The control workflow: the incident controls every process and every running job must see,
// durable in Temporal (DESIGN decision 7). Operators change it with signals (`clawgate mode`,
// `clawgate freeze`); jobs read it through an activity; its history is the audit trail of who
// changed what, when and why.
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

export interface ControlSnapshot {
  readOnly: boolean;
  approvalsFrozen: boolean;
  changes: Array<ControlChange & { what: string }>;
}

export const setModeSignal = defineSignal<[ControlChange & { mode: 'read-only' | 'normal' }]>('setMode');
export const setFreezeSignal = defineSignal<[ControlChange & { frozen: boolean }]>('setFreeze');
export const controlStateQuery = defineQuery<ControlSnapshot>('controlState');

/** Changes kept in the query answer; the full record is the workflow history. */
const KEPT_CHANGES = 50;

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
  setHandler(controlStateQuery, () => state);
  // Runs for ever; starts afresh (same state) before its history grows large.
  await condition(() => workflowInfo().continueAsNewSuggested);
  await continueAsNew<typeof controlWorkflow>(state);
}
