// The receipt log's disk fills up. The log is on a small disk of its own (a tmpfs, or a fault
// hook in node:fs where no tmpfs can be mounted; the output says which), under the real proxy,
// the real Temporal worker, the real sandbox and real Matrix users. What a user expects: a model
// call whose receipt cannot be written fails closed with a clear error, and nothing of its answer
// reaches the caller as a success; the proxy goes on serving; the log holds no receipt of a call
// that failed and nothing a restart cannot read; once there is space again calls succeed, the
// job's receipt chain goes on from its last durable receipt, and a job whose turn failed this
// way asks again and finishes, or ends with a message that says why.
import { smallDisk, type SmallDisk } from './small-disk.ts';
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { PROXY_ERRORS } from '../../src/proxy/server.ts';
import { ReceiptStore } from '../../src/proxy/receipt-store.ts';
import { verifyReceipt } from '../../src/proxy/receipts.ts';
import { publicJwks } from '../../src/keys/keyring.ts';
import type { JobResult } from '../../src/workflows/job.ts';
import { chat, ofType, startJobStack, turnOf, type JobStack } from './job-stack.ts';

let disk: SmallDisk;
let stack: JobStack;

before(async () => {
  disk = smallDisk(4 << 20, 'receipts.log');
  stack = await startJobStack({ receiptsPath: `${disk.dir}/receipts.log` });
});

after(async () => {
  await stack?.close();
  disk?.release();
});

/**
 * Fills the disk, then calls the proxy without a token (each refusal is receipted) until a
 * receipt cannot be written: the room the log had ahead of its data is used up too. Returns
 * how many receipts still went in.
 */
async function fillDisk(): Promise<number> {
  disk.fill();
  for (let written = 0; written < 50_000; written++) {
    const response = await chat(stack.proxy.url, null, 'anyone there?');
    const body = (await response.json()) as { error: { code: string } };
    if (response.status === 500) {
      assert.equal(body.error.code, PROXY_ERRORS.receiptNotPersisted);
      return written;
    }
    assert.equal(response.status, 401);
  }
  throw new Error('the proxy went on writing receipts on a full disk');
}

/** The job's receipts as a reader of the log finds them now (the command line's way). */
async function jobReceiptIds(workflowId: string): Promise<string[]> {
  const reader = ReceiptStore.read(stack.receiptsPath);
  try {
    return reader.forJob(workflowId).map((r) => r.receiptId);
  } finally {
    await reader.close();
  }
}

test('a call whose receipt cannot be written fails closed; the proxy goes on serving; once space is back the chain goes on from the last receipt written', async () => {
  const job = `direct-${Date.now()}`;
  const token = await stack.directToken(job);
  const first = await chat(stack.proxy.url, token, 'before the disk fills');
  assert.equal(first.status, 200);
  const durable = [String(first.headers.get('x-clawgate-receipt-id'))];

  const room = await fillDisk();
  console.log(`the log took ${room} more receipt(s) in the room it had ahead, then refused`);
  const asked = stack.model.received.length;
  const failed = await chat(stack.proxy.url, token, 'while the disk is full');
  assert.equal(failed.status, 500, 'the call fails closed');
  const body = (await failed.json()) as Record<string, any>;
  assert.equal(body['error']['code'], PROXY_ERRORS.receiptNotPersisted);
  assert.match(body['error']['message'], /the receipt could not be written: .*(ENOSPC|no space left)/);
  assert.equal(body['choices'], undefined, 'nothing of the answer reaches the caller');
  assert.equal(failed.headers.get('x-clawgate-receipt-id'), null, 'no receipt is named');
  assert.equal(stack.model.received.length, asked + 1, 'the model did answer; the proxy kept it back');

  // Calls at once, with room for a few receipts: their batches are written in part before
  // the disk refuses. Whatever answered 200 has its receipt in the log; whatever failed has
  // none there, not even a whole line of a batch that was written in part.
  disk.leave(8192);
  const burst = await Promise.all(
    Array.from({ length: 20 }, (_, i) => chat(stack.proxy.url, token, `burst ${i}`)),
  );
  for (const r of burst) {
    await r.arrayBuffer();
    if (r.status === 200) durable.push(String(r.headers.get('x-clawgate-receipt-id')));
    else assert.equal(r.status, 500);
  }
  assert.ok(
    burst.some((r) => r.status === 500),
    'a full disk fails calls',
  );

  // The proxy still serves and says why calls fail; the log as it is now reads back whole (a
  // reader never repairs).
  const health = await fetch(`${stack.proxy.url}/healthz`);
  assert.equal(health.status, 503);
  const said = (await health.json()) as { reasons: string[]; receiptLog: { reachable: boolean } };
  assert.match(said.reasons.join('\n'), /^the receipt log cannot be written \(for .*(ENOSPC|no space left)/);
  assert.equal(said.receiptLog.reachable, false);
  // (Calls made at once are in the log in the order their receipts were written.)
  assert.deepEqual(
    (await jobReceiptIds(job)).sort(),
    [...durable].sort(),
    'the log holds the receipts of the calls that succeeded, no other',
  );

  disk.free();
  const back = await chat(stack.proxy.url, token, 'space is back');
  assert.equal(back.status, 200);
  assert.equal((await fetch(`${stack.proxy.url}/healthz`)).status, 200, 'healthy once a receipt is written');
  durable.push(String(back.headers.get('x-clawgate-receipt-id')));
  const receipts = await stack.receiptsOf(job);
  assert.deepEqual(receipts.map((r) => r.receipt_id).sort(), [...durable].sort());
  assert.equal(receipts.at(-1)?.receipt_id, durable.at(-1));
  // The chain: each receipt links to the one before it in the log, none to a lost one.
  const jwks = publicJwks(stack.keys, ['receipt']);
  const stored = stack.proxy.store.forJob(job);
  for (let i = 1; i < stored.length; i++) {
    const payload = (await verifyReceipt(stored[i]?.jws ?? '', jwks)).payload;
    assert.equal(payload.prev_receipt_sha256, stored[i - 1]?.payloadSha256, `receipt ${i} links to ${i - 1}`);
  }

  // A restart reads the log back: no damaged line, nothing half-written, the same receipts.
  const before = await jobReceiptIds(job);
  await stack.restartProxy();
  assert.deepEqual(await jobReceiptIds(job), before);
  const after = await chat(stack.proxy.url, token, 'after a restart');
  assert.equal(after.status, 200);
  const last = (await stack.receiptsOf(job)).at(-1);
  assert.equal(last?.prev_receipt_sha256, stack.proxy.store.forJob(job).at(-2)?.payloadSha256);
});

test('a streamed answer whose receipt cannot be written is cut before its end event: no client takes it as complete', async () => {
  const token = await stack.directToken(`direct-stream-${Date.now()}`);
  await fillDisk();
  try {
    const response = await chat(stack.proxy.url, token, 'a streamed answer on a full disk', { stream: true });
    assert.equal(response.status, 200, 'the stream had begun');
    const reader = (response.body as ReadableStream<Uint8Array>).getReader();
    let text = '';
    let broken: unknown = null;
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        text += Buffer.from(value).toString('utf8');
      }
    } catch (error) {
      broken = error;
    }
    assert.ok(broken, 'the connection is cut, not ended');
    assert.match(text, /^data: /, 'the events before the end went out as they came');
    assert.doesNotMatch(text, /data: \[DONE\]/, 'the end event is never sent');
    assert.match(text, new RegExp(`: clawgate-error ${PROXY_ERRORS.receiptNotPersisted}`));
  } finally {
    disk.free();
  }
});

