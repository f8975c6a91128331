// The receipting proxy, end to end over HTTP: the real proxy server and receipt store, the local
// demo upstream in place of the paid provider.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { request } from 'node:http';
import { after, before, describe, test } from 'node:test';
import { RECEIPT_ERRORS, verifyReceipt, type SignedReceipt } from '../../src/proxy/receipts.ts';
import { parseProxyConfig } from '../../src/proxy/config.ts';
import { ReceiptStore } from '../../src/proxy/receipt-store.ts';
import { PROXY_ERRORS, startProxy, type VerifyCallToken } from '../../src/proxy/server.ts';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ClawgateError, ERROR_CODES } from '../../src/errors.ts';
import { generateKeyring, loadSigner, publicJwks } from '../../src/keys/keyring.ts';
import { FilePolicyRegistry, signWpc } from '../../src/policy/registry.ts';
import { parseWpc } from '../../src/policy/wpc.ts';
import { cstVerifier, registryPolicySource } from '../../src/proxy/token-check.ts';
import { mintCapabilityToken } from '../../src/tokens/cst.ts';
import { FileRevocationStore } from '../../src/tokens/revocations.ts';
import { receiptKeyPair, startProxyUnderTest, type ProxyUnderTest } from './proxy-harness.ts';

const sha256 = (b: Uint8Array | string): string => createHash('sha256').update(b).digest('hex');

/** Real capability tokens, minted and verified by the CST code, checked against a real registry. */
const tokens: Record<string, string> = {};
let verifyToken: VerifyCallToken;
let revocations: FileRevocationStore;

async function setUpTokens(): Promise<void> {
  const state = mkdtempSync(join(tmpdir(), 'clawgate-proxy-tokens-'));
  await generateKeyring(join(state, 'keys'), 'token');
  await generateKeyring(join(state, 'keys'), 'policy');
  const minter = loadSigner(join(state, 'keys'), 'token');
  const policySigner = loadSigner(join(state, 'keys'), 'policy');
  const example = JSON.parse(
    readFileSync(new URL('../../examples/policy.json', import.meta.url), 'utf8'),
  ) as Record<string, any>;
  example['model_access'].allowed_models = ['demo-echo', 'demo-echo-large', 'model-nobody-serves'];
  const active = parseWpc(example);
  const other = parseWpc({ ...example, description: 'a later version' });
  const registry = new FilePolicyRegistry(join(state, 'registry'));
  const signers = publicJwks(join(state, 'keys'), ['policy']);
  const { hash } = await registry.register(signWpc(active, policySigner), signers);
  const { hash: otherHash } = await registry.register(signWpc(other, policySigner), signers);
  registry.activate('matrix', hash);
  revocations = new FileRevocationStore(join(state, 'revocations.log'));
  verifyToken = cstVerifier({
    jwks: publicJwks(join(state, 'keys'), ['token']),
    revocations,
    policies: registryPolicySource(registry, 'matrix'),
  });
  const mint = async (workflowId: string, models: string[], wpcHash?: string) =>
    mintCapabilityToken(
      {
        purpose: 'planning',
        job: { workflowId, runId: `run-${workflowId}` },
        roomId: '!ops:localhost',
        scope: { tools: [], models },
        ...(wpcHash ? { wpcHash } : {}),
      },
      minter,
    );
  const a = await mint('job-a', ['demo-echo'], hash);
  tokens['job-a'] = a.token;
  tokens['jti-a'] = a.claims.jti;
  tokens['job-b'] = (await mint('job-b', ['demo-echo', 'demo-echo-large', 'model-nobody-serves'])).token;
  const revoked = await mint('job-r', ['demo-echo']);
  revocations.revokeToken(revoked.claims.jti, 'test');
  tokens['revoked'] = revoked.token;
  tokens['drift'] = (await mint('job-d', ['demo-echo'], otherHash)).token;
  tokens['policy-a'] = hash;
}

const chatBody = (model: string, text: string, stream = false): string =>
  JSON.stringify({ model, messages: [{ role: 'user', content: text }], ...(stream ? { stream: true } : {}) });

let p: ProxyUnderTest;
before(async () => {
  await setUpTokens();
  p = await startProxyUnderTest({ verifyToken });
});
after(async () => {
  await p.close();
});

