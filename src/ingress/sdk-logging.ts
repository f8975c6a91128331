// matrix-js-sdk's global logger (loglevel): some of its parts (MatrixRTC sessions, the send
// queue) log through child loggers that are always made at debug level, whatever the root's
// level is. Children take the root's method factory when they are made, so a factory that
// drops the chatty methods quiets them all; warnings and errors stay.
import { logger as sdkGlobalLogger } from 'matrix-js-sdk/lib/logger.js';

type MethodFactory = (method: string, level: unknown, name: unknown) => (...args: unknown[]) => void;
interface LoglevelLogger {
  methodFactory: MethodFactory;
  setLevel(level: string, persist?: boolean): void;
}

let quieted = false;
export function quietMatrixSdkLogging(keep: ReadonlyArray<'warn' | 'error'> = ['warn', 'error']): void {
  if (quieted) return;
  quieted = true;
  const root = sdkGlobalLogger as unknown as LoglevelLogger;
  const original = root.methodFactory;
  root.methodFactory = (method, level, name) =>
    (keep as readonly string[]).includes(method) ? original(method, level, name) : () => {};
  root.setLevel(keep.includes('warn') ? 'warn' : 'error', false);
}
