// Answers to approval cards, from the room to the job: `!approve <card>` and `!deny <card>` in
// a job's thread, and ✅ / ❌ reactions on a card message the bot posted. A real gateway process
// on the real Synapse, the real Temporal dev server and a real worker. The jobs are fixed-step
// jobs, which post no cards: every answer reaches its job and is refused there for want of the
// card, which is what shows the routing. The cards reacted to are posted as the bot.
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { Direction } from 'matrix-js-sdk';
import type { RegisteredUser } from '../../src/devstack/synapse.ts';
import type { ClawgateConfigInput } from '../../src/config/config.ts';
import { GATEWAY_FAULTS } from '../../src/ingress/gateway.ts';
import { threadRelation } from '../../src/ingress/matrix-io.ts';
import { CALL_CARD_FIELD, statusQuery, type JobStatusView } from '../../src/temporal/job-contract.ts';
import { jobWorkflowId } from '../../src/ingress/job-ids.ts';
import { GatewayProcess, gatewayTestConfig } from '../harness/gateway-process.ts';
import { MatrixTestUser } from '../harness/matrix-user.ts';
import { registerTestUser, testServers } from '../harness/servers.ts';
import { startWorkerStack, type WorkerStack } from '../harness/stack.ts';

let stack: WorkerStack;
let dir: string;
let bot: RegisteredUser;
let requester: MatrixTestUser;
let approver: MatrixTestUser;
let mallory: MatrixTestUser;
let roomA: string;
let roomB: string;
let gateway: GatewayProcess;
let config: ClawgateConfigInput;
/** A job in each room, waiting for its plan's approval (fixed-step jobs post no cards). */
let jobA: { eventId: string; workflowId: string };
let jobB: { eventId: string; workflowId: string };

before(async () => {
  stack = await startWorkerStack();
  dir = mkdtempSync(join(tmpdir(), 'clawgate-cards-'));
  bot = await registerTestUser('cardbot');
  [requester, approver, mallory] = (await Promise.all(
    ['cardreq', 'cardappr', 'cardmal'].map((n) => MatrixTestUser.create(n)),
  )) as [MatrixTestUser, MatrixTestUser, MatrixTestUser];
  const makeRoom = async (name: string) => {
    const roomId = await requester.createRoom({
      name,
      invite: [bot.userId, approver.userId, mallory.userId],
    });
    for (const m of [approver, mallory]) {
      await m.waitForMembership(roomId, 'invite');
      await m.joinRoom(roomId);
    }
    return roomId;
  };
  roomA = await makeRoom('cards');
  roomB = await makeRoom('other cards');
  await stack.activatePolicy({
    channel: 'matrix',
    rooms: [roomA, roomB],
    requesters: [requester.userId],
    approvers: [approver.userId],
  });
  // One bot account in both rooms: it could post a card of either room's job anywhere.
  config = gatewayTestConfig(dir, stack, [
    { id: 'cards', userId: bot.userId, accessToken: bot.accessToken, rooms: [roomA, roomB] },
  ]);
  gateway = await GatewayProcess.start(config, { dir });
  for (const roomId of [roomA, roomB]) {
    await approver.waitForJoin(roomId, bot.userId);
  }
  jobA = await requestJob(roomA);
  jobB = await requestJob(roomB);
});

