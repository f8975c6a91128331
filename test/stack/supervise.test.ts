// `clawgate start` supervises its parts, tested with the real stack: on a fresh state folder, a
// job waits for approval while the Temporal dev server, Synapse, the proxy and the worker are each
// killed with SIGKILL in turn. Each comes back by itself, the terminal has one "exited" line and
// one "is back" line per kill, and `clawgate status` shows the part down, then up. (The supervisor
// is held with SIGSTOP from the kill until `clawgate status` has seen the part down: without that
// the part may be back before the command has asked.) After the kills the job is approved and
// seals its bundle. The proxy, stopped with SIGSTOP (alive but not answering), is killed and
// restarted once supervisor.hungAfterSeconds (8 here) has passed. Ctrl-C stops everything and
// leaves no process behind; so does a kill -9 of `clawgate start` (Temporal and Synapse die with
// it through setpriv), and the next start finds its ports free. Then a part that keeps failing
// (the proxy, its port taken) stops the stack with a message naming it and its log.
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { dirname, join } from 'node:path';
import { after, test } from 'node:test';
import {
  assignPorts,
  freshStackEnv,
  runClawgate,
  startClawgate,
  untilClawgate,
  type StartedStack,
} from '../harness/clawgate-start.ts';

const { state, env } = freshStackEnv('clawgate-supervise-');
// A hung part is killed after 8 s without an answer (the default is a minute).
const configPath = join(dirname(state), 'clawgate.yaml');
writeFileSync(configPath, 'supervisor:\n  hungAfterSeconds: 8\n');
env['CLAWGATE_CONFIG'] = configPath;
let stack: StartedStack | undefined;
const clawgate = (...args: string[]) => runClawgate(env, ...args);

after(async () => {
  await stack?.terminate();
});

const pidOf = (part: string): number => Number(readFileSync(join(state, 'run', `${part}.pid`), 'utf8'));

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Alive and not a zombie (an orphan nobody has reaped yet is no process left running). */
function running(pid: number): boolean {
  try {
    return !/^\d+ \(.*\) Z /.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
}

/** Whether nothing listens on a loopback port. */
function portFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = createServer();
    server.once('error', () => resolve(false));
    server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)));
  });
}

/** Every process that belongs to this stack: named with its state folder, or started by its supervisor. */
function stackProcesses(supervisorPid: number): string[] {
  const found: string[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    try {
      const cmdline = readFileSync(`/proc/${entry}/cmdline`, 'utf8').replaceAll('\0', ' ');
      const environ = readFileSync(`/proc/${entry}/environ`, 'utf8').split('\0');
      if (cmdline.includes(state) || environ.includes(`CLAWGATE_SUPERVISOR_PID=${supervisorPid}`)) {
        found.push(`${entry}: ${cmdline}`);
      }
    } catch {
      // gone meanwhile, or not ours to read
    }
  }
  return found;
}

/** Counts the lines of the terminal output that match. */
const count = (output: string, pattern: RegExp): number =>
  output.split('\n').filter((l) => pattern.test(l)).length;

let jobId = '';
let supervisorPid = 0;

test('clawgate start on a fresh state folder: every part up in clawgate status with its pid, and a job waiting for approval', async () => {
  await assignPorts(env);
  stack = await startClawgate(env);
  supervisorPid = stack.child.pid as number;
  const first = await clawgate('status');
  assert.equal(first.code, 0, `${first.stdout}${first.stderr}`);
  for (const part of ['temporal', 'synapse', 'demo-upstream', 'proxy', 'worker', 'gateway']) {
    assert.match(first.stdout, new RegExp(`^${part}\\s+up\\s+pid ${pidOf(part)}\\s`, 'm'), first.stdout);
  }
  for (const part of ['codec', 'evidence']) assert.match(first.stdout, new RegExp(`^${part}\\s+up\\s`, 'm'));

  const asked = await clawgate('say', '--as', 'requester', 'demo', '!claw summarise the readme');
  assert.equal(asked.code, 0, asked.stderr);
  const listed = await untilClawgate(env, ['jobs', 'list'], /awaiting_approval/);
  jobId = /^(j[a-z2-7]{9})\s+awaiting_approval/m.exec(listed)?.[1] ?? '';
  assert.ok(jobId, listed);
});