test("a job's turn that meets the full disk is asked again once there is space, and the job finishes with a verified bundle", async () => {
  let attempts = 0;
  stack.beforeAnswer = async (request) => {
    const at = turnOf(request);
    if (!at.text.includes('disk full once') || at.phase !== 'execution' || at.turn !== 0) return;
    attempts += 1;
    // The first execution turn: the disk fills as the model answers; it is freed when the turn
    // is asked again.
    if (attempts === 1) await fillDisk();
    else disk.free();
  };
  try {
    const { handle, eventId, workflowId } = await stack.request(
      '!claw summarise the README (disk full once)',
    );
    await stack.approve(handle, eventId);
    const result = (await handle.result()) as JobResult;
    assert.equal(result.status, 'succeeded', result.reason);
    assert.equal(attempts, 2, 'the turn was asked twice: once failed closed, once written');
    await stack.threadNotice(eventId, /^Answer for job/);
    const bundle = await stack.verified(result);
    assert.deepEqual(
      ofType(bundle, 'model_turn').map((t) => [t['phase'], t['finish']]),
      [
        ['planning', 'answer'],
        ['execution', 'tool_calls'],
        ['execution', 'answer'],
      ],
    );
    assert.equal(ofType(bundle, 'tool_record').length, 1, 'the read ran once');
    // Every receipt of the job is in the bundle and in the log; the lost one is in neither.
    const receipts = await stack.receiptsOf(workflowId);
    assert.equal(receipts.length, 3);
    assert.equal(ofType(bundle, 'model_receipt').length, 3);
  } finally {
    stack.beforeAnswer = null;
    if (disk.full) disk.free();
  }
});

test('a job whose receipts cannot be written at all ends failed, saying why, with its bundle sealed', async () => {
  stack.beforeAnswer = async (request) => {
    const at = turnOf(request);
    if (at.text.includes('disk stays full') && at.phase === 'execution' && !disk.full) await fillDisk();
  };
  try {
    const { handle, eventId } = await stack.request('!claw summarise the README (disk stays full)');
    await stack.approve(handle, eventId);
    const result = (await handle.result()) as JobResult;
    assert.equal(result.status, 'failed');
    assert.match(
      result.reason,
      /^turn 1: the model proxy answered 500 \(RECEIPT_NOT_PERSISTED: the receipt could not be written: .*(ENOSPC|no space left).*\(the last of 4 attempts\)\)$/,
    );
    await stack.threadNotice(
      eventId,
      /: failed\. turn 1: the model proxy answered 500 \(RECEIPT_NOT_PERSISTED/,
    );
    const bundle = await stack.verified(result);
    assert.equal(ofType(bundle, 'tool_record').length, 0, 'no tool ran on an answer without a receipt');
  } finally {
    stack.beforeAnswer = null;
    if (disk.full) disk.free();
  }
});