after(async () => {
  await gateway?.kill('SIGTERM');
  for (const user of [requester, approver, mallory]) user?.stop();
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

async function react(user: MatrixTestUser, roomId: string, target: string, key: string): Promise<string> {
  const { event_id: eventId } = await user.client.sendEvent(
    roomId,
    'm.reaction' as never,
    { 'm.relates_to': { rel_type: 'm.annotation', event_id: target, key } } as never,
  );
  return eventId;
}

let txn = 0;
/** Sends an event as the bot itself (its account's token), past the gateway. */
async function sendAsBot(roomId: string, type: string, content: Record<string, unknown>): Promise<string> {
  txn += 1;
  const url = `${testServers().synapse.baseUrl}/_matrix/client/v3/rooms/${encodeURIComponent(roomId)}/send/${type}/test-${Date.now()}-${txn}`;
  const res = await fetch(url, {
    method: 'PUT',
    headers: { authorization: `Bearer ${bot.accessToken}`, 'content-type': 'application/json' },
    body: JSON.stringify(content),
  });
  const json = (await res.json()) as { event_id?: string; error?: string };
  if (!res.ok || !json.event_id) throw new Error(`sending as the bot: ${res.status} ${json.error}`);
  return json.event_id;
}

/** A card message as the workflow posts one: a notice in the job's thread naming card and job. */
function cardContent(root: string, cardId: string, workflowId: string): Record<string, unknown> {
  return {
    msgtype: 'm.notice',
    body: `Approval card ${cardId}: run a call? React ✅ or ❌, or send !approve ${cardId}.`,
    'm.relates_to': threadRelation(root),
    [CALL_CARD_FIELD]: { card_id: cardId, workflow_id: workflowId },
  };
}

async function serverEvents(viewer: MatrixTestUser, roomId: string): Promise<RawEvent[]> {
  const res = await viewer.client.createMessagesRequest(roomId, null, 500, Direction.Backward);
  return (res.chunk as unknown as RawEvent[]).reverse();
}

/** A notice from the bot about `about` (in its thread, or replying to it) that matches. */
async function botSays(
  roomId: string,
  about: string,
  pattern: RegExp,
  timeoutMs = 30_000,
): Promise<RawEvent> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const events = await serverEvents(requester, roomId);
    const found = events.find((e) => {
      const rel = relOf(e);
      const related = rel.event_id === about || rel['m.in_reply_to']?.event_id === about;
      return e.sender === bot.userId && e.type === 'm.room.message' && related && pattern.test(bodyOf(e));
    });
    if (found) return found;
    if (Date.now() > deadline) {
      const said = events
        .filter((e) => e.type === 'm.room.message')
        .map((e) => `${e.sender}: ${bodyOf(e).slice(0, 160)}`)
        .join('\n  ');
      throw new Error(`waited ${timeoutMs} ms for the bot saying ${pattern} about ${about}:\n  ${said}`);
    }
    await new Promise((r) => setTimeout(r, 200));
  }
}

async function requestJob(roomId: string): Promise<{ eventId: string; workflowId: string }> {
  const eventId = await send(requester, roomId, '!claw summarise the readme');
  await botSays(roomId, eventId, /^Plan for job j[a-z2-7]{9}/);
  return { eventId, workflowId: jobWorkflowId(roomId, eventId) };
}

async function view(workflowId: string): Promise<JobStatusView> {
  return await stack.temporal.client.workflow.getHandle(workflowId).query(statusQuery);
}

type CallDecision = NonNullable<JobStatusView['callDecisions']>[number];

/** The job's record of the answer given by event `eventId`, once the job has it. */
async function callDecision(workflowId: string, eventId: string, timeoutMs = 30_000): Promise<CallDecision> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const current = await view(workflowId);
    const found = current.callDecisions?.find((d) => d.eventId === eventId);
    if (found) return found;
    if (Date.now() > deadline) {
      throw new Error(
        `${workflowId} has no call decision of ${eventId} after ${timeoutMs} ms; it has ${JSON.stringify(current.callDecisions ?? null)}`,
      );
    }
    await new Promise((r) => setTimeout(r, 200));
  }
}

async function decisionsOf(workflowId: string): Promise<CallDecision[]> {
  return (await view(workflowId)).callDecisions ?? [];
}

