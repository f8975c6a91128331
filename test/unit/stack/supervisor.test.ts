// The supervisor's rules, with fake processes and short pauses: a part that exits unasked is
// started again after a pause that doubles up to a ceiling and is back to the first once the
// part has stayed healthy a while; the terminal gets one line when it exits and one when it is
// back; a part that keeps failing its starts stops the stack, naming it and its log; a part that
// answers but is not healthy is not a failed start; a part that runs but does not answer its
// check at all for hungAfterMs is killed and restarted (one line), while one that answers
// unhealthy, or answers again in time, is left alone; stop() stops the parts in order and starts
// nothing again.
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { ERROR_CODES } from '../../../src/errors.ts';
import {
  PartFailedError,
  seconds,
  Supervisor,
  type Exit,
  type Health,
  type Launched,
  type PartSpec,
} from '../../../src/stack/supervisor.ts';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** A fake part: each launch is a fake process the test ends; `health` says what its check answers. */
class FakePart {
  readonly launches: number[] = [];
  readonly signals: string[] = [];
  health: Health = 'healthy';
  /** Each new process exits at once with this, while set. */
  crashOnStart: Exit | null = null;
  private end: ((exit: Exit) => void) | null = null;
  private alive = false;
  private nextPid = 100;
  readonly spec: PartSpec;

  constructor(name: string, onStop?: (name: string) => void) {
    this.spec = {
      name,
      logFile: `/var/log/${name}.log`,
      launch: () => {
        this.launches.push(Date.now());
        let end!: (exit: Exit) => void;
        const exited = new Promise<Exit>((resolve) => {
          end = (exit) => {
            this.alive = false;
            resolve(exit);
          };
        });
        this.end = end;
        this.alive = true;
        if (this.crashOnStart) end(this.crashOnStart);
        const launched: Launched = {
          pid: this.nextPid++,
          exited,
          signal: (sig) => {
            this.signals.push(sig);
            if (sig === 'SIGTERM') onStop?.(name);
            end({ code: null, signal: sig });
          },
        };
        return Promise.resolve(launched);
      },
      check: () => Promise.resolve(this.alive ? this.health : 'unreachable'),
    };
  }

  /** The running process dies (a kill -9 from outside). */
  crash(): void {
    this.end?.({ code: null, signal: 'SIGKILL' });
  }
}

async function until(what: string, ok: () => boolean, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!ok()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(5);
  }
}

const fast = {
  initialBackoffMs: 100,
  maxBackoffMs: 400,
  resetAfterMs: 60_000,
  maxFailedStarts: 5,
  startTimeoutMs: 2_000,
  healthPollMs: 5,
  unhealthyGraceMs: 50,
  liveCheckMs: 10,
  checkTimeoutMs: 1_000,
  hungAfterMs: 60_000,
};

const hung = { ...fast, hungAfterMs: 100 };

test('a part that exits unasked is started again after a pause that doubles up to the ceiling; one line when it exits, one when it is back', async () => {
  const lines: string[] = [];
  const supervisor = new Supervisor({ notify: (l) => lines.push(l), timing: fast });
  const worker = new FakePart('worker');
  await supervisor.start(worker.spec);
  assert.equal(supervisor.get('worker')?.state, 'up');
  assert.equal(lines.length, 0, 'the first start says nothing: the summary does');
  const pauses: number[] = [];
  for (let kill = 1; kill <= 4; kill++) {
    const before = worker.launches.length;
    const killedAt = Date.now();
    worker.crash();
    await until(`restart ${kill}`, () => worker.launches.length > before);
    pauses.push((worker.launches.at(-1) as number) - killedAt);
    await until(`back ${kill}`, () => lines.filter((l) => l.startsWith('worker is back')).length === kill);
  }
  // 100, 200, 400, then the ceiling: 400.
  for (const [i, expected] of [100, 200, 400, 400].entries()) {
    const pause = pauses[i] as number;
    assert.ok(
      pause >= expected - 5 && pause < expected + 120,
      `pause ${i + 1}: ${pause} ms, not ~${expected}`,
    );
  }
  assert.deepEqual(
    lines.map((l) => l.replace(/\(down [\d.]+ s\)/, '(down N s)')),
    [
      'worker exited (signal SIGKILL); restarting in 0.1 s',
      'worker is back (down N s)',
      'worker exited (signal SIGKILL); restarting in 0.2 s',
      'worker is back (down N s)',
      'worker exited (signal SIGKILL); restarting in 0.4 s',
      'worker is back (down N s)',
      'worker exited (signal SIGKILL); restarting in 0.4 s',
      'worker is back (down N s)',
    ],
  );
  await supervisor.stop();
});

