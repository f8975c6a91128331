// GET /metrics of the gateway and of the worker, from a real job: the gateway as a process of
// its own (`clawgate gateway`) with one bot account on the real Synapse, the worker as a process
// of its own (`clawgate worker`, with its health port, the real sandbox and the Temporal SDK's
// metrics forwarded), the real Temporal dev server, and the real proxy of the worker stack.
// People ask, a non-approver and an approver answer, the job runs; each part's metrics moved.
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { Direction } from 'matrix-js-sdk';
import type { RegisteredUser } from '../../src/devstack/synapse.ts';
import { threadRelation } from '../../src/ingress/matrix-io.ts';
import { GatewayProcess, gatewayStderr, gatewayTestConfig } from '../harness/gateway-process.ts';
import { MatrixTestUser } from '../harness/matrix-user.ts';
import { metricValue, scrape, type Sample } from '../harness/metrics.ts';
import { registerTestUser, testServers } from '../harness/servers.ts';
import { startWorkerStack, type WorkerStack } from '../harness/stack.ts';
import { startWorkerCli, type WorkerCli } from '../harness/worker-cli.ts';

let stack: WorkerStack;
let dir: string;
let bot: RegisteredUser;
let secureBot: RegisteredUser;
let quietRoom: string;
let requester: MatrixTestUser;
let approver: MatrixTestUser;
let mallory: MatrixTestUser;
let roomId: string;
let gateway: GatewayProcess;
let worker: WorkerCli;
let workerMetricsUrl: string;

before(async () => {
  stack = await startWorkerStack({ worker: false });
  dir = mkdtempSync(join(tmpdir(), 'clawgate-metrics-'));
  bot = await registerTestUser('metricsbot');
  secureBot = await registerTestUser('metricssecure');
  [requester, approver, mallory] = (await Promise.all(
    ['metricsreq', 'metricsappr', 'metricsmal'].map((n) => MatrixTestUser.create(n)),
  )) as [MatrixTestUser, MatrixTestUser, MatrixTestUser];
  roomId = await requester.createRoom({
    name: 'metrics',
    invite: [bot.userId, approver.userId, mallory.userId],
  });
  for (const member of [approver, mallory]) {
    await member.waitForMembership(roomId, 'invite');
    await member.joinRoom(roomId);
  }
  // An encrypted room of a second account: where the SDK's thread-timeline warning came from.
  quietRoom = await requester.createRoom({ name: 'quiet', encrypted: true, invite: [secureBot.userId] });
  await stack.activatePolicy({
    channel: 'matrix',
    rooms: [roomId, quietRoom],
    requesters: [requester.userId],
    approvers: [approver.userId],
  });
  worker = await startWorkerCli(stack, dir);
  workerMetricsUrl = worker.metricsUrl;
  gateway = await GatewayProcess.start(
    gatewayTestConfig(dir, stack, [
      { id: 'metrics', userId: bot.userId, accessToken: bot.accessToken, rooms: [roomId] },
      {
        id: 'secure',
        userId: secureBot.userId,
        accessToken: secureBot.accessToken,
        rooms: [quietRoom],
        encryption: true,
      },
    ]),
    { dir },
  );
  for (const [room, member] of [
    [roomId, bot],
    [quietRoom, secureBot],
  ] as const) {
    await requester.waitForRoomEvent({
      roomId: room,
      timeoutMs: 30_000,
      message: `${member.userId} joining`,
      filter: (e) =>
        e.getType() === 'm.room.member' &&
        e.getStateKey() === member.userId &&
        e.getContent()['membership'] === 'join',
    });
  }
});

after(async () => {
  await gateway?.kill('SIGTERM');
  await worker?.stop();
  for (const user of [requester, approver, mallory]) user?.stop();
  await stack?.close();
});

interface RawEvent {
  event_id: string;
  type: string;
  sender: string;
  content: Record<string, unknown>;
}

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

