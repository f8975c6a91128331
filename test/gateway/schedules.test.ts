// Scheduled jobs end to end: a Temporal Schedule on the real dev server fires (by trigger, or
// by itself on a short interval), its run posts the root message in the room as the bot, the job's plan goes in that thread, an
// approver's !approve there reaches the job through the gateway, and the bundle verifies. With
// a policy that allows it, a pre-approved schedule runs without waiting and its bundle says who
// pre-approved; without, `clawgate schedule create --pre-approved-by` is refused.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { Direction } from 'matrix-js-sdk';
import { ScheduleNotFoundError } from '@temporalio/client';
import { checkSchedule, createSchedule, type ScheduleCreateOptions } from '../../src/cli/schedules.ts';
import type { RegisteredUser } from '../../src/devstack/synapse.ts';
import { verifyBundle } from '../../src/evidence/bundle.ts';
import { threadRelation } from '../../src/ingress/matrix-io.ts';
import { publicJwks } from '../../src/keys/keyring.ts';
import { FilePolicyRegistry } from '../../src/policy/registry.ts';
import { SCHEDULED_ROOT_FIELD, scheduleWorkflowId, statusQuery } from '../../src/temporal/job-contract.ts';
import { JOB_ID } from '../../src/temporal/search-attributes.ts';
import { jobWorkflowId, shortJobId } from '../../src/ingress/job-ids.ts';
import { GatewayProcess, gatewayTestConfig } from '../harness/gateway-process.ts';
import { MatrixTestUser } from '../harness/matrix-user.ts';
import { registerTestUser, testServers } from '../harness/servers.ts';
import { startWorkerStack, type WorkerStack } from '../harness/stack.ts';

let stack: WorkerStack;
let dir: string;
let bot: RegisteredUser;
let approver: MatrixTestUser;
let requester: MatrixTestUser;
let room: string;
let gateway: GatewayProcess;

interface RawEvent {
  event_id: string;
  type: string;
  sender: string;
  content: Record<string, unknown>;
}
const bodyOf = (e: RawEvent) => (typeof e.content['body'] === 'string' ? e.content['body'] : '');
const relOf = (e: RawEvent) =>
  (e.content['m.relates_to'] ?? {}) as { rel_type?: string; event_id?: string; key?: string };

async function waitForEvent(filter: (e: RawEvent) => boolean, message: string, timeoutMs = 60_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const res = await approver.client.createMessagesRequest(room, null, 500, Direction.Backward);
    const events = (res.chunk as unknown as RawEvent[]).reverse();
    const found = events.find(filter);
    if (found) return found;
    if (Date.now() > deadline) {
      const said = events
        .filter((e) => e.type === 'm.room.message')
        .map((e) => `${e.sender}: ${bodyOf(e).slice(0, 160)}`)
        .join('\n  ');
      throw new Error(`waited ${timeoutMs} ms for ${message}; the room's messages:\n  ${said}`);
    }
    await new Promise((r) => setTimeout(r, 300));
  }
}

const botSays = (root: string, pattern: RegExp) =>
  waitForEvent(
    (e) =>
      e.sender === bot.userId &&
      e.type === 'm.room.message' &&
      relOf(e).event_id === root &&
      pattern.test(bodyOf(e)),
    `the bot saying ${pattern} in the thread of ${root}`,
  );

const rootOf = (name: string) =>
  waitForEvent(
    (e) =>
      e.sender === bot.userId &&
      e.type === 'm.room.message' &&
      relOf(e).event_id === undefined &&
      (e.content[SCHEDULED_ROOT_FIELD] as { schedule?: string } | undefined)?.schedule === name,
    `the root message of a run of schedule ${name}`,
  );

const bundleOf = (digest: string) =>
  JSON.parse(readFileSync(join(stack.bundleDir, `${digest}.json`), 'utf8')) as {
    entries: Array<{ type: string; body: Record<string, unknown> }>;
  };

function options(name: string, extra: Partial<ScheduleCreateOptions> = {}): ScheduleCreateOptions {
  return {
    name,
    // Far apart: the test fires its runs with trigger(), not by waiting for the clock.
    every: '1h',
    room,
    text: 'summarise the readme',
    channel: 'matrix',
    requester: requester.userId,
    overlap: 'skip',
    catchupWindow: '10m',
    account: 'alpha',
    ...extra,
  };
}

async function create(name: string, extra: Partial<ScheduleCreateOptions> = {}) {
  const checked = checkSchedule(options(name, extra), new FilePolicyRegistry(stack.registryDir), new Date());
  await createSchedule(stack.temporal.client, checked, stack.taskQueue);
  const handle = stack.temporal.client.schedule.getHandle(name);
  // Paused, so the only runs are the test's triggers.
  await handle.pause('test: runs by trigger only');
  return { checked, handle };
}

