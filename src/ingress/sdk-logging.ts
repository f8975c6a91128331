// matrix-js-sdk's global logger (loglevel): some of its parts (MatrixRTC sessions, the send
// queue) log through child loggers that are always made at debug level, whatever the root's
// level is. Children take the root's method factory when they are made, so a factory that
// drops the chatty methods quiets them all; warnings and errors stay, except the few that are
// routine for a bot (below), which go to the gateway's log at debug level instead.
import { logger as sdkGlobalLogger, type Logger as SdkLogger } from 'matrix-js-sdk/lib/logger.js';
import type { Logger } from 'pino';

type LogMethod = (...args: unknown[]) => void;
type MethodFactory = (method: string, level: unknown, name: unknown) => LogMethod;
interface LoglevelLogger {
  methodFactory: MethodFactory;
  setLevel(level: string, persist?: boolean): void;
}

/**
 * Warnings the SDK gives in a bot's normal work. "Couldn't find timeline for thread ID" comes
 * once for every message in a thread whose root the client has not loaded (the gateway reads
 * threads from the sync, never paginates their timelines): in a busy room it was most of the
 * gateway's log, and it never needs anyone's attention.
 */
export const ROUTINE_SDK_WARNINGS: readonly RegExp[] = [/^Couldn't find timeline for thread ID /];

/** Whether a warning's arguments are one of the routine ones. */
export function isRoutineSdkWarning(args: readonly unknown[]): boolean {
  const first = args[0];
  return typeof first === 'string' && ROUTINE_SDK_WARNINGS.some((r) => r.test(first));
}

let routineSink: ((message: string) => void) | undefined;

/** Where routine warnings go (the gateway's logger at debug level); dropped while none is set. */
export function routeRoutineSdkWarnings(sink: ((message: string) => void) | undefined): void {
  routineSink = sink;
}

/** A warn method that hands routine warnings to the sink and passes any other on. */
export function foldingRoutineWarnings(warn: LogMethod): LogMethod {
  return function (this: unknown, ...args: unknown[]): void {
    if (isRoutineSdkWarning(args)) {
      routineSink?.(args.map((a) => (a instanceof Error ? a.message : String(a))).join(' '));
      return;
    }
    warn.apply(this, args);
  };
}

let quieted = false;
export function quietMatrixSdkLogging(keep: ReadonlyArray<'warn' | 'error'> = ['warn', 'error']): void {
  if (quieted) return;
  quieted = true;
  const root = sdkGlobalLogger as unknown as LoglevelLogger;
  const original = root.methodFactory;
  root.methodFactory = (method, level, name) => {
    if (!(keep as readonly string[]).includes(method)) return () => {};
    const made = original(method, level, name);
    return method === 'warn' ? foldingRoutineWarnings(made) : made;
  };
  root.setLevel(keep.includes('warn') ? 'warn' : 'error', false);
}

/** matrix-js-sdk's logger, through pino; the SDK's warnings are routine, so they go to debug. */
export function sdkLogger(log: Logger): SdkLogger {
  const text = (msg: unknown[]) => msg.map((m) => (m instanceof Error ? m.message : String(m))).join(' ');
  const trace = (...msg: unknown[]): void => {
    if (log.isLevelEnabled('trace')) log.trace({ sdk: true }, text(msg));
  };
  const logger: SdkLogger = {
    trace: () => {},
    debug: trace,
    info: trace,
    warn: (...msg) => log.debug({ sdk: true }, text(msg)),
    error: (...msg) => log.warn({ sdk: true }, text(msg)),
    getChild: () => logger,
  };
  return logger;
}
