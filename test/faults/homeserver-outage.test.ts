// The homeserver is unreachable from the gateway for a minute. The gateway (a real process)
// reaches the real Synapse through a TCP relay the test cuts: while it is cut, every connection
// to it is reset, as a homeserver that went down would do. The people in the room reach Synapse
// directly, so they go on sending: an approval of a job that waits, a new request. A job that was
// running finishes during the outage and has its result to post. What a user expects: the
// gateway and the worker do not crash; what the job posted while the homeserver was away is
// delivered once it is back, exactly once; the approval and the request sent meanwhile are acted
// on once, and their jobs go on.
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import type { RegisteredUser } from '../../src/devstack/synapse.ts';
import { statusQuery } from '../../src/temporal/job-contract.ts';
import { jobWorkflowId } from '../../src/ingress/job-ids.ts';
import { GatewayProcess, gatewayTestConfig } from '../harness/gateway-process.ts';
import { MatrixTestUser } from '../harness/matrix-user.ts';
import { registerTestUser, testServers } from '../harness/servers.ts';
import { startWorkerStack, type WorkerStack } from '../harness/stack.ts';
import { CuttableRelay } from '../harness/relay.ts';
import { RoomView, waitFor } from '../harness/room-view.ts';

/** How long the homeserver is away. A minute, as the fault is stated; the test stays near two. */
const OUTAGE_MS = 60_000;

let stack: WorkerStack;
let relay: CuttableRelay;
let gateway: GatewayProcess;
let bot: RegisteredUser;
let approver: MatrixTestUser;
let requesters: MatrixTestUser[];
let roomId: string;
/** When set, the model's answer to a model step waits for this (once). */
let holdModelStep: { reached: () => void; release: Promise<void> } | null = null;

before(async () => {
  stack = await startWorkerStack({
    beforeAnswer: async (request) => {
      const first = request.messages[0];
      const isStep = first?.role === 'user' && String(first.content).startsWith('Summarise');
      if (!isStep || !holdModelStep) return;
      const hold = holdModelStep;
      holdModelStep = null;
      hold.reached();
      await hold.release;
    },
  });
  const synapse = new URL(testServers().synapse.baseUrl);
  relay = new CuttableRelay({ host: synapse.hostname, port: Number(synapse.port) });
  await relay.listen();
  bot = await registerTestUser('outagebot');
  const humans = await Promise.all(['approver', 'reqa', 'reqb', 'reqc'].map((n) => MatrixTestUser.create(n)));
  [approver] = humans as [MatrixTestUser];
  requesters = humans.slice(1);
  const owner = requesters[0] as MatrixTestUser;
  roomId = await owner.createRoom({
    name: 'outage',
    invite: [bot.userId, approver.userId, ...requesters.slice(1).map((u) => u.userId)],
  });
  for (const user of [approver, ...requesters.slice(1)]) {
    await user.waitForMembership(roomId, 'invite');
    await user.joinRoom(roomId);
  }
  await stack.activatePolicy({
    channel: 'matrix',
    rooms: [roomId],
    requesters: requesters.map((u) => u.userId),
    approvers: [approver.userId],
  });
  const dir = mkdtempSync(join(tmpdir(), 'clawgate-outage-'));
  const config = gatewayTestConfig(dir, stack, [
    { id: 'alpha', userId: bot.userId, accessToken: bot.accessToken, rooms: [roomId] },
  ]);
  const relayed = `http://127.0.0.1:${relay.port}`;
  for (const account of config.gateway?.accounts ?? []) account.homeserverUrl = relayed;
  gateway = await GatewayProcess.start(config, { dir });
  room = new RoomView(approver, roomId, bot.userId);
  await approver.waitForJoin(roomId, bot.userId);
});

after(async () => {
  await gateway?.kill('SIGTERM');
  await relay?.close();
  for (const user of [approver, ...(requesters ?? [])]) user?.stop();
  await stack?.close();
});

let room: RoomView;
const serverEvents = () => room.events();
const botThread = (root: string) => room.botThread(root);
const botSaysInThread = (root: string, pattern: RegExp, timeoutMs: number) =>
  room.botSaysInThread(root, pattern, timeoutMs);
const send = (user: MatrixTestUser, body: string, thread?: string) => room.send(user, body, thread);

const reactions = async (eventId: string): Promise<string[]> =>
  (await serverEvents())
    .filter(
      (e) =>
        e.type === 'm.reaction' && e.sender === bot.userId && e.content['m.relates_to']?.event_id === eventId,
    )
    .map((e) => String(e.content['m.relates_to']?.key));

const healthStatus = async (): Promise<number> => (await fetch(gateway.healthUrl)).status;