/** A chat call to a proxy under test, with the named token (or none); its response unread. */
function post(
  via: ProxyUnderTest,
  name: string | undefined,
  body: string | Buffer,
  headers: Record<string, string> = {},
): Promise<Response> {
  const token = name === undefined ? undefined : (tokens[name] ?? name);
  return fetch(`${via.proxy.url}/v1/chat/completions`, {
    method: 'POST',
    headers: {
      'content-type': 'application/json',
      ...(token ? { authorization: `Bearer ${token}` } : {}),
      ...headers,
    },
    body: typeof body === 'string' ? body : new Uint8Array(body),
  });
}

async function chat(name: string | undefined, body: string | Buffer, headers: Record<string, string> = {}) {
  const response = await post(p, name, body, headers);
  return { response, bytes: Buffer.from(await response.arrayBuffer()) };
}

async function receiptsOf(name: string): Promise<SignedReceipt[]> {
  const response = await fetch(`${p.proxy.url}/v1/receipts`, {
    headers: { authorization: `Bearer ${tokens[name] ?? name}` },
  });
  assert.equal(response.status, 200);
  const { receipts } = (await response.json()) as { receipts: Array<{ jws: string }> };
  return await Promise.all(receipts.map((r) => verifyReceipt(r.jws, p.jwks)));
}

async function receiptById(id: string): Promise<SignedReceipt> {
  const stored = p.proxy.store.get(id);
  assert.ok(stored, `receipt ${id} is in the store`);
  return await verifyReceipt(stored.jws, p.jwks);
}

describe('allowed calls', () => {
  test('a JSON call is forwarded with the upstream key, answered, and receipted with exact hashes', async () => {
    const body = chatBody('demo-echo', 'hello proxy');
    const before = p.upstream.received.length;
    const { response, bytes } = await chat('job-a', body);
    assert.equal(response.status, 200);
    const answer = JSON.parse(bytes.toString()) as {
      choices: Array<{ message: { content: string } }>;
      usage: { prompt_tokens: number; completion_tokens: number; total_tokens: number };
    };
    assert.equal(answer.choices[0]?.message.content, 'echo: hello proxy');

    // The upstream got the caller's exact bytes and the upstream key, never the CST.
    assert.equal(p.upstream.received[before]?.toString(), body);
    assert.equal(p.upstream.authorizations[before], 'Bearer upstream-secret-key');

    const receiptId = response.headers.get('x-clawgate-receipt-id');
    assert.ok(receiptId);
    const receipt = await receiptById(receiptId);
    assert.equal(receipt.payload.status, 'ok');
    assert.deepEqual(receipt.payload.job, { workflow_id: 'job-a', run_id: 'run-job-a' });
    assert.equal(receipt.payload.token_id, tokens['jti-a']);
    assert.equal(receipt.payload.policy_hash, tokens['policy-a']);
    assert.equal(receipt.payload.model, 'demo-echo');
    assert.deepEqual(receipt.payload.upstream, { name: 'demo', url: `${p.upstream.url}/v1` });
    assert.equal(receipt.payload.request_sha256, sha256(body));
    assert.equal(receipt.payload.response_sha256, sha256(bytes));
    assert.deepEqual(receipt.payload.usage, answer.usage, 'the usage the upstream reported');
    assert.ok(receipt.payload.started_at <= receipt.payload.ended_at);
  });

  test('a stream is passed through unchanged, byte for byte, with the receipt id at its end', async () => {
    const { response, bytes } = await chat('job-a', chatBody('demo-echo', 'one two three four', true));
    assert.equal(response.status, 200);
    assert.match(response.headers.get('content-type') ?? '', /^text\/event-stream/);
    const receiptId = response.headers.get('x-clawgate-receipt-id');
    assert.ok(receiptId);
    const trailer = `: clawgate-receipt ${receiptId}\n\n`;
    const text = bytes.toString();
    assert.ok(text.endsWith(trailer), 'the stream ends with the receipt id');
    const passed = bytes.subarray(0, bytes.length - Buffer.byteLength(trailer));
    assert.deepEqual(passed, p.upstream.sent.at(-1), 'the upstream stream reached the caller unchanged');
    const receipt = await receiptById(receiptId);
    assert.equal(receipt.payload.stream, true);
    assert.equal(receipt.payload.response_sha256, sha256(passed));
    assert.equal(receipt.payload.usage?.completion_tokens, 5);
  });

  test('a body that arrives in pieces, with or without its length declared, is forwarded whole', async () => {
    // Most bodies come with their headers and are taken at once; these come later, in pieces.
    for (const declared of [true, false]) {
      const body = chatBody('demo-echo', `pieces ${declared ? 'with' : 'without'} a length`);
      const before = p.upstream.received.length;
      const answer = await new Promise<{ status: number; text: string }>((resolve, reject) => {
        const req = request(`${p.proxy.url}/v1/chat/completions?from=test`, {
          method: 'POST',
          headers: {
            'content-type': 'application/json',
            authorization: `Bearer ${tokens['job-a']}`,
            ...(declared ? { 'content-length': Buffer.byteLength(body) } : {}),
          },
        });
        req.on('response', (res) => {
          let text = '';
          res.on('data', (chunk: Buffer) => (text += chunk.toString()));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, text }));
        });
        req.on('error', reject);
        req.flushHeaders();
        const cut = Math.floor(body.length / 2);
        setTimeout(() => req.write(body.slice(0, cut)), 30);
        setTimeout(() => req.end(body.slice(cut)), 60);
      });
      assert.equal(answer.status, 200, answer.text);
      assert.equal(p.upstream.received[before]?.toString(), body, 'the upstream got the exact bytes');
    }
  });

  test('GET /v1/models lists only the models the token may use', async () => {
    const response = await fetch(`${p.proxy.url}/v1/models`, {
      headers: { authorization: `Bearer ${tokens['job-a']}` },
    });
    const { data } = (await response.json()) as { data: Array<{ id: string }> };
    assert.deepEqual(
      data.map((m) => m.id),
      ['demo-echo'],
    );
  });
});

