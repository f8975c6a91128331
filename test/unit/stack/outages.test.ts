// An outage is one warning when it starts and one line when it ends, with its duration; other
// warnings that repeat are logged once and counted; on a fake clock.
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { test } from 'node:test';
import { createLogger, isTemporalConnectionWarning } from '../../../src/stack/logging.ts';
import { foldKey, formatDuration, Outage, RepeatFolder, type LogEntry } from '../../../src/stack/outages.ts';
import { watchTemporal } from '../../../src/temporal/reachability.ts';

function capture() {
  const lines: Array<Record<string, unknown>> = [];
  const stream = new Writable({
    write(chunk: Buffer, _enc, done) {
      lines.push(JSON.parse(chunk.toString()) as Record<string, unknown>);
      done();
    },
  });
  return { lines, logger: createLogger('t', 'debug', stream) };
}

/** The poll warning the Temporal SDK's core logs for each retried poll while the server is gone. */
const pollRetry = (n: number): LogEntry => ({
  level: 'warn',
  message: `gRPC call poll_activity_task_queue retried ${n} times`,
  meta: { sdkComponent: 'core', error: 'Status { code: Unavailable, message: "tcp connect error" }' },
});

test('an outage is one warning when it begins and one line with its duration when it ends, however many failures it had', () => {
  const { lines, logger } = capture();
  let now = 1_000_000;
  const outage = new Outage({ service: 'Temporal', log: logger, impact: 'jobs wait', now: () => now });
  assert.equal(outage.status().reachable, true);
  assert.equal(
    outage.failed(new Error('14 UNAVAILABLE: connection refused')),
    true,
    'the first failure begins it',
  );
  for (let i = 0; i < 54; i++) {
    now += 180;
    assert.equal(outage.failed(`retry ${i}`), false);
  }
  const during = outage.status();
  assert.equal(during.reachable, false);
  assert.equal(during.since, new Date(1_000_000).toISOString());
  assert.equal(during.forMs, 54 * 180);
  assert.equal(during.error, 'retry 53');
  assert.equal(during.failures, 55);
  now = 1_000_000 + 42_500;
  outage.answered();
  outage.answered();
  assert.deepEqual(
    lines.map((l) => [l['level'], l['msg']]),
    [
      [40, 'Temporal is not reachable; jobs wait'],
      [30, 'Temporal is reachable again after 42.5 s'],
    ],
  );
  assert.equal(lines[1]?.['downMs'], 42_500);
  assert.equal(lines[1]?.['failures'], 55);
  now += 1_000;
  assert.deepEqual(outage.status(), {
    reachable: true,
    since: new Date(1_042_500).toISOString(),
    forMs: 1_000,
    error: null,
    failures: 0,
  });
  assert.equal(outage.reason(), null);
  // A second outage is said again.
  outage.failed('gone again');
  assert.equal(lines.length, 3);
  assert.match(String(outage.reason()), /^Temporal is not reachable \(for 0 ms, since .*\): gone again$/);
});

test('a repeated warning is logged once, its repeats counted in one line once its window has passed', () => {
  let now = 0;
  const emitted: Array<[string, number]> = [];
  const folder = new RepeatFolder({
    windowMs: 60_000,
    now: () => now,
    emit: (entry, repeated) => emitted.push([entry.message, repeated]),
  });
  // 54 poll warnings in the first 10 s, with their attempt counts rising.
  for (let i = 0; i < 54; i++) {
    folder.note(pollRetry(6 + Math.floor(i / 10)));
    now += 185;
  }
  folder.note({ level: 'warn', message: 'something else', meta: {} });
  assert.deepEqual(emitted, [
    ['gRPC call poll_activity_task_queue retried 6 times', 0],
    ['something else', 0],
  ]);
  now = 30_000;
  folder.flush();
  assert.equal(emitted.length, 2, 'nothing is said before the window has passed');
  now = 60_001;
  folder.flush();
  assert.deepEqual(emitted.slice(2), [['gRPC call poll_activity_task_queue retried 11 times', 53]]);
  // The run is over: the next one begins with a line of its own; a lone warning costs one line.
  folder.flush();
  folder.note(pollRetry(3));
  assert.deepEqual(emitted.slice(3), [['gRPC call poll_activity_task_queue retried 3 times', 0]]);
  now = 200_000;
  folder.note(pollRetry(4));
  assert.deepEqual(emitted.slice(4), [['gRPC call poll_activity_task_queue retried 4 times', 0]]);
});

