// The metrics helpers without servers: bounded labels, the once-per-key memory, the part
// registries' text (with the process metrics), the Temporal SDK forwarder, and each part's
// metrics moving as its methods are called. The parser the server tests read /metrics with is
// checked here too.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { BufferedMetricUpdate } from '@temporalio/worker';
import { GatewayMetrics } from '../../../src/metrics/gateway.ts';
import { bounded, partRegistry, RecentKeys } from '../../../src/metrics/prometheus.ts';
import { ProxyMetrics } from '../../../src/metrics/proxy.ts';
import { promName, TemporalMetricsForwarder } from '../../../src/metrics/temporal.ts';
import { sandboxOutcome, WorkerMetrics } from '../../../src/metrics/worker.ts';
import type { AccountHealth } from '../../../src/ingress/gateway.ts';
import type { Sandbox, SandboxResult } from '../../../src/sandbox/bubblewrap.ts';
import { metricValue, parsePrometheusText } from '../../harness/metrics.ts';

describe('helpers', () => {
  test('bounded keeps listed values and turns anything else into other', () => {
    const allowed = ['ok', 'refused'] as const;
    assert.equal(bounded('ok', allowed), 'ok');
    assert.equal(bounded('job:!room:$event', allowed), 'other');
    assert.equal(bounded(null, allowed), 'other');
    assert.equal(bounded(undefined, allowed), 'other');
  });

  test('RecentKeys says a key is new once, and forgets the oldest past its capacity', () => {
    const keys = new RecentKeys(2);
    assert.equal(keys.add('a'), true);
    assert.equal(keys.add('a'), false);
    assert.equal(keys.add('b'), true);
    assert.equal(keys.add('c'), true);
    assert.equal(keys.has('a'), false);
    assert.equal(keys.has('b'), true);
    assert.equal(keys.add('a'), true);
  });

  test('a part registry answers in the Prometheus text format, with process metrics and its part label', async () => {
    const registry = partRegistry('proxy');
    assert.equal(registry.contentType, 'text/plain; version=0.0.4; charset=utf-8');
    const samples = parsePrometheusText(await registry.metrics());
    assert.ok(metricValue(samples, 'process_cpu_user_seconds_total', { part: 'proxy' }) >= 0);
    assert.ok(samples.some((s) => s.name === 'nodejs_heap_size_used_bytes' && s.labels['part'] === 'proxy'));
  });

  test('the test parser reads labels with escapes, +Inf and sums matching series', () => {
    const text = [
      '# HELP x_total a counter',
      '# TYPE x_total counter',
      'x_total{a="1",b="say \\"hi\\""} 2',
      'x_total{a="2"} 3',
      'h_bucket{le="+Inf"} 4',
      'g 1.5',
    ].join('\n');
    const samples = parsePrometheusText(text);
    assert.deepEqual(samples[0], { name: 'x_total', labels: { a: '1', b: 'say "hi"' }, value: 2 });
    assert.equal(metricValue(samples, 'x_total'), 5);
    assert.equal(metricValue(samples, 'x_total', { a: '2' }), 3);
    assert.equal(metricValue(samples, 'h_bucket', { le: '+Inf' }), 4);
    assert.equal(metricValue(samples, 'g'), 1.5);
    assert.equal(metricValue(samples, 'missing_total'), 0);
  });
});

describe('the Temporal SDK forwarder', () => {
  const update = (
    metric: BufferedMetricUpdate['metric'],
    value: number,
    attributes: BufferedMetricUpdate['attributes'],
  ): BufferedMetricUpdate => ({ metric, value, attributes });

  test('counters add deltas, gauges take values, up-down counters add, histograms observe', async () => {
    const registry = partRegistry('worker');
    const forwarder = new TemporalMetricsForwarder(registry);
    const polls = { name: 'temporal_request', kind: 'counter', valueType: 'int' } as const;
    const slots = { name: 'temporal_worker_task_slots_available', kind: 'gauge', valueType: 'int' } as const;
    const cached = { name: 'temporal_sticky_cache_size', kind: 'up-down-counter', valueType: 'int' } as const;
    const latency = {
      name: 'temporal_workflow_task_schedule_to_start_latency',
      kind: 'histogram',
      valueType: 'float',
      unit: 'duration',
    } as const;
    const tags = { namespace: 'default', task_queue: 'q', 'service.name': 'w' };
    forwarder.apply(update(polls, 2, tags));
    forwarder.apply(update(polls, 3, tags));
    forwarder.apply(update(slots, 7, tags));
    forwarder.apply(update(slots, 5, tags));
    forwarder.apply(update(cached, 4, tags));
    forwarder.apply(update(cached, -1, tags));
    forwarder.apply(update(latency, 0.02, tags));
    // An attribute the first update did not have is left out, not an error.
    forwarder.apply(update(polls, 1, { ...tags, extra: 'x' }));
    const text = await registry.metrics();
    assert.equal(metricValue(text, 'temporal_request', { task_queue: 'q', service_name: 'w' }), 6);
    assert.equal(metricValue(text, 'temporal_worker_task_slots_available'), 5);
    assert.equal(metricValue(text, 'temporal_sticky_cache_size'), 3);
    assert.equal(metricValue(text, 'temporal_workflow_task_schedule_to_start_latency_count'), 1);
    assert.equal(
      metricValue(text, 'temporal_workflow_task_schedule_to_start_latency_bucket', { le: '0.025' }),
      1,
    );
    assert.equal(
      metricValue(text, 'temporal_workflow_task_schedule_to_start_latency_bucket', { le: '0.01' }),
      0,
    );
  });

  test('names are made valid for Prometheus', () => {
    assert.equal(promName('temporal_request'), 'temporal_request');
    assert.equal(promName('weird.name-1'), 'weird_name_1');
    assert.equal(promName('1st'), '_1st');
  });
});

