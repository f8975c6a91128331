// The tools themselves: read and search in the sandbox (write_pr has its own file), http with
// its egress rules (allowlist, private addresses, DNS rebinding, redirects checked per hop), and
// the Docker backend where an engine answers.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { canonicalHash } from '../../src/policy/canonical.ts';
import { dockerSandbox } from '../../src/sandbox/bubblewrap.ts';
import { runTool } from '../../src/tools/runner.ts';
import { examplePolicy, toolContext } from './tool-harness.ts';

let server: Server;
let port = 0;
/** The method of every request the server saw, in order. */
const methods: string[] = [];
before(async () => {
  server = createServer((req, res) => {
    methods.push(req.method ?? '');
    if (req.url === '/ok') {
      res.end('hello from the listed host');
    } else if (req.url === '/to-private') {
      res.writeHead(302, { location: `http://127.0.0.2:${port}/ok` }).end();
    } else if (req.url === '/to-unlisted') {
      res.writeHead(302, { location: `http://localhost:${port}/ok` }).end();
    } else if (req.url === '/to-listed') {
      res.writeHead(301, { location: '/ok' }).end();
    } else res.writeHead(404).end();
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  port = (server.address() as { port: number }).port;
});
after(() => server.close());

const httpPolicy = () =>
  examplePolicy((p) => (p.execution.egress_allowlist = [`127.0.0.1:${port}`, 'rebind.example.com']));

test('read and search work under the workspace, and their record hashes the arguments and the output', async () => {
  const ctx = await toolContext();
  writeFileSync(join(ctx.workspace, 'notes.md'), 'line one\nTODO: fix the thing\n');
  const read = await runTool({ tool: 'read', args: { path: 'notes.md' } }, ctx);
  assert.equal(read.output, 'line one\nTODO: fix the thing\n');
  assert.equal(read.record.exit_status, 0);
  assert.equal(read.record.args_sha256, canonicalHash({ path: 'notes.md' }));
  assert.equal(
    read.record.output_sha256,
    createHash('sha256')
      .update(read.output ?? '')
      .digest('hex'),
  );
  assert.match(read.record.sandbox_profile ?? '', /^bubblewrap: ro system, workspace ro, no network/);
  const search = await runTool({ tool: 'search', args: { query: 'TODO' } }, ctx);
  assert.equal(search.output, '/workspace/notes.md:2:TODO: fix the thing\n');
  const bad = await runTool({ tool: 'search', args: { query: 'x', extra: 1 } }, ctx);
  assert.equal(bad.record.denial?.code, 'TOOL_ARGUMENTS_INVALID');
});

test('http: a listed host answers; an unlisted one is refused before any connection', async () => {
  const ctx = await toolContext({ policy: httpPolicy() });
  const ok = await runTool(
    { tool: 'http', args: { method: 'GET', url: `http://127.0.0.1:${port}/ok` } },
    ctx,
  );
  assert.equal(ok.output, 'hello from the listed host');
  assert.equal(ok.record.exit_status, 200);
  const unlisted = await runTool({ tool: 'http', args: { method: 'GET', url: 'http://example.org/' } }, ctx);
  assert.equal(unlisted.record.denial?.code, 'EGRESS_DENIED');
  assert.match(unlisted.record.denial?.reason ?? '', /not on the policy's egress allowlist/);
});

test('http: HEAD answers with the status and headers, follows redirects as HEAD, and carries no body', async () => {
  const ctx = await toolContext({ policy: httpPolicy() });
  const head = await runTool(
    { tool: 'http', args: { method: 'HEAD', url: `http://127.0.0.1:${port}/to-listed` } },
    ctx,
  );
  assert.equal(head.record.exit_status, 200);
  assert.match(head.output ?? '', /^HTTP 200\n/);
  assert.match(head.output ?? '', /\ndate: /);
  assert.doesNotMatch(head.output ?? '', /hello from the listed host/);
  assert.deepEqual(methods.slice(-2), ['HEAD', 'HEAD']);
  const withBody = await runTool(
    { tool: 'http', args: { method: 'HEAD', url: `http://127.0.0.1:${port}/ok`, body: 'x' } },
    ctx,
  );
  assert.equal(withBody.record.denial?.code, 'TOOL_ARGUMENTS_INVALID');
  assert.match(withBody.record.denial?.reason ?? '', /only a POST has a body/);
});

test('http: a redirect from a listed host to a private or unlisted one is refused; to itself is followed', async () => {
  const ctx = await toolContext({ policy: httpPolicy() });
  const toPrivate = await runTool(
    { tool: 'http', args: { method: 'GET', url: `http://127.0.0.1:${port}/to-private` } },
    ctx,
  );
  assert.equal(toPrivate.record.denial?.code, 'EGRESS_DENIED');
  assert.match(toPrivate.record.denial?.reason ?? '', /127\.0\.0\.2/);
  const toUnlisted = await runTool(
    { tool: 'http', args: { method: 'GET', url: `http://127.0.0.1:${port}/to-unlisted` } },
    ctx,
  );
  assert.equal(toUnlisted.record.denial?.code, 'EGRESS_DENIED');
  const toListed = await runTool(
    { tool: 'http', args: { method: 'GET', url: `http://127.0.0.1:${port}/to-listed` } },
    ctx,
  );
  assert.equal(toListed.output, 'hello from the listed host');
});

test('http: a listed name that resolves to a private address (DNS rebinding) is refused', async () => {
  const ctx = {
    ...(await toolContext({ policy: httpPolicy() })),
    lookup: () => Promise.resolve([{ address: '127.0.0.1', family: 4 }]),
  };
  const rebind = await runTool(
    { tool: 'http', args: { method: 'GET', url: 'http://rebind.example.com/ok' } },
    ctx,
  );
  assert.equal(rebind.record.denial?.code, 'EGRESS_DENIED');
  assert.match(
    rebind.record.denial?.reason ?? '',
    /resolves to 127\.0\.0\.1, a private, loopback or link-local address/,
  );
  const metadata = { ...ctx, lookup: () => Promise.resolve([{ address: '169.254.169.254', family: 4 }]) };
  const cloud = await runTool(
    { tool: 'http', args: { method: 'GET', url: 'http://rebind.example.com/latest/meta-data' } },
    metadata,
  );
  assert.equal(cloud.record.denial?.code, 'EGRESS_DENIED');
});

const dockerAnswers = spawnSync('docker', ['info'], { encoding: 'utf8', timeout: 10_000 }).status === 0;
test(
  'the Docker backend confines a command the same way',
  {
    skip: dockerAnswers
      ? false
      : 'no Docker engine answers `docker info` on this host, so the Docker backend cannot run here',
  },
  async () => {
    const sandbox = dockerSandbox();
    const workspace = mkdtempSync(join(tmpdir(), 'clawgate-docker-'));
    const r = await sandbox.run({
      workspace,
      workspaceAccess: 'ro',
      argv: ['sh', '-c', 'echo x > /workspace/f; cat /etc/shadow; env'],
    });
    assert.notEqual(r.exitCode, 0);
    assert.doesNotMatch(r.stdout, /CLAWGATE/);
  },
);
