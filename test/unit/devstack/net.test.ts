// The ports the test harness and `clawgate start` pick for the servers they start.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { test } from 'node:test';
import { freeLoopbackPort } from '../../../src/devstack/net.ts';

const listenOn = (port: number): Promise<void> =>
  new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => server.close(() => resolve()));
  });

test('a free port is bindable, outside the range the kernel hands out itself, and not given twice', async () => {
  const [low] = readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8')
    .trim()
    .split(/\s+/)
    .map(Number);
  assert.ok(low !== undefined && low > 11_000, `this test needs an ephemeral range above 11000 (${low})`);
  const ports: number[] = [];
  for (let i = 0; i < 20; i++) ports.push(await freeLoopbackPort());
  assert.equal(new Set(ports).size, ports.length, 'twenty different ports');
  for (const port of ports) {
    assert.ok(port >= 10_000 && port < low, `${port} is below the kernel's range (from ${low})`);
    await listenOn(port);
  }
});

test('a port something listens on is skipped', async () => {
  const first = await freeLoopbackPort();
  // Hold the port that would come next, then ask again.
  const holder = createServer();
  await new Promise<void>((resolve) => holder.listen(first + 1, '127.0.0.1', resolve));
  try {
    const next = await freeLoopbackPort();
    assert.notEqual(next, first + 1);
    await listenOn(next);
  } finally {
    await new Promise<void>((resolve) => holder.close(() => resolve()));
  }
});