describe('refusals, each with its code and a receipt', () => {
  const cases: Array<[string, string | undefined, string, number, string]> = [
    ['no token', undefined, chatBody('demo-echo', 'x'), 401, PROXY_ERRORS.tokenMissing],
    ['a bad token', 'forged', chatBody('demo-echo', 'x'), 401, ERROR_CODES.tokenMalformed],
    ['a revoked token', 'revoked', chatBody('demo-echo', 'x'), 403, ERROR_CODES.tokenRevoked],
    ['pinned policy drift', 'drift', chatBody('demo-echo', 'x'), 403, ERROR_CODES.policyHashMismatch],
    [
      'a model outside the scope',
      'job-a',
      chatBody('demo-echo-large', 'x'),
      403,
      PROXY_ERRORS.modelNotInScope,
    ],
    [
      'a model no upstream serves',
      'job-b',
      chatBody('model-nobody-serves', 'x'),
      404,
      PROXY_ERRORS.modelUnavailable,
    ],
    ['malformed JSON', 'job-a', '{"model": "demo-echo", ', 400, PROXY_ERRORS.malformed],
    ['a body without messages', 'job-a', '{"model":"demo-echo"}', 400, PROXY_ERRORS.malformed],
  ];
  for (const [what, token, body, status, code] of cases) {
    test(`${what} is refused with ${code}, and nothing reaches the upstream`, async () => {
      const before = p.upstream.received.length;
      const { response, bytes } = await chat(token, body);
      assert.equal(response.status, status);
      const error = (JSON.parse(bytes.toString()) as { error: { code: string; message: string } }).error;
      assert.equal(error.code, code);
      assert.ok(error.message.length > 10, 'the refusal says why');
      assert.equal(p.upstream.received.length, before, 'nothing went upstream');
      const receiptId = response.headers.get('x-clawgate-receipt-id');
      assert.ok(receiptId, 'the refusal has a receipt');
      const receipt = await receiptById(receiptId);
      assert.equal(receipt.payload.status, 'refused');
      assert.deepEqual(receipt.payload.refusal?.code, code);
    });
  }

  test('a body over the size limit is refused with 413', async () => {
    const big = chatBody('demo-echo', 'x'.repeat(1024 * 1024 + 10));
    const { response } = await chat('job-a', big);
    assert.equal(response.status, 413);
  });

  test("a token may not read another job's receipts", async () => {
    const response = await fetch(`${p.proxy.url}/v1/receipts?job=job-a`, {
      headers: { authorization: `Bearer ${tokens['job-b']}` },
    });
    assert.equal(response.status, 403);
    assert.equal(
      ((await response.json()) as { error: { code: string } }).error.code,
      PROXY_ERRORS.receiptOtherJob,
    );
  });
});

