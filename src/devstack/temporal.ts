// The Temporal dev server (the real `temporal server start-dev` of the Temporal CLI) on loopback,
// with clawgate's search attributes registered. Used by the test harness (in-memory database,
// headless) and by `npm start` (file database so jobs survive a restart, Web UI on).
import { join } from 'node:path';
import { Connection } from '@temporalio/client';
import { devServerSearchAttributeArgs } from '../temporal/search-attributes.ts';
import { freeLoopbackPort, waitUntil } from './net.ts';
import { startServerProcess, type ServerProcess } from './process.ts';

export interface TemporalDevServerOptions {
  /** Path of the Temporal CLI binary. */
  cliPath: string;
  /** Folder for the log file (and the database file, when `dbFile` is relative). */
  dir: string;
  /** SQLite file for a durable server; in-memory when absent. */
  dbFile?: string;
  /** gRPC port; a free one when absent. */
  port?: number;
  /** Web UI port; the UI is off when absent. */
  uiPort?: number;
  namespace?: string;
  /** A remote codec server the Web UI decodes payloads with (clawgate's codec server). */
  uiCodecEndpoint?: string;
  startTimeoutMs?: number;
  /** The server's output (default: temporal.log in `dir`). */
  logFile?: string;
  /** A process group of its own (see startServerProcess). */
  detached?: boolean;
  /** SIGTERM to it when this process is gone, kill -9 included (see startServerProcess). */
  dieWithParent?: boolean;
}

export interface TemporalDevServer {
  /** host:port of the frontend gRPC service. */
  readonly address: string;
  readonly namespace: string;
  /** Web UI base URL, when the UI is on. */
  readonly uiUrl: string | undefined;
  readonly process: ServerProcess;
  stop(): Promise<void>;
}

export async function startTemporalDevServer(opts: TemporalDevServerOptions): Promise<TemporalDevServer> {
  const port = opts.port ?? (await freeLoopbackPort());
  const namespace = opts.namespace ?? 'default';
  const args = [
    'server',
    'start-dev',
    '--ip',
    '127.0.0.1',
    '--port',
    String(port),
    '--namespace',
    namespace,
    '--log-level',
    'warn',
    ...devServerSearchAttributeArgs(),
    ...(opts.uiPort === undefined ? ['--headless'] : ['--ui-port', String(opts.uiPort)]),
    ...(opts.uiPort !== undefined && opts.uiCodecEndpoint
      ? ['--ui-codec-endpoint', opts.uiCodecEndpoint]
      : []),
    ...(opts.dbFile === undefined ? [] : ['--db-filename', opts.dbFile]),
  ];
  const serverProcess = startServerProcess({
    name: 'temporal',
    command: opts.cliPath,
    args,
    cwd: opts.dir,
    logFile: opts.logFile ?? join(opts.dir, 'temporal.log'),
    ...(opts.detached ? { detached: true } : {}),
    ...(opts.dieWithParent ? { dieWithParent: true } : {}),
  });
  const address = `127.0.0.1:${port}`;
  let exitedEarly = false;
  void serverProcess.exited.then(() => {
    exitedEarly = true;
  });
  try {
    await waitUntil(
      async () => {
        const connection = await Connection.connect({ address, connectTimeout: 1_000 });
        try {
          await connection.workflowService.describeNamespace({ namespace });
          return true;
        } finally {
          await connection.close();
        }
      },
      {
        timeoutMs: opts.startTimeoutMs ?? 60_000,
        intervalMs: 200,
        message: `Temporal dev server on ${address} (log: ${serverProcess.logFile})`,
        failIf: () => (exitedEarly ? 'the server process exited' : undefined),
      },
    );
  } catch (error) {
    await serverProcess.stop();
    throw error;
  }
  return {
    address,
    namespace,
    uiUrl: opts.uiPort === undefined ? undefined : `http://127.0.0.1:${opts.uiPort}`,
    process: serverProcess,
    stop: () => serverProcess.stop(),
  };
}
