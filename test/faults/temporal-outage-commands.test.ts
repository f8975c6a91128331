// Temporal is away while people go on sending commands in an ENCRYPTED room. As in
// temporal-outage.test.ts, the gateway and the worker are real processes (`clawgate gateway`
// with encryption, `clawgate worker`) reaching the real Temporal dev server through a relay the
// test cuts; the people reach the real Synapse directly, with clients of their own crypto. The
// first command sent in the outage holds the gateway's sync back; the ones after it (a request,
// a `!status` of one waiting job, a `!cancel` of another) are not synced yet, so the gateway
// reads the room ahead and decrypts them. What a user expects: each of these commands gets one
// notice in its thread, encrypted, that it waits; once Temporal is back each is acted on once:
// both requests' jobs start once, the status is answered once, the cancel cancels its job once.
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { MatrixEvent } from 'matrix-js-sdk';
import type { RegisteredUser } from '../../src/devstack/synapse.ts';
import { HELD_BACK_NOTICE } from '../../src/ingress/held-back.ts';
import { jobWorkflowId, shortJobId } from '../../src/ingress/job-ids.ts';
import { JOB_STATUS } from '../../src/temporal/search-attributes.ts';
import { GatewayProcess, gatewayTestConfig } from '../harness/gateway-process.ts';
import { MatrixTestUser } from '../harness/matrix-user.ts';
import { CuttableRelay } from '../harness/relay.ts';
import { RoomView, waitFor } from '../harness/room-view.ts';
import { registerTestUser, testServers } from '../harness/servers.ts';
import { startWorkerStack, type WorkerStack } from '../harness/stack.ts';
import { startWorkerCli, type WorkerCli } from '../harness/worker-cli.ts';

/** How long Temporal is away: the retry loops and the read-ahead run many times meanwhile. */
const OUTAGE_MS = 25_000;

let stack: WorkerStack;
let relay: CuttableRelay;
let gateway: GatewayProcess;
let worker: WorkerCli;
let bot: RegisteredUser;
let requester: MatrixTestUser;
let approver: MatrixTestUser;
let roomId: string;
let room: RoomView;

before(async () => {
  stack = await startWorkerStack({ worker: false });
  const [host, port] = testServers().temporal.address.split(':') as [string, string];
  relay = new CuttableRelay({ host, port: Number(port) });
  await relay.listen();
  bot = await registerTestUser('tocommandsbot');
  [requester, approver] = (await Promise.all(
    ['tocmdrequester', 'tocmdapprover'].map((n) => MatrixTestUser.create(n, { encryption: true })),
  )) as [MatrixTestUser, MatrixTestUser];
  roomId = await requester.createRoom({
    name: 'temporal outage, encrypted',
    encrypted: true,
    invite: [bot.userId, approver.userId],
  });
  await approver.waitForMembership(roomId, 'invite');
  await approver.joinRoom(roomId);
  await stack.activatePolicy({
    channel: 'matrix',
    rooms: [roomId],
    requesters: [requester.userId],
    approvers: [approver.userId],
  });
  const dir = mkdtempSync(join(tmpdir(), 'clawgate-temporal-outage-commands-'));
  worker = await startWorkerCli(stack, dir, { temporalAddress: relay.address });
  const config = gatewayTestConfig(dir, stack, [
    { id: 'alpha', userId: bot.userId, accessToken: bot.accessToken, rooms: [roomId], encryption: true },
  ]);
  if (config.temporal) config.temporal.address = relay.address;
  gateway = await GatewayProcess.start(config, { dir });
  room = new RoomView(requester, roomId, bot.userId);
  await requester.waitForJoin(roomId, bot.userId);
  // The people's messages are encrypted to the bot's device once their clients know it.
  await requester.waitForDeviceOf(bot.userId);
  await approver.waitForDeviceOf(bot.userId);
});

after(async () => {
  await gateway?.kill('SIGTERM');
  await worker?.stop();
  await relay?.close();
  for (const user of [requester, approver]) user?.stop();
  await stack?.close();
});

interface BotMessage {
  eventId: string;
  wireType: string;
  body: string;
  /** The message it replies to, and the thread it is in. */
  inReplyTo: string | undefined;
  thread: string | undefined;
}

const clearOf = new Map<string, BotMessage>();