test('Temporal, Synapse, the proxy and the worker, each killed with SIGKILL, come back by themselves: one line when each exits, one when it is back, and clawgate status shows it down, then up', async () => {
  assert.ok(stack && jobId, 'the stack of the first test runs');
  const downFor: Record<string, string> = {};
  for (const part of ['temporal', 'synapse', 'proxy', 'worker']) {
    const before = pidOf(part);
    process.kill(supervisorPid, 'SIGSTOP');
    process.kill(before, 'SIGKILL');
    let down: Awaited<ReturnType<typeof clawgate>>;
    try {
      down = await clawgate('status');
    } finally {
      process.kill(supervisorPid, 'SIGCONT');
    }
    assert.equal(down.code, 1, `status exits 1 while ${part} is down:\n${down.stdout}${down.stderr}`);
    assert.match(down.stdout, new RegExp(`^${part}\\s+down\\s.*no answer`, 'm'), down.stdout);
    assert.match(down.stderr, new RegExp(`^clawgate: down: .*\\b${part}\\b`));
    const back = new RegExp(`^==> ${part} is back \\(down ([\\d.]+ s)\\)$`, 'm');
    await stack.waitFor(back, 180_000);
    downFor[part] = back.exec(stack.output())?.[1] ?? '';
    const up = await untilClawgate(env, ['status'], new RegExp(`^${part}\\s+up\\s`, 'm'), 60_000);
    const after = pidOf(part);
    assert.notEqual(after, before, `${part} runs as a new process`);
    assert.ok(alive(after));
    assert.match(up, new RegExp(`^${part}\\s+up\\s+pid ${after}\\s`, 'm'));
  }
  const output = stack.output();
  for (const part of ['temporal', 'synapse', 'proxy', 'worker']) {
    assert.equal(
      count(output, new RegExp(`^==> ${part} exited \\(signal SIGKILL\\); restarting in 1 s$`)),
      1,
      output,
    );
    assert.equal(count(output, new RegExp(`^==> ${part} is back `)), 1, output);
  }
  assert.equal(count(output, /^==> .* is back /), 4, output);
  // What the outages cost, for the report.
  process.stdout.write(`# down for: ${JSON.stringify(downFor)}\n`);
});

test('the proxy stopped with SIGSTOP (alive, but not answering) is killed and restarted after supervisor.hungAfterSeconds: one line, then "is back", and clawgate status shows it up again', async () => {
  assert.ok(stack && jobId, 'the stack of the first test runs');
  const from = stack.output().length;
  const since = (): string => stack?.output().slice(from) ?? '';
  const before = pidOf('proxy');
  const stoppedAt = Date.now();
  process.kill(before, 'SIGSTOP');
  try {
    const deadline = Date.now() + 60_000;
    while (!/^==> proxy is back /m.test(since())) {
      assert.ok(Date.now() < deadline, `the proxy was not restarted:\n${since()}`);
      await new Promise((r) => setTimeout(r, 200));
    }
  } finally {
    // Left over only when it was not killed.
    if (running(before)) process.kill(before, 'SIGCONT');
  }
  const restartedAfter = (Date.now() - stoppedAt) / 1000;
  const output = since();
  assert.equal(
    count(
      output,
      /^==> proxy has not answered its health check for [\d.]+ s; killed it \(SIGKILL\), restarting in \d+ s$/,
    ),
    1,
    output,
  );
  const silent = Number(/has not answered its health check for ([\d.]+) s/.exec(output)?.[1]);
  assert.ok(silent >= 8, `killed after ${silent} s without an answer, before hungAfterSeconds:\n${output}`);
  assert.equal(count(output, /^==> proxy exited /), 0, `the hung line is the only one:\n${output}`);
  assert.equal(count(output, /^==> proxy is back \(down [\d.]+ s\)$/), 1, output);
  assert.equal(count(output, /^==> (?!proxy )/), 0, `no other part was touched:\n${output}`);
  assert.ok(!running(before), 'the stopped process was killed');
  const up = await untilClawgate(env, ['status'], /^proxy\s+up\s/m, 60_000);
  const after = pidOf('proxy');
  assert.notEqual(after, before);
  assert.match(up, new RegExp(`^proxy\\s+up\\s+pid ${after}\\s`, 'm'));
  const lines = output.split('\n').filter((l) => l.startsWith('==> proxy'));
  process.stdout.write(
    `# proxy back ${restartedAfter.toFixed(1)} s after its SIGSTOP: ${JSON.stringify(lines)}\n`,
  );
});

