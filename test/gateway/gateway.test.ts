// The gateway end to end: a real gateway process with two bot accounts on the real Synapse,
// real human users with their own clients, the real Temporal dev server, and a real worker
// (sandbox, proxy, sealed bundles). Everything a person sees happens in the rooms.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { Direction } from 'matrix-js-sdk';
import { verifyBundle } from '../../src/evidence/bundle.ts';
import type { RegisteredUser } from '../../src/devstack/synapse.ts';
import type { ClawgateConfigInput } from '../../src/config/config.ts';
import { GATEWAY_FAULTS } from '../../src/ingress/gateway.ts';
import { jobWorkflowId, shortJobId } from '../../src/ingress/job-ids.ts';
import { publicJwks } from '../../src/keys/keyring.ts';
import { statusQuery } from '../../src/temporal/job-contract.ts';
import { threadRelation } from '../../src/ingress/matrix-io.ts';
import { GatewayProcess, gatewayTestConfig } from '../harness/gateway-process.ts';
import { recordHistory } from '../harness/histories.ts';
import { MatrixTestUser } from '../harness/matrix-user.ts';
import { registerTestUser, testServers } from '../harness/servers.ts';
import { startWorkerStack, type WorkerStack } from '../harness/stack.ts';

let stack: WorkerStack;
let dir: string;
let botA: RegisteredUser;
let botB: RegisteredUser;
let approver: MatrixTestUser;
let mallory: MatrixTestUser;
let requesters: Record<string, MatrixTestUser>;
let room1: string;
let room2: string;
let room3: string;
let gateway: GatewayProcess;
let config: ClawgateConfigInput;

const REQUESTERS = ['reqa', 'reqb', 'reqc', 'reqd', 'reqe', 'reqf', 'flooder', 'reqg', 'reqh'];

before(async () => {
  stack = await startWorkerStack();
  dir = mkdtempSync(join(tmpdir(), 'clawgate-gateway-'));
  [botA, botB] = await Promise.all([registerTestUser('bota'), registerTestUser('botb')]);
  const humans = await Promise.all(
    ['approver', 'mallory', ...REQUESTERS].map((n) => MatrixTestUser.create(n)),
  );
  [approver, mallory] = humans as [MatrixTestUser, MatrixTestUser];
  requesters = Object.fromEntries(REQUESTERS.map((n, i) => [n, humans[i + 2] as MatrixTestUser]));
  const r = requesters;
  const owner = r['reqa'] as MatrixTestUser;
  const makeRoom = async (name: string, bot: RegisteredUser, members: MatrixTestUser[]) => {
    const roomId = await owner.createRoom({ name, invite: [bot.userId, ...members.map((m) => m.userId)] });
    for (const m of members) {
      await m.waitForMembership(roomId, 'invite');
      await m.joinRoom(roomId);
    }
    return roomId;
  };
  const pick = (...names: string[]) => names.map((n) => r[n] as MatrixTestUser);
  room1 = await makeRoom('ops', botA, [approver, mallory, ...pick('reqb', 'reqc', 'reqd', 'reqe', 'reqf')]);
  room2 = await makeRoom('infra', botB, [approver, mallory, ...pick('reqe', 'reqf')]);
  room3 = await makeRoom('busy', botA, [approver, ...pick('flooder', 'reqg', 'reqh')]);
  await stack.activatePolicy({
    channel: 'matrix',
    rooms: [room1, room2, room3],
    requesters: Object.values(r).map((u) => u.userId),
    approvers: [approver.userId],
    limits: { requests_per_requester_per_hour: 3, open_jobs_per_room: 4 },
  });
  config = gatewayTestConfig(dir, stack, [
    {
      id: 'alpha',
      userId: botA.userId,
      accessToken: botA.accessToken,
      rooms: [room1, room3],
    },
    {
      id: 'beta',
      userId: botB.userId,
      // This account logs in with its password (once: the token it gets is kept).
      password: botB.password,
      rooms: [room2],
    },
  ]);
  gateway = await GatewayProcess.start(config, { dir });
  // The bots accept their invites on their first sync.
  for (const [roomId, bot] of [
    [room1, botA],
    [room2, botB],
    [room3, botA],
  ] as const) {
    await approver.waitForJoin(roomId, bot.userId);
  }
});