/** The bot's messages in the room, decrypted by the requester's client, oldest first. */
async function botMessages(): Promise<BotMessage[]> {
  const out: BotMessage[] = [];
  for (const raw of await room.events()) {
    if (raw.sender !== bot.userId) continue;
    let seen = clearOf.get(raw.event_id);
    if (!seen) {
      if (raw.type !== 'm.room.encrypted' && raw.type !== 'm.room.message') continue;
      const event = new MatrixEvent(raw);
      await requester.client.decryptEventIfNeeded(event);
      if (event.getType() !== 'm.room.message') continue; // not decrypted (yet): read again next time
      const content = event.getContent();
      const relates = (content['m.relates_to'] ?? event.getWireContent()['m.relates_to']) as
        Record<string, any> | undefined;
      if (relates?.['rel_type'] === 'm.replace') continue;
      seen = {
        eventId: raw.event_id,
        wireType: raw.type,
        body: String(content['body']),
        inReplyTo: relates?.['m.in_reply_to']?.event_id,
        thread: relates?.['rel_type'] === 'm.thread' ? relates['event_id'] : undefined,
      };
      clearOf.set(raw.event_id, seen);
    }
    out.push(seen);
  }
  return out;
}

const botThread = async (root: string): Promise<string[]> =>
  (await botMessages()).filter((m) => m.thread === root).map((m) => m.body);
const botAnswersTo = async (eventId: string): Promise<BotMessage[]> =>
  (await botMessages()).filter((m) => m.inReplyTo === eventId);

const send = (user: MatrixTestUser, body: string, thread?: string) => room.send(user, body, thread);
const held = (m: BotMessage): boolean => m.body === `${requester.userId}: ${HELD_BACK_NOTICE}`;
const isPlan = (b: string): boolean => /^Plan for job/.test(b);

async function healthStatus(url: string): Promise<number> {
  return (await fetch(url)).status;
}

/** Waits until the job of `request` waits for its approval with nothing in flight. */
async function waitingIdle(request: string): Promise<void> {
  await waitFor(`the plan of ${request}`, 60_000, async () =>
    (await botThread(request)).some(isPlan) ? true : undefined,
  );
  // Nothing in flight: an activity whose completion the cut lost would hold the job until its
  // timeout, which is not what this test is about.
  const handle = stack.temporal.client.workflow.getHandle(jobWorkflowId(roomId, request));
  await waitFor(`${request} to wait for its approval, idle`, 60_000, async () => {
    const d = await handle.describe();
    const idle = (d.raw.pendingActivities ?? []).length === 0 && !d.raw.pendingWorkflowTask;
    return idle && d.typedSearchAttributes.get(JOB_STATUS) === 'awaiting_approval' ? true : undefined;
  });
}

