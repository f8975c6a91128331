// The Temporal dev server of `clawgate start` dies (SIGKILL) while a job waits for approval, and
// is away for a while: the supervisor is held (SIGSTOP) from the kill for OUTAGE_MS, as a server
// slow to come back would be. Meanwhile the people in the encrypted demo room go on: the
// approver approves the waiting job and the requester asks for another. What a user expects,
// all under `clawgate start` with its real parts: the gateway's and the worker's health answer
// 503 saying Temporal is away and for how long, and `clawgate status` shows Temporal down; the
// approval and the request each get one notice in their thread, read decrypted with
// `clawgate say --follow`; once the supervisor has restarted Temporal (one "exited" line, one
// "is back" line) health is 200 again, the approval is acted on once (the job runs to its end)
// and the new request's job starts once; and each part's log says the outage once when it
// begins and once when it ends.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, test } from 'node:test';
import {
  assignPorts,
  followClawgate,
  freshStackEnv,
  runClawgate,
  startClawgate,
  untilClawgate,
  type Following,
  type StartedStack,
} from '../harness/clawgate-start.ts';

/** How long Temporal stays away: long enough for every retry loop to run many times. */
const OUTAGE_MS = 25_000;
const NOTICE =
  /received; clawgate cannot reach its job service \(Temporal\) right now; this is acted on when it is back\./;

const { state, env } = freshStackEnv('clawgate-outage-');
let stack: StartedStack | undefined;
const following: Following[] = [];
const clawgate = (...args: string[]) => runClawgate(env, ...args);

after(async () => {
  for (const f of following) f.child.kill('SIGKILL');
  await stack?.terminate();
});

const pidOf = (part: string): number => Number(readFileSync(join(state, 'run', `${part}.pid`), 'utf8'));

/** `clawgate say --follow` in this test's stack, stopped at the end. */
function follow(...args: string[]): Following {
  const handle = followClawgate(env, ...args);
  following.push(handle);
  return handle;
}

interface Health {
  status: number;
  body: { ok: boolean; reasons: string[]; temporal: { reachable: boolean; forMs: number } };
}

async function health(port: string | undefined): Promise<Health> {
  const res = await fetch(`http://127.0.0.1:${port}/health`, { signal: AbortSignal.timeout(5_000) });
  return { status: res.status, body: (await res.json()) as Health['body'] };
}

