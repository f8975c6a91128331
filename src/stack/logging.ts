// Structured logs (pino, JSON lines on stdout) for every clawgate process; secrets are
// redacted by key wherever they appear in a logged object. The Temporal worker runtime's own
// warnings and errors go through the same logger, repeats folded, and its connection retries
// into the process's Temporal outage (one warning, one recovery line).
import { makeTelemetryFilterString, Runtime, type MetricsBuffer } from '@temporalio/worker';
import { pino, type DestinationStream, type Logger, type LoggerOptions } from 'pino';
import type { TemporalWatch } from '../temporal/reachability.ts';
import { foldingLogger, type LogEntry } from './outages.ts';

export const REDACTED_KEYS = [
  'accessToken',
  'access_token',
  'password',
  'apiKey',
  'api_key',
  'authorization',
  'token',
  'jwt',
  'recoveryKey',
  'recovery_key',
];

/** pino options every clawgate logger uses: its name, its level, secrets redacted by key. */
export function loggerOptions(name: string, level: string): LoggerOptions {
  return {
    name,
    level,
    redact: {
      paths: [
        ...REDACTED_KEYS,
        ...REDACTED_KEYS.map((k) => `*.${k}`),
        ...REDACTED_KEYS.map((k) => `*.*.${k}`),
      ],
      censor: '[secret]',
    },
  };
}

export function createLogger(name: string, level: string, destination?: DestinationStream): Logger {
  return destination ? pino(loggerOptions(name, level), destination) : pino(loggerOptions(name, level));
}

let installed = false;
/** The process's watch on Temporal, if it has one: the SDK's connection warnings go to it. */
let watch: TemporalWatch | null = null;

/**
 * The SDK's warnings that a call to Temporal failed for want of a connection: "gRPC call
 * poll_activity_task_queue retried 6 times", tens per 10 s while the server is gone.
 */
export function isTemporalConnectionWarning(message: string, meta: Record<string, unknown> = {}): boolean {
  const text = `${message} ${typeof meta['error'] === 'string' ? meta['error'] : ''}`;
  return /gRPC call \w+ retried \d+ times|transport error|tcp connect error|connection refused|Connection reset|UNAVAILABLE/i.test(
    text,
  );
}

/**
 * From now on the SDK's connection warnings of this process are part of `temporal`'s outage: one
 * warning when it starts, one line when it ends (src/stack/outages.ts), each repeat counted
 * there. While Temporal is thought up, such a warning makes it checked at once; the warning is
 * logged (folded with its repeats) only when Temporal does answer that check. Returns the undo.
 */
export function routeTemporalConnectionWarnings(temporal: TemporalWatch): () => void {
  watch = temporal;
  return () => {
    if (watch === temporal) watch = null;
  };
}

/**
 * Routes the Temporal runtime's warnings and errors, the SDK's Rust core's included, to the
 * logger (once per process), repeats folded. With a metrics buffer the SDK's metrics go to it
 * (src/metrics/temporal.ts drains it into /metrics); without one they are off, as the SDK has
 * them by default: a buffer no one drains would fill and log an error for every update it drops.
 */
export function installTemporalLogging(logger: Logger, opts: { metricsBuffer?: MetricsBuffer } = {}): void {
  if (installed) return;
  installed = true;
  const log = logger.child({ component: 'temporal' });
  const folder = foldingLogger(log);
  const note = (level: 'warn' | 'error', message: string, meta: Record<string, unknown> = {}): void => {
    const entry: LogEntry = { level, message, meta };
    const temporal = watch;
    if (!temporal || !isTemporalConnectionWarning(message, meta)) {
      folder.note(entry);
      return;
    }
    if (temporal.outage.down) {
      temporal.outage.failed(message);
      return;
    }
    void temporal.checkNow().then((answered) => {
      if (answered) folder.note(entry);
      else temporal.outage.failed(message);
    });
  };
  Runtime.install({
    telemetryOptions: {
      ...(opts.metricsBuffer ? { metrics: { buffer: opts.metricsBuffer } } : {}),
      // The core's own log (its connection retries above all) comes here instead of stderr.
      logging: { filter: makeTelemetryFilterString({ core: 'WARN', other: 'WARN' }), forward: {} },
    },
    logger: {
      log: (level, message, meta) => {
        if (level === 'WARN') note('warn', message, meta);
        else if (level === 'ERROR') note('error', message, meta);
      },
      trace: () => {},
      debug: () => {},
      info: () => {},
      warn: (message, meta) => note('warn', message, meta),
      error: (message, meta) => note('error', message, meta),
    },
  });
}