test('the pause is back to the first once the part has stayed healthy resetAfterMs', async () => {
  const lines: string[] = [];
  const supervisor = new Supervisor({
    notify: (l) => lines.push(l),
    timing: { ...fast, initialBackoffMs: 1_000, resetAfterMs: 150 },
  });
  const proxy = new FakePart('proxy');
  await supervisor.start(proxy.spec);
  proxy.crash();
  await until('the first restart', () => lines.some((l) => l.startsWith('proxy is back')));
  // Healthy 200 ms (longer than resetAfterMs): the next pause is the first one again, 1 s.
  await sleep(200);
  proxy.crash();
  await until('the second exit line', () => lines.length === 3);
  assert.equal(lines[2], 'proxy exited (signal SIGKILL); restarting in 1 s');
  await supervisor.stop();
});

test('a part that fails its first starts again and again: the start rejects naming it and its log, after maxFailedStarts', async () => {
  const lines: string[] = [];
  const supervisor = new Supervisor({ notify: (l) => lines.push(l), timing: fast });
  const gateway = new FakePart('gateway');
  gateway.crashOnStart = { code: 1, signal: null };
  const error = await supervisor.start(gateway.spec).then(
    () => assert.fail('the start resolved'),
    (e: unknown) => e,
  );
  assert.ok(error instanceof PartFailedError);
  assert.equal(error.code, ERROR_CODES.partFailed);
  assert.equal(error.part, 'gateway');
  assert.equal(error.logFile, '/var/log/gateway.log');
  assert.equal(
    error.message,
    'gateway failed 5 starts in a row (last: it exited, code 1); stopping clawgate (see its log: /var/log/gateway.log)',
  );
  assert.equal(gateway.launches.length, 5);
  assert.equal(lines.length, 4, lines.join('\n'));
  assert.equal(
    lines[3],
    'gateway did not start (it exited, code 1); restarting in 0.4 s (failed start 4 of 5)',
  );
  await assert.rejects(supervisor.failed, PartFailedError);
  await supervisor.stop();
});

test('a part that was up and then keeps failing its starts makes `failed` reject: the stack stops then', async () => {
  const supervisor = new Supervisor({ notify: () => {}, timing: fast });
  const proxy = new FakePart('proxy');
  await supervisor.start(proxy.spec);
  proxy.crashOnStart = { code: 1, signal: null };
  proxy.crash();
  const error = await supervisor.failed.catch((e: unknown) => e);
  assert.ok(error instanceof PartFailedError);
  assert.match(error.message, /^proxy failed 5 starts in a row .*see its log: \/var\/log\/proxy\.log\)$/);
  assert.equal(proxy.launches.length, 6, 'the first start, then five failed ones');
  await supervisor.stop();
});

test('a part that answers but is not healthy for unhealthyGraceMs is up (not a failed start); "is back" waits for healthy; one that never answers is killed at the start timeout', async () => {
  const lines: string[] = [];
  const supervisor = new Supervisor({
    notify: (l) => lines.push(l),
    timing: fast,
  });
  const gateway = new FakePart('gateway');
  gateway.health = 'answering';
  const t0 = Date.now();
  await supervisor.start(gateway.spec);
  assert.ok(Date.now() - t0 < fast.startTimeoutMs, 'up after the grace, not the start timeout');
  assert.equal(gateway.launches.length, 1);
  assert.deepEqual(lines, ['gateway runs but is not healthy yet (see `clawgate status`)']);
  gateway.crash();
  await until('the restart', () => gateway.launches.length === 2);
  await sleep(150);
  assert.ok(!lines.some((l) => l.includes('is back')), 'not back while not healthy');
  gateway.health = 'healthy';
  await until('back', () => lines.some((l) => l.startsWith('gateway is back')));
  assert.equal(supervisor.get('gateway')?.failedStarts, 0);

  const silent = new FakePart('worker');
  silent.health = 'unreachable';
  silent.spec.startTimeoutMs = 100;
  const started = supervisor.start(silent.spec);
  await until('the second start of the silent part', () => silent.launches.length === 2);
  assert.deepEqual(silent.signals, ['SIGKILL'], 'the start that never answered was killed');
  assert.ok(
    lines.includes(
      'worker did not start (no answer to its health check after 0.1 s); restarting in 0.1 s (failed start 1 of 5)',
    ),
    lines.join('\n'),
  );
  silent.health = 'healthy';
  await started;
  await supervisor.stop();
});