after(async () => {
  await gateway?.kill('SIGTERM');
  for (const user of [approver, mallory, ...Object.values(requesters ?? {})]) user?.stop();
  await stack?.close();
});

async function send(
  user: MatrixTestUser,
  roomId: string,
  body: string,
  opts: { thread?: string; content?: Record<string, unknown> } = {},
): Promise<string> {
  const content: Record<string, unknown> = { msgtype: 'm.text', body };
  if (opts.thread) content['m.relates_to'] = threadRelation(opts.thread);
  Object.assign(content, opts.content);
  const { event_id: eventId } = await user.client.sendEvent(
    roomId,
    'm.room.message' as never,
    content as never,
  );
  return eventId;
}

const bodyOf = (e: RawEvent) => (typeof e.content['body'] === 'string' ? e.content['body'] : '');
const relOf = (e: RawEvent) =>
  (e.content['m.relates_to'] ?? {}) as {
    rel_type?: string;
    event_id?: string;
    key?: string;
    'm.in_reply_to'?: { event_id?: string };
  };

interface RawEvent {
  event_id: string;
  type: string;
  sender: string;
  content: Record<string, unknown>;
}

/** The room's latest events as the server has them (a client's live timeline can be reset). */
async function serverEvents(viewer: MatrixTestUser, roomId: string): Promise<RawEvent[]> {
  const res = await viewer.client.createMessagesRequest(roomId, null, 500, Direction.Backward);
  return (res.chunk as unknown as RawEvent[]).reverse();
}

async function waitForServerEvent(
  viewer: MatrixTestUser,
  roomId: string,
  filter: (e: RawEvent) => boolean,
  message: string,
  timeoutMs = 30_000,
): Promise<RawEvent> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const events = await serverEvents(viewer, roomId);
    const found = events.find(filter);
    if (found) return found;
    if (Date.now() > deadline) {
      const said = events
        .filter((e) => e.type === 'm.room.message')
        .map((e) => `${e.sender}: ${bodyOf(e).slice(0, 160)}`)
        .join('\n  ');
      throw new Error(`waited ${timeoutMs} ms in ${roomId} for ${message}; the room's messages:\n  ${said}`);
    }
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** A notice from `bot` in the thread of `root` (or replying to `root`) that matches. */
async function botSays(
  viewer: MatrixTestUser,
  roomId: string,
  bot: string,
  root: string,
  pattern: RegExp,
  timeoutMs = 30_000,
): Promise<RawEvent> {
  return await waitForServerEvent(
    viewer,
    roomId,
    (e) => {
      const rel = relOf(e);
      const about = rel.event_id === root || rel['m.in_reply_to']?.event_id === root;
      return e.sender === bot && e.type === 'm.room.message' && about && pattern.test(bodyOf(e));
    },
    `${bot} saying ${pattern} about ${root}`,
    timeoutMs,
  );
}

async function botMessages(
  viewer: MatrixTestUser,
  roomId: string,
  bot: string,
  filter: (e: RawEvent) => boolean,
) {
  return (await serverEvents(viewer, roomId)).filter((e) => e.sender === bot && filter(e));
}

async function reaction(viewer: MatrixTestUser, roomId: string, bot: string, eventId: string, key: string) {
  return await waitForServerEvent(
    viewer,
    roomId,
    (e) =>
      e.type === 'm.reaction' && e.sender === bot && relOf(e).event_id === eventId && relOf(e).key === key,
    `${bot} reacting ${key} to ${eventId}`,
  );
}

async function requestJob(
  user: MatrixTestUser,
  roomId: string,
  bot: string,
  text = '!claw summarise the readme',
) {
  const eventId = await send(user, roomId, text);
  const plan = await botSays(user, roomId, bot, eventId, /^Plan for job j[a-z2-7]{9}/);
  const jobId = /^Plan for job (j[a-z2-7]{9})/.exec(bodyOf(plan))?.[1] as string;
  assert.equal(jobId, shortJobId(jobWorkflowId(roomId, eventId)), 'the plan shows the short id of the job');
  return { eventId, plan, jobId, workflowId: jobWorkflowId(roomId, eventId) };
}

