// Reading and changing the control state held by the control workflow.
import { WorkflowNotFoundError, type Client } from '@temporalio/client';
import type { ControlState } from '../temporal/job-types.ts';
import {
  CONTROL_WORKFLOW_ID,
  controlStateQuery,
  setFreezeSignal,
  setModeSignal,
  type ControlSnapshot,
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
