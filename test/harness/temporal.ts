// Temporal for tests: a client and a worker connection to the run's dev server, a workflow
// bundle built once per test file, and a fresh Worker per test with a unique task queue. Every
// client and worker encrypts its payloads with the run's payload keyring, as clawgate's do.
import { Client, Connection } from '@temporalio/client';
import type { DataConverter } from '@temporalio/common';
import {
  bundleWorkflowCode,
  NativeConnection,
  Runtime,
  Worker,
  type WorkerOptions,
} from '@temporalio/worker';
import {
  dataConverterFor,
  FAILURE_CONVERTER_PATH,
  payloadCodecFor,
  type AesGcmPayloadCodec,
} from '../../src/temporal/codec.ts';
import { testServers, uniqueId } from './servers.ts';

/** The data converter of the run's clients and workers: the payload codec of its keyring. */
export function testDataConverter(): DataConverter {
  return dataConverterFor(testServers().payloadKeys);
}

/** The run's payload codec, for a test that reads a raw history (`decodeHistory`). */
export function testPayloadCodec(): AesGcmPayloadCodec {
  return payloadCodecFor(testServers().payloadKeys);
}

let runtimeInstalled = false;
/** The worker runtime logs every poll at info level; tests keep warnings and errors. */
function installQuietRuntime(): void {
  if (runtimeInstalled) return;
  runtimeInstalled = true;
  Runtime.install({
    logger: {
      log: (level, message, meta) => {
        if (level === 'WARN' || level === 'ERROR')
          console.error(`[temporal ${level}] ${message}`, meta ?? '');
      },
      trace: () => {},
      debug: () => {},
      info: () => {},
      warn: (message, meta) => console.error(`[temporal WARN] ${message}`, meta ?? ''),
      error: (message, meta) => console.error(`[temporal ERROR] ${message}`, meta ?? ''),
    },
  });
}

export interface TemporalTestContext {
  client: Client;
  workerConnection: NativeConnection;
  namespace: string;
  /** A Worker on a fresh task queue of its own; the caller runs it with `worker.runUntil(...)`. */
  createWorker(opts: Omit<WorkerOptions, 'connection' | 'namespace' | 'taskQueue'>): Promise<{
    worker: Worker;
    taskQueue: string;
  }>;
  close(): Promise<void>;
}

export async function connectTemporal(): Promise<TemporalTestContext> {
  installQuietRuntime();
  const { temporal } = testServers();
  const connection = await Connection.connect({ address: temporal.address });
  const workerConnection = await NativeConnection.connect({ address: temporal.address });
  const dataConverter = testDataConverter();
  const client = new Client({ connection, namespace: temporal.namespace, dataConverter });
  return {
    client,
    workerConnection,
    namespace: temporal.namespace,
    async createWorker(opts) {
      const taskQueue = uniqueId('tq');
      const worker = await Worker.create({
        dataConverter,
        ...opts,
        connection: workerConnection,
        namespace: temporal.namespace,
        taskQueue,
      });
      return { worker, taskQueue };
    },
    async close() {
      await connection.close();
      await workerConnection.close();
    },
  };
}

/**
 * Bundles workflow code once (webpack takes seconds); pass the result as `workflowBundle`. The
 * bundle encodes failures with clawgate's failure converter, as the worker's does.
 */
export async function bundleWorkflows(workflowsPath: string) {
  return await bundleWorkflowCode({
    workflowsPath,
    failureConverterPath: FAILURE_CONVERTER_PATH,
    logger: quietBundlerLogger,
  });
}

const quietBundlerLogger = {
  log: () => {},
  trace: () => {},
  debug: () => {},
  info: () => {},
  warn: (message: string) => console.error(`[bundler] ${message}`),
  error: (message: string) => console.error(`[bundler] ${message}`),
};