test('a part whose check is unreachable for hungAfterMs while it runs is killed with SIGKILL and restarted: one line, no exit line, "is back" counted from its first unanswered check', async () => {
  const lines: string[] = [];
  const supervisor = new Supervisor({ notify: (l) => lines.push(l), timing: hung });
  const proxy = new FakePart('proxy');
  await supervisor.start(proxy.spec);
  const silentFrom = Date.now();
  proxy.health = 'unreachable';
  await until('the kill', () => proxy.signals.length > 0);
  assert.deepEqual(proxy.signals, ['SIGKILL']);
  const killedAfter = Date.now() - silentFrom;
  assert.ok(killedAfter >= hung.hungAfterMs - 15, `killed after ${killedAfter} ms, before hungAfterMs`);
  assert.ok(killedAfter < hung.hungAfterMs + 200, `killed after ${killedAfter} ms`);
  proxy.health = 'healthy';
  await until('back', () => lines.some((l) => l.startsWith('proxy is back')));
  assert.equal(proxy.launches.length, 2, 'started again once');
  assert.equal(lines.length, 2, lines.join('\n'));
  assert.match(
    lines[0] as string,
    /^proxy has not answered its health check for 0\.[12] s; killed it \(SIGKILL\), restarting in 0\.1 s$/,
  );
  const down = Number(/^proxy is back \(down ([\d.]+) s\)$/.exec(lines[1] as string)?.[1]);
  assert.ok(down >= 0.2, `down ${down} s: from the first unanswered check (~0.1 s), then the 0.1 s pause`);
  assert.equal(supervisor.get('proxy')?.state, 'up');
  // Hung again: the same again, once more.
  proxy.health = 'unreachable';
  await until('the second kill', () => proxy.signals.length === 2);
  proxy.health = 'healthy';
  await until('back again', () => lines.filter((l) => l.startsWith('proxy is back')).length === 2);
  assert.equal(lines.filter((l) => l.includes('has not answered')).length, 2, lines.join('\n'));
  assert.ok(!lines.some((l) => l.includes('exited')), lines.join('\n'));
  await supervisor.stop();
});

test('a part that answers but is not healthy (a 503: waiting for Temporal, say) far longer than hungAfterMs is never killed', async () => {
  const lines: string[] = [];
  const supervisor = new Supervisor({ notify: (l) => lines.push(l), timing: hung });
  const worker = new FakePart('worker');
  await supervisor.start(worker.spec);
  worker.health = 'answering';
  await sleep(hung.hungAfterMs * 4);
  assert.deepEqual(worker.signals, []);
  assert.equal(worker.launches.length, 1);
  assert.deepEqual(lines, []);
  // Nor one that came up answering and never was healthy.
  const gateway = new FakePart('gateway');
  gateway.health = 'answering';
  await supervisor.start(gateway.spec);
  await sleep(hung.hungAfterMs * 4);
  assert.deepEqual(gateway.signals, []);
  await supervisor.stop();
});

test('a part that does not answer for a while but answers again before hungAfterMs is not killed', async () => {
  const lines: string[] = [];
  const supervisor = new Supervisor({ notify: (l) => lines.push(l), timing: hung });
  const gateway = new FakePart('gateway');
  await supervisor.start(gateway.spec);
  for (let i = 0; i < 4; i++) {
    gateway.health = 'unreachable';
    await sleep(hung.hungAfterMs / 2);
    gateway.health = i % 2 === 0 ? 'healthy' : 'answering';
    await sleep(hung.liveCheckMs * 4);
  }
  assert.deepEqual(gateway.signals, []);
  assert.equal(gateway.launches.length, 1);
  assert.deepEqual(lines, []);
  await supervisor.stop();
});