describe('worker metrics', () => {
  test('a job ended counts once by its outcome, however often its seal is retried', async () => {
    const m = new WorkerMetrics();
    m.jobSealed('job:a', 'succeeded');
    m.jobSealed('job:a', 'succeeded');
    m.jobSealed('job:b', 'denied');
    m.jobSealed('job:c', 'something new');
    const text = await m.registry.metrics();
    assert.equal(metricValue(text, 'clawgate_worker_jobs_ended_total', { outcome: 'succeeded' }), 1);
    assert.equal(metricValue(text, 'clawgate_worker_jobs_ended_total', { outcome: 'denied' }), 1);
    assert.equal(metricValue(text, 'clawgate_worker_jobs_ended_total', { outcome: 'other' }), 1);
  });

  test('plan to approval is observed once per job, in seconds; times that make no sense are not', async () => {
    const m = new WorkerMetrics();
    m.approvalRecorded('job:a', 1_000_000, 1_090_000);
    m.approvalRecorded('job:a', 1_000_000, 1_090_000);
    m.approvalRecorded('job:b', 0, 5);
    m.approvalRecorded('job:c', 2_000, 1_000);
    const text = await m.registry.metrics();
    assert.equal(metricValue(text, 'clawgate_worker_plan_to_approval_seconds_count'), 1);
    assert.equal(metricValue(text, 'clawgate_worker_plan_to_approval_seconds_sum'), 90);
    assert.equal(metricValue(text, 'clawgate_worker_plan_to_approval_seconds_bucket', { le: '60' }), 0);
    assert.equal(metricValue(text, 'clawgate_worker_plan_to_approval_seconds_bucket', { le: '120' }), 1);
  });

  test('sandbox runs count by outcome, a run that throws as error', async () => {
    const m = new WorkerMetrics();
    const base: SandboxResult = {
      exitCode: 0,
      signal: null,
      stdout: '',
      stderr: '',
      timedOut: false,
      outputTruncated: false,
      memoryExceeded: false,
      durationMs: 1,
    };
    const results: Array<SandboxResult | Error> = [
      base,
      { ...base, exitCode: 2 },
      { ...base, exitCode: null, signal: 'SIGKILL', timedOut: true },
      new Error('no cgroup'),
    ];
    const fake: Sandbox = {
      backend: 'bubblewrap',
      profile: () => 'fake',
      run: () => {
        const next = results.shift() as SandboxResult | Error;
        return next instanceof Error ? Promise.reject(next) : Promise.resolve(next);
      },
    };
    const sandbox = m.countingSandbox(fake);
    assert.equal(sandbox.profile({ argv: [] } as never), 'fake');
    for (let i = 0; i < 3; i++) await sandbox.run({ argv: [] } as never);
    await assert.rejects(sandbox.run({ argv: [] } as never), /no cgroup/);
    const text = await m.registry.metrics();
    for (const outcome of ['ok', 'exit_nonzero', 'timed_out', 'error']) {
      assert.equal(
        metricValue(text, 'clawgate_worker_sandbox_runs_total', { backend: 'bubblewrap', outcome }),
        1,
        outcome,
      );
    }
    assert.equal(sandboxOutcome({ ...base, memoryExceeded: true, exitCode: 137 }), 'memory_exceeded');
  });

  test('the awaiting-approval gauge follows its count, and keeps its value when a read fails', async () => {
    const m = new WorkerMetrics();
    let answer: number | Error = 3;
    const watch = m.watchAwaitingApproval(
      () => (answer instanceof Error ? Promise.reject(answer) : Promise.resolve(answer)),
      60_000,
    );
    try {
      await watch.refresh();
      assert.equal(metricValue(await m.registry.metrics(), 'clawgate_worker_jobs_awaiting_approval'), 3);
      answer = new Error('visibility away');
      await watch.refresh();
      const text = await m.registry.metrics();
      assert.equal(metricValue(text, 'clawgate_worker_jobs_awaiting_approval'), 3);
      assert.ok(metricValue(text, 'clawgate_worker_jobs_awaiting_approval_read_errors_total') >= 1);
    } finally {
      watch.stop();
    }
  });
});

