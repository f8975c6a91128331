// The worker's clock jumps forward by a day in the middle of a job. The worker runs as a
// process of its own whose wall clock the test steps (test/faults/fake-clock.ts: `Date` reads
// the machine's clock plus an offset; timers and monotonic time are left alone, as in a real
// step); the proxy's clock is stepped with it when the proxy is on the same machine, and left
// alone when it is not. Real Temporal, real sandbox, real Synapse, real proxy. What a user
// expects: tokens minted before the jump are expired after it, and no model call or tool call
// runs under one (it is refused with a clear error, a model call with a receipt); the worker
// mints a fresh token where the policy allows it, or the job ends with a message that says why;
// nothing runs twice.
import assert from 'node:assert/strict';
import { fork, type ChildProcess } from 'node:child_process';
import { createServer, type Server } from 'node:http';
import { fileURLToPath } from 'node:url';
import { after, before, beforeEach, test } from 'node:test';
import { publicJwks } from '../../src/keys/keyring.ts';
import { verifyReceipt, type ReceiptPayload } from '../../src/proxy/receipts.ts';
import type { JobResult } from '../../src/workflows/job.ts';
import { testServers } from '../harness/servers.ts';
import { ofType, startJobStack, turnOf, type JobStack, type Bundle } from './job-stack.ts';

const DAY_MS = 86_400_000;
/** How far ahead of the machine's clock the proxy's clock reads. */
let proxyOffsetMs = 0;
let stack: JobStack;
let worker: ChildProcess;
let holdServer: Server;
let holdPort = 0;
/** Resolves the /hold request the http tool is waiting on. */
let releaseHold: (() => void) | null = null;
let holdReached: () => void = () => {};

/** Steps the worker process's clock to `offsetMs` ahead of the machine's; resolves once it reads so. */
async function stepWorkerClock(offsetMs: number): Promise<void> {
  const stepped = new Promise<void>((resolve) => {
    const onMessage = (message: { offsetMs?: number }): void => {
      if (message.offsetMs !== offsetMs) return;
      worker.off('message', onMessage);
      resolve();
    };
    worker.on('message', onMessage);
  });
  worker.send({ offsetMs });
  await stepped;
}

before(async () => {
  holdServer = createServer((req, res) => {
    if (req.url !== '/hold') return void res.end('ok');
    holdReached();
    releaseHold = () => res.end('held and let go');
  });
  await new Promise<void>((resolve) => holdServer.listen(0, '127.0.0.1', resolve));
  holdPort = (holdServer.address() as { port: number }).port;
  stack = await startJobStack({
    worker: false,
    proxyNow: () => new Date(Date.now() + proxyOffsetMs),
  });
  const { temporal, bwrap } = testServers();
  worker = fork(fileURLToPath(new URL('./clock-worker.ts', import.meta.url)), [
    JSON.stringify({
      address: temporal.address,
      namespace: temporal.namespace,
      taskQueue: stack.taskQueue,
      state: stack.state,
      proxyUrl: stack.proxy.url,
      bwrap,
      source: stack.source,
    }),
  ]);
  await new Promise<void>((resolve, reject) => {
    worker.once('message', () => resolve());
    worker.once('exit', (code) => reject(new Error(`the worker exited with ${code}`)));
  });
});

after(async () => {
  if (worker && worker.exitCode === null) {
    worker.kill('SIGKILL');
    await new Promise((resolve) => worker.once('exit', resolve));
  }
  await stack?.close();
  holdServer?.closeAllConnections();
  holdServer?.close();
});

beforeEach(async () => {
  proxyOffsetMs = 0;
  await stepWorkerClock(0);
  stack.beforeAnswer = null;
});

/** A policy whose wall-clock budget outlasts the jump (the schema allows up to 7 days). */
const longWallBudget = (policy: Record<string, any>) => {
  policy['execution']['agent'] = { model_turns: 8, tool_calls: 10, wall_seconds: 2 * 86_400 };
  policy['execution']['egress_allowlist'] = [`127.0.0.1:${holdPort}`];
};