describe('receipts', () => {
  test("a job's receipts form a chain in call order", async () => {
    for (const text of ['first', 'second', 'third']) await chat('job-b', chatBody('demo-echo', text));
    const receipts = await receiptsOf('job-b');
    assert.ok(receipts.length >= 3);
    assert.equal(receipts[0]?.payload.prev_receipt_sha256, null);
    for (let i = 1; i < receipts.length; i++) {
      assert.equal(receipts[i]?.payload.prev_receipt_sha256, receipts[i - 1]?.payloadSha256, `link ${i}`);
    }
  });

  test('a receipt verifies with the public JWKS and fails after any byte changes', async () => {
    const [receipt] = await receiptsOf('job-b');
    assert.ok(receipt);
    await verifyReceipt(receipt.jws, p.jwks);
    for (let i = 0; i < receipt.jws.length; i++) {
      if (receipt.jws[i] === '.') continue;
      const replacement = receipt.jws[i] === 'A' ? 'B' : 'A';
      const tampered = receipt.jws.slice(0, i) + replacement + receipt.jws.slice(i + 1);
      await assert.rejects(verifyReceipt(tampered, p.jwks), `a change at byte ${i} was not detected`);
    }
    const otherKey = {
      keys: p.jwks.keys.map((k) => ({ ...k, x: Buffer.alloc(32, 7).toString('base64url') })),
    };
    await assert.rejects(verifyReceipt(receipt.jws, otherKey), { code: RECEIPT_ERRORS.badSignature });
  });

  test('receipts survive a proxy restart, and the chain continues from them', async () => {
    const beforeRestart = await receiptsOf('job-b');
    await p.restart();
    const afterRestart = await receiptsOf('job-b');
    assert.deepEqual(
      afterRestart.map((r) => r.jws),
      beforeRestart.map((r) => r.jws),
    );
    await chat('job-b', chatBody('demo-echo', 'after restart'));
    const all = await receiptsOf('job-b');
    assert.equal(all.at(-1)?.payload.prev_receipt_sha256, beforeRestart.at(-1)?.payloadSha256);
  });
});

