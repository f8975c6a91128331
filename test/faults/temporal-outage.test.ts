// Temporal is unreachable from the gateway and the worker for a while. Both are real processes
// (`clawgate gateway`, `clawgate worker`) that reach the real Temporal dev server through a TCP
// relay the test cuts; the people in the room reach the real Synapse directly, so they go on
// sending: an approval of a job that waits, a new request, a chat line. What a user expects:
// both health endpoints say 503 with the reason and for how long; the approval and the request
// each get one notice in their thread (and the chat line none); once Temporal is back, health is
// 200 again, the approval is acted on once and the request's job starts once; and the log says
// the outage once when it begins and once when it ends, not once per retry.
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import type { RegisteredUser } from '../../src/devstack/synapse.ts';
import { HELD_BACK_NOTICE } from '../../src/ingress/held-back.ts';
import { jobWorkflowId } from '../../src/ingress/job-ids.ts';
import { statusQuery } from '../../src/temporal/job-contract.ts';
import { JOB_STATUS } from '../../src/temporal/search-attributes.ts';
import { GatewayProcess, gatewayTestConfig } from '../harness/gateway-process.ts';
import { MatrixTestUser } from '../harness/matrix-user.ts';
import { metricValue, scrape } from '../harness/metrics.ts';
import { CuttableRelay } from '../harness/relay.ts';
import { RoomView, waitFor } from '../harness/room-view.ts';
import { registerTestUser, testServers } from '../harness/servers.ts';
import { startWorkerStack, type WorkerStack } from '../harness/stack.ts';
import { startWorkerCli, type WorkerCli } from '../harness/worker-cli.ts';

/** How long Temporal is away: long enough for the retry loops to run many times. */
const OUTAGE_MS = 30_000;

let stack: WorkerStack;
let relay: CuttableRelay;
let gateway: GatewayProcess;
let worker: WorkerCli;
let bot: RegisteredUser;
let approver: MatrixTestUser;
let requester: MatrixTestUser;
let roomId: string;
let dir: string;
let gatewayConfig: ReturnType<typeof gatewayTestConfig>;

before(async () => {
  stack = await startWorkerStack({ worker: false });
  const [host, port] = testServers().temporal.address.split(':') as [string, string];
  relay = new CuttableRelay({ host, port: Number(port) });
  await relay.listen();
  bot = await registerTestUser('temporaloutagebot');
  [approver, requester] = (await Promise.all(
    ['toapprover', 'torequester'].map((n) => MatrixTestUser.create(n)),
  )) as [MatrixTestUser, MatrixTestUser];
  roomId = await requester.createRoom({ name: 'temporal outage', invite: [bot.userId, approver.userId] });
  await approver.waitForMembership(roomId, 'invite');
  await approver.joinRoom(roomId);
  await stack.activatePolicy({
    channel: 'matrix',
    rooms: [roomId],
    requesters: [requester.userId],
    approvers: [approver.userId],
  });
  dir = mkdtempSync(join(tmpdir(), 'clawgate-temporal-outage-'));
  worker = await startWorkerCli(stack, dir, { temporalAddress: relay.address });
  gatewayConfig = gatewayTestConfig(dir, stack, [
    { id: 'alpha', userId: bot.userId, accessToken: bot.accessToken, rooms: [roomId] },
  ]);
  if (gatewayConfig.temporal) gatewayConfig.temporal.address = relay.address;
  gateway = await GatewayProcess.start(gatewayConfig, { dir });
  room = new RoomView(approver, roomId, bot.userId);
  await approver.waitForJoin(roomId, bot.userId);
});

after(async () => {
  await gateway?.kill('SIGTERM');
  await worker?.stop();
  await relay?.close();
  for (const user of [approver, requester]) user?.stop();
  await stack?.close();
});

let room: RoomView;
const botThread = (root: string) => room.botThread(root);
const send = (user: MatrixTestUser, body: string, thread?: string) => room.send(user, body, thread);

