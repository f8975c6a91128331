// Proves the sandbox is real: a command in bubblewrap can write in its workspace but not
// outside it, and cannot open a TCP connection to a server listening on loopback, which the
// same command outside the sandbox reaches.
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { runInBubblewrap } from '../../src/sandbox/bubblewrap.ts';
import { testServers } from '../harness/servers.ts';

let workspace: string;
let outside: string;
let server: Server;
let port: number;
const bwrap = testServers().bwrap;

before(async () => {
  workspace = mkdtempSync(join(tmpdir(), 'clawgate-ws-'));
  outside = mkdtempSync(join(tmpdir(), 'clawgate-outside-'));
  server = createServer((socket) => socket.end('reached\n'));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  assert.ok(address && typeof address === 'object');
  port = address.port;
});
after(() => {
  server.close();
  rmSync(workspace, { recursive: true, force: true });
  rmSync(outside, { recursive: true, force: true });
});

test('a sandboxed command writes in its workspace but cannot write outside it', async () => {
  const target = join(outside, 'escaped.txt');
  const result = await runInBubblewrap(bwrap, {
    workspace,
    workspaceAccess: 'rw',
    argv: ['sh', '-c', `echo inside > /workspace/inside.txt; echo out > ${target}`],
  });
  assert.equal(readFileSync(join(workspace, 'inside.txt'), 'utf8'), 'inside\n');
  assert.equal(existsSync(target), false, 'the command wrote outside its workspace');
  assert.notEqual(result.exitCode, 0);
});

test('a read-only workspace cannot be written', async () => {
  const result = await runInBubblewrap(bwrap, {
    workspace,
    workspaceAccess: 'ro',
    // Relative to the working directory, which is the workspace.
    argv: ['sh', '-c', 'echo x > ro.txt'],
  });
  assert.notEqual(result.exitCode, 0);
  assert.equal(existsSync(join(workspace, 'ro.txt')), false);
});

test('a sandboxed command cannot open a TCP connection to a loopback port', async () => {
  // Python opens the socket; it is on every machine this project supports and prints the errno.
  const connect = `import socket; s = socket.create_connection(("127.0.0.1", ${port}), timeout=2); print(s.recv(100).decode().strip())`;
  const python = ['/usr/bin/python3', '/usr/local/bin/python3'].find((p) => existsSync(p)) ?? 'python3';

  // Control: outside the sandbox the same program reaches the server, so the test can fail.
  // (Asynchronously: the server runs on this process's event loop.)
  const direct = await promisify(execFile)(python, ['-c', connect], { encoding: 'utf8', timeout: 10_000 });
  assert.equal(direct.stdout.trim(), 'reached', `control connection failed: ${direct.stderr}`);

  const result = await runInBubblewrap(bwrap, {
    workspace,
    workspaceAccess: 'ro',
    argv: [python, '-c', connect],
  });
  assert.notEqual(result.exitCode, 0, 'the sandboxed command reached the loopback server');
  assert.doesNotMatch(result.stdout, /reached/);
  assert.match(result.stderr, /Connection refused|Network is unreachable|OSError|ConnectionRefusedError/);
});
