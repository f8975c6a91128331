// `clawgate schedule`: recurring jobs on Temporal Schedules. A schedule's action starts
// scheduledJobWorkflow with a fixed request (room, text, policy channel, requester); each run
// posts its own root message in the room and runs a job under it, with the same policy pinning,
// plan approval and tokens as a job asked for in the room.
import {
  ScheduleAlreadyRunning,
  ScheduleNotFoundError,
  ScheduleOverlapPolicy,
  type Client,
  type ScheduleOptions,
} from '@temporalio/client';
import { ClawgateError, ERROR_CODES } from '../errors.ts';
import type { PolicyRegistry } from '../policy/registry.ts';
import { preApprovalRules } from '../policy/wpc.ts';
import {
  JOB_TASK_QUEUE,
  MATRIX_TASK_QUEUE,
  preApprovalRefusal,
  scheduleWorkflowId,
  type PreApproval,
  type ScheduledJobInput,
} from '../temporal/job-contract.ts';
import {
  parseDuration,
  parseOverlap,
  parseScheduleName,
  parseScheduleSpec,
  TEMPORAL_OVERLAP,
  type ScheduleSpecInput,
} from './schedule-options.ts';

export interface ScheduleCreateOptions {
  name: string;
  every?: string | undefined;
  cron?: string | undefined;
  room: string;
  text: string;
  channel: string;
  requester: string;
  overlap: string;
  catchupWindow: string;
  preApprovedBy?: string | undefined;
  taskQueue?: string | undefined;
  /** The gateway account that holds the room: its Matrix activities post the run's messages. */
  account?: string | undefined;
  matrixTaskQueue?: string | undefined;
}

/** A `schedule create` request, checked: what Temporal is given and what the policy allowed. */
export interface CheckedSchedule {
  name: string;
  spec: ScheduleSpecInput;
  overlap: keyof typeof TEMPORAL_OVERLAP;
  catchupWindowMs: number;
  input: ScheduledJobInput;
  policyHash: string;
}

/**
 * Checks a schedule against its options and the policy active on its channel now, as a request
 * from the requester in that room would be checked, and its pre-approval if it has one. Each
 * run checks again against the policy pinned for it; this refuses what would only be refused.
 */
export function checkSchedule(
  opts: ScheduleCreateOptions,
  registry: Pick<PolicyRegistry, 'activeHash' | 'policy'>,
  now: Date,
): CheckedSchedule {
  const name = parseScheduleName(opts.name);
  const spec = parseScheduleSpec(opts);
  const overlap = parseOverlap(opts.overlap);
  const catchupWindowMs = parseDuration(opts.catchupWindow, '--catchup-window');
  if (!/^![^:\s]+(:\S+)?$/.test(opts.room)) {
    throw new ClawgateError(
      ERROR_CODES.usage,
      `--room ${opts.room}: a Matrix room id such as !abc:example.com`,
    );
  }
  if (!/^@[^:\s]+:\S+$/.test(opts.requester)) {
    throw new ClawgateError(
      ERROR_CODES.usage,
      `--requester ${opts.requester}: a Matrix user id such as @alice:example.com`,
    );
  }
  if (opts.text.trim() === '')
    throw new ClawgateError(ERROR_CODES.usage, '--text: the request must say something');
  // Each gateway account serves its own Matrix queue; a run sent to a queue no account serves
  // would wait for ever to post its root, so the schedule names the account.
  if (opts.account === undefined && opts.matrixTaskQueue === undefined) {
    throw new ClawgateError(
      ERROR_CODES.usage,
      "give --account <id>, the gateway account that holds the room (or that account's --matrix-task-queue)",
    );
  }
  if (opts.account !== undefined && !/^[a-z0-9][a-z0-9_-]{0,62}$/i.test(opts.account)) {
    throw new ClawgateError(
      ERROR_CODES.usage,
      `--account ${opts.account}: a gateway account id such as main`,
    );
  }
  const matrixTaskQueue = opts.matrixTaskQueue ?? `${MATRIX_TASK_QUEUE}-${opts.account ?? ''}`;
  const hash = registry.activeHash(opts.channel);
  if (!hash) {
    throw new ClawgateError(
      ERROR_CODES.usage,
      `no policy is active on channel ${opts.channel}: a schedule's jobs could not run`,
    );
  }
  const wpc = registry.policy(hash);
  if (!wpc.matrix.rooms_allowlist.includes(opts.room)) {
    throw new ClawgateError(
      ERROR_CODES.usage,
      `room ${opts.room} is not on the room allowlist of policy ${hash} (channel ${opts.channel})`,
    );
  }
  if (!wpc.matrix.requesters_allowlist.includes(opts.requester)) {
    throw new ClawgateError(
      ERROR_CODES.usage,
      `${opts.requester} may not request work under policy ${hash} (channel ${opts.channel}): not on its requesters_allowlist`,
    );
  }
  let preApproval: PreApproval | undefined;
  if (opts.preApprovedBy !== undefined) {
    const refusal = preApprovalRefusal(preApprovalRules(wpc), opts.preApprovedBy, opts.requester);
    if (refusal) {
      throw new ClawgateError(
        ERROR_CODES.usage,
        `--pre-approved-by ${opts.preApprovedBy} refused under policy ${hash} (channel ${opts.channel}): ${refusal}`,
      );
    }
    preApproval = { approver: opts.preApprovedBy, at: now.toISOString(), policyHash: hash };
  }
  return {
    name,
    spec,
    overlap,
    catchupWindowMs,
    policyHash: hash,
    input: {
      schedule: name,
      roomId: opts.room,
      requester: opts.requester,
      text: opts.text,
      channel: opts.channel,
      matrixTaskQueue,
      ...(preApproval ? { preApproval } : {}),
    },
  };
}

