// Whether Temporal answers, checked actively: a cheap health check every few seconds with a short
// deadline, and at once when a call or the SDK's own retries suggest it is gone. The result
// goes to an Outage (src/stack/outages.ts): the health endpoints and the log read it from there.
import type { Connection } from '@temporalio/client';
import type { Outage } from '../stack/outages.ts';

/**
 * gRPC channel options of clawgate's Temporal clients: after an outage the channel tries to
 * connect again at least every 5 s (gRPC's default backoff grows to two minutes), so a part
 * notices that Temporal is back within seconds of it.
 */
export const TEMPORAL_CHANNEL_ARGS = {
  'grpc.initial_reconnect_backoff_ms': 500,
  'grpc.max_reconnect_backoff_ms': 5_000,
} as const;

/** How often Temporal is checked, and how long a check may take. */
export const TEMPORAL_CHECK = { intervalMs: 3_000, timeoutMs: 2_000 } as const;

export interface TemporalWatch {
  readonly outage: Outage;
  /** Checks now (one check at a time: a caller during one shares it); true when Temporal answered. */
  checkNow(): Promise<boolean>;
  /** Stops checking; resolves once a check under way has ended (its connection may then close). */
  stop(): Promise<void>;
}

/** Watches the connection's server until stopped; the first check runs at once. */
export function watchTemporal(
  connection: Pick<Connection, 'healthService' | 'withDeadline'>,
  outage: Outage,
  opts: { intervalMs?: number; timeoutMs?: number } = {},
): TemporalWatch {
  const intervalMs = opts.intervalMs ?? TEMPORAL_CHECK.intervalMs;
  const timeoutMs = opts.timeoutMs ?? TEMPORAL_CHECK.timeoutMs;
  let stopped = false;
  let timer: NodeJS.Timeout | undefined;
  let running: Promise<boolean> | null = null;
  /** The last check timed out (one slow answer alone is not an outage: see check). */
  let slow = false;

  const check = async (): Promise<boolean> => {
    let timeout: NodeJS.Timeout | undefined;
    const started = Date.now();
    try {
      // The deadline is the client's; the race is for a channel that does not even get that far.
      await Promise.race([
        connection.withDeadline(Date.now() + timeoutMs, () => connection.healthService.check({})),
        new Promise((_, reject) => {
          timeout = setTimeout(
            () => reject(new Error(`no answer to a health check within ${timeoutMs} ms`)),
            timeoutMs + 1_000,
          );
        }),
      ]);
      slow = false;
      if (!stopped) outage.answered();
      return true;
    } catch (error) {
      // A refused or broken connection begins the outage at once; a check that timed out only
      // when the one after it times out too (a server busy for a moment, just restarted or on
      // a loaded machine, is not away: without this it was one warning and one "reachable
      // again after 3.0 s" more in the log).
      const timedOut = isTimeout(error);
      const stale = !outage.down && started < Date.parse(outage.status().since);
      if (!stopped && !stale && (!timedOut || slow || outage.down)) outage.failed(error, started);
      slow = timedOut && !stale;
      return false;
    } finally {
      clearTimeout(timeout);
    }
  };

  const checkNow = (): Promise<boolean> => {
    running ??= check().finally(() => {
      running = null;
    });
    return running;
  };

  const loop = (): void => {
    if (stopped) return;
    void checkNow().finally(() => {
      if (!stopped) {
        timer = setTimeout(loop, intervalMs);
        timer.unref();
      }
    });
  };
  loop();

  return {
    outage,
    checkNow,
    async stop() {
      stopped = true;
      clearTimeout(timer);
      await running;
    },
  };
}

/** Whether a check failed for want of an answer in time (not for a refused or broken connection). */
function isTimeout(error: unknown): boolean {
  const e = error as { code?: unknown; message?: unknown };
  if (e?.code === 4) return true; // gRPC DEADLINE_EXCEEDED
  const message = typeof e?.message === 'string' ? e.message : String(error);
  return /DEADLINE_EXCEEDED|Deadline exceeded|no answer to a health check within/.test(message);
}
