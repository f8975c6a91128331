import { readFileSync } from 'node:fs';
import { createServer } from 'node:net';

let cachedRange: [number, number] | null | undefined;

/** The kernel's range for ports it picks itself (listeners on port 0, outgoing connections). */
function ephemeralRange(): [number, number] | null {
  if (cachedRange === undefined) cachedRange = readEphemeralRange();
  return cachedRange;
}

function readEphemeralRange(): [number, number] | null {
  try {
    const [low, high] = readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8')
      .trim()
      .split(/\s+/)
      .map(Number);
    return low !== undefined && high !== undefined && low > 0 && high >= low ? [low, high] : null;
  } catch {
    return null;
  }
}

/** Binds and lets go of a port on 127.0.0.1 (0: the OS picks); the port, or null if taken. */
function tryPort(port: number): Promise<number | null> {
  return new Promise((resolve) => {
    const server = createServer();
    server.unref();
    server.once('error', () => resolve(null));
    server.listen(port, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => resolve(address && typeof address === 'object' ? address.port : null));
    });
  });
}

/** Below the kernel's range: ports no listener on port 0 and no outgoing connection is given. */
const FLOOR = 10_000;
let nextPort = -1;

/**
 * A TCP port that was free on 127.0.0.1 a moment ago, for a server started next. Where the
 * kernel says which ports it hands out itself, the port comes from below that range: between this
 * answer and the server's bind, a listener on port 0 or an outgoing connection elsewhere (tests
 * run side by side) could otherwise be given the same port. Processes start at places spread by
 * their pid and go up from there, so that two of them rarely try the same ports.
 */
export async function freeLoopbackPort(): Promise<number> {
  const range = ephemeralRange();
  if (range && range[0] > FLOOR + 1000) {
    const span = range[0] - FLOOR;
    if (nextPort < 0) nextPort = FLOOR + ((process.pid * 97) % span);
    for (let i = 0; i < 500; i++) {
      const port = FLOOR + ((nextPort - FLOOR + i) % span);
      if ((await tryPort(port)) !== null) {
        nextPort = port + 1;
        return port;
      }
    }
  }
  const port = await tryPort(0);
  if (port === null) throw new Error('could not find a free port on 127.0.0.1');
  return port;
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
