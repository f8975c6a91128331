// With CLAWGATE_RECORD_HISTORIES=1, tests keep a finished job's event history under
// test/fixtures/histories/ for the replay test, which replays them against the current code on
// every run, so a change that breaks determinism fails the build.
import { writeFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Client, Connection } from '@temporalio/client';
import { defaultPayloadConverter, type Payload } from '@temporalio/common';
import { historyToJSON } from '@temporalio/common/lib/proto-utils.js';
import { decodeHistory } from '../../src/temporal/codec.ts';
import { testServers } from './servers.ts';
import { testPayloadCodec } from './temporal.ts';

/**
 * Removes, in place, the stack trace of every failure of a decoded history, in clear
 * (`stackTrace`) or encoded (`encodedAttributes`): it names the paths of the machine the job ran
 * on, and plays no part in replay.
 */
function withoutStackTraces(node: unknown): void {
  if (typeof node !== 'object' || node === null || node instanceof Uint8Array) return;
  const failure = node as { stackTrace?: unknown; encodedAttributes?: Payload | null };
  if (typeof failure.stackTrace === 'string') failure.stackTrace = '';
  if (failure.encodedAttributes) {
    const attributes = defaultPayloadConverter.fromPayload<Record<string, unknown>>(
      failure.encodedAttributes,
    );
    failure.encodedAttributes = defaultPayloadConverter.toPayload({ ...attributes, stack_trace: '' });
  }
  for (const value of Object.values(node)) withoutStackTraces(value);
}

export async function recordHistory(handle: { workflowId: string }, name: string): Promise<void> {
  if (process.env['CLAWGATE_RECORD_HISTORIES'] !== '1') return;
  const dir = fileURLToPath(new URL('../fixtures/histories/', import.meta.url));
  mkdirSync(dir, { recursive: true });
  const { temporal } = testServers();
  const connection = await Connection.connect({ address: temporal.address });
  try {
    const client = new Client({ connection, namespace: temporal.namespace });
    // Saved decrypted: the run's payload keyring is gone after the run, and the replay test
    // must read the history on every later run (a plain history replays as the Web UI exports it).
    const history = await decodeHistory(
      await client.workflow.getHandle(handle.workflowId).fetchHistory(),
      testPayloadCodec(),
    );
    withoutStackTraces(history);
    // Worker identities name the host they ran on; they play no part in replay.
    writeFileSync(
      join(dir, `${name}.json`),
      historyToJSON(history).replace(/"identity": *"[^"]*"/g, '"identity": "clawgate-test-worker"'),
    );
  } finally {
    await connection.close();
  }
}
