// The model upstream fails: it takes a call and never answers, it cuts its answer off half-way,
// it stops in the middle of a stream, it reports an error (HTTP 500) in the middle of a stream
// as OpenRouter does. A front between the real proxy and the scripted model breaks the calls;
// the proxy's upstream timeout is short here (1.5 s) so that a hang is seen in test time. What a
// user expects: the proxy gives up at its timeout and says so, with a receipt that says what
// happened (timeout, upstream_failed, upstream_error); the caller gets a clear error, and no
// half answer passes for a whole one; a job's turn is asked again and the job finishes, or it
// ends with a message that says why.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { PROXY_ERRORS } from '../../src/proxy/server.ts';
import type { ReceiptPayload } from '../../src/proxy/receipts.ts';
import type { JobResult } from '../../src/workflows/job.ts';
import { chat, ofType, startJobStack, turnOf, type JobStack, type UpstreamFault } from './job-stack.ts';

const TIMEOUT_MS = 1500;
let stack: JobStack;
let token: string;
const job = `direct-${Date.now()}`;

before(async () => {
  stack = await startJobStack({ upstreamTimeoutMs: TIMEOUT_MS });
  token = await stack.directToken(job);
});

after(async () => {
  await stack?.close();
});

async function receiptOf(response: Response): Promise<ReceiptPayload> {
  const id = response.headers.get('x-clawgate-receipt-id');
  assert.ok(id, 'the answer names its receipt');
  const found = (await stack.receiptsOf(job)).find((r) => r.receipt_id === id);
  assert.ok(found, `receipt ${id} is in the log`);
  return found;
}

/** Reads a streamed body to its end or its break: the text, and whether it ended cleanly. */
async function readStream(response: Response): Promise<{ text: string; ended: boolean }> {
  const reader = (response.body as ReadableStream<Uint8Array>).getReader();
  let text = '';
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return { text, ended: true };
      text += Buffer.from(value).toString('utf8');
    }
  } catch {
    return { text, ended: false };
  }
}

async function untilNoneHeld(): Promise<void> {
  const deadline = Date.now() + 5000;
  while (stack.upstream.held() > 0) {
    assert.ok(Date.now() < deadline, 'the proxy lets go of the upstream call it gave up on');
    await new Promise((r) => setTimeout(r, 20));
  }
}

test('an upstream that never sends a byte: the call ends at the proxy timeout with 504 UPSTREAM_TIMEOUT and a timeout receipt', async () => {
  stack.upstream.queue({ kind: 'hang' });
  const started = performance.now();
  const response = await chat(stack.proxy.url, token, 'are you there?');
  const waited = performance.now() - started;
  assert.equal(response.status, 504);
  assert.ok(waited >= TIMEOUT_MS - 50 && waited < TIMEOUT_MS + 2000, `gave up after ${waited} ms`);
  const receipt = await receiptOf(response);
  const body = (await response.json()) as { error: { code: string; message: string } };
  assert.equal(body.error.code, PROXY_ERRORS.upstreamTimeout);
  assert.equal(body.error.message, `no answer from upstream demo within ${TIMEOUT_MS} ms`);
  assert.equal(receipt.status, 'timeout');
  assert.equal(receipt.http_status, 504);
  assert.equal(receipt.response_bytes, 0);
  assert.match(receipt.request_sha256 ?? '', /^[0-9a-f]{64}$/, 'what was sent upstream is receipted');
  await untilNoneHeld();
  // The next call is served as usual.
  assert.equal((await chat(stack.proxy.url, token, 'and now?')).status, 200);
});

test('a JSON answer cut off half-way: 502 UPSTREAM_FAILED, none of the half answer, an upstream_failed receipt', async () => {
  stack.upstream.queue({ kind: 'cut-json' });
  const response = await chat(stack.proxy.url, token, 'a long answer please');
  assert.equal(response.status, 502, 'a cut answer is a gateway error, not the 200 that came before the cut');
  const receipt = await receiptOf(response);
  const body = (await response.json()) as Record<string, any>;
  assert.equal(body['error']['code'], PROXY_ERRORS.upstreamFailed);
  assert.match(body['error']['message'], /^upstream demo failed mid-answer: /);
  assert.equal(body['choices'], undefined);
  assert.equal(receipt.status, 'upstream_failed');
  assert.equal(receipt.http_status, 502);
  assert.ok(receipt.response_bytes > 0, 'the half that came is hashed in the receipt');
});

