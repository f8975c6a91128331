// Calls to the model proxy outlast a proxy restart: a call that got no answer (refused, or cut
// before a response) is sent again while the patience lasts; an answer of any status is the
// answer; a call past its patience, or aborted by its caller, fails as fetch does.
import assert from 'node:assert/strict';
import { createServer as createHttpServer } from 'node:http';
import { createServer as createNetServer, type AddressInfo, type Server } from 'node:net';
import { test } from 'node:test';
import { fetchProxy } from '../../../src/activities/proxy-fetch.ts';

async function listening(server: Server | ReturnType<typeof createHttpServer>): Promise<number> {
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return (server.address() as AddressInfo).port;
}

test('a proxy that cuts the first connections, then answers: the call is sent again and gets the answer', async () => {
  let connections = 0;
  const answering = createHttpServer((_req, res) => res.writeHead(503).end('stale'));
  // The first two connections are closed before any answer, as a proxy being killed does.
  const server = createNetServer((socket) => {
    connections += 1;
    if (connections <= 2) socket.destroy();
    else answering.emit('connection', socket);
  });
  const port = await listening(server);
  try {
    const res = await fetchProxy(`http://127.0.0.1:${port}/v1/chat/completions`, {
      method: 'POST',
      body: '{}',
    });
    assert.equal(res.status, 503, 'an answer, whatever its status, is returned as it is');
    assert.equal(await res.text(), 'stale');
    assert.equal(connections, 3);
  } finally {
    server.close();
  }
});

test('a proxy that stays away: the call fails once the patience is over; an aborted call is not sent again', async () => {
  const server = createNetServer();
  const port = await listening(server);
  await new Promise<void>((resolve) => server.close(() => resolve()));
  const started = Date.now();
  await assert.rejects(fetchProxy(`http://127.0.0.1:${port}/`, {}, { patienceMs: 1_000 }), /fetch failed/);
  const took = Date.now() - started;
  assert.ok(took >= 1_000 && took < 5_000, `gave up after ${took} ms`);
  const aborted = AbortSignal.abort();
  await assert.rejects(fetchProxy(`http://127.0.0.1:${port}/`, { signal: aborted }), { name: 'AbortError' });
});

test('a proxy that cannot check revocations yet (503 REVOCATION_CHECK_FAILED): the call is sent again after its Retry-After, until it is checked, or the patience is over', async () => {
  let calls = 0;
  const refusal = JSON.stringify({
    error: { code: 'REVOCATION_CHECK_FAILED', message: 'the shared control state was last read 40 s ago' },
  });
  const server = createHttpServer((_req, res) => {
    calls += 1;
    if (calls <= 2)
      res.writeHead(503, { 'content-type': 'application/json', 'retry-after': '1' }).end(refusal);
    else res.writeHead(200, { 'content-type': 'application/json' }).end('{"ok":true}');
  });
  const port = await listening(server);
  try {
    const started = Date.now();
    const res = await fetchProxy(`http://127.0.0.1:${port}/v1/chat/completions`, {
      method: 'POST',
      body: '{}',
    });
    assert.equal(res.status, 200);
    assert.equal(await res.text(), '{"ok":true}');
    assert.equal(calls, 3);
    assert.ok(Date.now() - started >= 2_000, 'each Retry-After waited');
    // Past the patience, the refusal is the answer, its body intact.
    calls = -100;
    const refused = await fetchProxy(`http://127.0.0.1:${port}/`, {}, { patienceMs: 1_500 });
    assert.equal(refused.status, 503);
    assert.equal(await refused.text(), refusal);
    // Another 503 (a receipt log that cannot be written, say) is the answer at once.
    const other = createHttpServer((_req, res) =>
      res.writeHead(503).end('{"error":{"code":"RECEIPT_WRITE_FAILED"}}'),
    );
    const otherPort = await listening(other);
    try {
      const answer = await fetchProxy(`http://127.0.0.1:${otherPort}/`);
      assert.equal(answer.status, 503);
      assert.equal(await answer.text(), '{"error":{"code":"RECEIPT_WRITE_FAILED"}}');
    } finally {
      other.close();
    }
  } finally {
    server.close();
  }
});