/** Waits for an event the server has in the room that matches. */
async function serverEvent(
  filter: (e: RawEvent) => boolean,
  what: string,
  timeoutMs = 60_000,
): Promise<RawEvent> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const res = await requester.client.createMessagesRequest(roomId, null, 200, Direction.Backward);
    const found = (res.chunk as unknown as RawEvent[]).find(filter);
    if (found) return found;
    if (Date.now() > deadline) throw new Error(`waited ${timeoutMs} ms for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

const relOf = (e: RawEvent) =>
  (e.content['m.relates_to'] ?? {}) as { event_id?: string; key?: string; rel_type?: string };
const bodyOf = (e: RawEvent) => (typeof e.content['body'] === 'string' ? e.content['body'] : '');

const reactionTo = (eventId: string, key: string) =>
  serverEvent(
    (e) =>
      e.type === 'm.reaction' &&
      e.sender === bot.userId &&
      relOf(e).event_id === eventId &&
      relOf(e).key === key,
    `${key} on ${eventId}`,
  );

/** Scrapes until `check` holds (a gauge refreshed now and then), or fails with the last scrape. */
async function scrapeUntil(url: string, check: (s: Sample[]) => boolean, what: string, timeoutMs: number) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const { samples } = await scrape(url);
    if (check(samples)) return samples;
    if (Date.now() > deadline) throw new Error(`waited ${timeoutMs} ms at ${url} for ${what}`);
    await new Promise((r) => setTimeout(r, 500));
  }
}

test('a job from request to seal moves the gateway, worker and proxy metrics', async () => {
  const gatewayUrl = gateway.healthUrl.replace(/\/health$/, '/metrics');
  const first = await scrape(gatewayUrl);
  assert.equal(first.contentType, 'text/plain; version=0.0.4; charset=utf-8');
  assert.ok(metricValue(first.samples, 'process_resident_memory_bytes', { part: 'gateway' }) > 0);
  assert.equal(
    metricValue(first.samples, 'clawgate_gateway_crypto_state', { account: 'metrics', state: 'disabled' }),
    1,
  );
  assert.equal(
    metricValue(first.samples, 'clawgate_gateway_account_state', { account: 'metrics', state: 'syncing' }),
    1,
  );
  const lag = metricValue(first.samples, 'clawgate_gateway_sync_lag_seconds', { account: 'metrics' });
  assert.ok(lag >= 0 && lag < 60, `sync lag ${lag} s`);
  const proxyBefore = (await scrape(`${stack.proxyUrl}/metrics`)).samples;

  const request = await send(requester, '!claw summarise the readme');
  const plan = await serverEvent(
    (e) => e.sender === bot.userId && relOf(e).event_id === request && /^Plan for job j/.test(bodyOf(e)),
    'the plan',
  );
  assert.ok(plan);

  // While it waits, the worker counts it from Temporal's visibility (refreshed every 15 s).
  await scrapeUntil(
    workerMetricsUrl,
    (s) => metricValue(s, 'clawgate_worker_jobs_awaiting_approval') >= 1,
    'the job awaiting approval',
    45_000,
  );

  const refused = await send(mallory, '!approve', request);
  await reactionTo(refused, '❌');
  const unknown = await send(approver, '!approve jzzzzzzzzz');
  await serverEvent(
    (e) => e.sender === bot.userId && /there is no job jzzzzzzzzz/.test(bodyOf(e)),
    'the answer about an unknown job',
  );
  assert.ok(unknown);
  const approval = await send(approver, '!approve', request);
  await reactionTo(approval, '✅');
  await serverEvent(
    (e) => e.sender === bot.userId && relOf(e).event_id === request && /: succeeded\./.test(bodyOf(e)),
    'the result',
    90_000,
  );

  const gw = (await scrape(gatewayUrl)).samples;
  const attempts = 'clawgate_gateway_approval_attempts_total';
  assert.equal(metricValue(gw, 'clawgate_gateway_jobs_started_total', { account: 'metrics' }), 1);
  assert.equal(
    metricValue(gw, attempts, { account: 'metrics', subject: 'plan', verdict: 'accepted', reason: 'none' }),
    1,
  );
  assert.equal(
    metricValue(gw, attempts, { subject: 'plan', verdict: 'refused', reason: 'APPROVAL_NOT_APPROVER' }),
    1,
  );
  assert.equal(
    metricValue(gw, attempts, { subject: 'plan', verdict: 'refused', reason: 'job_unresolved' }),
    1,
  );
  assert.equal(metricValue(gw, 'clawgate_gateway_signals_total', { account: 'metrics' }), 2);
  assert.ok(metricValue(gw, 'clawgate_gateway_events_refused_total', { account: 'metrics' }) >= 1);
  assert.ok(metricValue(gw, 'clawgate_gateway_event_lag_seconds', { account: 'metrics' }) >= 0);
  // No label carries a user id, a room id or a job id.
  for (const s of gw) {
    for (const value of Object.values(s.labels)) {
      assert.doesNotMatch(value, /^[@!$]|^job:/, `${s.name} has the label value ${value}`);
    }
  }

  const wk = await scrapeUntil(
    workerMetricsUrl,
    (s) => metricValue(s, 'clawgate_worker_jobs_ended_total', { outcome: 'succeeded' }) === 1,
    'the job ended',
    10_000,
  );
  assert.ok(metricValue(wk, 'process_resident_memory_bytes', { part: 'worker' }) > 0);
  assert.equal(metricValue(wk, 'clawgate_worker_plan_to_approval_seconds_count'), 1);
  assert.ok(metricValue(wk, 'clawgate_worker_plan_to_approval_seconds_sum') > 0);
  // The plan's read and search ran in the sandbox.
  assert.ok(
    metricValue(wk, 'clawgate_worker_sandbox_runs_total', { backend: 'bubblewrap', outcome: 'ok' }) >= 2,
  );
  // The Temporal SDK's own metrics come through the same endpoint.
  const sdk = wk.filter((s) => s.name.startsWith('temporal_'));
  assert.ok(sdk.length > 0, 'Temporal SDK metrics are forwarded');
  assert.ok(
    sdk.some((s) => s.labels['task_queue'] === stack.taskQueue),
    `an SDK metric of the worker's task queue among ${[...new Set(sdk.map((s) => s.name))].join(', ')}`,
  );

  const px = (await scrape(`${stack.proxyUrl}/metrics`)).samples;
  const ok = (s: Sample[]) =>
    metricValue(s, 'clawgate_proxy_calls_total', { status: 'ok', receipt: 'written' });
  // The plan and the plan's model step went through the proxy, each receipted.
  assert.ok(ok(px) - ok(proxyBefore) >= 2, `ok calls ${ok(proxyBefore)} -> ${ok(px)}`);
});

