// Every verdict of a test run reaches the report. With --test-force-exit, Node's runner lost the
// last verdicts of busy test files (their reports were still queued in the pipe when the file's
// process exited) and printed a smaller count with no error. The test scripts preload a blocking
// stdout; this proves that, with it, a run of many fast files with large reports (one that loses
// verdicts without it) reports every test.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';

const ROOT = join(import.meta.dirname, '../../..');
const PRELOAD = './test/harness/blocking-stdout.ts';

test('the test scripts preload the blocking stdout wherever they force the exit', () => {
  const scripts = (
    JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { scripts: Record<string, string> }
  ).scripts;
  const forcing = Object.entries(scripts).filter(([, command]) => command.includes('--test-force-exit'));
  assert.ok(forcing.length >= 2, 'npm test and npm run test:unit force the exit');
  for (const [name, command] of forcing) {
    assert.ok(command.includes(`--import ${PRELOAD}`), `script ${name} loads ${PRELOAD}`);
  }
});

test('with the preload, a forced exit loses no verdict of 40 files of 50 tests', () => {
  const dir = mkdtempSync(join(tmpdir(), 'clawgate-force-exit-'));
  try {
    for (let file = 0; file < 40; file++) {
      const tests = Array.from(
        { length: 50 },
        (_, i) => `test(${JSON.stringify(`t${i} ${'x'.repeat(2000)}`)}, () => {});`,
      );
      writeFileSync(
        join(dir, `f${file}.test.mjs`),
        `import { test } from 'node:test';\n${tests.join('\n')}\n`,
      );
    }
    const run = spawnSync(
      process.execPath,
      [
        '--import',
        join(ROOT, PRELOAD),
        '--test',
        '--test-force-exit',
        '--test-concurrency=4',
        '--test-reporter=spec',
        join(dir, '*.test.mjs'),
      ],
      {
        encoding: 'utf8',
        maxBuffer: 64 * 1024 * 1024,
        // A run of its own, not a part of this one (the runner marks its children with this).
        env: Object.fromEntries(Object.entries(process.env).filter(([key]) => key !== 'NODE_TEST_CONTEXT')),
      },
    );
    assert.equal(run.status, 0, run.stderr.slice(0, 2000));
    const count = (what: string): number =>
      Number(new RegExp(`^ℹ ${what} (\\d+)$`, 'm').exec(run.stdout)?.[1]);
    assert.equal(count('tests'), 2000, 'tests reported');
    assert.equal(count('pass'), 2000, 'tests passed');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
