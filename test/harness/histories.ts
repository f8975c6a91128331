// With CLAWGATE_RECORD_HISTORIES=1, tests keep a finished job's event history under
// test/fixtures/histories/ for the replay test, which replays them against the current code on
// every run, so a change that breaks determinism fails the build.
import { execFile } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { toolPaths } from '../../src/devstack/tools.ts';
import { testServers } from './servers.ts';

export async function recordHistory(handle: { workflowId: string }, name: string): Promise<void> {
  if (process.env['CLAWGATE_RECORD_HISTORIES'] !== '1') return;
  const dir = fileURLToPath(new URL('../fixtures/histories/', import.meta.url));
  mkdirSync(dir, { recursive: true });
  // The Temporal CLI writes the history JSON that Web UI exports and historyFromJSON reads.
  const { stdout } = await promisify(execFile)(toolPaths().temporal, [
    'workflow',
    'show',
    '--address',
    testServers().temporal.address,
    '--namespace',
    testServers().temporal.namespace,
    '--workflow-id',
    handle.workflowId,
    '--output',
    'json',
  ]);
  // Worker identities name the host they ran on; they play no part in replay.
  writeFileSync(
    join(dir, `${name}.json`),
    stdout.replace(/"identity": *"[^"]*"/g, '"identity": "clawgate-test-worker"'),
  );
}