function escape(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

test("card commands in a job's thread reach that job as card decisions, never as approvals of its plan", async () => {
  const approved = await send(approver, roomA, '!approve c1.1', { thread: jobA.eventId });
  const decision = await callDecision(jobA.workflowId, approved);
  assert.deepEqual(
    { sender: decision.sender, cardId: decision.cardId, accepted: decision.accepted },
    { sender: approver.userId, cardId: 'c1.1', accepted: false },
  );
  assert.match(decision.reason, /no card c1\.1/);
  const forJob = await send(approver, roomA, '!approve c2.1 job', { thread: jobA.eventId });
  const denied = await send(approver, roomA, '!deny c1.2 not this one', { thread: jobA.eventId });
  const bare = await send(mallory, roomA, '!deny c1.3', { thread: jobA.eventId });
  for (const [eventId, sender, cardId] of [
    [forJob, approver.userId, 'c2.1'],
    [denied, approver.userId, 'c1.2'],
    [bare, mallory.userId, 'c1.3'],
  ] as const) {
    const d = await callDecision(jobA.workflowId, eventId);
    assert.deepEqual([d.sender, d.cardId, d.accepted], [sender, cardId, false]);
  }
  // A card command the room shows otherwise still goes to the job, which refuses it.
  const shownOtherwise = await send(approver, roomA, '!approve c1.1', {
    thread: jobA.eventId,
    content: { format: 'org.matrix.custom.html', formatted_body: '!approve c1.1 job' },
  });
  const mismatched = await callDecision(jobA.workflowId, shownOtherwise);
  assert.equal(mismatched.accepted, false);
  const current = await view(jobA.workflowId);
  assert.equal(current.status, 'awaiting_approval', "the plan's approval is untouched");
  assert.deepEqual(current.approvals, [], 'no card command was read as an approval of the plan');
});

test("a card command outside a job's thread is answered and goes nowhere; one in a thread that is no job's is answered too", async () => {
  const before = (await decisionsOf(jobA.workflowId)).length;
  const outside = await send(approver, roomA, '!approve c1.1');
  await botSays(
    roomA,
    outside,
    new RegExp(
      `^${escape(approver.userId)}: a card is answered in its job's thread; send !approve c1\\.1 there\\. Nothing was changed\\.$`,
    ),
  );
  const outsideDeny = await send(approver, roomA, '!deny c1.1 no');
  await botSays(roomA, outsideDeny, /a card is answered in its job's thread; send !deny c1\.1 there/);
  const chat = await send(requester, roomA, 'just chatting');
  const inChat = await send(approver, roomA, '!approve c1.1', { thread: chat });
  await botSays(
    roomA,
    chat,
    /this thread's job has ended \(or the thread is not a job's\); nothing was changed/,
  );
  // Malformed card commands are answered with what was wrong.
  const typo = await send(approver, roomA, '!approve c1.1 now', { thread: jobA.eventId });
  await botSays(
    roomA,
    jobA.eventId,
    /only "job" may follow the card .*not "now"\. Usage: !approve <card> \[job\]/,
  );
  const ids = new Set([outside, outsideDeny, inChat, typo]);
  const after = await decisionsOf(jobA.workflowId);
  assert.equal(after.filter((d) => ids.has(d.eventId)).length, 0, 'none of them reached the job');
  assert.equal(after.length, before);
});

test('✅ and ❌ on a card the bot posted for a job of the room reach that job; look-alikes, other rooms and the bot itself do not', async () => {
  const card = await sendAsBot(roomA, 'm.room.message', cardContent(jobA.eventId, 'c1.1', jobA.workflowId));
  const tick = await react(approver, roomA, card, '✅');
  const ticked = await callDecision(jobA.workflowId, tick);
  assert.equal(ticked.sender, approver.userId);
  assert.equal(ticked.accepted, false, 'the job posted no such card');
  assert.match(ticked.reason, /not a card of this job/);
  const cross = await react(approver, roomA, card, '❌');
  assert.equal((await callDecision(jobA.workflowId, cross)).sender, approver.userId);

  // A card the bot posted in this room naming the job of another room.
  const foreign = await sendAsBot(
    roomA,
    'm.room.message',
    cardContent(jobA.eventId, 'c1.1', jobB.workflowId),
  );
  const onForeign = await react(approver, roomA, foreign, '✅');
  // A message imitating a card, from someone other than the bot.
  const fake = await send(mallory, roomA, 'Approval card c1.1', {
    thread: jobA.eventId,
    content: { [CALL_CARD_FIELD]: { card_id: 'c1.1', workflow_id: jobA.workflowId } },
  });
  const onFake = await react(approver, roomA, fake, '✅');
  // The bot's own reaction on its card; other keys; a reaction on a bot message that is no card.
  const byBot = await sendAsBot(roomA, 'm.reaction', {
    'm.relates_to': { rel_type: 'm.annotation', event_id: card, key: '✅' },
  });
  const thumbs = await react(approver, roomA, card, '👍');
  const heavyCheck = await react(approver, roomA, card, '✔️');
  const plainNotice = await sendAsBot(roomA, 'm.room.message', {
    msgtype: 'm.notice',
    body: 'not a card',
    'm.relates_to': threadRelation(jobA.eventId),
  });
  const onNotice = await react(approver, roomA, plainNotice, '✅');
  // The events of a room are handled in order: once this one is in, all of the above were read.
  const last = await react(mallory, roomA, card, '✅');
  const fromMallory = await callDecision(jobA.workflowId, last);
  assert.deepEqual([fromMallory.sender, fromMallory.accepted], [mallory.userId, false]);

  const ignored = new Set([onForeign, onFake, byBot, thumbs, heavyCheck, onNotice]);
  for (const workflowId of [jobA.workflowId, jobB.workflowId]) {
    const decisions = await decisionsOf(workflowId);
    assert.deepEqual(
      decisions.filter((d) => ignored.has(d.eventId)).map((d) => d.eventId),
      [],
      `nothing of them reached ${workflowId}`,
    );
  }
  const routed = gateway.lines.find((l) => l['eventId'] === onForeign);
  assert.match(String(routed?.['msg']), /naming a job of another room: not routed/);
  assert.equal(routed?.['workflowId'], jobB.workflowId);
  // None of them is answered in the room: reactions are chat unless they answer a card.
  const said = (await serverEvents(requester, roomA)).filter(
    (e) =>
      e.sender === bot.userId &&
      [...ignored].some((id) => relOf(e)['m.in_reply_to']?.event_id === id || relOf(e).event_id === id),
  );
  assert.deepEqual(said, []);
});

test("a reaction on a card of a job that does not exist is answered in the card's thread", async () => {
  const chat = await send(requester, roomA, 'another plain message');
  const card = await sendAsBot(
    roomA,
    'm.room.message',
    cardContent(chat, 'c1.1', jobWorkflowId(roomA, chat)),
  );
  const tick = await react(approver, roomA, card, '✅');
  const answer = await botSays(roomA, chat, /this thread's job has ended \(or the thread is not a job's\)/);
  assert.equal(relOf(answer)['m.in_reply_to']?.event_id, card, 'the answer replies to the card');
  void tick;
});