async function approveAndFinish(user: MatrixTestUser, roomId: string, bot: string, eventId: string) {
  const approval = await send(approver, roomId, '!approve', { thread: eventId });
  await reaction(user, roomId, bot, approval, '✅');
  const result = await botSays(user, roomId, bot, eventId, /: succeeded\./, 60_000);
  const digest = /bundle (\S+)$/m.exec(bodyOf(result))?.[1] as string;
  return { approval, digest };
}

async function clawgate(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const bin = new URL('../../bin/clawgate', import.meta.url).pathname;
  return await new Promise((resolve) => {
    execFile(bin, args, (error, stdout, stderr) => {
      resolve({ code: error ? Number(error.code ?? 1) : 0, stdout, stderr });
    });
  });
}

const bundleOf = (digest: string) =>
  JSON.parse(readFileSync(join(stack.bundleDir, `${digest}.json`), 'utf8'));

test("a whole job from a person's message: request, plan in its thread, !approve, result with the bundle digest", async () => {
  const user = requesters['reqa'] as MatrixTestUser;
  const { eventId, plan, jobId } = await requestJob(user, room1, botA.userId);
  assert.match(bodyOf(plan), /Status: waiting for approval/);
  const { digest } = await approveAndFinish(user, room1, botA.userId, eventId);
  const verdict = await verifyBundle(bundleOf(digest), publicJwks(stack.keysDir));
  assert.deepEqual(verdict.problems, []);
  assert.equal(verdict.ok, true);
  // The status line under the plan was edited in place to the outcome.
  await waitForServerEvent(
    user,
    room1,
    (e) =>
      e.sender === botA.userId &&
      relOf(e).event_id === plan.event_id &&
      relOf(e).rel_type === 'm.replace' &&
      /Status: succeeded/.test(String((e.content['m.new_content'] as { body?: string })?.body)),
    'the status line edited to succeeded',
  );
  await recordHistory({ workflowId: jobWorkflowId(room1, eventId) }, 'gateway-whole-job-approved-fast-path');
  // The auditor's command: the sealed bundle verifies offline; one changed byte names its entry.
  const file = join(stack.bundleDir, `${digest}.json`);
  const verified = await clawgate('verify', file, '--keys', stack.keysDir);
  assert.equal(verified.code, 0, verified.stderr);
  assert.match(verified.stdout, /^ok: \d+ entries verified; bundle digest /);
  const text = readFileSync(file, 'utf8');
  const at = text.indexOf('summarise the readme');
  const tamperedFile = join(dir, 'tampered.json');
  writeFileSync(tamperedFile, `${text.slice(0, at)}S${text.slice(at + 1)}`);
  const refused = await clawgate('verify', tamperedFile, '--keys', stack.keysDir);
  assert.equal(refused.code, 1);
  assert.match(refused.stdout, /^entry 1 \(request\): /m);
  assert.match(refused.stderr, /the bundle does not verify/);
  // The incident responder's command: the history replays against the code and matches the bundle.
  const { temporal } = testServers();
  const replayed = await clawgate(
    'replay',
    jobWorkflowId(room1, eventId),
    '--address',
    temporal.address,
    '--namespace',
    temporal.namespace,
    '--bundles',
    stack.bundleDir,
    '--keys',
    stack.keysDir,
  );
  assert.equal(replayed.code, 0, `${replayed.stdout}${replayed.stderr}`);
  assert.match(replayed.stdout, /^replay: the current code reproduces the history$/m);
  assert.match(replayed.stdout, /^ok: history and bundle agree$/m);
  // !status by id, outside the thread, answers as a reply.
  const asked = await send(user, room1, `!status ${jobId}`);
  const answer = await botSays(user, room1, botA.userId, asked, new RegExp(`^Job ${jobId}: succeeded`));
  assert.match(bodyOf(answer), new RegExp(`bundle ${digest}`));
});