/** PUTs an event as `token`'s user, past matrix-js-sdk (whose client will not send in clear to an encrypted room). */
async function rawSend(token: string, room: string, content: Record<string, unknown>): Promise<string> {
  const { synapse } = testServers();
  const txn = `t${Date.now()}${Math.random().toString(36).slice(2)}`;
  const res = await fetch(
    `${synapse.baseUrl}/_matrix/client/v3/rooms/${encodeURIComponent(room)}/send/m.room.message/${txn}`,
    {
      method: 'PUT',
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      body: JSON.stringify(content),
    },
  );
  assert.equal(res.status, 200, await res.clone().text());
  return ((await res.json()) as { event_id: string }).event_id;
}

test("the SDK's thread-timeline warning, once per threaded receipt in an encrypted room, stays out of the gateway's output", async () => {
  const { synapse } = testServers();
  const gatewayUrl = gateway.healthUrl.replace(/\/health$/, '/metrics');
  const handled = async () =>
    metricValue((await scrape(gatewayUrl)).samples, 'clawgate_gateway_events_handled_total', {
      account: 'secure',
    });
  const first = (await scrape(gatewayUrl)).samples;
  assert.equal(metricValue(first, 'clawgate_gateway_crypto_state', { account: 'secure', state: 'ready' }), 1);
  const token = requester.client.getAccessToken() as string;
  const rootId = await rawSend(token, quietRoom, { msgtype: 'm.text', body: 'a thread' });
  const reply = await rawSend(token, quietRoom, {
    msgtype: 'm.text',
    body: 'in the thread',
    'm.relates_to': threadRelation(rootId),
  });
  // The bot's own read receipts in the thread (a client of the bot's account, as any would send
  // them): the gateway's client has no timeline for the thread, and the SDK warns on each.
  for (let i = 0; i < 5; i++) {
    const res = await fetch(
      `${synapse.baseUrl}/_matrix/client/v3/rooms/${encodeURIComponent(quietRoom)}/receipt/m.read/${encodeURIComponent(i % 2 === 0 ? reply : rootId)}`,
      {
        method: 'POST',
        headers: { authorization: `Bearer ${secureBot.accessToken}`, 'content-type': 'application/json' },
        body: JSON.stringify({ thread_id: rootId }),
      },
    );
    assert.equal(res.status, 200, await res.clone().text());
  }
  // Two messages after the receipts, each waited for: the batch with the receipts is behind us.
  for (const body of ['later', 'later still']) {
    const before = await handled();
    await rawSend(token, quietRoom, { msgtype: 'm.text', body });
    const deadline = Date.now() + 30_000;
    while ((await handled()) <= before) {
      if (Date.now() > deadline) throw new Error(`the gateway did not handle "${body}" within 30 s`);
      await new Promise((r) => setTimeout(r, 200));
    }
  }
  assert.doesNotMatch(gatewayStderr.join(''), /Couldn't find timeline for thread ID/);
});