test('edits: one that adds a card command is not read; one of a card command is told the command stands', async () => {
  const innocent = await send(approver, roomA, 'looks fine to me', { thread: jobA.eventId });
  const edit = await send(approver, roomA, '* !approve c1.1', {
    content: {
      'm.new_content': { msgtype: 'm.text', body: '!approve c1.1' },
      'm.relates_to': { rel_type: 'm.replace', event_id: innocent },
    },
  });
  await botSays(roomA, edit, /an edit is not read as a command; send the command as a new message\./);
  const original = await send(approver, roomA, '!approve c1.4', { thread: jobA.eventId });
  await callDecision(jobA.workflowId, original);
  const reversal = await send(approver, roomA, '* I do NOT approve', {
    content: {
      'm.new_content': { msgtype: 'm.text', body: 'I do NOT approve' },
      'm.relates_to': { rel_type: 'm.replace', event_id: original },
    },
  });
  await botSays(
    roomA,
    reversal,
    /an edit does not change a command clawgate has read: "!approve c1\.4" stands as first sent \(the job's evidence keeps it\); to stop the job, send !cancel\./,
  );
  const denial = await send(approver, roomA, '!deny c1.5 too risky', { thread: jobA.eventId });
  await callDecision(jobA.workflowId, denial);
  const softened = await send(approver, roomA, '* !deny c1.5', {
    content: {
      'm.new_content': { msgtype: 'm.text', body: '!deny c1.5' },
      'm.relates_to': { rel_type: 'm.replace', event_id: denial },
    },
  });
  await botSays(roomA, softened, /an edit is not read as a command/);
  for (const id of [edit, reversal, softened]) {
    assert.equal((await decisionsOf(jobA.workflowId)).filter((d) => d.eventId === id).length, 0);
  }
});

test('killed right after a reaction and a card command were signalled: each reaches the job once', async () => {
  await gateway.kill('SIGTERM');
  gateway = await GatewayProcess.start(config, { dir, fault: GATEWAY_FAULTS.crashBeforeSyncToken });
  const card = await sendAsBot(roomB, 'm.room.message', cardContent(jobB.eventId, 'c1.1', jobB.workflowId));
  const tick = await react(approver, roomB, card, '✅');
  assert.equal((await gateway.exited).signal, 'SIGKILL', 'the gateway died before saving its sync position');
  gateway = await GatewayProcess.start(config, { dir, fault: GATEWAY_FAULTS.crashBeforeSyncToken });
  // The reaction comes again, is signalled again, and the gateway dies again after it.
  assert.equal((await gateway.exited).signal, 'SIGKILL');
  gateway = await GatewayProcess.start(config, { dir });
  const command = await send(approver, roomB, '!approve c1.1', { thread: jobB.eventId });
  await callDecision(jobB.workflowId, command);
  const decisions = await decisionsOf(jobB.workflowId);
  assert.equal(decisions.filter((d) => d.eventId === tick).length, 1, 'the reaction is decided once');
  assert.equal(decisions.filter((d) => d.eventId === command).length, 1);
});
