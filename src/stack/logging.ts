// Structured logs (pino, JSON lines on stdout) for every clawgate process; secrets are
// redacted by key wherever they appear in a logged object. The Temporal worker runtime's own
// warnings and errors go through the same logger.
import { Runtime, type MetricsBuffer } from '@temporalio/worker';
import { pino, type DestinationStream, type Logger, type LoggerOptions } from 'pino';

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
/**
 * Routes the Temporal runtime's warnings and errors to the logger (once per process). With a
 * metrics buffer the SDK's metrics go to it (src/metrics/temporal.ts drains it into /metrics);
 * without one they are off, as the SDK has them by default: a buffer no one drains would fill
 * and log an error for every update it drops.
 */
export function installTemporalLogging(logger: Logger, opts: { metricsBuffer?: MetricsBuffer } = {}): void {
  if (installed) return;
  installed = true;
  const log = logger.child({ component: 'temporal' });
  Runtime.install({
    ...(opts.metricsBuffer ? { telemetryOptions: { metrics: { buffer: opts.metricsBuffer } } } : {}),
    logger: {
      log: (level, message, meta) => {
        if (level === 'WARN') log.warn(meta ?? {}, message);
        else if (level === 'ERROR') log.error(meta ?? {}, message);
      },
      trace: () => {},
      debug: () => {},
      info: () => {},
      warn: (message, meta) => log.warn(meta ?? {}, message),
      error: (message, meta) => log.error(meta ?? {}, message),
    },
  });
}