/** The bot's answers to `eventId` (its messages that reply to it, in a thread or not). */
async function botAnswersTo(eventId: string): Promise<string[]> {
  return (await room.events())
    .filter(
      (e) =>
        e.sender === bot.userId &&
        e.type === 'm.room.message' &&
        e.content['m.relates_to']?.['m.in_reply_to']?.event_id === eventId &&
        e.content['m.relates_to']?.rel_type !== 'm.replace',
    )
    .map((e) => String(e.content['body']));
}

interface Health {
  status: number;
  body: {
    ok: boolean;
    reasons: string[];
    temporal: { reachable: boolean; since: string; forMs: number; error: string | null };
  };
}

async function health(url: string): Promise<Health> {
  const res = await fetch(url);
  return { status: res.status, body: (await res.json()) as Health['body'] };
}

const held = (body: string): boolean => body.endsWith(HELD_BACK_NOTICE);

/** The lines of a part's log about Temporal answering or not, as [level, message]. */
const outageLines = (lines: Array<Record<string, unknown>>, from: number): Array<[unknown, string]> =>
  lines
    .slice(from)
    .filter((l) => /^Temporal is (not )?reachable/.test(String(l['msg'])))
    .map((l) => [l['level'], String(l['msg'])]);

test('Temporal away: health says so with how long; a request and an approval are each told once and acted on once when it is back; the log says it twice', async () => {
  const jobA = await send(requester, '!claw summarise the readme (A)');
  await waitFor('the plan of A', 60_000, async () =>
    (await botThread(jobA)).some((b) => /^Plan for job/.test(b)) ? true : undefined,
  );
  // A waits for its approval with nothing in flight: an activity whose completion the cut lost
  // would hold the job until its timeout, which is not what this test is about.
  const handleA = stack.temporal.client.workflow.getHandle(jobWorkflowId(roomId, jobA));
  await waitFor('A to wait for its approval, idle', 60_000, async () => {
    const description = await handleA.describe();
    const idle =
      (description.raw.pendingActivities ?? []).length === 0 && !description.raw.pendingWorkflowTask;
    return idle && description.typedSearchAttributes.get(JOB_STATUS) === 'awaiting_approval'
      ? true
      : undefined;
  });
  assert.equal((await health(gateway.healthUrl)).status, 200);
  assert.equal((await health(worker.healthUrl)).status, 200);
  const gatewayFrom = gateway.lines.length;
  const workerFrom = worker.lines.length;

  const cutAt = Date.now();
  relay.down();
  for (const [part, url] of [
    ['gateway', gateway.healthUrl],
    ['worker', worker.healthUrl],
  ] as const) {
    const down = await waitFor(`the ${part} to say Temporal is away`, 30_000, async () => {
      const h = await health(url);
      return h.status === 503 ? h : undefined;
    });
    console.log(
      `${part} /health 503 ${Date.now() - cutAt} ms after the cut: ${down.body.reasons.join('; ')}`,
    );
    assert.equal(down.body.ok, false);
    assert.equal(down.body.temporal.reachable, false);
    assert.ok(down.body.temporal.forMs >= 0);
    assert.ok(Date.parse(down.body.temporal.since) >= cutAt - 1_000, down.body.temporal.since);
    assert.match(down.body.reasons.join('\n'), /Temporal is not reachable \(for [\d.]+ (ms|s), since /);
  }

  /** The gauge's value; NaN when the part has no such gauge. */
  const reachable = async (metricsUrl: string): Promise<number> => {
    const { samples } = await scrape(metricsUrl);
    const found = samples.some((m) => m.name === 'clawgate_temporal_reachable');
    return found ? metricValue(samples, 'clawgate_temporal_reachable') : Number.NaN;
  };
  const gatewayMetrics = gateway.healthUrl.replace(/\/health$/, '/metrics');
  assert.deepEqual([await reachable(gatewayMetrics), await reachable(worker.metricsUrl)], [0, 0]);

  // While it is away: A is approved, C is asked for, and someone just chats.
  const approvalA = await send(approver, '!approve', jobA);
  const jobC = await send(requester, '!claw summarise the readme (C)');
  const chat = await send(approver, 'lunch, anyone?');
  for (const [name, eventId] of [
    ['the approval of A', approvalA],
    ['request C', jobC],
  ] as const) {
    await waitFor(`the notice to ${name}`, 30_000, async () =>
      (await botAnswersTo(eventId)).some(held) ? true : undefined,
    );
    console.log(`${name} told it waits ${Date.now() - cutAt} ms after the cut`);
  }
  // The request's notice is in its thread, where its plan comes.
  assert.equal((await botThread(jobC)).filter(held).length, 1);
  // The retry loops go on meanwhile; the notices are not repeated.
  await new Promise((r) => setTimeout(r, Math.max(0, cutAt + OUTAGE_MS - Date.now())));
  const later = await health(gateway.healthUrl);
  assert.equal(later.status, 503);
  assert.ok(later.body.temporal.forMs >= OUTAGE_MS - 10_000, `${later.body.temporal.forMs} ms`);
  relay.up();
  const upAt = Date.now();
  console.log(`Temporal was away for ${upAt - cutAt} ms`);

  for (const [part, url] of [
    ['gateway', gateway.healthUrl],
    ['worker', worker.healthUrl],
  ] as const) {
    await waitFor(`the ${part} to be healthy again`, 60_000, async () =>
      (await health(url)).status === 200 ? true : undefined,
    );
    console.log(`${part} /health 200 ${Date.now() - upAt} ms after Temporal came back`);
  }

  assert.deepEqual([await reachable(gatewayMetrics), await reachable(worker.metricsUrl)], [1, 1]);

  // The approval sent meanwhile is acted on once, and A runs to its end.
  await waitFor('the result of A', 90_000, async () =>
    (await botThread(jobA)).some((b) => /^Job j[a-z2-7]{9}: succeeded\./.test(b)) ? true : undefined,
  );
  const viewA = await handleA.query(statusQuery);
  assert.deepEqual(
    viewA.approvals.map((a) => [a.eventId, a.accepted]),
    [[approvalA, true]],
  );
  // C's job starts once: its plan, once.
  await waitFor('the plan of C', 60_000, async () =>
    (await botThread(jobC)).some((b) => /^Plan for job/.test(b)) ? true : undefined,
  );
  await new Promise((r) => setTimeout(r, 3_000));
  const threadA = await botThread(jobA);
  const threadC = await botThread(jobC);
  assert.equal(threadA.filter((b) => /^Plan for job/.test(b)).length, 1);
  assert.equal(threadC.filter((b) => /^Plan for job/.test(b)).length, 1);
  assert.equal((await botAnswersTo(approvalA)).filter(held).length, 1, 'one notice to the approval');
  assert.equal((await botAnswersTo(jobC)).filter(held).length, 1, 'one notice to the request');
  assert.equal(threadA.filter(held).length, 1, "and in A's thread, only that one");
  assert.deepEqual(await botAnswersTo(chat), [], 'a chat line is not answered');
  const { count } = await stack.temporal.client.workflow.count(
    `WorkflowId = '${jobWorkflowId(roomId, jobC)}'`,
  );
  assert.equal(count, 1);

  // One line when it went, one when it came back, in each part's log; no line per retry.
  for (const [part, lines, from] of [
    ['gateway', gateway.lines, gatewayFrom],
    ['worker', worker.lines, workerFrom],
  ] as const) {
    const said = outageLines(lines, from);
    console.log(`${part}: ${JSON.stringify(said)}`);
    assert.equal(said.length, 2, `${part}: ${JSON.stringify(said)}`);
    assert.equal(said[0]?.[0], 40);
    assert.match(said[0]?.[1] ?? '', /^Temporal is not reachable/);
    assert.equal(said[1]?.[0], 30);
    assert.match(said[1]?.[1] ?? '', /^Temporal is reachable again after [\d.]+ (s|min)/);
    const retries = lines
      .slice(from)
      .filter((l) => /retried \d+ times|retrying until it works/.test(String(l['msg'])));
    assert.deepEqual(retries, [], `${part}: no line per retry`);
    const warnings = lines.slice(from).filter((l) => Number(l['level']) >= 40);
    console.log(
      `${part}: ${warnings.length} warning line(s) in the outage: ${warnings.map((w) => w['msg']).join(' | ')}`,
    );
  }
});

test('started while Temporal is away: the gateway and the worker answer 503 at once, a request is told once (also across a restart) and starts its job once Temporal is back', async () => {
  relay.down();
  const cutAt = Date.now();
  await waitFor('the gateway to say Temporal is away', 30_000, async () =>
    (await health(gateway.healthUrl)).status === 503 ? true : undefined,
  );
  // D arrives while the gateway runs, and is told.
  const jobD = await send(requester, '!claw summarise the readme (D)');
  await waitFor('the notice to request D', 30_000, async () =>
    (await botAnswersTo(jobD)).some(held) ? true : undefined,
  );
  // Both die, and start again while Temporal is still away.
  await gateway.kill('SIGKILL');
  worker.child.kill('SIGKILL');
  const startedAt = Date.now();
  worker = await startWorkerCli(stack, dir, { temporalAddress: relay.address, healthOnly: true });
  gateway = await GatewayProcess.start(gatewayConfig, { dir });
  console.log(`gateway and worker answer their health ${Date.now() - startedAt} ms after their start`);
  for (const [part, url] of [
    ['gateway', gateway.healthUrl],
    ['worker', worker.healthUrl],
  ] as const) {
    const down = await waitFor(`the restarted ${part} to say Temporal is away`, 30_000, async () => {
      const h = await health(url);
      return h.status === 503 && h.body.temporal.reachable === false ? h : undefined;
    });
    console.log(`restarted ${part} /health 503: ${down.body.reasons.join('; ')}`);
    assert.match(down.body.reasons.join('\n'), /Temporal is not reachable \(for [\d.]+ (ms|s), since /);
  }
  // The restarted gateway syncs its room: E, sent now, is told too.
  const jobE = await send(requester, '!claw summarise the readme (E)');
  await waitFor('the notice to request E', 60_000, async () =>
    (await botAnswersTo(jobE)).some(held) ? true : undefined,
  );
  console.log(`request E told it waits ${Date.now() - startedAt} ms after the restart`);
  // D was handled again by the new process: its notice, sent with the same transaction id, is
  // still one.
  await new Promise((r) => setTimeout(r, 3_000));
  assert.equal((await botAnswersTo(jobD)).filter(held).length, 1, 'one notice to D across the restart');
  relay.up();
  console.log(`Temporal was away for ${Date.now() - cutAt} ms`);
  for (const [part, url] of [
    ['gateway', gateway.healthUrl],
    ['worker', worker.healthUrl],
  ] as const) {
    await waitFor(`the ${part} to be healthy`, 90_000, async () =>
      (await health(url)).status === 200 ? true : undefined,
    );
  }
  for (const [name, root] of [
    ['D', jobD],
    ['E', jobE],
  ] as const) {
    await waitFor(`the plan of ${name}`, 90_000, async () =>
      (await botThread(root)).some((b) => /^Plan for job/.test(b)) ? true : undefined,
    );
  }
  await new Promise((r) => setTimeout(r, 3_000));
  for (const root of [jobD, jobE]) {
    const thread = await botThread(root);
    assert.equal(thread.filter((b) => /^Plan for job/.test(b)).length, 1);
    assert.equal((await botAnswersTo(root)).filter(held).length, 1);
    const { count } = await stack.temporal.client.workflow.count(
      `WorkflowId = '${jobWorkflowId(roomId, root)}'`,
    );
    assert.equal(count, 1);
  }
});