before(async () => {
  stack = await startWorkerStack();
  dir = mkdtempSync(join(tmpdir(), 'clawgate-schedules-'));
  bot = await registerTestUser('schedbot');
  [approver, requester] = await Promise.all([
    MatrixTestUser.create('sapprover'),
    MatrixTestUser.create('sreq'),
  ]);
  room = await requester.createRoom({ name: 'scheduled', invite: [bot.userId, approver.userId] });
  await approver.waitForMembership(room, 'invite');
  await approver.joinRoom(room);
  await stack.activatePolicy({
    channel: 'matrix',
    rooms: [room],
    requesters: [requester.userId],
    approvers: [approver.userId],
  });
  gateway = await GatewayProcess.start(
    gatewayTestConfig(dir, stack, [
      { id: 'alpha', userId: bot.userId, accessToken: bot.accessToken, rooms: [room] },
    ]),
    { dir },
  );
  await approver.waitForJoin(room, bot.userId);
});

after(async () => {
  await gateway?.kill('SIGTERM');
  approver?.stop();
  requester?.stop();
  await stack?.close();
});

test('a scheduled run posts its root and plan, waits, is approved in its thread, and seals a bundle that verifies', async () => {
  const { handle } = await create('readme-daily');
  await handle.trigger();
  const root = await rootOf('readme-daily');
  assert.equal(bodyOf(root), 'Scheduled job readme-daily: summarise the readme');
  // The job is the child the gateway finds from the thread root, under the id a request with
  // that root would have, and with the job id people type.
  const workflowId = jobWorkflowId(room, root.event_id);
  const jobId = shortJobId(workflowId);
  const plan = await botSays(root.event_id, /^Plan for job /);
  assert.match(bodyOf(plan), new RegExp(`^Plan for job ${jobId}`));
  assert.match(bodyOf(plan), /Status: waiting for approval/);
  const job = stack.temporal.client.workflow.getHandle(workflowId);
  const described = await job.describe();
  assert.equal(described.status.name, 'RUNNING');
  assert.equal(described.typedSearchAttributes.get(JOB_ID), jobId);
  const { event_id: approval } = await approver.client.sendEvent(
    room,
    'm.room.message' as never,
    {
      msgtype: 'm.text',
      body: '!approve',
      'm.relates_to': threadRelation(root.event_id),
    } as never,
  );
  await waitForEvent(
    (e) =>
      e.type === 'm.reaction' &&
      e.sender === bot.userId &&
      relOf(e).event_id === approval &&
      relOf(e).key === '✅',
    'the ✅ on the approval',
  );
  const result = await botSays(root.event_id, /: succeeded\./);
  const digest = /bundle (\S+)$/m.exec(bodyOf(result))?.[1] as string;
  const bundle = bundleOf(digest);
  const verdict = await verifyBundle(bundle, publicJwks(stack.keysDir));
  assert.deepEqual(verdict.problems, []);
  const request = bundle.entries.find((e) => e.type === 'request')?.body;
  assert.equal(request?.['event_id'], root.event_id);
  assert.equal(request?.['sender'], requester.userId);
  assert.equal((request?.['scheduled'] as { schedule: string }).schedule, 'readme-daily');
  assert.equal(bundle.entries.filter((e) => e.type === 'pre_approval').length, 0);
  assert.equal(bundle.entries.filter((e) => e.type === 'approval_attempt' && e.body['accepted']).length, 1);
  await handle.delete();
});