test('warnings are the same when only their numbers differ, and errors are not warnings', () => {
  assert.equal(foldKey(pollRetry(6)), foldKey(pollRetry(17)));
  assert.notEqual(foldKey(pollRetry(6)), foldKey({ ...pollRetry(6), level: 'error' }));
  assert.ok(isTemporalConnectionWarning(pollRetry(6).message));
  assert.ok(!isTemporalConnectionWarning('Workflow bundle is large', {}));
  assert.equal(formatDuration(850), '850 ms');
  assert.equal(formatDuration(245_000), '4 min 5 s');
  assert.equal(formatDuration(7_380_000), '2 h 3 min');
});

test('the Temporal watch checks at once and on demand, and its checks end and begin the outage', async () => {
  const { lines, logger } = capture();
  let answering = true;
  let checks = 0;
  const connection = {
    withDeadline: <T>(_deadline: number | Date, fn: () => Promise<T>) => fn(),
    healthService: {
      check: () => {
        checks += 1;
        return answering ? Promise.resolve({}) : Promise.reject(new Error('14 UNAVAILABLE: no connection'));
      },
    },
  } as unknown as Parameters<typeof watchTemporal>[0];
  const watch = watchTemporal(connection, new Outage({ service: 'Temporal', log: logger }), {
    intervalMs: 60_000,
  });
  try {
    assert.equal(await watch.checkNow(), true);
    answering = false;
    // Callers during one check share it.
    const [a, b] = await Promise.all([watch.checkNow(), watch.checkNow()]);
    assert.deepEqual([a, b], [false, false]);
    assert.equal(watch.outage.down, true);
    answering = true;
    assert.equal(await watch.checkNow(), true);
    assert.equal(watch.outage.down, false);
    assert.ok(checks >= 3 && checks <= 4, `${checks} checks`);
    assert.deepEqual(
      lines.map((l) => l['msg']),
      ['Temporal is not reachable', lines[1]?.['msg']],
    );
    assert.match(String(lines[1]?.['msg']), /^Temporal is reachable again after \d+ ms$/);
  } finally {
    await watch.stop();
  }
});

test('one health check that times out is not an outage; two in a row are, and a refused connection is at once', async () => {
  const { lines, logger } = capture();
  let answer: 'ok' | 'timeout' | 'refused' = 'ok';
  const connection = {
    withDeadline: <T>(_deadline: number | Date, fn: () => Promise<T>) => fn(),
    healthService: {
      check: () => {
        if (answer === 'ok') return Promise.resolve({});
        const error = new Error(
          answer === 'timeout'
            ? '4 DEADLINE_EXCEEDED: Deadline exceeded'
            : '14 UNAVAILABLE: connection refused',
        );
        return Promise.reject(Object.assign(error, { code: answer === 'timeout' ? 4 : 14 }));
      },
    },
  } as unknown as Parameters<typeof watchTemporal>[0];
  const watch = watchTemporal(connection, new Outage({ service: 'Temporal', log: logger }), {
    intervalMs: 60_000,
  });
  try {
    assert.equal(await watch.checkNow(), true);
    answer = 'timeout';
    assert.equal(await watch.checkNow(), false);
    assert.equal(watch.outage.down, false, 'one slow answer');
    answer = 'ok';
    assert.equal(await watch.checkNow(), true);
    answer = 'timeout';
    await watch.checkNow();
    assert.equal(watch.outage.down, false, 'a slow answer after a good one, again');
    await watch.checkNow();
    assert.equal(watch.outage.down, true, 'two in a row');
    answer = 'ok';
    await watch.checkNow();
    assert.equal(watch.outage.down, false);
    answer = 'refused';
    await watch.checkNow();
    assert.equal(watch.outage.down, true, 'a refused connection: at once');
    assert.deepEqual(
      lines.map((l) => String(l['msg']).replace(/after \d+ ms$/, 'after N ms')),
      ['Temporal is not reachable', 'Temporal is reachable again after N ms', 'Temporal is not reachable'],
    );
  } finally {
    await watch.stop();
  }
});

test('a failure of an attempt begun before the service came back begins no new outage', () => {
  const { lines, logger } = capture();
  let now = 5_000;
  const outage = new Outage({ service: 'Temporal', log: logger, now: () => now });
  outage.failed(new Error('14 UNAVAILABLE'));
  const sentDuringOutage = now + 1_000;
  now += 10_000;
  outage.answered();
  now += 80;
  assert.equal(
    outage.failed(new Error('no answer to a health check within 2000 ms'), sentDuringOutage),
    false,
  );
  assert.equal(outage.down, false);
  // One begun after it is a new outage.
  assert.equal(outage.failed(new Error('14 UNAVAILABLE'), now), true);
  assert.deepEqual(
    lines.map((l) => l['msg']),
    ['Temporal is not reachable', 'Temporal is reachable again after 10.0 s', 'Temporal is not reachable'],
  );
});
