// `clawgate jobs` and `clawgate say`: reading jobs from Temporal's visibility, and acting as a
// demo user in a room from a terminal.
import { randomBytes } from 'node:crypto';
import { WorkflowNotFoundError } from '@temporalio/client';
import type { ClawgateConfig } from '../config/config.ts';
import { ClawgateError, ERROR_CODES } from '../errors.ts';
import { SHORT_JOB_ID } from '../ingress/job-ids.ts';
import { threadRelation } from '../ingress/matrix-io.ts';
import { connectTemporal } from '../stack/components.ts';
import { readDemo } from '../stack/demo.ts';
import { statusQuery } from '../temporal/job-contract.ts';
import {
  JOB_ID,
  JOB_POLICY_HASH,
  JOB_REQUESTER,
  JOB_ROOM,
  JOB_STATUS,
} from '../temporal/search-attributes.ts';

function address(config: ClawgateConfig): string {
  return config.temporal.address ?? `127.0.0.1:${config.temporal.port}`;
}

async function withTemporal<T>(
  config: ClawgateConfig,
  fn: (c: Awaited<ReturnType<typeof connectTemporal>>) => Promise<T>,
) {
  let temporal;
  try {
    temporal = await connectTemporal(config, address(config));
  } catch (error) {
    throw new ClawgateError(
      ERROR_CODES.usage,
      `Temporal at ${address(config)} does not answer (${(error as Error).message}); is clawgate start running?`,
    );
  }
  try {
    return await fn(temporal);
  } finally {
    await temporal.connection.close();
  }
}

export interface JobRow {
  jobId: string;
  workflowId: string;
  status: string;
  roomId: string;
  requester: string;
  startedAt: string;
}

export async function listJobs(
  config: ClawgateConfig,
  opts: { status?: string | undefined; limit: number },
): Promise<JobRow[]> {
  if (opts.status !== undefined && !/^[a-z_]+$/.test(opts.status)) {
    throw new ClawgateError(ERROR_CODES.usage, `--status ${opts.status}: a status such as awaiting_approval`);
  }
  if (!Number.isInteger(opts.limit) || opts.limit < 1) {
    throw new ClawgateError(ERROR_CODES.usage, '--limit: a whole number of at least 1');
  }
  return await withTemporal(config, async ({ client }) => {
    const query = [`WorkflowType = 'jobWorkflow'`, opts.status ? `ClawgateStatus = '${opts.status}'` : '']
      .filter(Boolean)
      .join(' AND ');
    const rows: JobRow[] = [];
    for await (const w of client.workflow.list({ query, pageSize: Math.min(opts.limit, 100) })) {
      const sa = w.typedSearchAttributes;
      rows.push({
        jobId: sa.get(JOB_ID) ?? '-',
        workflowId: w.workflowId,
        status: sa.get(JOB_STATUS) ?? w.status.name.toLowerCase(),
        roomId: sa.get(JOB_ROOM) ?? '-',
        requester: sa.get(JOB_REQUESTER) ?? '-',
        startedAt: w.startTime.toISOString(),
      });
      if (rows.length >= opts.limit) break;
    }
    return rows;
  });
}

export async function showJob(config: ClawgateConfig, job: string): Promise<string> {
  return await withTemporal(config, async ({ client }) => {
    let workflowId = job;
    if (SHORT_JOB_ID.test(job)) {
      let found: string | undefined;
      for await (const w of client.workflow.list({ query: `ClawgateJobId = '${job}'`, pageSize: 1 })) {
        found = w.workflowId;
        break;
      }
      if (!found) throw new ClawgateError(ERROR_CODES.usage, `there is no job ${job}`);
      workflowId = found;
    }
    const handle = client.workflow.getHandle(workflowId);
    let description;
    try {
      description = await handle.describe();
    } catch (error) {
      if (error instanceof WorkflowNotFoundError)
        throw new ClawgateError(ERROR_CODES.usage, `there is no job ${job}`);
      throw error;
    }
    const sa = description.typedSearchAttributes;
    const lines = [
      `job       ${sa.get(JOB_ID) ?? '-'}`,
      `workflow  ${workflowId} (run ${description.runId})`,
      `status    ${sa.get(JOB_STATUS) ?? '-'} (Temporal: ${description.status.name})`,
      `room      ${sa.get(JOB_ROOM) ?? '-'}`,
      `requester ${sa.get(JOB_REQUESTER) ?? '-'}`,
      `policy    ${sa.get(JOB_POLICY_HASH) ?? '-'}`,
      `started   ${description.startTime.toISOString()}`,
    ];
    if (description.status.name === 'RUNNING') {
      const view = await client
        .withDeadline(Date.now() + 5000, () => handle.query(statusQuery))
        .catch(() => null);
      if (view) {
        lines.push(`plan      ${view.planHash ?? '-'}`, `steps     ${view.stepsDone}/${view.stepsTotal}`);
        for (const a of view.approvals)
          lines.push(`approval  ${a.sender} ${a.accepted ? 'counted' : 'refused'}: ${a.reason}`);
      }
    } else if (description.status.name === 'COMPLETED') {
      const result = (await handle.result()) as {
        status: string;
        bundleDigest: string | null;
        reason: string;
      };
      lines.push(
        `outcome   ${result.status}: ${result.reason.split('\n')[0] ?? ''}`,
        `bundle    ${result.bundleDigest ?? '-'}`,
      );
    }
    return lines.join('\n');
  });
}

export async function say(
  config: ClawgateConfig,
  opts: { as: string; room: string; text: string; thread?: string | undefined },
): Promise<string> {
  const demo = readDemo(config);
  if (!demo) {
    throw new ClawgateError(
      ERROR_CODES.usage,
      `no demo users in ${config.stateDir}: clawgate say acts as the users clawgate start made on its embedded Synapse`,
    );
  }
  const who = opts.as;
  if (who !== 'requester' && who !== 'approver') {
    throw new ClawgateError(ERROR_CODES.usage, `--as ${opts.as}: requester or approver`);
  }
  const user = demo.users[who];
  const roomId = opts.room === 'demo' ? demo.roomId : opts.room;
  if (!roomId.startsWith('!'))
    throw new ClawgateError(ERROR_CODES.usage, `${opts.room}: a room id (!...) or "demo"`);
  const content: Record<string, unknown> = { msgtype: 'm.text', body: opts.text };
  if (opts.thread) content['m.relates_to'] = threadRelation(opts.thread);
  const txn = randomBytes(8).toString('hex');
  const url = `${demo.homeserverUrl}/_matrix/client/v3/rooms/${encodeURIComponent(roomId)}/send/m.room.message/${txn}`;
  let res: Response;
  try {
    res = await fetch(url, {
      method: 'PUT',
      headers: { authorization: `Bearer ${user.accessToken}`, 'content-type': 'application/json' },
      body: JSON.stringify(content),
    });
  } catch (error) {
    throw new ClawgateError(
      ERROR_CODES.usage,
      `the homeserver ${demo.homeserverUrl} does not answer (${(error as Error).message}); is clawgate start running?`,
    );
  }
  const body = (await res.json()) as { event_id?: string; error?: string };
  if (!res.ok || !body.event_id) {
    throw new ClawgateError(
      ERROR_CODES.usage,
      `the homeserver refused the message: ${body.error ?? res.status}`,
    );
  }
  return `${user.userId} said it in ${roomId} (event ${body.event_id})`;
}
