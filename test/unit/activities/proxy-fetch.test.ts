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
