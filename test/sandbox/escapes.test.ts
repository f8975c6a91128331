// Escape attempts against the real bubblewrap sandbox, through the tool layer, each contained.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { runTool } from '../../src/tools/runner.ts';
import { examplePolicy, toolContext } from './tool-harness.ts';

// exec is on the example's deny list; these tests use a policy that allows it.
const execPolicy = examplePolicy((p) => {
  p.execution.tools.allow.push('exec');
  p.execution.tools.deny = p.execution.tools.deny.filter((t: string) => t !== 'exec');
  p.execution.sandbox.workspace_access = 'rw';
  p.execution.sandbox.limits = {
    cpu_seconds: 2,
    memory_mb: 128,
    processes: 32,
    output_bytes: 65536,
    wall_seconds: 10,
  };
});
const outside = mkdtempSync(join(tmpdir(), 'clawgate-outside-'));
const secretFile = join(outside, 'token.jwk.json');
writeFileSync(secretFile, '{"d":"private-key-material"}', { mode: 0o600 });
let server: Server;
let port = 0;

before(async () => {
  server = createServer((socket) => socket.end('reached\n'));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  port = (server.address() as { port: number }).port;
});
after(() => server.close());

async function exec(argv: string[], env?: Record<string, string>) {
  const ctx = await toolContext({ policy: execPolicy, tools: ['exec', 'read'] });
  const { record, output } = await runTool({ tool: 'exec', args: { argv, ...(env ? { env } : {}) } }, ctx);
  return { ctx, record, output: output ?? '' };
}

test('writing outside the workspace is contained', async () => {
  const target = join(outside, 'escaped.txt');
  const { record } = await exec(['sh', '-c', `echo x > ${target}; echo y > /usr/escaped; echo z > /escaped`]);
  assert.equal(existsSync(target), false);
  assert.equal(existsSync('/usr/escaped'), false);
  assert.equal(existsSync('/escaped'), false);
  assert.notEqual(record.exit_status, 0);
});

test('reading /etc/shadow or a key file outside the workspace finds nothing', async () => {
  const { output } = await exec(['sh', '-c', `cat /etc/shadow; cat ${secretFile}; ls /root /home 2>&1`]);
  assert.doesNotMatch(output, /root:|private-key-material/);
  assert.match(output, /No such file/);
});

test('a symlink or ../ out of the workspace reads nothing of the host', async () => {
  const ctx = await toolContext({ policy: execPolicy, tools: ['exec', 'read'] });
  symlinkSync(secretFile, join(ctx.workspace, 'link-to-key'));
  symlinkSync('/etc/passwd', join(ctx.workspace, 'link-to-passwd'));
  const viaLink = await runTool({ tool: 'read', args: { path: 'link-to-key' } }, ctx);
  assert.doesNotMatch(viaLink.output ?? '', /private-key-material/);
  assert.notEqual(viaLink.record.exit_status, 0);
  const passwd = await runTool({ tool: 'read', args: { path: 'link-to-passwd' } }, ctx);
  assert.doesNotMatch(passwd.output ?? '', /root:x:0/);
  const dotdot = await runTool({ tool: 'read', args: { path: '../../etc/passwd' } }, ctx);
  assert.equal(dotdot.record.denial?.code, 'TOOL_ARGUMENTS_INVALID');
  assert.equal(dotdot.record.exit_status, null, 'nothing ran');
  const absolute = await runTool({ tool: 'read', args: { path: '/etc/passwd' } }, ctx);
  assert.equal(absolute.record.denial?.code, 'TOOL_ARGUMENTS_INVALID');
});

test('a TCP connection to a loopback server is impossible', async () => {
  const { output, record } = await exec([
    'python3',
    '-c',
    `import socket; s = socket.create_connection(("127.0.0.1", ${port}), timeout=2); print(s.recv(100))`,
  ]);
  assert.notEqual(record.exit_status, 0);
  assert.doesNotMatch(output, /reached/);
});

test('a fork bomb is contained by the process limit and the host is unharmed', async () => {
  const before = Number(execFileSync('sh', ['-c', 'ps -e --no-headers | wc -l'], { encoding: 'utf8' }));
  const { record } = await exec(['bash', '-c', 'bomb() { bomb | bomb & }; bomb; sleep 3']);
  assert.ok(record.duration_ms < 15_000, 'the run ended');
  await new Promise((r) => setTimeout(r, 500));
  const afterRun = Number(execFileSync('sh', ['-c', 'ps -e --no-headers | wc -l'], { encoding: 'utf8' }));
  assert.ok(afterRun < before + 10, `processes left behind: ${afterRun - before}`);
});

