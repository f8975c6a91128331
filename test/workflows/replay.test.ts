// Determinism guard: the recorded histories of real jobs (test/fixtures/histories, written by
// the job tests with CLAWGATE_RECORD_HISTORIES=1) are replayed against the current workflow
// code. A change that would make a running job's history diverge fails here.
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { test } from 'node:test';
import { historyFromJSON } from '@temporalio/common/lib/proto-utils.js';
import { Worker } from '@temporalio/worker';
import { FAILURE_CONVERTER_PATH } from '../../src/temporal/codec.ts';

const dir = fileURLToPath(new URL('../fixtures/histories/', import.meta.url));
const files = readdirSync(dir).filter((f) => f.endsWith('.json'));

test('every recorded job history replays against the current workflow code', async () => {
  assert.ok(files.length >= 5, `expected recorded histories in ${dir}, found ${files.length}`);
  const histories = files.map((f) => ({
    workflowId: f.replace(/\.json$/, ''),
    history: historyFromJSON(JSON.parse(readFileSync(`${dir}${f}`, 'utf8'))),
  }));
  const results = Worker.runReplayHistories(
    {
      workflowsPath: fileURLToPath(new URL('../../src/workflows/index.ts', import.meta.url)),
      // With the worker's failure converter: histories with failures in clear (recorded before
      // failures were encoded) and with encoded ones both replay.
      dataConverter: { failureConverterPath: FAILURE_CONVERTER_PATH },
    },
    histories,
  );
  const failures: string[] = [];
  let replayed = 0;
  for await (const result of results) {
    replayed += 1;
    if (result.error) failures.push(`${result.workflowId}: ${result.error.message}`);
  }
  assert.equal(replayed, files.length);
  assert.deepEqual(failures, []);
});