test('killed right after a request and right after an !approve: the job starts once and is approved once', async () => {
  const user = requesters['reqb'] as MatrixTestUser;
  await gateway.kill('SIGTERM');
  gateway = await GatewayProcess.start(config, { dir, fault: GATEWAY_FAULTS.crashBeforeSyncToken });
  const eventId = await send(user, room1, '!claw summarise the readme');
  const died = await gateway.exited;
  assert.equal(died.signal, 'SIGKILL', 'the gateway died between the job start and saving its sync position');
  const workflowId = jobWorkflowId(room1, eventId);
  const handle = stack.temporal.client.workflow.getHandle(workflowId);
  assert.equal((await handle.describe()).status.name, 'RUNNING', 'the job was started before the crash');

  gateway = await GatewayProcess.start(config, { dir });
  await gateway.waitForLog(
    (l) => l['workflowId'] === workflowId && /redelivered/.test(String(l['msg'])),
    30_000,
    'the request coming again',
  );
  await botSays(user, room1, botA.userId, eventId, /^Plan for job/);
  await gateway.kill('SIGTERM');

  gateway = await GatewayProcess.start(config, { dir, fault: GATEWAY_FAULTS.crashBeforeSyncToken });
  const approval = await send(approver, room1, '!approve', { thread: eventId });
  assert.equal((await gateway.exited).signal, 'SIGKILL');
  gateway = await GatewayProcess.start(config, { dir });
  const result = await botSays(user, room1, botA.userId, eventId, /: succeeded\./, 60_000);
  const bundle = bundleOf(/bundle (\S+)$/m.exec(bodyOf(result))?.[1] as string);
  const attempts = bundle.entries.filter((e: { type: string }) => e.type === 'approval_attempt');
  assert.equal(
    attempts.filter((e: { body: { accepted: boolean } }) => e.body.accepted).length,
    1,
    'approved once',
  );
  assert.ok(attempts.every((e: { body: { eventId: string } }) => e.body.eventId === approval));
  const plans = await botMessages(
    user,
    room1,
    botA.userId,
    (e) => /^Plan for job/.test(bodyOf(e)) && relOf(e).event_id === eventId,
  );
  assert.equal(plans.length, 1, 'one plan posted: one job');
  const ticks = (await serverEvents(user, room1)).filter(
    (e) => e.type === 'm.reaction' && relOf(e).event_id === approval,
  );
  assert.equal(ticks.length, 1, 'the approval is answered once');
});

test('an approval sent while the gateway is down, behind more messages than a sync holds, is acted on after it restarts', async () => {
  const user = requesters['reqc'] as MatrixTestUser;
  const { eventId, jobId } = await requestJob(user, room1, botA.userId);
  await gateway.kill('SIGKILL');
  const approval = await send(approver, room1, '!approve', { thread: eventId });
  // More chatter than one sync hands over per room: the approval is in the gap the gateway
  // has to read back.
  for (let i = 0; i < 60; i++) await send(mallory, room1, `chatter ${i}`);
  gateway = await GatewayProcess.start(config, { dir });
  await reaction(user, room1, botA.userId, approval, '✅');
  const gap = await gateway.waitForLog((l) => /sync gap/.test(String(l['msg'])), 10_000, 'a gap read back');
  assert.ok(Number(gap['events']) >= 1);
  await botSays(user, room1, botA.userId, eventId, /: succeeded\./, 60_000);
  // A job started by the gateway before its restart is found by its short id (visibility).
  const asked = await send(user, room1, `!status ${jobId}`);
  await botSays(user, room1, botA.userId, asked, new RegExp(`^Job ${jobId}: succeeded`));
});