describe('proxy metrics', () => {
  test('calls by status and receipt, receipts written, fsync latency, token refusals by code', async () => {
    const m = new ProxyMetrics();
    m.callReceipted('ok', true, 0.004);
    m.callReceipted('refused', true, 0.0005);
    m.callReceipted('ok', false, 0.01);
    m.fsynced(0.0003);
    m.tokenRefused('TOKEN_EXPIRED');
    m.tokenRefused('a reason someone made up');
    const text = await m.registry.metrics();
    assert.equal(metricValue(text, 'clawgate_proxy_calls_total', { status: 'ok', receipt: 'written' }), 1);
    assert.equal(metricValue(text, 'clawgate_proxy_calls_total', { status: 'ok', receipt: 'failed' }), 1);
    assert.equal(metricValue(text, 'clawgate_proxy_receipts_written_total'), 2);
    assert.equal(metricValue(text, 'clawgate_proxy_receipt_write_failures_total'), 1);
    assert.equal(metricValue(text, 'clawgate_proxy_call_duration_seconds_count', { status: 'ok' }), 1);
    assert.equal(metricValue(text, 'clawgate_proxy_receipt_fsync_seconds_count'), 1);
    assert.equal(metricValue(text, 'clawgate_proxy_token_refusals_total', { code: 'TOKEN_EXPIRED' }), 1);
    assert.equal(metricValue(text, 'clawgate_proxy_token_refusals_total', { code: 'other' }), 1);
  });
});

describe('gateway metrics', () => {
  const health = (over: Partial<AccountHealth>): AccountHealth => ({
    id: 'main',
    userId: '@bot:example.org',
    state: 'syncing',
    syncState: 'SYNCING',
    lastSyncAt: new Date(Date.now() - 2_000).toISOString(),
    syncLagMs: 2_000,
    eventLagMs: 150,
    handledEvents: 9,
    startedJobs: 2,
    signals: 3,
    refusedEvents: 1,
    blocked: null,
    homeserver: { reachable: true, since: new Date().toISOString(), forMs: 0, error: null, failures: 0 },
    error: null,
    encryption: { enabled: true, available: false, error: 'wasm', backup: null },
    startLatencyMs: { count: 0, p50: null, p99: null },
    ...over,
  });

  test("each account's counts, lags and states are read at the scrape", async () => {
    let accounts = [
      health({}),
      health({
        id: 'other',
        lastSyncAt: null,
        eventLagMs: null,
        encryption: { enabled: false, available: false, error: null, backup: null },
      }),
    ];
    const m = new GatewayMetrics(() => accounts);
    let text = await m.registry.metrics();
    assert.equal(metricValue(text, 'clawgate_gateway_jobs_started_total', { account: 'main' }), 2);
    assert.equal(metricValue(text, 'clawgate_gateway_signals_total', { account: 'main' }), 3);
    assert.equal(metricValue(text, 'clawgate_gateway_events_refused_total', { account: 'main' }), 1);
    const lag = metricValue(text, 'clawgate_gateway_sync_lag_seconds', { account: 'main' });
    assert.ok(lag >= 2 && lag < 10, `lag ${lag}`);
    assert.ok(metricValue(text, 'clawgate_gateway_sync_lag_seconds', { account: 'other' }) >= 0);
    assert.equal(metricValue(text, 'clawgate_gateway_event_lag_seconds', { account: 'main' }), 0.15);
    assert.equal(
      metricValue(text, 'clawgate_gateway_crypto_state', { account: 'main', state: 'unavailable' }),
      1,
    );
    assert.equal(metricValue(text, 'clawgate_gateway_crypto_state', { account: 'main', state: 'ready' }), 0);
    assert.equal(
      metricValue(text, 'clawgate_gateway_crypto_state', { account: 'other', state: 'disabled' }),
      1,
    );
    assert.equal(
      metricValue(text, 'clawgate_gateway_account_state', { account: 'main', state: 'syncing' }),
      1,
    );
    accounts = [health({ startedJobs: 5 })];
    text = await m.registry.metrics();
    assert.equal(metricValue(text, 'clawgate_gateway_jobs_started_total', { account: 'main' }), 5);
  });

  test("approval attempts by verdict: the job's, with its code, and the gateway's own refusals", async () => {
    const m = new GatewayMetrics(() => []);
    m.jobVerdict('main', { subject: 'plan', accepted: true, code: null });
    m.jobVerdict('main', { subject: 'plan', accepted: false, code: 'APPROVAL_NOT_APPROVER' });
    m.jobVerdict('main', { subject: 'call', accepted: false, code: 'NOT_A_KNOWN_CODE' });
    m.gatewayRefusal('main', 'plan', 'job_ended');
    const text = await m.registry.metrics();
    const name = 'clawgate_gateway_approval_attempts_total';
    assert.equal(metricValue(text, name, { subject: 'plan', verdict: 'accepted', reason: 'none' }), 1);
    assert.equal(
      metricValue(text, name, { subject: 'plan', verdict: 'refused', reason: 'APPROVAL_NOT_APPROVER' }),
      1,
    );
    assert.equal(metricValue(text, name, { subject: 'call', verdict: 'refused', reason: 'other' }), 1);
    assert.equal(metricValue(text, name, { subject: 'plan', verdict: 'refused', reason: 'job_ended' }), 1);
  });
});
