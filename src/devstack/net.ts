import { createServer } from 'node:net';

/** A TCP port that was free on 127.0.0.1 a moment ago (the OS picks it). */
export async function freeLoopbackPort(): Promise<number> {
  return await new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => {
        if (address && typeof address === 'object') resolve(address.port);
        else reject(new Error('could not read the port the OS picked'));
      });
    });
  });
}

/** Polls `check` until it resolves true or the deadline passes; then throws `message`. */
export async function waitUntil(
  check: () => Promise<boolean>,
  {
    timeoutMs,
    intervalMs = 100,
    message,
    failIf,
  }: {
    timeoutMs: number;
    intervalMs?: number;
    message: string;
    /** Checked before each attempt; a returned text ends the wait at once with that reason. */
    failIf?: () => string | undefined;
  },
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  while (Date.now() < deadline) {
    const fatal = failIf?.();
    if (fatal !== undefined) throw new Error(`${message}: ${fatal}`);
    try {
      if (await check()) return;
    } catch (error) {
      lastError = error;
    }
    await new Promise((r) => setTimeout(r, intervalMs));
  }
  const detail = lastError instanceof Error ? ` (last error: ${lastError.message})` : '';
  throw new Error(`${message}: not ready after ${timeoutMs} ms${detail}`);
}
