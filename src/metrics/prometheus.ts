// What the three parts share for GET /metrics: a registry of their own (so that `clawgate start`,
// which runs all three in one process, still answers each part's metrics on that part's port and
// a scrape of one never counts another's), the default process metrics in it, and the answer in
// the Prometheus text format. Labels are kept to values from fixed lists: a label that took job
// ids, user ids or free text would grow a series for every value and sink the Prometheus server.
import type { ServerResponse } from 'node:http';
import { collectDefaultMetrics, Gauge, Registry } from 'prom-client';

export const METRICS_PATH = '/metrics';

export type Part = 'gateway' | 'worker' | 'proxy';

/** A registry for one part, with Node's process metrics (CPU, memory, event loop, handles). */
export function partRegistry(part: Part): Registry {
  const registry = new Registry();
  registry.setDefaultLabels({ part });
  collectDefaultMetrics({ register: registry });
  return registry;
}

/**
 * Answers GET /metrics with the registry's text. `beforeScrape` brings in what is only pulled
 * at a scrape (the Temporal SDK's buffered metrics, say).
 */
export function answerMetrics(
  res: ServerResponse,
  registry: Registry,
  beforeScrape?: () => void | Promise<void>,
): void {
  void (async () => {
    await beforeScrape?.();
    return await registry.metrics();
  })().then(
    (text) => {
      res.writeHead(200, { 'content-type': registry.contentType, 'cache-control': 'no-store' });
      res.end(text);
    },
    (error: unknown) => {
      res.writeHead(500, { 'content-type': 'text/plain; charset=utf-8' });
      res.end(`metrics could not be collected: ${error instanceof Error ? error.message : String(error)}\n`);
    },
  );
}

/**
 * A value for a label from a fixed list, or `other`: a code from outside the list (a new error
 * code, a value from another version) still counts, under one series, rather than making one.
 */
export function bounded<T extends string>(
  value: string | null | undefined,
  allowed: readonly T[],
): T | 'other' {
  return value !== null && value !== undefined && (allowed as readonly string[]).includes(value)
    ? (value as T)
    : 'other';
}

/**
 * Keys seen lately, at most `capacity` of them (the oldest is forgotten first): what makes a
 * retried activity count once in this process without a set that grows with every job.
 */
export class RecentKeys {
  private readonly keys = new Set<string>();
  private readonly capacity: number;
  constructor(capacity = 10_000) {
    this.capacity = capacity;
  }
  /** Whether `key` is new; it is remembered from now on. */
  add(key: string): boolean {
    if (this.keys.has(key)) return false;
    this.keys.add(key);
    if (this.keys.size > this.capacity) {
      const oldest = this.keys.values().next().value as string;
      this.keys.delete(oldest);
    }
    return true;
  }
  has(key: string): boolean {
    return this.keys.has(key);
  }
}

/**
 * clawgate_temporal_reachable: 1 while the part's checks and calls reach Temporal, 0 while they
 * do not (src/temporal/reachability.ts), read at each scrape.
 */
export function registerTemporalReachable(registry: Registry, reachable: () => boolean): void {
  new Gauge({
    name: 'clawgate_temporal_reachable',
    help: "1 while this part's checks and calls reach Temporal, 0 while they do not",
    registers: [registry],
    collect() {
      this.set(reachable() ? 1 : 0);
    },
  });
}
