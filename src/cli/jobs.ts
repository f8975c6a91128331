// `clawgate jobs` and `clawgate say`: reading jobs from Temporal's visibility, and acting as a
// demo user in a room from a terminal.
import { WorkflowNotFoundError } from '@temporalio/client';
import type { ClawgateConfig } from '../config/config.ts';
import { ClawgateError, ERROR_CODES } from '../errors.ts';
import { SHORT_JOB_ID } from '../ingress/job-ids.ts';
import { threadRelation } from '../ingress/matrix-io.ts';
import { quietMatrixSdkLogging } from '../ingress/sdk-logging.ts';
import { connectTemporal, lazyTemporal } from '../stack/components.ts';
import { readDemo } from '../stack/demo.ts';
import { openDemoDevice } from '../stack/demo-device.ts';
import { followThread, printable } from './thread-follow.ts';
import { budgetLine } from '../agent/plan.ts';
import { statusQuery, type JobStatusView } from '../temporal/job-contract.ts';
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

/** The label column of `jobs show`: values start after it, continuation lines are indented to it. */
const LABEL = 10;
/** How much of a tool call's arguments a turn line shows. */
const ARGS_SHOWN = 80;

const label = (name: string, value: string): string => `${name.padEnd(LABEL - 1)} ${value}`;
const more = (value: string): string => `${' '.repeat(LABEL)}${value}`;

/** One line of text, at most `max` characters (cut with …). */
function oneLine(text: string, max = Infinity): string {
  const chars = Array.from(printable(text.replace(/\s+/g, ' ').trim()));
  return chars.length > max ? `${chars.slice(0, max - 1).join('')}…` : chars.join('');
}

/** A label with a list of lines: the first beside the label, the rest indented under it. */
function block(name: string, lines: string[]): string[] {
  if (lines.length === 0) return [label(name, '-')];
  return lines.map((line, i) => (i === 0 ? label(name, line) : line === '' ? '' : more(line)));
}

/**
 * What `clawgate jobs show` prints of a job's status view: for a fixed-step job its plan hash,
 * steps done and approvals; for an agent job the approved plan (goal, numbered steps, tools,
 * budget), the approvals, one line per turn (a tool call and what came of it, or the answer),
 * the budget used and the answer.
 */