test('Temporal away, an encrypted room: the held command and the commands read ahead (a request, !status, !cancel) are each told once and acted on once when it is back', async () => {
  // Two jobs waiting for approval: one to ask about, one to cancel.
  const jobA = await send(requester, '!claw summarise the readme (A, to cancel)');
  const jobB = await send(requester, '!claw summarise the readme (B, asked about)');
  await Promise.all([waitingIdle(jobA), waitingIdle(jobB)]);
  const idA = shortJobId(jobWorkflowId(roomId, jobA));
  const idB = shortJobId(jobWorkflowId(roomId, jobB));
  assert.equal(await healthStatus(gateway.healthUrl), 200);
  const toldFrom = gateway.lines.length;

  const cutAt = Date.now();
  relay.down();
  await waitFor('the gateway to say Temporal is away', 30_000, async () =>
    (await healthStatus(gateway.healthUrl)) === 503 ? true : undefined,
  );
  console.log(`gateway /health 503 ${Date.now() - cutAt} ms after the cut`);

  // The first command: the sync is held back at it.
  const jobH = await send(requester, '!claw summarise the readme (H, held)');
  await waitFor('the notice to the held request', 30_000, async () =>
    (await botAnswersTo(jobH)).some(held) ? true : undefined,
  );
  console.log(`the held request told it waits ${Date.now() - cutAt} ms after the cut`);
  // The ones after it are not synced: told by the read-ahead, decrypted.
  const sentAt = Date.now();
  const jobC = await send(requester, '!claw summarise the readme (C, read ahead)');
  const status = await send(requester, `!status ${idB}`);
  const cancel = await send(requester, `!cancel ${idA}`);
  const commands = [
    ['request H (held)', jobH],
    ['request C', jobC],
    [`!status ${idB}`, status],
    [`!cancel ${idA}`, cancel],
  ] as const;
  for (const [name, eventId] of commands.slice(1)) {
    await waitFor(`the notice to ${name}`, 20_000, async () =>
      (await botAnswersTo(eventId)).some(held) ? true : undefined,
    );
    console.log(`${name} told it waits ${Date.now() - sentAt} ms after it was sent`);
  }
  for (const [name, eventId] of commands) {
    const notices = (await botAnswersTo(eventId)).filter(held);
    assert.equal(notices.length, 1, `one notice to ${name}`);
    assert.equal(notices[0]?.wireType, 'm.room.encrypted', `the notice to ${name} went out encrypted`);
    // In the command's thread: a request's is the one its job answers in.
    assert.equal(notices[0]?.thread, eventId, `the notice to ${name} is in its thread`);
  }
  // Only the held one was synced: the others were told from the room read ahead.
  const told = gateway.lines
    .slice(toldFrom)
    .filter((l) => l['msg'] === 'told the thread its command waits for Temporal')
    .map((l) => l['eventId']);
  assert.deepEqual(told.toSorted(), commands.map(([, e]) => e).toSorted());

  await new Promise((r) => setTimeout(r, Math.max(0, cutAt + OUTAGE_MS - Date.now())));
  assert.equal(await healthStatus(gateway.healthUrl), 503);
  relay.up();
  const upAt = Date.now();
  console.log(`Temporal was away for ${upAt - cutAt} ms`);
  await waitFor('the gateway to be healthy again', 60_000, async () =>
    (await healthStatus(gateway.healthUrl)) === 200 ? true : undefined,
  );
  console.log(`gateway /health 200 ${Date.now() - upAt} ms after Temporal came back`);

  // Each acted on: both jobs start, the status is answered, the cancelled job says so.
  for (const request of [jobH, jobC]) {
    await waitFor(`the plan of ${request}`, 60_000, async () =>
      (await botThread(request)).some(isPlan) ? true : undefined,
    );
  }
  const cancelled = new RegExp(
    `cancelled\\. cancelled by ${requester.userId.replace(/[.]/g, '\\.')} in the room`,
  );
  await waitFor(`job ${idA} cancelled`, 60_000, async () =>
    (await botThread(jobA)).some((b) => cancelled.test(b)) ? true : undefined,
  );
  const answer = await waitFor('the answer to !status', 60_000, async () =>
    (await botAnswersTo(status)).find((m) => !held(m)),
  );
  console.log(`all acted on ${Date.now() - upAt} ms after Temporal came back; status: ${answer.body}`);
  assert.match(answer.body, new RegExp(`^Job ${idB}: awaiting_approval`));

  // And only once, each.
  await new Promise((r) => setTimeout(r, 3_000));
  for (const request of [jobH, jobC]) {
    assert.equal((await botThread(request)).filter(isPlan).length, 1, `one plan for ${request}`);
    const { count } = await stack.temporal.client.workflow.count(
      `WorkflowId = '${jobWorkflowId(roomId, request)}'`,
    );
    assert.equal(count, 1, `one job for ${request}`);
  }
  assert.equal((await botAnswersTo(status)).filter((m) => !held(m)).length, 1, 'one answer to !status');
  assert.equal((await botThread(jobA)).filter((b) => cancelled.test(b)).length, 1, 'A cancelled once');
  const a = await stack.temporal.client.workflow.getHandle(jobWorkflowId(roomId, jobA)).describe();
  assert.equal(a.typedSearchAttributes.get(JOB_STATUS), 'cancelled');
  const b = await stack.temporal.client.workflow.getHandle(jobWorkflowId(roomId, jobB)).describe();
  assert.equal(b.typedSearchAttributes.get(JOB_STATUS), 'awaiting_approval', 'B is left as it was');
  for (const [name, eventId] of commands) {
    assert.equal((await botAnswersTo(eventId)).filter(held).length, 1, `still one notice to ${name}`);
  }
});