test('the homeserver away for a minute: nothing crashes; what the job posted meanwhile arrives once; the approval and the request sent meanwhile are acted on once', async () => {
  const [reqa, reqb, reqc] = requesters as [MatrixTestUser, MatrixTestUser, MatrixTestUser];
  // Job A is approved and runs; its model step waits at the model until the homeserver is away.
  const jobA = await send(reqa, '!claw summarise the readme (A)');
  await botSaysInThread(jobA, /^Plan for job/, 30_000);
  // Job B waits for its approval.
  const jobB = await send(reqb, '!claw summarise the readme (B)');
  await botSaysInThread(jobB, /^Plan for job/, 30_000);
  let reached: () => void = () => {};
  let release: () => void = () => {};
  const atModel = new Promise<void>((resolve) => {
    reached = resolve;
  });
  holdModelStep = { reached: () => reached(), release: new Promise<void>((resolve) => (release = resolve)) };
  const approvalA = await send(approver, '!approve', jobA);
  await waitFor('the ✅ on the approval of A', 30_000, async () =>
    (await reactions(approvalA)).includes('✅') ? true : undefined,
  );
  await atModel;

  const logFrom = gateway.lines.length;
  const cutAt = Date.now();
  relay.down();
  // While it is away: A finishes and has its result to post; B is approved; C is asked for.
  release();
  const approvalB = await send(approver, '!approve', jobB);
  const jobC = await send(reqc, '!claw summarise the readme (C)');
  const handleA = stack.temporal.client.workflow.getHandle(jobWorkflowId(roomId, jobA));
  await waitFor('the gateway to say it cannot sync', 45_000, async () =>
    (await healthStatus()) === 503 ? true : undefined,
  );
  assert.equal(gateway.child.exitCode, null, 'the gateway is still running');
  const during = await botThread(jobA);
  assert.ok(!during.some((b) => /: succeeded\./.test(b)), 'nothing reached the room while it was away');
  await new Promise((r) => setTimeout(r, Math.max(0, cutAt + OUTAGE_MS - Date.now())));
  assert.equal(gateway.child.exitCode, null, 'the gateway ran through the outage');
  relay.up();
  console.log(`the homeserver was away for ${Date.now() - cutAt} ms`);

  // A's result, made while the homeserver was away, arrives.
  await botSaysInThread(jobA, /^Job j[a-z2-7]{9}: succeeded\./, 90_000);
  const resultA = (await handleA.result()) as { status: string };
  assert.equal(resultA.status, 'succeeded');
  // B's approval, sent while the gateway could not see it, is acted on, and B runs.
  await botSaysInThread(jobB, /^Job j[a-z2-7]{9}: succeeded\./, 60_000);
  // C, asked for meanwhile, gets its plan; approved now, it runs too.
  await botSaysInThread(jobC, /^Plan for job/, 30_000);
  await send(approver, '!approve', jobC);
  await botSaysInThread(jobC, /^Job j[a-z2-7]{9}: succeeded\./, 60_000);
  await waitFor('the gateway to sync again', 30_000, async () =>
    (await healthStatus()) === 200 ? true : undefined,
  );

  // Exactly once: one plan and one result in each thread, one ✅ on each approval.
  for (const [name, root] of [
    ['A', jobA],
    ['B', jobB],
    ['C', jobC],
  ] as const) {
    const thread = await botThread(root);
    assert.equal(thread.filter((b) => /^Plan for job/.test(b)).length, 1, `${name}: one plan`);
    assert.equal(thread.filter((b) => /^Job j[a-z2-7]{9}: /.test(b)).length, 1, `${name}: one result`);
  }
  assert.deepEqual(await reactions(approvalA), ['✅']);
  assert.deepEqual(await reactions(approvalB), ['✅'], 'the approval sent meanwhile is answered once');
  // The job B was approved once, by that approval.
  const view = await stack.temporal.client.workflow.getHandle(jobWorkflowId(roomId, jobB)).query(statusQuery);
  assert.deepEqual(
    view.approvals.map((a) => [a.eventId, a.accepted]),
    [[approvalB, true]],
  );
  assert.equal(gateway.child.exitCode, null);
  // The log says the outage once when it began and once when it ended, not once per retry.
  const said = gateway.lines
    .slice(logFrom)
    .filter((l) => /^the homeserver is (not )?reachable/.test(String(l['msg'])))
    .map((l): [unknown, string] => [l['level'], String(l['msg'])]);
  console.log(`the gateway's log of the outage: ${JSON.stringify(said)}`);
  assert.equal(said.length, 2, JSON.stringify(said));
  assert.deepEqual(said[0], [
    40,
    'the homeserver is not reachable; events are handled once it answers again',
  ]);
  assert.equal(said[1]?.[0], 30);
  assert.match(said[1]?.[1] ?? '', /^the homeserver is reachable again after (\d+ min \d+ s|[\d.]+ s)$/);
  finishedDuringOutage = jobA;
});

/** The job that finished while the homeserver was away (set by the test above). */
let finishedDuringOutage: string | null = null;

test('the status line under the plan of a job that finished during the outage shows how it ended', async () => {
  assert.ok(finishedDuringOutage, 'the outage test ran');
  const events = await serverEvents();
  const plan = events.find(
    (e) =>
      e.sender === bot.userId &&
      e.content['m.relates_to']?.event_id === finishedDuringOutage &&
      /^Plan for job/.test(String(e.content['body'])),
  );
  const edits = events.filter(
    (e) =>
      e.content['m.relates_to']?.rel_type === 'm.replace' &&
      e.content['m.relates_to']?.event_id === plan?.event_id,
  );
  const shown = String(edits.at(-1)?.content['m.new_content']?.body ?? plan?.content['body']);
  console.log(`the status line of the job that finished during the outage: ${shown.split('\n').at(-1)}`);
  assert.match(shown, /Status: succeeded/);
});