/** What Temporal is given for a checked schedule. */
export function scheduleOptions(checked: CheckedSchedule, taskQueue = JOB_TASK_QUEUE): ScheduleOptions {
  return {
    scheduleId: checked.name,
    spec:
      checked.spec.kind === 'every'
        ? { intervals: [{ every: checked.spec.everyMs }] }
        : { cronExpressions: [checked.spec.cron] },
    action: {
      type: 'startWorkflow',
      workflowType: 'scheduledJobWorkflow',
      // Temporal appends each run's scheduled time to this id, so every run has its own.
      workflowId: scheduleWorkflowId(checked.name),
      taskQueue,
      args: [checked.input],
      staticSummary: `clawgate schedule ${checked.name}: ${checked.input.text.slice(0, 100)}`,
    },
    policies: {
      overlap: ScheduleOverlapPolicy[TEMPORAL_OVERLAP[checked.overlap]],
      catchupWindow: checked.catchupWindowMs,
    },
    memo: { policyHash: checked.policyHash },
  };
}

export async function createSchedule(
  client: Client,
  checked: CheckedSchedule,
  taskQueue?: string,
): Promise<void> {
  try {
    await client.schedule.create(scheduleOptions(checked, taskQueue));
  } catch (error) {
    if (error instanceof ScheduleAlreadyRunning) {
      throw new ClawgateError(ERROR_CODES.usage, `there is a schedule ${checked.name} already`);
    }
    throw error;
  }
}

export interface ScheduleRow {
  name: string;
  paused: boolean;
  note: string;
  next: string | null;
  spec: string;
}

export async function listSchedules(client: Client): Promise<ScheduleRow[]> {
  const rows: ScheduleRow[] = [];
  for await (const s of client.schedule.list()) {
    if (s.action?.workflowType !== 'scheduledJobWorkflow') continue;
    const spec = [
      ...(s.spec?.intervals ?? []).map((i) => `every ${String(i.every)}`),
      // Temporal keeps a cron expression as calendar specs.
      ...(s.spec?.calendars ?? []).map(() => 'calendar'),
    ];
    rows.push({
      name: s.scheduleId,
      paused: s.state.paused,
      note: s.state.note ?? '',
      next: s.info.nextActionTimes[0]?.toISOString() ?? null,
      spec: spec.join(', ') || '-',
    });
  }
  return rows;
}

/** Pauses, unpauses or deletes a schedule; an unknown name is the user's error. */
export async function changeSchedule(
  client: Client,
  name: string,
  op: 'pause' | 'unpause' | 'delete',
  note?: string,
): Promise<void> {
  const handle = client.schedule.getHandle(parseScheduleName(name));
  try {
    if (op === 'delete') await handle.delete();
    else await handle[op](note);
  } catch (error) {
    if (error instanceof ScheduleNotFoundError) {
      throw new ClawgateError(ERROR_CODES.usage, `there is no schedule ${name}`);
    }
    throw error;
  }
}