async function until<T>(what: string, timeoutMs: number, probe: () => Promise<T | undefined>): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const found = await probe().catch(() => undefined);
    if (found !== undefined) return found;
    if (Date.now() > deadline) throw new Error(`${what}: not within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

/** The JSON lines of a part's log from line `from` on. */
function logLines(part: string, from = 0): Array<Record<string, unknown>> {
  return readFileSync(join(state, 'logs', `${part}.log`), 'utf8')
    .split('\n')
    .slice(from)
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}
const lineCount = (part: string): number =>
  readFileSync(join(state, 'logs', `${part}.log`), 'utf8').split('\n').length - 1;

/** The job the first test leaves waiting for approval, and its thread. */
let waitingJob = '';
let waitingRoot = '';

const count = (text: string, pattern: RegExp): number =>
  text.split('\n').filter((l) => pattern.test(l)).length;

test('Temporal killed under clawgate start and away for a while: health 503 and back, one notice each to an approval and a request, each acted on once, one warning and one recovery line per part', async () => {
  await assignPorts(env);
  stack = await startClawgate(env);
  const supervisor = stack.child.pid as number;
  let rootB: string | undefined;

  // A job waits for approval; the requester sees its plan, decrypted.
  const asking = follow('--as', 'requester', 'demo', '!claw summarise the readme (A)');
  const rootA = (await asking.until(/said it in \S+ \(event (\$\S+), end-to-end encrypted\)/))[1] as string;
  const jobA = (await asking.until(/Plan for job (j[a-z2-7]{9}): summarise the readme/))[1] as string;
  await asking.until(/Status: waiting for approval/);
  asking.child.kill('SIGINT');
  assert.equal(await asking.exited, 0, asking.output());
  await untilClawgate(env, ['jobs', 'list'], new RegExp(`^${jobA}\\s+awaiting_approval`, 'm'));
  for (const port of [env['CLAWGATE_HEALTH_PORT'], env['CLAWGATE_WORKER_HEALTH_PORT']]) {
    assert.equal((await health(port)).status, 200);
  }
  const from = { gateway: lineCount('gateway'), worker: lineCount('worker') };

  // Temporal dies, and the supervisor is held: nothing brings it back for OUTAGE_MS.
  const temporalPid = pidOf('temporal');
  process.kill(supervisor, 'SIGSTOP');
  process.kill(temporalPid, 'SIGKILL');
  const killedAt = Date.now();
  try {
    for (const [part, port] of [
      ['gateway', env['CLAWGATE_HEALTH_PORT']],
      ['worker', env['CLAWGATE_WORKER_HEALTH_PORT']],
    ] as const) {
      const down = await until(`the ${part} to say Temporal is away`, 30_000, async () => {
        const h = await health(port);
        return h.status === 503 && !h.body.temporal.reachable ? h : undefined;
      });
      console.log(
        `${part} /health 503 ${Date.now() - (killedAt ?? 0)} ms after the kill: ${down.body.reasons.join('; ')}`,
      );
      assert.match(down.body.reasons.join('\n'), /Temporal is not reachable \(for [\d.]+ (ms|s), since /);
    }
    const status = await clawgate('status');
    assert.equal(status.code, 1, status.stdout);
    assert.match(status.stdout, /^temporal\s+down\s/m);
    assert.match(status.stdout, /^gateway\s+down\s.*Temporal is not reachable/m);
    assert.match(status.stdout, /^worker\s+down\s.*Temporal is not reachable/m);

    // While it is away: A is approved, B is asked for; each is told, once, in its thread.
    const approving = follow('--as', 'approver', 'demo', '--thread', rootA, `!approve ${jobA}`);
    await approving.until(NOTICE, 60_000);
    console.log(`the approval told it waits ${Date.now() - (killedAt ?? 0)} ms after the kill`);
    const askingB = follow('--as', 'requester', 'demo', '!claw summarise the readme (B)');
    rootB = (await askingB.until(/said it in \S+ \(event (\$\S+), end-to-end encrypted\)/))[1];
    await askingB.until(NOTICE, 60_000);
    console.log(`request B told it waits ${Date.now() - (killedAt ?? 0)} ms after the kill`);
    await new Promise((r) => setTimeout(r, Math.max(0, killedAt + OUTAGE_MS - Date.now())));
    assert.equal((await health(env['CLAWGATE_HEALTH_PORT'])).status, 503);
  } finally {
    process.kill(supervisor, 'SIGCONT');
  }
  await stack.waitFor(/^==> temporal is back \(down [\d.]+ s\)$/m, 120_000);
  const output = stack.output();
  console.log(
    output
      .split('\n')
      .filter((l) => l.startsWith('==> temporal'))
      .join('\n'),
  );
  assert.equal(count(output, /^==> temporal exited \(signal SIGKILL\); restarting in 1 s$/), 1, output);
  assert.equal(count(output, /^==> temporal is back /), 1, output);
  const backAt = Date.now();
  for (const [part, port] of [
    ['gateway', env['CLAWGATE_HEALTH_PORT']],
    ['worker', env['CLAWGATE_WORKER_HEALTH_PORT']],
  ] as const) {
    await until(`the ${part} to be healthy again`, 60_000, async () =>
      (await health(port)).status === 200 ? true : undefined,
    );
    console.log(`${part} /health 200 ${Date.now() - backAt} ms after "temporal is back"`);
  }

  // The approval sent meanwhile is acted on once: A runs to its end.
  const approving = following.at(-2) as Following;
  await approving.until(new RegExp(`job ${jobA} ended: succeeded\n`), 180_000);
  assert.equal(count(approving.output(), NOTICE), 1, approving.output());
  const shown = await clawgate('jobs', 'show', jobA);
  assert.equal(shown.code, 0, shown.stderr);
  console.log(shown.stdout);
  // B's job starts once, in B's thread, after its notice.
  const askingB = following.at(-1) as Following;
  const jobB = (
    await askingB.until(/Plan for job (j[a-z2-7]{9}): summarise the readme/, 120_000)
  )[1] as string;
  await askingB.until(/Status: waiting for approval/);
  assert.equal(count(askingB.output(), NOTICE), 1, askingB.output());
  assert.equal(count(askingB.output(), /Plan for job /), 1, askingB.output());
  const listed = await untilClawgate(env, ['jobs', 'list'], new RegExp(`^${jobB}\\s+awaiting_approval`, 'm'));
  waitingJob = jobB;
  waitingRoot = rootB ?? '';
  assert.equal(count(listed, /^j[a-z2-7]{9}\s/), 2, listed);
  askingB.child.kill('SIGINT');

  // One line when it went, one when it came back, in each part's log; no line per retry.
  for (const part of ['gateway', 'worker'] as const) {
    const lines = logLines(part, from[part]);
    const said = lines
      .filter((l) => /^Temporal is (not )?reachable/.test(String(l['msg'])))
      .map((l) => [l['level'], String(l['msg'])]);
    console.log(`${part}: ${JSON.stringify(said)}`);
    assert.equal(said.length, 2, `${part}: ${JSON.stringify(said)}`);
    assert.equal(said[0]?.[0], 40);
    assert.equal(said[1]?.[0], 30);
    assert.match(String(said[1]?.[1]), /^Temporal is reachable again after [\d.]+ (s|min)/);
    const retries = lines.filter((l) => /retried \d+ times|retrying until it works/.test(String(l['msg'])));
    assert.deepEqual(retries, [], `${part}: no line per retry`);
  }
});

test('the worker killed (SIGKILL) while an approved job runs, its model call in flight: the supervisor restarts it, and the job ends once, with one answer and a bundle that verifies', async () => {
  assert.ok(stack && waitingJob, 'the stack and the job of the first test');
  const before = pidOf('worker');
  const proxy = pidOf('proxy');
  // The proxy held (SIGSTOP) from the approval on: the job's first model call waits in it, so
  // the job is running, mid-turn, when the worker dies.
  process.kill(proxy, 'SIGSTOP');
  let killedAt: number | undefined;
  const approving = follow('--as', 'approver', 'demo', '--thread', waitingRoot, `!approve ${waitingJob}`);
  try {
    await untilClawgate(env, ['jobs', 'list'], new RegExp(`^${waitingJob}\\s+executing`, 'm'), 120_000);
    process.kill(before, 'SIGKILL');
    killedAt = Date.now();
  } finally {
    process.kill(proxy, 'SIGCONT');
  }
  await stack.waitFor(/^==> worker is back \(down [\d.]+ s\)$/m, 180_000);
  console.log(`worker back ${Date.now() - (killedAt ?? 0)} ms after the kill`);
  assert.notEqual(pidOf('worker'), before);
  await approving.until(new RegExp(`job ${waitingJob} ended: succeeded\n`), 180_000);
  console.log(`the job ended ${Date.now() - (killedAt ?? 0)} ms after the kill`);
  assert.equal(await approving.exited, 0, approving.output());
  assert.equal(count(approving.output(), new RegExp(`Answer for job ${waitingJob}:`)), 1, approving.output());
  const shown = await untilClawgate(env, ['jobs', 'show', waitingJob], /outcome\s+succeeded/, 60_000);
  assert.equal(count(shown, /^approval\s/), 1, shown);
  const digest = /bundle\s+([0-9a-f]{64})/.exec(shown)?.[1] as string;
  const verified = await clawgate('verify', join(state, 'bundles', `${digest}.json`));
  assert.equal(verified.code, 0, `${verified.stdout}${verified.stderr}`);
  const output = stack.output();
  assert.equal(count(output, /^==> worker exited \(signal SIGKILL\); restarting in 1 s$/), 1, output);
  assert.doesNotMatch(output, /proxy has not answered/);
});