describe('faults', () => {
  test('an upstream error status is passed on and receipted as upstream_error', async () => {
    p.upstream.setFault('error-500');
    try {
      const { response } = await chat('job-a', chatBody('demo-echo', 'fail'));
      assert.equal(response.status, 500);
      const receipt = await receiptById(response.headers.get('x-clawgate-receipt-id') ?? '');
      assert.equal(receipt.payload.status, 'upstream_error');
      assert.equal(receipt.payload.http_status, 500);
    } finally {
      p.upstream.setFault('none');
    }
  });

  test('an upstream that dies mid-stream gives a receipt that says so, and the caller sees a broken stream', async () => {
    p.upstream.setFault('die-mid-stream');
    try {
      const response = await post(p, 'job-a', chatBody('demo-echo', 'a b c d', true));
      const receiptId = response.headers.get('x-clawgate-receipt-id') ?? '';
      await assert.rejects(response.arrayBuffer(), 'the caller must not see a complete stream');
      const receipt = await receiptById(receiptId);
      assert.equal(receipt.payload.status, 'upstream_failed');
      assert.match(receipt.payload.error ?? '', /mid-answer/);
      assert.ok(receipt.payload.response_bytes > 0, 'the partial answer is hashed');
    } finally {
      p.upstream.setFault('none');
    }
  });

  test('a client that disconnects aborts the upstream call and gets an aborted receipt', async () => {
    let release!: () => void;
    const held = new Promise<void>((r) => (release = r));
    const slow = await startProxyUnderTest({ verifyToken, upstream: { afterFirstChunk: () => held } });
    try {
      const receiptId = await new Promise<string>((resolve, reject) => {
        const req = request(`${slow.proxy.url}/v1/chat/completions`, {
          method: 'POST',
          headers: { authorization: `Bearer ${tokens['job-a']}`, 'content-type': 'application/json' },
        });
        req.on('response', (res) => {
          res.once('data', () => {
            // The first chunk arrived while the upstream is still held: pass-through, not buffered.
            resolve(String(res.headers['x-clawgate-receipt-id']));
            req.destroy();
          });
        });
        req.on('error', () => {});
        req.end(chatBody('demo-echo', 'never finished', true));
        setTimeout(() => reject(new Error('no first chunk')), 5_000);
      });
      let receipt: SignedReceipt | undefined;
      for (let i = 0; i < 100 && !receipt; i++) {
        const stored = slow.proxy.store.get(receiptId);
        if (stored) receipt = await verifyReceipt(stored.jws, slow.jwks);
        else await new Promise((r) => setTimeout(r, 20));
      }
      assert.equal(receipt?.payload.status, 'aborted');
      release();
      await new Promise((r) => setTimeout(r, 50));
      assert.equal(slow.upstream.sent.length, 0, 'the upstream never finished the aborted answer');
    } finally {
      release();
      await slow.close();
    }
  });

  test('a stream of events apart is hashed whole, and its finished call leaves no timer behind', async () => {
    // Events 20 ms apart reach the proxy one by one; the upstream timeout (300 ms) is re-armed
    // by each, and must not outlive the call (it would hold the process and fire on a call
    // long finished).
    const paced = await startProxyUnderTest({
      verifyToken,
      upstream: { chunkDelayMs: 20 },
      config: { limits: { upstreamTimeoutMs: 300 } },
    });
    try {
      const call = async (text: string) => {
        const response = await post(paced, 'job-a', chatBody('demo-echo', text, true));
        return { response, bytes: Buffer.from(await response.arrayBuffer()) };
      };
      const timers = (): number => process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;
      await call('warm up');
      const before = timers();
      const first = await call('one two three four five six');
      assert.equal(first.response.status, 200);
      await new Promise((r) => setImmediate(r));
      assert.equal(timers(), before, 'no timer of the finished call is left running');
      const receiptId = first.response.headers.get('x-clawgate-receipt-id') ?? '';
      const trailer = `: clawgate-receipt ${receiptId}\n\n`;
      const passed = first.bytes.subarray(0, first.bytes.length - Buffer.byteLength(trailer));
      assert.deepEqual(passed, paced.upstream.sent.at(-1), 'the events reached the caller unchanged');
      const stored = paced.proxy.store.get(receiptId);
      assert.ok(stored);
      const receipt = (await verifyReceipt(stored.jws, paced.jwks)).payload;
      assert.equal(receipt.response_sha256, sha256(passed), 'every event is in the hash, in order');
      assert.equal(receipt.response_bytes, passed.length);
      assert.equal(receipt.usage?.completion_tokens, 7, 'the usage in the last event was found');
    } finally {
      await paced.close();
    }
  });

  test('a caller that leaves while its request is still being sent gets an aborted receipt; nothing goes upstream', async () => {
    const before = p.upstream.received.length;
    const known = new Set((await receiptsOf('job-a')).map((r) => r.payload.receipt_id));
    const body = chatBody('demo-echo', 'x'.repeat(5000));
    await new Promise<void>((resolve) => {
      const req = request(`${p.proxy.url}/v1/chat/completions`, {
        method: 'POST',
        headers: {
          'content-type': 'application/json',
          'content-length': Buffer.byteLength(body),
          authorization: `Bearer ${tokens['job-a']}`,
        },
      });
      req.on('error', () => resolve());
      req.write(body.slice(0, 1000));
      setTimeout(() => req.destroy(), 50);
    });
    let aborted: SignedReceipt | undefined;
    for (let i = 0; i < 100 && !aborted; i++) {
      aborted = (await receiptsOf('job-a')).find((r) => !known.has(r.payload.receipt_id));
      if (!aborted) await new Promise((r) => setTimeout(r, 20));
    }
    assert.ok(aborted, 'the call has a receipt');
    assert.equal(aborted.payload.status, 'aborted');
    assert.equal(aborted.payload.error, 'the caller closed the connection before its request was read');
    assert.equal(aborted.payload.request_sha256, null);
    assert.equal(p.upstream.received.length, before, 'nothing went upstream');
  });

  test('a token check that fails for an unexpected reason is a refusal (500 INTERNAL), with a receipt', async () => {
    const broken = await startProxyUnderTest({
      verifyToken: () => Promise.reject(new Error('the revocation store is unreadable')),
    });
    try {
      const response = await post(broken, 'job-a', chatBody('demo-echo', 'x'));
      assert.equal(response.status, 500);
      const error = ((await response.json()) as { error: { code: string; message: string } }).error;
      assert.deepEqual(error.code, 'INTERNAL');
      assert.match(error.message, /the revocation store is unreadable/);
      assert.equal(broken.upstream.received.length, 0, 'nothing went upstream');
      const stored = broken.proxy.store.get(response.headers.get('x-clawgate-receipt-id') ?? '');
      assert.ok(stored, 'the refusal has a receipt');
      const receipt = (await verifyReceipt(stored.jws, broken.jwks)).payload;
      assert.equal(receipt.status, 'refused');
      assert.equal(receipt.refusal?.code, 'INTERNAL');
    } finally {
      await broken.close();
    }
  });

  test('a receipt that cannot be written: no answer completes (JSON, stream, refusal), each says why', async () => {
    // The disk refusing the write (a full disk, say) is simulated on the real store: its
    // append fails as a failed write or fdatasync makes it fail.
    const failing = await startProxyUnderTest({ verifyToken });
    try {
      failing.proxy.store.append = () => Promise.reject(new Error('ENOSPC: no space left on device'));
      const json = await post(failing, 'job-a', chatBody('demo-echo', 'keep this answer back'));
      assert.equal(json.status, 500);
      const jsonText = await json.text();
      assert.ok(!jsonText.includes('keep this answer back'), 'the model answer is not given out');
      const jsonError = (JSON.parse(jsonText) as { error: { code: string; message: string } }).error;
      assert.equal(jsonError.code, PROXY_ERRORS.receiptNotPersisted);
      assert.match(jsonError.message, /ENOSPC/);

      // A stream's events went out as they came; without its receipt it does not end well:
      // the connection is cut before the closing chunk and the receipt id.
      const stream = await post(failing, 'job-a', chatBody('demo-echo', 'a stream', true));
      assert.equal(stream.status, 200);
      await assert.rejects(stream.text(), 'the stream is cut, not completed');

      const refused = await post(failing, undefined, chatBody('demo-echo', 'no token'));
      assert.equal(refused.status, 500);
      const refusedError = ((await refused.json()) as { error: { code: string; message: string } }).error;
      assert.equal(refusedError.code, PROXY_ERRORS.receiptNotPersisted);
      assert.match(
        refusedError.message,
        /refused \(TOKEN_MISSING: .*\), and the receipt could not be written/,
      );
    } finally {
      await failing.close();
    }
  });

  test('an upstream that does not answer in time gets 504 and a timeout receipt', async () => {
    const hung = await startProxyUnderTest({
      verifyToken,
      upstream: { fault: 'hang' },
      config: { limits: { upstreamTimeoutMs: 200 } },
    });
    try {
      const response = await post(hung, 'job-a', chatBody('demo-echo', 'hang'));
      assert.equal(response.status, 504);
      assert.equal(
        ((await response.json()) as { error: { code: string } }).error.code,
        PROXY_ERRORS.upstreamTimeout,
      );
      const stored = hung.proxy.store.get(response.headers.get('x-clawgate-receipt-id') ?? '');
      assert.ok(stored);
      assert.equal((await verifyReceipt(stored.jws, hung.jwks)).payload.status, 'timeout');
    } finally {
      await hung.close();
    }
  });
});

