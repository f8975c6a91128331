// A job's workflow id end to end (issue 21): a request starts its job under the short id
// `clawgate-<job id>`, a redelivered request starts no second job, and a job started under the
// old form `job:<room>:<event id>` (before an upgrade) is still found by its thread's commands
// and by `clawgate jobs show`. A real gateway process, Synapse, the Temporal dev server and a
// real worker.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { WorkflowNotFoundError } from '@temporalio/client';
import { Direction } from 'matrix-js-sdk';
import type { RegisteredUser } from '../../src/devstack/synapse.ts';
import type { ClawgateConfigInput } from '../../src/config/config.ts';
import { GATEWAY_FAULTS } from '../../src/ingress/gateway.ts';
import { jobWorkflowIds, shortJobId } from '../../src/ingress/job-ids.ts';
import { threadRelation } from '../../src/ingress/matrix-io.ts';
import { GatewayProcess, gatewayTestConfig } from '../harness/gateway-process.ts';
import { startLegacyJob } from '../harness/legacy-job.ts';
import { MatrixTestUser } from '../harness/matrix-user.ts';
import { registerTestUser } from '../harness/servers.ts';
import { startWorkerStack, type WorkerStack } from '../harness/stack.ts';

let stack: WorkerStack;
let dir: string;
let bot: RegisteredUser;
let requester: MatrixTestUser;
let approver: MatrixTestUser;
let roomId: string;
let gateway: GatewayProcess;
let config: ClawgateConfigInput;

before(async () => {
  stack = await startWorkerStack();
  dir = mkdtempSync(join(tmpdir(), 'clawgate-job-ids-'));
  bot = await registerTestUser('idbot');
  [requester, approver] = (await Promise.all(['idreq', 'idappr'].map((n) => MatrixTestUser.create(n)))) as [
    MatrixTestUser,
    MatrixTestUser,
  ];
  roomId = await requester.createRoom({ name: 'ids', invite: [bot.userId, approver.userId] });
  await approver.waitForMembership(roomId, 'invite');
  await approver.joinRoom(roomId);
  await stack.activatePolicy({
    channel: 'matrix',
    rooms: [roomId],
    requesters: [requester.userId],
    approvers: [approver.userId],
  });
  config = gatewayTestConfig(dir, stack, [
    { id: 'ids', userId: bot.userId, accessToken: bot.accessToken, rooms: [roomId] },
  ]);
  gateway = await GatewayProcess.start(config, { dir });
  await approver.waitForJoin(roomId, bot.userId);
});

after(async () => {
  await gateway?.kill('SIGTERM');
  for (const user of [requester, approver]) user?.stop();
  await stack?.close();
});

interface RawEvent {
  event_id: string;
  type: string;
  sender: string;
  content: Record<string, unknown>;
}

const bodyOf = (e: RawEvent) => (typeof e.content['body'] === 'string' ? e.content['body'] : '');
const relOf = (e: RawEvent) =>
  (e.content['m.relates_to'] ?? {}) as { event_id?: string; 'm.in_reply_to'?: { event_id?: string } };

async function send(user: MatrixTestUser, body: string, thread?: string): Promise<string> {
  const content: Record<string, unknown> = { msgtype: 'm.text', body };
  if (thread) content['m.relates_to'] = threadRelation(thread);
  const { event_id: eventId } = await user.client.sendEvent(
    roomId,
    'm.room.message' as never,
    content as never,
  );
  return eventId;
}