test('one check that failed after longer than hungAfterMs (the supervisor itself was held meanwhile) kills nothing: a hang takes two unanswered checks', async () => {
  const lines: string[] = [];
  const supervisor = new Supervisor({ notify: (l) => lines.push(l), timing: hung });
  const worker = new FakePart('worker');
  const answer = worker.spec.check.bind(worker.spec);
  let held = false;
  worker.spec.check = async () => {
    if (!held) return answer();
    held = false;
    await sleep(hung.hungAfterMs * 2);
    return 'unreachable';
  };
  await supervisor.start(worker.spec);
  held = true;
  await sleep(hung.hungAfterMs * 4);
  assert.equal(held, false, 'the slow check was asked');
  assert.deepEqual(worker.signals, []);
  assert.deepEqual(lines, []);
  await supervisor.stop();
});

test('a check that never returns counts as unreachable after checkTimeoutMs, and no second check starts while it hangs', async () => {
  const lines: string[] = [];
  const supervisor = new Supervisor({
    notify: (l) => lines.push(l),
    timing: { ...hung, checkTimeoutMs: 30 },
  });
  const worker = new FakePart('worker');
  const answer = worker.spec.check.bind(worker.spec);
  let stuck = false;
  let asked = 0;
  let inFlight = 0;
  let most = 0;
  worker.spec.check = async () => {
    asked += 1;
    if (stuck) {
      // A check that hangs until the process is gone.
      inFlight += 1;
      most = Math.max(most, inFlight);
      await until('the kill', () => worker.signals.length > 0, 10_000);
      inFlight -= 1;
      return 'unreachable';
    }
    return answer();
  };
  await supervisor.start(worker.spec);
  stuck = true;
  const from = asked;
  await until('the kill', () => worker.signals.length > 0);
  stuck = false;
  assert.equal(most, 1, 'one check at a time');
  assert.equal(asked - from, 1, 'the hanging check was not asked again');
  await until('back', () => lines.some((l) => l.startsWith('worker is back')));
  assert.match(lines[0] as string, /^worker has not answered its health check for 0\.\d s; killed it/);
  await supervisor.stop();
});

test('stop() stops the parts last started first, the servers together at the end, restarts nothing, and removes the pid files', async () => {
  const order: string[] = [];
  const pidDir = join(mkdtempSync(join(tmpdir(), 'supervisor-')), 'run');
  const lines: string[] = [];
  const supervisor = new Supervisor({ notify: (l) => lines.push(l), pidDir, timing: fast });
  const parts = ['temporal', 'synapse', 'proxy', 'worker', 'gateway'].map(
    (name) => new FakePart(name, (n) => order.push(n)),
  );
  for (const part of parts) await supervisor.start(part.spec);
  assert.equal(readFileSync(join(pidDir, 'worker.pid'), 'utf8'), `${supervisor.get('worker')?.pid}\n`);
  await supervisor.stop(['temporal', 'synapse']);
  assert.deepEqual(order, ['gateway', 'worker', 'proxy', 'temporal', 'synapse']);
  await sleep(100);
  assert.ok(
    parts.every((p) => p.launches.length === 1),
    'nothing started again',
  );
  assert.equal(lines.length, 0, 'a stop is no exit to report');
  assert.ok(!existsSync(join(pidDir, 'worker.pid')));
  for (const part of supervisor.parts) assert.equal(part.state, 'stopped');
});

test('abandon() during a start: the start rejects, and nothing is started again', async () => {
  const supervisor = new Supervisor({ notify: () => {}, timing: fast });
  const worker = new FakePart('worker');
  worker.crashOnStart = { code: 1, signal: null };
  const started = supervisor.start(worker.spec);
  await until('a first failed start', () => worker.launches.length === 1);
  supervisor.abandon();
  await assert.rejects(started, /worker: stopped before it was up/);
  await supervisor.stop();
  assert.equal(worker.launches.length, 1);
});

test('durations read as a person says them', () => {
  assert.equal(seconds(1_000), '1 s');
  assert.equal(seconds(3_240), '3.2 s');
  assert.equal(seconds(30_000), '30 s');
  assert.equal(seconds(12_600), '13 s');
});