test('GET /healthz answers 503 with the reason while token checks refuse every call, 200 otherwise', async () => {
  let refusing: string | null = 'the shared control state was last read 40 s ago (limit 30 s)';
  const guarded = await startProxyUnderTest({ verifyToken, refusing: () => refusing });
  try {
    const stale = await fetch(`${guarded.proxy.url}/healthz`);
    assert.equal(stale.status, 503);
    const staleBody = (await stale.json()) as Record<string, unknown>;
    assert.deepEqual(
      { ok: staleBody['ok'], proxy_id: staleBody['proxy_id'], refusing: staleBody['refusing'] },
      {
        ok: false,
        proxy_id: 'clawgate-proxy',
        refusing: 'the shared control state was last read 40 s ago (limit 30 s)',
      },
    );
    assert.deepEqual(staleBody['reasons'], ['the shared control state was last read 40 s ago (limit 30 s)']);
    refusing = null;
    const fresh = await fetch(`${guarded.proxy.url}/healthz`);
    assert.equal(fresh.status, 200);
    const freshBody = (await fresh.json()) as Record<string, any>;
    assert.deepEqual(
      [freshBody['ok'], freshBody['proxy_id'], freshBody['refusing'], freshBody['reasons']],
      [true, 'clawgate-proxy', undefined, []],
    );
    assert.equal(freshBody['upstreams']['demo']['reachable'], true);
    assert.equal(freshBody['receiptLog']['reachable'], true);
  } finally {
    await guarded.close();
  }
});