/** The jti of each token of the bundle, by purpose, in order. */
function tokenIds(bundle: Bundle, purpose: string): string[] {
  return ofType(bundle, 'token')
    .filter((t) => t['purpose'] === purpose)
    .map((t) => {
      const payload = String(t['jwt']).split('.')[1] ?? '';
      return String((JSON.parse(Buffer.from(payload, 'base64url').toString('utf8')) as { jti: string }).jti);
    });
}

/**
 * The proxy's receipt of the turn it refused at the token check: a receipt of no job (the token
 * was not trusted), which the turn names as the proxy's.
 */
async function refusalOf(bundle: Bundle): Promise<ReceiptPayload> {
  const turn = ofType(bundle, 'model_turn').at(-1);
  assert.equal(turn?.['finish'], 'error');
  assert.equal(turn?.['receipt_id'], null, "not one of the job's receipts");
  const stored = stack.proxy.store.get(String(turn?.['proxy_receipt_id']));
  assert.ok(stored, 'the proxy kept the receipt of its refusal');
  const { payload } = await verifyReceipt(stored.jws, publicJwks(stack.keys, ['receipt']));
  assert.equal(payload.status, 'refused');
  assert.equal(payload.job, null);
  return payload;
}

/** Steps the clocks while the model answers the first execution turn of the job asked with `key`. */
function jumpAtFirstExecutionTurn(key: string, opts: { proxyToo: boolean }): () => boolean {
  let jumped = false;
  stack.beforeAnswer = async (request) => {
    const at = turnOf(request);
    if (jumped || !at.text.includes(key) || at.phase !== 'execution' || at.turn !== 0) return;
    jumped = true;
    await stepWorkerClock(DAY_MS);
    if (opts.proxyToo) proxyOffsetMs = DAY_MS;
  };
  return () => jumped;
}