test('the process limit binds: starting 100 background processes under a limit of 32 fails at fork', async () => {
  const { output, record } = await exec([
    'bash',
    '-c',
    'for i in $(seq 100); do sleep 5 & done; echo all started',
  ]);
  assert.match(output, /fork: .*Resource temporarily unavailable/);
  assert.doesNotMatch(output, /all started/);
  assert.notEqual(record.exit_status, 0);
});

test('an endless loop is stopped by the CPU limit', async () => {
  const { record } = await exec(['sh', '-c', 'while :; do :; done']);
  assert.notEqual(record.exit_status, 0);
  assert.ok(record.duration_ms < 9_000, `ran ${record.duration_ms} ms; the 2 s CPU limit should stop it`);
});

test('gigabytes of output are cut at the output limit and the run is killed', async () => {
  const { record, output } = await exec(['sh', '-c', 'head -c 5000000000 /dev/zero | tr "\\0" x']);
  assert.equal(record.output_truncated, true);
  assert.ok(output.length <= 65536);
  assert.ok(record.duration_ms < 9_000);
});

test("the parent's environment variables do not reach the sandbox", async () => {
  process.env['CLAWGATE_TEST_SECRET'] = 'parent-secret-value';
  const { output } = await exec(['env'], { GIVEN: 'by-the-tool' });
  assert.doesNotMatch(output, /parent-secret-value|CLAWGATE_TEST/);
  assert.match(output, /GIVEN=by-the-tool/);
  assert.deepEqual(
    output
      .trim()
      .split('\n')
      .map((l) => l.split('=')[0])
      .sort(),
    ['GIVEN', 'HOME', 'LANG', 'PATH', 'PWD'],
  );
});

test("nothing of the host shows in the sandbox's processes: bwrap's command line, environment and folders", async () => {
  process.env['CLAWGATE_TEST_SECRET'] = 'parent-secret-value';
  const ctx = await toolContext({ policy: execPolicy, tools: ['exec'] });
  const script = [
    'for p in /proc/[0-9]*; do',
    '  echo "== $p"; tr "\\0" " " < $p/cmdline; echo; tr "\\0" "\\n" < $p/environ',
    '  readlink $p/cwd $p/root $p/exe',
    'done',
    'cat /proc/self/cgroup',
  ].join('\n');
  const { record, output } = await runTool({ tool: 'exec', args: { argv: ['sh', '-c', script] } }, ctx);
  assert.equal(record.exit_status, 0, output ?? '');
  const text = output ?? '';
  // PID 1 is bwrap's reaper: its arguments came through a pipe, its environment is empty.
  assert.match(text, /^== \/proc\/1\n\/usr\/bin\/bwrap --args 3 -- \/usr\/bin\/prlimit /m);
  for (const host of [ctx.workspace, process.cwd(), 'parent-secret-value', '--bind', '--setenv']) {
    assert.equal(text.includes(host), false, `${host} shows in the sandbox:\n${text}`);
  }
  assert.match(text, /^0::\/$/m, 'the cgroup is shown as the root of its own namespace');
});

test('a memory hog is stopped by the memory limit', async () => {
  const { record } = await exec(['python3', '-c', 'x = bytearray(512 * 1024 * 1024); print(len(x))']);
  assert.notEqual(record.exit_status, 0);
});

test('a tool outside the allow list, or on the deny list, is refused before anything runs', async () => {
  const ctx = await toolContext({ tools: ['read', 'exec'] });
  const marker = join(ctx.workspace, 'ran');
  const denied = await runTool({ tool: 'exec', args: { argv: ['touch', '/workspace/ran'] } }, ctx);
  assert.equal(denied.record.denial?.code, 'TOOL_DENIED_BY_POLICY');
  const unlisted = await runTool({ tool: 'browser', args: {} }, ctx);
  assert.equal(unlisted.record.denial?.code, 'TOOL_NOT_ALLOWED_BY_POLICY');
  const outOfScope = await runTool({ tool: 'search', args: { query: 'x' } }, ctx);
  assert.equal(outOfScope.record.denial?.code, 'TOOL_NOT_IN_TOKEN_SCOPE');
  assert.equal(existsSync(marker), false, 'nothing ran');
  for (const r of [denied, unlisted, outOfScope]) {
    assert.equal(r.record.exit_status, null);
    assert.equal(r.record.sandbox_profile, null);
    assert.match(r.record.args_sha256, /^[0-9a-f]{64}$/);
  }
  assert.equal(readFileSync(secretFile, 'utf8').length > 0, true);
});