export function formatStatusView(view: JobStatusView): string[] {
  const approvals = view.approvals.map((a) =>
    label('approval', `${printable(a.sender)} ${a.accepted ? 'counted' : 'refused'}: ${printable(a.reason)}`),
  );
  if (view.mode !== 'agent') {
    return [
      label('plan', view.planHash ?? '-'),
      label('steps', `${view.stepsDone}/${view.stepsTotal}`),
      ...approvals,
    ];
  }
  const lines = [label('plan', view.planHash ?? '-')];
  const plan = view.plan ?? null;
  if (plan) {
    lines.push(
      label('goal', oneLine(plan.goal)),
      ...block(
        'steps',
        plan.steps.map((step, i) => `${i + 1}. ${oneLine(step)}`),
      ),
      label('tools', plan.tools.map((t) => oneLine(t)).join(', ') || 'none'),
      label('budget', budgetLine(plan.budget)),
    );
  }
  lines.push(...approvals);
  lines.push(
    ...block(
      'turns',
      (view.turns ?? []).map((t) => {
        const head = `${t.phase} turn ${t.turn + 1}:`;
        if (t.tool === null) return `${head} ${oneLine(t.outcome)}`;
        const args = oneLine(t.args, ARGS_SHOWN);
        return `${head} ${oneLine(t.tool)}${args ? ` ${args}` : ''} → ${oneLine(t.outcome)}`;
      }),
    ),
  );
  if (view.used) {
    const u = view.used;
    const b = plan?.budget;
    const of = (n: number, limit: number | undefined): string =>
      limit === undefined ? `${n}` : `${n} of ${limit}`;
    lines.push(
      label(
        'used',
        `${of(u.model_turns, b?.model_turns)} model turns, ${of(u.tool_calls, b?.tool_calls)} tool calls, ` +
          `${of(u.model_tokens, b?.model_tokens)} tokens, ${of(u.wall_seconds, b?.wall_seconds)} s`,
      ),
    );
  }
  if (typeof view.answer === 'string') {
    const answer = view.answer.replace(/\r\n?/g, '\n').replace(/\s+$/, '');
    lines.push(...block('answer', answer === '' ? ['(empty)'] : answer.split('\n').map(printable)));
  }
  return lines;
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
    const view = async () =>
      await client.withDeadline(Date.now() + 5000, () => handle.query(statusQuery)).catch(() => null);
    if (description.status.name === 'RUNNING') {
      const running = await view();
      if (running) lines.push(...formatStatusView(running));
    } else if (description.status.name === 'COMPLETED') {
      // An agent job's plan, turns and answer stay readable once it is over.
      const done = await view();
      if (done?.mode === 'agent') lines.push(...formatStatusView(done));
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

/** Whether the homeserver answers at all (a stopped stack is said so, not as a fetch error). */
async function homeserverAnswers(url: string): Promise<void> {
  try {
    await fetch(`${url}/_matrix/client/versions`, { signal: AbortSignal.timeout(10_000) });
  } catch (error) {
    throw new ClawgateError(
      ERROR_CODES.usage,
      `the homeserver ${url} does not answer (${(error as Error).message}); is clawgate start running?`,
    );
  }
}

/**
 * Posts a message as a demo user, through end-to-end encryption in an encrypted room: the
 * user's own device, its crypto store kept in the state folder. With `follow`, prints the
 * request's thread (or `thread`'s) as it grows until its job has ended, or `stopped` resolves.
 */
export async function say(
  config: ClawgateConfig,
  opts: {
    as: string;
    room: string;
    text: string;
    thread?: string | undefined;
    follow?: { print: (line: string) => void; stopped: Promise<void> } | undefined;
  },
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
  const roomId = opts.room === 'demo' ? demo.roomId : opts.room;
  if (!roomId.startsWith('!'))
    throw new ClawgateError(ERROR_CODES.usage, `${opts.room}: a room id (!...) or "demo"`);
  if (opts.thread !== undefined && !/^\$\S+$/.test(opts.thread)) {
    throw new ClawgateError(ERROR_CODES.usage, `--thread ${opts.thread}: an event id ($...)`);
  }
  await homeserverAnswers(demo.homeserverUrl);
  // The SDK's own logging would fill the terminal; this command says what matters itself.
  quietMatrixSdkLogging([]);
  const device = await openDemoDevice(config, demo, who);
  try {
    const { client } = device;
    if (device.replaced !== null) {
      process.stderr.write(
        `clawgate: the crypto store of ${device.userId}'s device ${device.replaced} was lost; ` +
          `it speaks as the new device ${device.deviceId} (earlier messages stay unreadable to it)\n`,
      );
    }
    if (client.getRoom(roomId)?.getMyMembership() !== 'join') {
      throw new ClawgateError(ERROR_CODES.usage, `${device.userId} is not in the room ${roomId}`);
    }
    const content: Record<string, unknown> = { msgtype: 'm.text', body: opts.text };
    if (opts.thread) content['m.relates_to'] = threadRelation(opts.thread);
    let eventId: string;
    try {
      ({ event_id: eventId } = await client.sendMessage(roomId, content as never));
    } catch (error) {
      throw new ClawgateError(
        ERROR_CODES.usage,
        `the homeserver refused the message: ${(error as Error).message}`,
      );
    }
    await device.persist();
    const encrypted = client.getRoom(roomId)?.hasEncryptionStateEvent() ?? false;
    const said = `${device.userId} said it in ${roomId} (event ${eventId}${encrypted ? ', end-to-end encrypted' : ''})`;
    if (!opts.follow) return said;
    opts.follow.print(said);
    const follow = opts.follow;
    // Lazy: the thread is followed while Temporal is away too (its notices are what one waits
    // for then); whether the job has ended is asked again as it comes.
    const temporal = lazyTemporal(config, address(config));
    try {
      return await followThread({
        client,
        temporal,
        roomId,
        root: opts.thread ?? eventId,
        print: follow.print,
        stopped: follow.stopped,
      });
    } finally {
      await temporal.connection.close();
    }
  } finally {
    await device.close();
  }
}