test('after the kills the waiting job is approved and seals its bundle; Ctrl-C stops every part and leaves no process behind', async () => {
  assert.ok(stack && jobId, 'the stack of the first test runs');
  // The job waited through it all: approved now, it finishes and seals its bundle.
  const approved = await clawgate('say', '--as', 'approver', 'demo', `!approve ${jobId}`);
  assert.equal(approved.code, 0, approved.stderr);
  const shown = await untilClawgate(env, ['jobs', 'show', jobId], /outcome\s+succeeded/, 180_000);
  const digest = /bundle\s+([0-9a-f]{64})/.exec(shown)?.[1] as string;
  const bundle = join(state, 'bundles', `${digest}.json`);
  assert.ok(existsSync(bundle), shown);
  const verified = await clawgate('verify', bundle);
  assert.equal(verified.code, 0, verified.stderr);
  // And every part is up again (the gateway syncing with the restarted Synapse).
  await untilClawgate(env, ['status'], /^(?![\s\S]*\sdown\s)[\s\S]*^evidence\s+up/m, 120_000);

  // Ctrl-C: every part stopped, in order; no process of the stack is left.
  const pids = readdirSync(join(state, 'run'))
    .filter((f) => f.endsWith('.pid'))
    .map((f) => pidOf(f.replace(/\.pid$/, '')));
  assert.equal(pids.length, 6);
  stack.child.kill('SIGINT');
  const code = await stack.exited;
  assert.equal(code, 0, stack.output());
  assert.match(stack.output(), /stopping\.\.\.\nstopped\n$/);
  assert.deepEqual(
    pids.filter((pid) => alive(pid)),
    [],
    'no part outlives clawgate start',
  );
  assert.deepEqual(stackProcesses(supervisorPid), []);
  assert.deepEqual(readdirSync(join(state, 'run')), [], 'no pid file left');
  stack = undefined;
});

test('clawgate start killed with kill -9: every part stops by itself, Temporal and Synapse included, and the next start finds its ports free', async () => {
  // Left running only when a test before failed.
  await stack?.terminate();
  stack = await startClawgate(env);
  const killed = stack;
  supervisorPid = killed.child.pid as number;
  const pids = readdirSync(join(state, 'run'))
    .filter((f) => f.endsWith('.pid'))
    .map((f) => pidOf(f.replace(/\.pid$/, '')));
  assert.equal(pids.length, 6);
  const killedAt = Date.now();
  killed.child.kill('SIGKILL');
  await killed.exited;
  stack = undefined;
  const deadline = Date.now() + 20_000;
  let left = stackProcesses(supervisorPid);
  while (left.length > 0 && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 200));
    left = stackProcesses(supervisorPid);
  }
  const goneAfter = (Date.now() - killedAt) / 1000;
  assert.deepEqual(left, [], 'no process of the stack outlives a kill -9 of clawgate start');
  assert.deepEqual(
    pids.filter((pid) => running(pid)),
    [],
  );
  process.stdout.write(`# every part gone ${goneAfter.toFixed(1)} s after the kill -9\n`);
  for (const name of [
    'CLAWGATE_TEMPORAL_PORT',
    'CLAWGATE_TEMPORAL_UI_PORT',
    'CLAWGATE_SYNAPSE_PORT',
    'CLAWGATE_PROXY_PORT',
    'CLAWGATE_HEALTH_PORT',
    'CLAWGATE_WORKER_HEALTH_PORT',
  ]) {
    assert.ok(await portFree(Number(env[name])), `${name} ${env[name]} is free`);
  }
  // The next start on the same state folder: ready, every part up.
  stack = await startClawgate(env);
  supervisorPid = stack.child.pid as number;
  const status = await clawgate('status');
  assert.equal(status.code, 0, `${status.stdout}${status.stderr}`);
});

test('a part that keeps failing its starts stops clawgate start, naming it and its log', async () => {
  // The start of the test before, or a new one when it failed.
  if (!stack || stack.child.exitCode !== null) {
    await stack?.terminate();
    stack = await startClawgate(env);
    supervisorPid = stack.child.pid as number;
  }
  // The proxy's port taken by another program while the proxy is down: each start fails.
  const port = Number(env['CLAWGATE_PROXY_PORT']);
  const squatter = createServer();
  process.kill(supervisorPid, 'SIGSTOP');
  try {
    process.kill(pidOf('proxy'), 'SIGKILL');
    await new Promise<void>((resolve, reject) => {
      const tryListen = (attempt: number): void => {
        squatter.once('error', (error) => {
          if (attempt > 50) reject(error);
          else setTimeout(() => tryListen(attempt + 1), 100);
        });
        squatter.listen(port, '127.0.0.1', () => {
          squatter.removeAllListeners('error');
          resolve();
        });
      };
      tryListen(1);
    });
  } finally {
    process.kill(supervisorPid, 'SIGCONT');
  }
  try {
    const code = await stack.exited;
    const output = stack.output();
    assert.equal(code, 1, output);
    const log = join(state, 'logs', 'proxy.log');
    assert.ok(
      output.includes(
        `clawgate: proxy failed 5 starts in a row (last: it exited, code 1); stopping clawgate (see its log: ${log})`,
      ),
      output,
    );
    assert.equal(count(output, /^==> proxy did not start \(it exited, code 1\); restarting in/), 4, output);
    assert.match(readFileSync(log, 'utf8'), /already in use by another process/);
    assert.deepEqual(stackProcesses(supervisorPid), [], 'the other parts were stopped');
    stack = undefined;
  } finally {
    squatter.close();
  }
});
