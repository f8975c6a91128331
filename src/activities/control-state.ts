// Reading and changing the control state held by the control workflow.
import { WorkflowNotFoundError, type Client } from '@temporalio/client';
import type { ControlState } from '../temporal/job-types.ts';
import {
  activatePolicySignal,
  CONTROL_WORKFLOW_ID,
  controlStateQuery,
  revokeSignal,
  setFreezeSignal,
  setModeSignal,
  type ControlSnapshot,
  type PolicyActivation,
  type SharedRevocation,
} from '../workflows/control.ts';

/**
 * The current controls. No control workflow yet means no operator has changed anything: normal.
 * Any other failure is thrown, so the job's activity retries and the job waits (fail closed).
 */
export async function readControlState(client: Client): Promise<ControlState> {
  try {
    const state = await client.workflow.getHandle(CONTROL_WORKFLOW_ID).query(controlStateQuery);
    return { readOnly: state.readOnly, approvalsFrozen: state.approvalsFrozen };
  } catch (error) {
    if (error instanceof WorkflowNotFoundError) return { readOnly: false, approvalsFrozen: false };
    throw error;
  }
}

export async function setMode(
  client: Client,
  taskQueue: string,
  mode: 'read-only' | 'normal',
  by: string,
  reason: string,
): Promise<void> {
  await client.workflow.signalWithStart('controlWorkflow', {
    workflowId: CONTROL_WORKFLOW_ID,
    taskQueue,
    args: [],
    signal: setModeSignal,
    signalArgs: [{ mode, by, reason }],
  });
}

export async function setApprovalFreeze(
  client: Client,
  taskQueue: string,
  frozen: boolean,
  by: string,
  reason: string,
): Promise<void> {
  await client.workflow.signalWithStart('controlWorkflow', {
    workflowId: CONTROL_WORKFLOW_ID,
    taskQueue,
    args: [],
    signal: setFreezeSignal,
    signalArgs: [{ frozen, by, reason }],
  });
}

export async function controlSnapshot(client: Client): Promise<ControlSnapshot | null> {
  try {
    return await client.workflow.getHandle(CONTROL_WORKFLOW_ID).query(controlStateQuery);
  } catch (error) {
    if (error instanceof WorkflowNotFoundError) return null;
    throw error;
  }
}

/** Shares a revocation made on this machine with every other one (through the control workflow). */
export async function shareRevocation(
  client: Client,
  taskQueue: string,
  revocation: SharedRevocation,
): Promise<void> {
  await client.workflow.signalWithStart('controlWorkflow', {
    workflowId: CONTROL_WORKFLOW_ID,
    taskQueue,
    args: [],
    signal: revokeSignal,
    signalArgs: [revocation],
  });
}

/** Shares a channel's newly active policy, with its signed document, with every other machine. */
export async function sharePolicy(
  client: Client,
  taskQueue: string,
  change: PolicyActivation,
): Promise<void> {
  await client.workflow.signalWithStart('controlWorkflow', {
    workflowId: CONTROL_WORKFLOW_ID,
    taskQueue,
    args: [],
    signal: activatePolicySignal,
    signalArgs: [change],
  });
}