test('spoofing from the room is refused and explained; the genuine approval then counts', async () => {
  const user = requesters['reqd'] as MatrixTestUser;
  const { eventId, jobId, workflowId } = await requestJob(user, room1, botA.userId);
  // A non-approver.
  const byMallory = await send(mallory, room1, '!approve', { thread: eventId });
  await reaction(user, room1, botA.userId, byMallory, '❌');
  await botSays(
    user,
    room1,
    botA.userId,
    eventId,
    new RegExp(`^${escape(mallory.userId)}: not counted\\..*not on the approver allowlist`),
  );
  // A display name copied from the approver changes nothing: user ids count.
  await approver.client.setDisplayName('Alice Approver');
  await mallory.client.setDisplayName('Alice Approver');
  const disguised = await send(mallory, room1, '!approve', { thread: eventId });
  await reaction(user, room1, botA.userId, disguised, '❌');
  // An edit that adds !approve.
  const innocent = await send(approver, room1, 'looks fine to me', { thread: eventId });
  const edit = await send(approver, room1, '* !approve', {
    content: {
      'm.new_content': { msgtype: 'm.text', body: '!approve' },
      'm.relates_to': { rel_type: 'm.replace', event_id: innocent },
    },
  });
  await botSays(user, room1, botA.userId, edit, /an edit is not read as a command/);
  // A reply quoting an earlier !approve.
  const quoting = await send(mallory, room1, `> <${approver.userId}> !approve\n\nagreed`, {
    thread: eventId,
    content: {},
  });
  await botSays(user, room1, botA.userId, eventId, /a quoted command is not acted on/);
  void quoting;
  // An approval whose formatted text, the one the room shows, says the opposite.
  const html = (formatted: string) => ({ format: 'org.matrix.custom.html', formatted_body: formatted });
  const opposite = await send(approver, room1, '!approve', {
    thread: eventId,
    content: html('I do <b>NOT</b> approve this. Do not run it.'),
  });
  await reaction(user, room1, botA.userId, opposite, '❌');
  await botSays(
    user,
    room1,
    botA.userId,
    eventId,
    new RegExp(
      `^${escape(approver.userId)}: not counted\\. what the room shows is not this command: the formatted text says "I do NOT approve`,
    ),
  );
  // One the room shows struck out.
  const struck = await send(approver, room1, '!approve', {
    thread: eventId,
    content: html('<del>!approve</del>'),
  });
  await reaction(user, room1, botA.userId, struck, '❌');
  // An emote (`/me !approve`).
  await send(approver, room1, '!approve', { thread: eventId, content: { msgtype: 'm.emote' } });
  await botSays(user, room1, botA.userId, eventId, /an emote \(\/me\) is not read as a command/);
  // Formatted text that shows an approval its plain body does not hold.
  await send(approver, room1, 'fine by me', { thread: eventId, content: html('!approve') });
  await botSays(
    user,
    room1,
    botA.userId,
    eventId,
    /this message is not acted on: the formatted text shows a command/,
  );
  // An approval for this job from another room.
  const elsewhere = await send(mallory, room2, `!approve ${jobId}`);
  await botSays(mallory, room2, botB.userId, elsewhere, /belongs to another room/);

  const view = await stack.temporal.client.workflow.getHandle(workflowId).query(statusQuery);
  assert.equal(view.status, 'awaiting_approval');
  assert.deepEqual(
    view.approvals.map((a) => [a.sender, a.accepted]),
    [
      [mallory.userId, false],
      [mallory.userId, false],
      [approver.userId, false],
      [approver.userId, false],
      [mallory.userId, false],
    ],
  );
  assert.match(view.approvals[4]?.reason ?? '', /belongs to room/);
  // Nothing was said about it in this job's room.
  assert.equal(
    (await botMessages(user, room1, botA.userId, (e) => relOf(e).event_id === elsewhere)).length,
    0,
  );
  const { digest, approval } = await approveAndFinish(user, room1, botA.userId, eventId);
  // The approval edited afterwards to say the opposite: the sender is told the original stands.
  const reversal = await send(approver, room1, '* I do NOT approve', {
    content: {
      'm.new_content': { msgtype: 'm.text', body: 'I do NOT approve' },
      'm.relates_to': { rel_type: 'm.replace', event_id: approval },
    },
  });
  await botSays(
    user,
    room1,
    botA.userId,
    reversal,
    /an edit does not change a command clawgate has read: "!approve" stands as first sent \(the job's evidence keeps it\); to withdraw an approval, send !deny or !cancel/,
  );
  const bundle = bundleOf(digest);
  type Attempt = {
    body: {
      sender: string;
      accepted: boolean;
      code: string | null;
      content: { sha256: string; shown: string };
    };
  };
  const attempts: Attempt[] = bundle.entries.filter((e: { type: string }) => e.type === 'approval_attempt');
  assert.deepEqual(
    attempts.map((e) => [e.body.sender, e.body.accepted, e.body.code]),
    [
      [mallory.userId, false, 'APPROVAL_NOT_APPROVER'],
      [mallory.userId, false, 'APPROVAL_NOT_APPROVER'],
      [approver.userId, false, 'APPROVAL_DISPLAY_MISMATCH'],
      [approver.userId, false, 'APPROVAL_DISPLAY_MISMATCH'],
      [mallory.userId, false, 'APPROVAL_WRONG_ROOM'],
      [approver.userId, true, null],
    ],
  );
  // What each decision was taken on is kept: the content's canonical hash and the shown text.
  assert.deepEqual(
    attempts.map((e) => e.body.content.shown),
    [
      '!approve',
      '!approve',
      'I do NOT approve this. Do not run it.',
      '!approve',
      `!approve ${jobId}`,
      '!approve',
    ],
  );
  for (const a of attempts) assert.match(a.body.content.sha256, /^[0-9a-f]{64}$/);
  const request = bundle.entries.find((e: { type: string }) => e.type === 'request');
  assert.equal(request.body.content.shown, '!claw summarise the readme');
  await recordHistory({ workflowId }, 'gateway-spoofed-approvals');
});

function escape(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

test('two bot accounts in two rooms handle interleaved jobs; every message lands in its own room', async () => {
  const e = requesters['reqe'] as MatrixTestUser;
  const f = requesters['reqf'] as MatrixTestUser;
  const sent = [
    { user: e, room: room1, bot: botA.userId },
    { user: e, room: room2, bot: botB.userId },
    { user: f, room: room1, bot: botA.userId },
    { user: f, room: room2, bot: botB.userId },
  ];
  const requests = await Promise.all(
    sent.map(async (s) => ({
      ...s,
      eventId: await send(s.user, s.room, `!claw summarise the readme (${s.room})`),
    })),
  );
  for (const r of requests) await botSays(r.user, r.room, r.bot, r.eventId, /^Plan for job/);
  await Promise.all(requests.map((r) => approveAndFinish(r.user, r.room, r.bot, r.eventId)));
  // Each room's thread roots are its own requests, and only its own bot speaks in it.
  for (const [roomId, bot, other] of [
    [room1, botA.userId, botB.userId],
    [room2, botB.userId, botA.userId],
  ] as const) {
    const own = new Set(requests.filter((r) => r.room === roomId).map((r) => r.eventId));
    const foreign = new Set(requests.filter((r) => r.room !== roomId).map((r) => r.eventId));
    const timeline = await serverEvents(e, roomId);
    assert.equal(
      timeline.filter((ev) => ev.sender === other).length,
      0,
      `${other} said nothing in ${roomId}`,
    );
    const roots = timeline
      .filter((ev) => ev.sender === bot)
      .map((ev) => relOf(ev).event_id)
      .filter((id): id is string => id !== undefined);
    assert.ok(
      roots.every((id) => !foreign.has(id)),
      "no message about another room's job",
    );
    assert.ok(
      [...own].every((id) => roots.includes(id)),
      'every job of the room was answered in it',
    );
  }
});

test('flooding: the per-requester limit and the per-room cap answer clearly; others are still served; the loop survives bad events', async () => {
  const flooder = requesters['flooder'] as MatrixTestUser;
  const first = [];
  for (let i = 0; i < 4; i++) first.push(await send(flooder, room3, `!claw job number ${i}`));
  for (const id of first.slice(0, 3)) await botSays(flooder, room3, botA.userId, id, /^Plan for job/);
  await botSays(
    flooder,
    room3,
    botA.userId,
    first[3] as string,
    /asked for 3 jobs in the last hour and the policy allows 3/,
  );
  // Another requester is not starved: the room's fourth open job starts.
  const g = requesters['reqg'] as MatrixTestUser;
  const fourth = await send(g, room3, '!claw one more');
  await botSays(g, room3, botA.userId, fourth, /^Plan for job/);
  // The room's cap of four open jobs.
  const h = requesters['reqh'] as MatrixTestUser;
  const fifth = await send(h, room3, '!claw and another');
  await botSays(h, room3, botA.userId, fifth, /this room has 4 open jobs and the policy allows 4/);
  // Malformed and oversized content is refused without stopping the sync loop.
  // (The homeserver itself refuses a body or msgtype that is not text.)
  await flooder.client.sendEvent(
    room3,
    'm.room.message' as never,
    { msgtype: 'm.file', body: '!claw x' } as never,
  );
  await flooder.client.sendEvent(
    room3,
    'm.room.message' as never,
    {
      msgtype: 'm.text',
      body: 'hello',
      'm.relates_to': ['not', 'an', 'object'],
    } as never,
  );
  const long = await send(h, room3, `!claw ${'x'.repeat(5000)}`);
  await botSays(h, room3, botA.userId, long, /5000 characters long, at most 4000/);
  // !cancel: refused to someone who is neither requester nor approver, done for the requester.
  const target = first[0] as string;
  const notMine = await send(g, room3, '!cancel', { thread: target });
  void notMine;
  await botSays(
    g,
    room3,
    botA.userId,
    target,
    /!cancel not accepted\. .*neither the requester nor an approver/,
  );
  await send(flooder, room3, '!cancel', { thread: target });
  await botSays(
    flooder,
    room3,
    botA.userId,
    target,
    new RegExp(`cancelled\\. cancelled by ${escape(flooder.userId)} in the room`),
  );
  await stack.temporal.client.workflow.getHandle(jobWorkflowId(room3, target)).result();
  await recordHistory({ workflowId: jobWorkflowId(room3, target) }, 'gateway-cancelled-in-room');
  const help = await send(g, room3, '!help');
  const answer = await botSays(g, room3, botA.userId, help, /^clawgate commands:/);
  assert.match(bodyOf(answer), /!approve \[job\] \[plan hash\]/);
});

test('an invite to a room not on the list is not accepted, and nothing there is acted on', async () => {
  const owner = requesters['reqa'] as MatrixTestUser;
  const stray = await owner.createRoom({ name: 'stray', invite: [botA.userId] });
  const ignored = await send(owner, stray, '!claw do something here');
  // A round trip in a listed room shows the gateway has synced past both.
  const ping = await send(owner, room1, '!help');
  await botSays(owner, room1, botA.userId, ping, /^clawgate commands:/);
  const members = await owner.client.getJoinedRoomMembers(stray);
  assert.deepEqual(Object.keys(members.joined), [owner.userId], 'the bot did not join');
  await assert.rejects(
    stack.temporal.client.workflow.getHandle(jobWorkflowId(stray, ignored)).describe(),
    /not found/i,
  );
  // The password login was kept: the restarted gateway used the same device.
  const credentials = JSON.parse(
    readFileSync(join(dir, 'state', 'gateway', 'accounts', 'beta', 'credentials.json'), 'utf8'),
  ) as { deviceId: string; userId: string };
  assert.equal(credentials.userId, botB.userId);
  const devices = await fetch(`${testServers().synapse.baseUrl}/_matrix/client/v3/devices`, {
    headers: { authorization: `Bearer ${botB.accessToken}` },
  }).then((r) => r.json() as Promise<{ devices: Array<{ device_id: string }> }>);
  assert.equal(
    devices.devices
      .filter((d) => d.device_id !== botB.deviceId)
      .map((d) => d.device_id)
      .join(),
    credentials.deviceId,
    'one device made by the password login, across every restart',
  );
});

test('health: every account syncing, with its lag and start latency', async () => {
  const res = await fetch(gateway.healthUrl);
  assert.equal(res.status, 200);
  const health = (await res.json()) as { ok: boolean; accounts: Array<Record<string, unknown>> };
  assert.equal(health.ok, true);
  assert.deepEqual(
    health.accounts.map((a) => [a['id'], a['userId'], a['state']]),
    [
      ['alpha', botA.userId, 'syncing'],
      ['beta', botB.userId, 'syncing'],
    ],
  );
  for (const a of health.accounts) assert.equal(typeof a['syncLagMs'], 'number');
  const alpha = health.accounts[0] as { startLatencyMs: { count: number; p50: number } };
  assert.ok(alpha.startLatencyMs.count > 0 && alpha.startLatencyMs.p50 >= 0);
});
