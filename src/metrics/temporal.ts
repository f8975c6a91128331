// The Temporal SDK's own metrics (task polls, schedule-to-start latencies, slots, sticky cache,
// request failures), forwarded into a part's registry, so that they are scraped from the same
// /metrics as clawgate's. The SDK's native side can serve a Prometheus endpoint of its own
// (`telemetryOptions.metrics.prometheus`), but that is one more port to open, secure and
// document per process; its buffered exporter (`MetricsBuffer`) hands the same updates to this
// side instead, where they are drained at each scrape and every few seconds.
import type { BufferedMetricUpdate, MetricsBuffer } from '@temporalio/worker';
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';

/** Seconds, for the SDK's latencies (it is asked for seconds: `useSecondsForDurations`). */
const DURATION_BUCKETS = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];

type Target =
  | { kind: 'counter'; metric: Counter; labels: readonly string[] }
  | { kind: 'gauge'; metric: Gauge; labels: readonly string[] }
  | { kind: 'histogram'; metric: Histogram; labels: readonly string[] };

/** A Prometheus metric name for an SDK one (they are snake case already; anything else goes). */
export function promName(name: string): string {
  const cleaned = name.replace(/[^a-zA-Z0-9_:]/g, '_');
  return /^[a-zA-Z_:]/.test(cleaned) ? cleaned : `_${cleaned}`;
}

function labelName(key: string): string {
  const cleaned = key.replace(/[^a-zA-Z0-9_]/g, '_');
  return /^[a-zA-Z_]/.test(cleaned) && !cleaned.startsWith('__') ? cleaned : `tag_${cleaned}`;
}

/**
 * Applies SDK metric updates to prom-client metrics, made in `registry` the first time each
 * SDK metric is seen. A metric's label names are those of its first update; a later update's
 * extra attributes are left out (a Prometheus metric has one set of label names).
 */
export class TemporalMetricsForwarder {
  private readonly registry: Registry;
  private readonly targets = new Map<string, Target>();
  constructor(registry: Registry) {
    this.registry = registry;
  }

  apply(update: BufferedMetricUpdate): void {
    const target = this.targetFor(update);
    if (!target) return;
    const labels: Record<string, string> = {};
    for (const [key, value] of Object.entries(update.attributes)) {
      const name = labelName(key);
      if (target.labels.includes(name)) labels[name] = String(value);
    }
    switch (target.kind) {
      case 'counter':
        if (update.value > 0) target.metric.inc(labels, update.value);
        break;
      case 'gauge':
        // An up-down counter's update is a change; a gauge's, the value.
        if (update.metric.kind === 'up-down-counter') target.metric.inc(labels, update.value);
        else target.metric.set(labels, update.value);
        break;
      case 'histogram':
        target.metric.observe(labels, update.value);
        break;
    }
  }

  private targetFor(update: BufferedMetricUpdate): Target | undefined {
    const { metric } = update;
    const name = promName(metric.name);
    const known = this.targets.get(name);
    if (known) return known;
    if (this.registry.getSingleMetric(name)) return undefined; // a name clawgate uses itself
    const labels = Object.keys(update.attributes).map(labelName);
    const help = metric.description || `Temporal SDK metric ${metric.name}`;
    const common = { name, help, labelNames: labels, registers: [this.registry] };
    let target: Target;
    if (metric.kind === 'counter') target = { kind: 'counter', metric: new Counter(common), labels };
    else if (metric.kind === 'histogram') {
      const seconds = metric.unit === 'duration' || metric.unit === 's' || metric.unit === 'ms';
      target = {
        kind: 'histogram',
        metric: new Histogram({ ...common, ...(seconds ? { buckets: DURATION_BUCKETS } : {}) }),
        labels,
      };
    } else target = { kind: 'gauge', metric: new Gauge(common), labels };
    this.targets.set(name, target);
    return target;
  }
}

/**
 * Drains `buffer` into `registry` every `everyMs` (so the buffer never fills between scrapes)
 * and whenever `drain` is called (at each scrape).
 */
export function forwardTemporalMetrics(
  buffer: MetricsBuffer,
  registry: Registry,
  everyMs = 5000,
): { drain: () => void; stop: () => void } {
  const forwarder = new TemporalMetricsForwarder(registry);
  const drain = (): void => {
    for (const update of buffer.retrieveUpdates()) forwarder.apply(update);
  };
  const timer = setInterval(drain, everyMs);
  timer.unref();
  return { drain, stop: () => clearInterval(timer) };
}