test("the machine's clock jumps a day while the model answers: the tool call it asked for is refused as expired, never run; a fresh token is minted and the job finishes", async () => {
  await stack.activatePolicy(longWallBudget);
  const jumped = jumpAtFirstExecutionTurn('(host clock)', { proxyToo: true });
  const { handle, eventId, workflowId } = await stack.request('!claw summarise the README (host clock)');
  await stack.approve(handle, eventId);
  const result = (await handle.result()) as JobResult;
  assert.ok(jumped());
  assert.equal(result.status, 'succeeded', result.reason);
  const bundle = await stack.verified(result);
  // The read the model asked for right after the jump: refused under the expired token.
  const [read, ...more] = ofType(bundle, 'tool_record');
  assert.equal(more.length, 0, 'one tool call, and it did not run');
  assert.equal((read?.['denial'] as { code: string }).code, 'TOKEN_EXPIRED');
  assert.match((read?.['denial'] as { reason: string }).reason, /^the token expired at /);
  assert.equal(read?.['exit_status'], null);
  // A fresh execution token before the next turn, and the next turn ran under it.
  const [first, fresh] = tokenIds(bundle, 'execution');
  assert.ok(first && fresh, 'a second execution token was minted');
  const receipts = await stack.receiptsOf(workflowId);
  assert.deepEqual(
    receipts.map((r) => [
      r.status,
      r.token_id === fresh ? 'fresh' : r.token_id === first ? 'first' : 'planning',
    ]),
    [
      ['ok', 'planning'],
      ['ok', 'first'],
      ['ok', 'fresh'],
    ],
  );
  const answer = await stack.threadNotice(eventId, /^Answer for job/);
  assert.match(answer, /the call was refused: "TOKEN_EXPIRED: the token expired at /, 'the model heard why');
});

test('the clock jumps a day during a tool call: the next model call is refused by the proxy as expired, with a receipt, and the job ends saying so; nothing runs twice', async () => {
  await stack.activatePolicy(longWallBudget);
  stack.scripts.push([
    '(during a tool call)',
    {
      planning: [
        { answer: JSON.stringify({ goal: 'Fetch', steps: ['Fetch the page', 'Answer'], tools: ['http'] }) },
      ],
      execution: [
        { call: { name: 'http', arguments: { method: 'GET', url: `http://127.0.0.1:${holdPort}/hold` } } },
        { answer: 'Fetched: {{output}}' },
      ],
    },
  ]);
  const reached = new Promise<void>((resolve) => {
    holdReached = resolve;
  });
  const { handle, eventId, workflowId } = await stack.request('!claw fetch the page (during a tool call)');
  await stack.approve(handle, eventId);
  await reached;
  await stepWorkerClock(DAY_MS);
  proxyOffsetMs = DAY_MS;
  releaseHold?.();
  const result = (await handle.result()) as JobResult;
  assert.equal(result.status, 'failed');
  assert.match(
    result.reason,
    /^turn 2: the model proxy answered 401 \(TOKEN_EXPIRED: the token expired at \d{4}-\d\d-\d\dT[\d:.]+Z\)$/,
  );
  await stack.threadNotice(eventId, /: failed\. turn 2: the model proxy answered 401 \(TOKEN_EXPIRED/);
  const bundle = await stack.verified(result);
  assert.deepEqual(
    (await stack.receiptsOf(workflowId)).map((r) => r.status),
    ['ok', 'ok'],
  );
  const refused = await refusalOf(bundle);
  assert.equal(refused.refusal?.code, 'TOKEN_EXPIRED');
  assert.equal(refused.request_sha256, null, 'nothing went upstream under the expired token');
  const records = ofType(bundle, 'tool_record');
  assert.equal(records.length, 1, 'the http call ran once');
  assert.equal(records[0]?.['denial'], null);
});

test("only the worker's clock jumps a day: its expired token is not used, and the proxy refuses the token it mints from the future, with a receipt; the job ends saying so", async () => {
  await stack.activatePolicy(longWallBudget);
  const jumped = jumpAtFirstExecutionTurn('(worker clock)', { proxyToo: false });
  const { handle, eventId, workflowId } = await stack.request('!claw summarise the README (worker clock)');
  await stack.approve(handle, eventId);
  const result = (await handle.result()) as JobResult;
  assert.ok(jumped());
  assert.equal(result.status, 'failed');
  assert.match(
    result.reason,
    /^turn 2: the model proxy answered 401 \(TOKEN_NOT_YET_VALID: the token is not valid before \d{4}-\d\d-\d\dT[\d:.]+Z\)$/,
  );
  await stack.threadNotice(eventId, /: failed\. turn 2: the model proxy answered 401 \(TOKEN_NOT_YET_VALID/);
  const bundle = await stack.verified(result);
  const [read] = ofType(bundle, 'tool_record');
  assert.equal((read?.['denial'] as { code: string }).code, 'TOKEN_EXPIRED', 'the read did not run');
  assert.deepEqual(
    (await stack.receiptsOf(workflowId)).map((r) => r.status),
    ['ok', 'ok'],
  );
  const refused = await refusalOf(bundle);
  assert.equal(refused.refusal?.code, 'TOKEN_NOT_YET_VALID');
  assert.equal(refused.request_sha256, null);
});

test("with the policy's 30-minute time budget, a day's jump ends the job as out of time, saying so", async () => {
  await stack.activatePolicy((policy) => {
    policy['execution']['agent'] = { model_turns: 8, tool_calls: 10, wall_seconds: 1800 };
  });
  const jumped = jumpAtFirstExecutionTurn('(time budget)', { proxyToo: true });
  const { handle, eventId } = await stack.request('!claw summarise the README (time budget)');
  await stack.approve(handle, eventId);
  const result = (await handle.result()) as JobResult;
  assert.ok(jumped());
  assert.equal(result.status, 'budget_exhausted');
  assert.equal(result.reason, "stopped after 1800 s, the plan's time budget");
  await stack.threadNotice(eventId, /: budget_exhausted\. stopped after 1800 s/);
  const bundle = await stack.verified(result);
  const [read] = ofType(bundle, 'tool_record');
  assert.equal((read?.['denial'] as { code: string }).code, 'TOKEN_EXPIRED', 'the read did not run');
  const budget = ofType(bundle, 'budget')[0] as { exhausted: string };
  assert.equal(budget.exhausted, 'wall_seconds');
});