/** A message of the bot's about `root` (in its thread or replying to it) that matches. */
async function botSays(root: string, pattern: RegExp, timeoutMs = 30_000): Promise<RawEvent> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const res = await approver.client.createMessagesRequest(roomId, null, 500, Direction.Backward);
    const found = (res.chunk as unknown as RawEvent[]).find((e) => {
      const rel = relOf(e);
      const about = rel.event_id === root || rel['m.in_reply_to']?.event_id === root;
      return e.sender === bot.userId && e.type === 'm.room.message' && about && pattern.test(bodyOf(e));
    });
    if (found) return found;
    if (Date.now() > deadline) throw new Error(`waited ${timeoutMs} ms for ${bot.userId} saying ${pattern}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

async function clawgate(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const bin = new URL('../../bin/clawgate', import.meta.url).pathname;
  return await new Promise((resolve) => {
    execFile(bin, args, (error, stdout, stderr) => {
      resolve({ code: error ? Number(error.code ?? 1) : 0, stdout, stderr });
    });
  });
}

async function jobsWithId(jobId: string): Promise<string[]> {
  const ids: string[] = [];
  for await (const w of stack.temporal.client.workflow.list({ query: `ClawgateJobId = '${jobId}'` }))
    ids.push(w.workflowId);
  return ids;
}

test('a request starts its job under the short id, and the request coming again starts no second job', async () => {
  // The gateway dies after starting the job and before saving its sync position, so the same
  // request event comes again after the restart.
  await gateway.kill('SIGTERM');
  gateway = await GatewayProcess.start(config, { dir, fault: GATEWAY_FAULTS.crashBeforeSyncToken });
  const eventId = await send(requester, '!claw summarise the readme');
  assert.equal((await gateway.exited).signal, 'SIGKILL');
  const { workflowId, legacy } = jobWorkflowIds(roomId, eventId);
  assert.match(workflowId, /^clawgate-j[a-z2-7]{9}$/);
  const jobId = shortJobId(workflowId);
  assert.equal(jobId, shortJobId(legacy), 'the job id people see is the one the old form gave');
  const described = await stack.temporal.client.workflow.getHandle(workflowId).describe();
  assert.equal(described.status.name, 'RUNNING', 'the job was started under the short id before the crash');
  await assert.rejects(stack.temporal.client.workflow.getHandle(legacy).describe(), WorkflowNotFoundError);

  gateway = await GatewayProcess.start(config, { dir });
  await gateway.waitForLog(
    (l) => l['workflowId'] === workflowId && /redelivered/.test(String(l['msg'])),
    30_000,
    'the request coming again',
  );
  const plan = await botSays(eventId, /^Plan for job j[a-z2-7]{9}/);
  assert.match(bodyOf(plan), new RegExp(`^Plan for job ${jobId}`));
  assert.deepEqual(await jobsWithId(jobId), [workflowId], 'one job for the request');

  await send(approver, '!approve', eventId);
  await botSays(eventId, /: succeeded\./, 60_000);
  const shown = await clawgate('jobs', 'show', jobId, '--config', join(dir, 'clawgate.json'));
  assert.equal(shown.code, 0, shown.stderr);
  assert.match(shown.stdout, new RegExp(`^workflow  ${workflowId} `, 'm'));
});

test('a job started under the old id form is approved in its thread and shown by clawgate jobs show', async () => {
  // The request as the gateway made it before the short form: plain chat here, so this
  // gateway starts nothing for it, and the job is started under the old id as it was then.
  const text = 'summarise the readme';
  const eventId = await send(requester, text);
  const { workflowId, legacy, jobId } = await startLegacyJob(stack, {
    roomId,
    requester: requester.userId,
    eventId,
    text,
    account: 'ids',
  });
  await botSays(eventId, new RegExp(`^Plan for job ${jobId}`));

  // `!status` and `!approve` in the thread: the short id is not found, the old one is.
  const asked = await send(approver, '!status', eventId);
  await botSays(asked, new RegExp(`^Job ${jobId}: awaiting_approval`));
  await send(approver, '!approve', eventId);
  const result = await botSays(eventId, /: succeeded\./, 60_000);
  assert.match(bodyOf(result), /bundle \S+$/m);
  await assert.rejects(
    stack.temporal.client.workflow.getHandle(workflowId).describe(),
    WorkflowNotFoundError,
  );
  assert.deepEqual(await jobsWithId(jobId), [legacy]);

  const shown = await clawgate('jobs', 'show', jobId, '--config', join(dir, 'clawgate.json'));
  assert.equal(shown.code, 0, shown.stderr);
  assert.match(shown.stdout, new RegExp(`^job       ${jobId}$`, 'm'));
  assert.match(shown.stdout, /^status {4}succeeded /m);
  assert.ok(shown.stdout.includes(`workflow  ${legacy} `), shown.stdout);
});
