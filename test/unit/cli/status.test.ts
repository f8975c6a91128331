// `clawgate status` against parts run apart: it asks each at the address the configuration gives,
// prints one line a part (up or down, the reason the endpoint gives), and exits 1 when one is down.
// The parts here are small HTTP servers that answer as clawgate's do; Temporal and Synapse are
// not running at all.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { after, test } from 'node:test';
import { healthDetail } from '../../../src/cli/status.ts';
import { freeLoopbackPort } from '../../../src/devstack/net.ts';

const root = resolve(import.meta.dirname, '../../..');
const servers: Server[] = [];
after(() => {
  for (const server of servers) server.close();
});

/** A server answering GET `path` with `status` and `body` as JSON. */
async function part(path: string, status: number, body: unknown): Promise<number> {
  const server = createServer((req, res) => {
    res.writeHead(req.url === path ? status : 404, { 'content-type': 'application/json' });
    res.end(JSON.stringify(req.url === path ? body : { error: 'no such path' }));
  });
  servers.push(server);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return (server.address() as AddressInfo).port;
}

test('clawgate status: one line a part from its health endpoint, the reason when it is down, exit 1', async () => {
  const ports = {
    proxy: await part('/healthz', 200, { ok: true, proxy_id: 'p1' }),
    worker: await part('/health', 200, { ok: true, state: 'RUNNING', control: { refusing: null } }),
    gateway: await part('/health', 503, {
      ok: false,
      accounts: [{ id: 'ops', state: 'error', lastError: 'M_UNKNOWN_TOKEN: the access token is not known' }],
    }),
    codec: await part('/health', 200, { ok: true }),
    evidence: await part('/health', 200, { status: 'ok' }),
    temporal: await freeLoopbackPort(),
    synapse: await freeLoopbackPort(),
  };
  const dir = mkdtempSync(join(tmpdir(), 'clawgate-status-'));
  const config = join(dir, 'clawgate.json');
  const at = (port: number) => ({ host: '127.0.0.1', port });
  writeFileSync(
    config,
    JSON.stringify({
      stateDir: 'state',
      temporal: { address: `127.0.0.1:${ports.temporal}` },
      matrix: { port: ports.synapse },
      proxy: { listen: at(ports.proxy) },
      worker: { health: at(ports.worker) },
      gateway: { health: at(ports.gateway) },
      codec: { listen: at(ports.codec) },
      evidence: { listen: at(ports.evidence) },
    }),
  );
  const env: NodeJS.ProcessEnv = { ...process.env };
  for (const name of Object.keys(env)) if (name.startsWith('CLAWGATE_')) delete env[name];
  const result = await new Promise<{ code: number; stdout: string; stderr: string }>((done) => {
    execFile(join(root, 'bin/clawgate'), ['status', '--config', config], { env }, (error, stdout, stderr) => {
      done({ code: error ? Number(error.code ?? 1) : 0, stdout, stderr });
    });
  });
  assert.equal(result.code, 1, `${result.stdout}${result.stderr}`);
  const lines = result.stdout.trimEnd().split('\n');
  assert.deepEqual(
    lines.map((l) => l.split(/\s+/).slice(0, 2).join(' ')),
    ['temporal down', 'synapse down', 'proxy up', 'worker up', 'gateway down', 'codec up', 'evidence up'],
    result.stdout,
  );
  const line = (name: string) => lines.find((l) => l.startsWith(`${name} `)) ?? '';
  assert.match(line('temporal'), new RegExp(`127\\.0\\.0\\.1:${ports.temporal}\\s+\\S`));
  assert.match(line('synapse'), /no answer: ECONNREFUSED$/);
  assert.match(
    line('gateway'),
    new RegExp(
      `http://127\\.0\\.0\\.1:${ports.gateway}/health\\s+account ops error \\(M_UNKNOWN_TOKEN: the access token is not known\\)$`,
    ),
  );
  assert.match(line('worker'), /worker RUNNING$/);
  assert.equal(result.stderr, 'clawgate: down: temporal, synapse, gateway\n');
});

test("a part's list of reasons is what its status line says", () => {
  const gateway = healthDetail('gateway', {
    state: 'answering',
    status: 503,
    body: {
      ok: false,
      reasons: [
        'Temporal is not reachable (for 12 s, since 2026-12-01T00:00:00.000Z): no answer to a health check within 2000 ms',
        'account demo is catching-up: held back for 10 s: event $e: 14 UNAVAILABLE',
      ],
      accounts: [{ id: 'demo', state: 'catching-up' }],
    },
  });
  assert.equal(
    gateway,
    'Temporal is not reachable (for 12 s, since 2026-12-01T00:00:00.000Z): no answer to a health check within 2000 ms; account demo is catching-up: held back for 10 s: event $e: 14 UNAVAILABLE',
  );
  const worker = healthDetail('worker', {
    state: 'answering',
    status: 503,
    body: {
      ok: false,
      state: 'STARTING',
      reasons: ['the worker is starting'],
      control: { refusing: 'stale' },
    },
  });
  assert.equal(worker, 'the worker is starting; control state: stale');
  // Healthy, with no reasons: the facts as before.
  assert.equal(
    healthDetail('worker', {
      state: 'healthy',
      status: 200,
      body: { ok: true, reasons: [], state: 'RUNNING' },
    }),
    'worker RUNNING',
  );
});