test('a stream cut mid-way: the caller sees it broken, never its end event, and the receipt says upstream_failed', async () => {
  stack.upstream.queue({ kind: 'cut-stream', events: 2 });
  const response = await chat(stack.proxy.url, token, 'stream me a few words', { stream: true });
  assert.equal(response.status, 200);
  // A stream's receipt is written when it ends; its id came with its first event.
  const { text, ended } = await readStream(response);
  const receipt = await receiptOf(response);
  assert.equal(ended, false, 'the connection is cut');
  assert.equal(text.match(/^data: \{/gm)?.length, 2, 'the two events that came were passed on');
  assert.doesNotMatch(text, /data: \[DONE\]/);
  assert.match(text, new RegExp(`: clawgate-error upstream_failed receipt ${receipt.receipt_id}\n\n$`));
  assert.equal(receipt.status, 'upstream_failed');
  assert.match(receipt.error ?? '', /^upstream demo failed mid-answer: /);
});

test('a stream that stops mid-way: cut at the timeout between chunks, with a timeout receipt', async () => {
  stack.upstream.queue({ kind: 'stall-stream', events: 1 });
  const started = performance.now();
  const response = await chat(stack.proxy.url, token, 'stream and stop', { stream: true });
  const { text, ended } = await readStream(response);
  const receipt = await receiptOf(response);
  assert.ok(performance.now() - started >= TIMEOUT_MS - 50);
  assert.equal(ended, false);
  assert.doesNotMatch(text, /data: \[DONE\]/);
  assert.match(text, new RegExp(`: clawgate-error timeout receipt ${receipt.receipt_id}\n\n$`));
  assert.equal(receipt.status, 'timeout');
  await untilNoneHeld();
});

test('an error event in the middle of a stream (HTTP 500, as OpenRouter sends it): passed on, and the receipt says upstream_error, not ok', async () => {
  stack.upstream.queue({ kind: 'error-event', events: 2 });
  const response = await chat(stack.proxy.url, token, 'stream until it fails', { stream: true });
  const { text, ended } = await readStream(response);
  const receipt = await receiptOf(response);
  assert.equal(ended, true, 'the upstream ended its stream; the caller reads its error event');
  assert.match(
    text,
    /"error":\{"code":500,"message":"Internal Server Error: the provider failed mid-answer"\}/,
  );
  assert.equal(receipt.status, 'upstream_error');
  assert.equal(
    receipt.error,
    'upstream demo reported an error mid-stream: Internal Server Error: the provider failed mid-answer (code 500)',
  );
});

test('an upstream that answers 503 after a while: passed on with its body, receipted as upstream_error', async () => {
  stack.upstream.queue({ kind: 'status', status: 503, delayMs: 300 });
  const response = await chat(stack.proxy.url, token, 'busy?');
  assert.equal(response.status, 503);
  const receipt = await receiptOf(response);
  assert.equal(((await response.json()) as { error: { code: string } }).error.code, 'overloaded');
  assert.equal(receipt.status, 'upstream_error');
  assert.equal(receipt.http_status, 503);
});

/** Faults for the calls of one job's first execution turn, in order; other calls pass. */
function breakFirstExecutionTurn(key: string, faults: UpstreamFault[] | 'always'): () => number {
  let calls = 0;
  stack.upstream.rule = (request) => {
    const at = turnOf(request);
    if (!at.text.includes(key) || at.phase !== 'execution' || at.turn !== 0) return null;
    calls += 1;
    return faults === 'always' ? { kind: 'hang' } : (faults.shift() ?? null);
  };
  return () => calls;
}

test("a job's turn that meets a hanging upstream, then a cut answer, is asked again and the job finishes with the whole answer", async () => {
  const calls = breakFirstExecutionTurn('hang then cut', [{ kind: 'hang' }, { kind: 'cut-json' }]);
  try {
    const { handle, eventId, workflowId } = await stack.request('!claw summarise the README (hang then cut)');
    await stack.approve(handle, eventId);
    const result = (await handle.result()) as JobResult;
    assert.equal(result.status, 'succeeded', result.reason);
    assert.equal(calls(), 3, 'the turn was asked three times');
    const answer = await stack.threadNotice(eventId, /^Answer for job/);
    assert.match(answer, /What README\.md says:/);
    const bundle = await stack.verified(result);
    const receipts = await stack.receiptsOf(workflowId);
    assert.deepEqual(
      receipts.map((r) => r.status),
      ['ok', 'timeout', 'upstream_failed', 'ok', 'ok'],
    );
    assert.equal(ofType(bundle, 'model_receipt').length, 5, 'every attempt is receipted in the bundle');
    const turns = ofType(bundle, 'model_turn');
    assert.deepEqual(
      turns.map((t) => [t['phase'], t['finish']]),
      [
        ['planning', 'answer'],
        ['execution', 'tool_calls'],
        ['execution', 'answer'],
      ],
    );
    assert.equal(turns[1]?.['receipt_id'], receipts[3]?.receipt_id, 'the turn is the answer that came whole');
    assert.equal(ofType(bundle, 'tool_record').length, 1, 'the read ran once');
  } finally {
    stack.upstream.rule = null;
  }
});

test('a job whose upstream never answers ends failed, saying the model did not answer in time, with its bundle sealed', async () => {
  const calls = breakFirstExecutionTurn('never answers', 'always');
  try {
    const { handle, eventId, workflowId } = await stack.request('!claw summarise the README (never answers)');
    await stack.approve(handle, eventId);
    const result = (await handle.result()) as JobResult;
    assert.equal(result.status, 'failed');
    assert.equal(
      result.reason,
      `turn 1: the model proxy answered 504 (UPSTREAM_TIMEOUT: no answer from upstream demo within ${TIMEOUT_MS} ms (the last of 4 attempts))`,
    );
    assert.equal(calls(), 4);
    await stack.threadNotice(eventId, /: failed\. turn 1: the model proxy answered 504 \(UPSTREAM_TIMEOUT/);
    const bundle = await stack.verified(result);
    assert.deepEqual(
      (await stack.receiptsOf(workflowId)).map((r) => r.status),
      ['ok', 'timeout', 'timeout', 'timeout', 'timeout'],
    );
    assert.equal(ofType(bundle, 'tool_record').length, 0);
    assert.equal(ofType(bundle, 'answer').length, 0, 'no answer');
  } finally {
    stack.upstream.rule = null;
  }
});