test('GET /healthz answers 503 while an upstream does not answer or the receipt log cannot be written, saying since when; 200 once a call works again', async () => {
  const under = await startProxyUnderTest({
    verifyToken,
    config: { limits: { upstreamTimeoutMs: 300 } },
  });
  const healthz = async () => {
    const res = await fetch(`${under.proxy.url}/healthz`);
    return { status: res.status, body: (await res.json()) as Record<string, any> };
  };
  try {
    assert.equal((await healthz()).status, 200);
    under.upstream.setFault('hang');
    const before = Date.now();
    assert.equal((await post(under, 'job-a', chatBody('demo-echo', 'anyone?'))).status, 504);
    const hung = await healthz();
    assert.equal(hung.status, 503);
    assert.equal(hung.body['ok'], false);
    assert.match(
      hung.body['reasons'].join('\n'),
      /^upstream demo is failing \(for \d+ ms, since \S+\): no answer from upstream demo within 300 ms$/,
    );
    const demo = hung.body['upstreams']['demo'];
    assert.equal(demo['reachable'], false);
    assert.ok(Date.parse(demo['since']) >= before - 5 && demo['forMs'] >= 0, JSON.stringify(demo));
    under.upstream.setFault('error-500');
    assert.equal((await post(under, 'job-a', chatBody('demo-echo', 'and now?'))).status, 500);
    assert.match(
      (await healthz()).body['reasons'].join('\n'),
      /upstream demo is failing .*: it answered 500/,
    );
    under.upstream.setFault('none');
    assert.equal((await post(under, 'job-a', chatBody('demo-echo', 'back?'))).status, 200);
    const back = await healthz();
    assert.equal(back.status, 200);
    assert.equal(back.body['upstreams']['demo']['reachable'], true);

    // A receipt that cannot be written (the disk full, an fsync failed) makes it 503 too.
    const append = under.proxy.store.append.bind(under.proxy.store);
    under.proxy.store.append = () => Promise.reject(new Error('ENOSPC: no space left on device'));
    assert.equal((await post(under, 'job-a', chatBody('demo-echo', 'full'))).status, 500);
    const full = await healthz();
    assert.equal(full.status, 503);
    assert.match(
      full.body['reasons'].join('\n'),
      /^the receipt log cannot be written \(for \d+ ms, since \S+\): ENOSPC: no space left on device$/,
    );
    assert.equal(full.body['receiptLog']['reachable'], false);
    under.proxy.store.append = append;
    assert.equal((await post(under, 'job-a', chatBody('demo-echo', 'space again'))).status, 200);
    assert.equal((await healthz()).status, 200);
  } finally {
    await under.close();
  }
});

test('a listen port another process holds: start fails with EADDRINUSE, and the receipt log is let go', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'clawgate-proxy-port-'));
  const config = parseProxyConfig({
    listen: { host: '127.0.0.1', port: Number(new URL(p.proxy.url).port) },
    upstreams: [{ name: 'demo', baseUrl: `${p.upstream.url}/v1`, models: ['demo-echo'] }],
    receiptsPath: join(dir, 'receipts.log'),
  });
  const store = await ReceiptStore.open(config.receiptsPath);
  const { signer } = await receiptKeyPair();
  await assert.rejects(startProxy({ config, store, receiptKey: signer, verifyToken }), {
    code: 'EADDRINUSE',
  });
  await (await ReceiptStore.open(config.receiptsPath)).close();
});