test('an interval schedule fires by itself: its run posts a plan and waits; while it waits the next runs are buffered or skipped, as its overlap policy says', async () => {
  const name = 'readme-every-3s';
  // Options other than Temporal's defaults (SKIP, a year), so the description shows they arrived.
  const checked = checkSchedule(
    options(name, { every: '3s', overlap: 'buffer-one', catchupWindow: '90s' }),
    new FilePolicyRegistry(stack.registryDir),
    new Date(),
  );
  await createSchedule(stack.temporal.client, checked, stack.taskQueue);
  const handle = stack.temporal.client.schedule.getHandle(name);
  try {
    const described = await handle.describe();
    assert.deepEqual(
      described.spec.intervals?.map((i) => i.every),
      [3000],
    );
    assert.equal(described.policies.overlap, 'BUFFER_ONE');
    assert.equal(described.policies.catchupWindow, 90_000);
    assert.equal(described.state.paused, false);

    // Nothing triggers it: the schedule's clock starts the run.
    const root = await rootOf(name);
    assert.equal(bodyOf(root), `Scheduled job ${name}: summarise the readme`);
    const job = stack.temporal.client.workflow.getHandle(jobWorkflowId(room, root.event_id));
    const plan = await botSays(root.event_id, /^Plan for job /);
    assert.match(bodyOf(plan), /Status: waiting for approval/);
    assert.equal((await job.query(statusQuery)).status, 'awaiting_approval');

    // The run waits with its job; of the fires meanwhile one is buffered and the rest skipped.
    let info = described.info;
    for (const deadline = Date.now() + 20_000; info.numActionsSkippedOverlap === 0;) {
      assert.ok(Date.now() < deadline, `no fire was skipped in 20 s: ${JSON.stringify(info)}`);
      await new Promise((r) => setTimeout(r, 500));
      info = (await handle.describe()).info;
    }
    assert.equal(info.numActionsTaken, 1, 'one run only');
    assert.equal(info.runningActions.length, 1);
    const run = info.runningActions[0]?.workflow.workflowId ?? '';
    assert.ok(run.startsWith(`${scheduleWorkflowId(name)}-`), run);
    assert.equal((await job.describe()).status.name, 'RUNNING', 'the job still waits for its approval');
    await handle.delete();
    await job.terminate('the interval schedule test is over');
    await stack.temporal.client.workflow.getHandle(run).terminate('the interval schedule test is over');
  } finally {
    await handle.delete().catch(() => {});
  }
});

test('a pre-approved schedule, allowed by policy, runs without waiting and its bundle says who pre-approved', async () => {
  const policyHash = await stack.activatePolicy({
    channel: 'matrix',
    rooms: [room],
    requesters: [requester.userId],
    approvers: [approver.userId],
    schedules: { pre_approval: { allowed: true, approvers: [approver.userId] } },
  });
  const { handle } = await create('readme-pre', { preApprovedBy: approver.userId });
  await handle.trigger();
  const root = await rootOf('readme-pre');
  await botSays(
    root.event_id,
    new RegExp(`pre-approved by ${approver.userId.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`),
  );
  const result = await botSays(root.event_id, /: succeeded\./);
  const bundle = bundleOf(/bundle (\S+)$/m.exec(bodyOf(result))?.[1] as string);
  const verdict = await verifyBundle(bundle, publicJwks(stack.keysDir));
  assert.deepEqual(verdict.problems, []);
  const pre = bundle.entries.filter((e) => e.type === 'pre_approval');
  assert.equal(pre.length, 1);
  assert.equal(pre[0]?.body['approver'], approver.userId);
  assert.equal(pre[0]?.body['event_id'], root.event_id);
  assert.equal(pre[0]?.body['policy_hash'], policyHash);
  assert.equal(pre[0]?.body['created_under_policy_hash'], policyHash);
  assert.match(String(pre[0]?.body['pre_approved_at']), /^\d{4}-\d{2}-\d{2}T/);
  assert.equal(
    bundle.entries.filter((e) => e.type === 'approval_attempt').length,
    0,
    'no one approved in the room',
  );
  await handle.delete();
});

test('without the policy allowing it, creating a pre-approved schedule is refused and nothing is created', async () => {
  await stack.activatePolicy({
    channel: 'matrix',
    rooms: [room],
    requesters: [requester.userId],
    approvers: [approver.userId],
  });
  const { temporal } = testServers();
  const bin = new URL('../../bin/clawgate', import.meta.url).pathname;
  const run = await new Promise<{ code: number; stderr: string }>((resolve) => {
    execFile(
      bin,
      [
        'schedule',
        'create',
        'readme-refused',
        '--every',
        '1h',
        '--room',
        room,
        '--text',
        'summarise the readme',
        '--requester',
        requester.userId,
        '--account',
        'alpha',
        '--pre-approved-by',
        approver.userId,
        '--registry',
        stack.registryDir,
        '--address',
        temporal.address,
        '--namespace',
        temporal.namespace,
      ],
      (error, _stdout, stderr) => resolve({ code: error ? Number(error.code ?? 1) : 0, stderr }),
    );
  });
  assert.equal(run.code, 1, run.stderr);
  assert.match(
    run.stderr,
    /^clawgate: --pre-approved-by \S+ refused under policy [0-9a-f]{64} \(channel matrix\): the policy does not allow pre-approved schedules/,
  );
  await assert.rejects(
    stack.temporal.client.schedule.getHandle('readme-refused').describe(),
    (error: unknown) => error instanceof ScheduleNotFoundError,
  );
});
