// The parts `clawgate start` runs as processes, for its supervisor (src/stack/supervisor.ts): the
// Temporal dev server and Synapse (their own readiness checks), and `clawgate proxy|worker|
// gateway|demo-upstream` (their health endpoints). The probes here are also what `clawgate
// status` asks.
import { fileURLToPath } from 'node:url';
import { Connection } from '@temporalio/client';
import { startSynapse, type SynapseOptions, type SynapseServer } from '../devstack/synapse.ts';
import { startTemporalDevServer, type TemporalDevServerOptions } from '../devstack/temporal.ts';
import { startServerProcess, type ServerProcess } from '../devstack/process.ts';
import type { Health, Launched, PartSpec } from './supervisor.ts';

/** What a health check saw: the state, and what the endpoint said (or why it did not answer). */
export interface Probe {
  state: Health;
  /** The HTTP status, when it answered. */
  status?: number;
  /** The answer's body, parsed when it is JSON. */
  body?: unknown;
  /** Why it did not answer, or the error it gave. */
  error?: string;
}

/** Why a check got no answer, in a few words: ECONNREFUSED, no answer in 5 s, a gRPC status. */
function errorText(error: unknown, timeoutMs: number): string {
  const e = error as Error & { cause?: { code?: unknown; message?: string; details?: string } };
  if (e.name === 'TimeoutError') return `no answer in ${timeoutMs / 1000} s`;
  const cause = e.cause;
  if (typeof cause?.code === 'string') return cause.code;
  return (cause?.details ?? cause?.message ?? e.message).split('\n')[0] ?? 'no answer';
}

/** How long a check waits for an answer (a loaded machine may take seconds). */
const PROBE_TIMEOUT_MS = 5_000;

/** GET `url`: 200 is healthy, another status is answering (the body says why), no answer is unreachable. */
export async function probeHttp(url: string, timeoutMs = PROBE_TIMEOUT_MS): Promise<Probe> {
  try {
    const res = await fetch(url, { signal: AbortSignal.timeout(timeoutMs) });
    const text = await res.text();
    let body: unknown = text;
    try {
      body = JSON.parse(text);
    } catch {
      // not JSON: the text is the body
    }
    return { state: res.status === 200 ? 'healthy' : 'answering', status: res.status, body };
  } catch (error) {
    return { state: 'unreachable', error: errorText(error, timeoutMs) };
  }
}

/** Temporal's readiness: the namespace described. */
export async function probeTemporal(
  address: string,
  namespace: string,
  opts: { tls?: boolean; timeoutMs?: number } = {},
): Promise<Probe> {
  let connection: Connection | undefined;
  const timeoutMs = opts.timeoutMs ?? PROBE_TIMEOUT_MS;
  try {
    const open = await Connection.connect({
      address,
      connectTimeout: timeoutMs,
      ...(opts.tls ? { tls: {} } : {}),
    });
    connection = open;
    // With a deadline: a server that took the connection but hangs must not hold the check.
    await open.withDeadline(Date.now() + timeoutMs, () =>
      open.workflowService.describeNamespace({ namespace }),
    );
    return { state: 'healthy' };
  } catch (error) {
    return { state: 'unreachable', error: errorText(error, timeoutMs) };
  } finally {
    await connection?.close().catch(() => undefined);
  }
}

/** A dev-stack server process as the supervisor sees one start of a part. */
export function serverLaunched(proc: ServerProcess): Launched {
  return {
    pid: proc.pid,
    exited: proc.exited.then((how) =>
      typeof how === 'number' ? { code: how, signal: null } : { code: null, signal: how },
    ),
    signal: (sig) => {
      try {
        process.kill(proc.pid, sig);
      } catch {
        // gone already
      }
    },
  };
}

/**
 * The Temporal dev server, on the same port and database file at every start; like Synapse, it
 * gets SIGTERM when `clawgate start` is gone, even killed with kill -9 (clawgate's own parts see
 * that by themselves: src/cli/stack-commands.ts).
 */
export function temporalPart(opts: TemporalDevServerOptions & { port: number; logFile: string }): PartSpec {
  const address = `127.0.0.1:${opts.port}`;
  return {
    name: 'temporal',
    logFile: opts.logFile,
    launch: async () =>
      serverLaunched(
        (await startTemporalDevServer({ ...opts, detached: true, dieWithParent: true })).process,
      ),
    check: async () => (await probeTemporal(address, opts.namespace ?? 'default')).state,
  };
}

/** Synapse, on the same port and data folder at every start; `server` is the latest start's. */
export function synapsePart(
  opts: SynapseOptions & { port: number; logFile: string },
): PartSpec & { server: () => SynapseServer } {
  let latest: SynapseServer | undefined;
  return {
    name: 'synapse',
    logFile: opts.logFile,
    launch: async () => {
      latest = await startSynapse({ ...opts, detached: true, dieWithParent: true });
      return serverLaunched(latest.process);
    },
    check: async () => (await probeHttp(`http://127.0.0.1:${opts.port}/health`)).state,
    server: () => {
      if (!latest) throw new Error('synapse has not started');
      return latest;
    },
  };
}

/** The clawgate command: each part gets the memory settings bin/clawgate gives it when run by hand. */
const BIN = fileURLToPath(new URL('../../bin/clawgate', import.meta.url));

/**
 * `clawgate <command> [args]` as a child process (bin/clawgate, which execs the project's
 * Node.js: the pid is the part's), with the environment given; healthy when `healthUrl`
 * answers 200.
 */
export function clawgateCommandPart(opts: {
  name: string;
  command: string;
  args?: string[];
  env: NodeJS.ProcessEnv;
  logFile: string;
  healthUrl: string;
  startTimeoutMs?: number;
}): PartSpec {
  return {
    name: opts.name,
    logFile: opts.logFile,
    ...(opts.startTimeoutMs ? { startTimeoutMs: opts.startTimeoutMs } : {}),
    launch: () =>
      Promise.resolve(
        serverLaunched(
          startServerProcess({
            name: opts.name,
            command: BIN,
            args: [opts.command, ...(opts.args ?? [])],
            logFile: opts.logFile,
            env: opts.env,
            detached: true,
          }),
        ),
      ),
    check: async () => (await probeHttp(opts.healthUrl)).state,
  };
}