describe('an HTTPS upstream', () => {
  // The demo upstream served over TLS with a certificate for 127.0.0.1 signed by a test CA
  // (test/fixtures/tls, made by its make.sh): the proxy trusts what the upstream's caFile names.
  const fixture = (name: string): string =>
    fileURLToPath(new URL(`../fixtures/tls/${name}`, import.meta.url));
  const tls = {
    key: readFileSync(fixture('upstream-key.pem'), 'utf8'),
    cert: readFileSync(fixture('upstream-cert.pem'), 'utf8'),
  };

  test('is reached over TLS when its certificate chains to the CA file, JSON and stream', async () => {
    const secure = await startProxyUnderTest({
      verifyToken,
      upstream: { tls },
      upstreamConfig: { caFile: fixture('test-ca.pem') },
    });
    try {
      assert.match(secure.upstream.url, /^https:/);
      for (const stream of [false, true]) {
        const response = await post(secure, 'job-a', chatBody('demo-echo', 'over tls', stream));
        const text = await response.text();
        assert.equal(response.status, 200, text);
        assert.ok(text.includes(stream ? '"content":" tls"' : '"content":"echo: over tls"'), text);
        assert.equal(secure.upstream.authorizations.at(-1), 'Bearer upstream-secret-key');
        const stored = secure.proxy.store.get(response.headers.get('x-clawgate-receipt-id') ?? '');
        assert.ok(stored);
        const receipt = (await verifyReceipt(stored.jws, secure.jwks)).payload;
        assert.equal(receipt.status, 'ok');
        assert.equal(receipt.upstream?.url, `${secure.upstream.url}/v1`);
      }
    } finally {
      await secure.close();
    }
  });

  test('is refused, with nothing sent to it, when its certificate does not chain to the CA file', async () => {
    // Neither another CA nor the system's trust the test CA: the call fails closed, and the
    // upstream key never leaves the proxy.
    for (const caFile of [fixture('other-ca.pem'), undefined]) {
      const impostor = await startProxyUnderTest({
        verifyToken,
        upstream: { tls },
        ...(caFile ? { upstreamConfig: { caFile } } : {}),
      });
      try {
        const response = await post(impostor, 'job-a', chatBody('demo-echo', 'to an impostor'));
        assert.equal(response.status, 502);
        const error = ((await response.json()) as { error: { code: string; message: string } }).error;
        assert.equal(error.code, PROXY_ERRORS.upstreamFailed);
        assert.match(error.message, /certificate/i);
        assert.equal(impostor.upstream.received.length, 0, 'no request reached the upstream');
        const stored = impostor.proxy.store.get(response.headers.get('x-clawgate-receipt-id') ?? '');
        assert.ok(stored);
        const receipt = (await verifyReceipt(stored.jws, impostor.jwks)).payload;
        assert.equal(receipt.status, 'upstream_failed');
        assert.match(receipt.error ?? '', /certificate/i);
      } finally {
        await impostor.close();
      }
    }
  });

  test('a CA file that cannot be used stops the proxy at start, naming it', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'clawgate-proxy-ca-'));
    const notPem = join(dir, 'not-a-ca.pem');
    writeFileSync(notPem, 'this is not a certificate\n');
    const broken = join(dir, 'broken.pem');
    writeFileSync(broken, '-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n');
    const cases: Array<[string, RegExp]> = [
      [join(dir, 'missing.pem'), /upstreams\[0\]\.caFile \(.*missing\.pem\): cannot be read \(ENOENT\)/],
      [notPem, /upstreams\[0\]\.caFile \(.*not-a-ca\.pem\): holds no PEM certificate/],
      [broken, /upstreams\[0\]\.caFile \(.*broken\.pem\): certificate 1 cannot be parsed/],
    ];
    for (const [caFile, message] of cases) {
      const config = parseProxyConfig({
        listen: { host: '127.0.0.1', port: 0 },
        upstreams: [{ name: 'internal', baseUrl: 'https://127.0.0.1:9/v1', caFile, models: ['m'] }],
        receiptsPath: join(dir, 'receipts.log'),
      });
      const store = await ReceiptStore.open(config.receiptsPath);
      const { signer } = await receiptKeyPair();
      await assert.rejects(startProxy({ config, store, receiptKey: signer, verifyToken }), (error: Error) => {
        assert.ok(error instanceof ClawgateError);
        assert.equal(error.code, ERROR_CODES.configInvalid);
        assert.match(error.message, message);
        return true;
      });
      // The receipt log was let go: another proxy may open it.
      await (await ReceiptStore.open(config.receiptsPath)).close();
    }
    assert.throws(
      () =>
        parseProxyConfig({
          upstreams: [{ name: 'plain', baseUrl: 'http://127.0.0.1:9/v1', caFile: notPem, models: ['m'] }],
          receiptsPath: join(dir, 'receipts.log'),
        }),
      /upstreams\[0\]\.caFile: a CA file is for an https:\/\/ upstream/,
    );
  });
});
