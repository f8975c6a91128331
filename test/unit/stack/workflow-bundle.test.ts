// The worker's workflow bundle is made once per set of sources and taken from the state folder on
// the worker's next start; one made from other sources is never taken, and is removed.
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { cachedWorkflowBundle, workflowBundleKey } from '../../../src/stack/workflow-bundle.ts';

test('the bundle is made once, kept whole, and taken on the next start; older ones go', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'clawgate-bundle-'));
  try {
    const key = workflowBundleKey();
    assert.match(key, /^[0-9a-f]{64}$/);
    assert.equal(workflowBundleKey(), key, 'the same sources give the same key');
    const stale = `workflow-bundle-${'0'.repeat(64)}.js`;
    writeFileSync(join(dir, stale), 'module.exports = "from other sources";');
    // A partial one an hour old was left by a worker killed while it wrote; a fresh one may be
    // another worker's, writing now.
    const old = join(dir, `workflow-bundle-${key}.js.123.partial`);
    writeFileSync(old, 'half');
    utimesSync(old, new Date(Date.now() - 3_600_000), new Date(Date.now() - 3_600_000));
    writeFileSync(join(dir, `workflow-bundle-${key}.js.456.partial`), 'being written');
    writeFileSync(join(dir, 'unrelated.txt'), 'kept');

    const first = await cachedWorkflowBundle(dir);
    assert.equal(first.cached, false);
    assert.match(first.code, /jobWorkflow/, 'the bundle holds the job workflow');
    assert.deepEqual(readdirSync(dir).sort(), [
      'unrelated.txt',
      `workflow-bundle-${key}.js`,
      `workflow-bundle-${key}.js.456.partial`,
    ]);

    const second = await cachedWorkflowBundle(dir);
    assert.equal(second.cached, true);
    assert.equal(second.code, first.code);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
