// The lint override for src/workflows/ is what keeps workflow code replayable; these tests
// prove it rejects Node built-ins, I/O packages, clocks, randomness and value imports of
// activities, and accepts the deterministic way of doing the same things.
import assert from 'node:assert/strict';
import { resolve } from 'node:path';
import { test } from 'node:test';
import { ESLint } from 'eslint';

const root = resolve(import.meta.dirname, '../../..');
const eslint = new ESLint({ cwd: root });
// An existing workflow file's path, so the typed-lint project includes it.
const workflowPath = resolve(root, 'src/workflows/index.ts');

async function ruleIdsFor(code: string): Promise<string[]> {
  const [result] = await eslint.lintText(code, { filePath: workflowPath });
  assert.ok(result);
  return result.messages.map((m) => m.ruleId ?? `fatal: ${m.message}`);
}

const cases: Array<[string, string, string]> = [
  [
    'a Node built-in',
    "import { readFileSync } from 'node:fs';\nexport const x = readFileSync;\n",
    '@typescript-eslint/no-restricted-imports',
  ],
  [
    'a bare built-in name',
    "import os from 'os';\nexport const x = os;\n",
    '@typescript-eslint/no-restricted-imports',
  ],
  [
    'an I/O package',
    "import { createClient } from 'matrix-js-sdk';\nexport const x = createClient;\n",
    '@typescript-eslint/no-restricted-imports',
  ],
  [
    'a value import of activities',
    "import * as a from '../activities/index.ts';\nexport const x = a;\n",
    '@typescript-eslint/no-restricted-imports',
  ],
  ['Date.now()', 'export const x = Date.now();\n', 'no-restricted-properties'],
  ['new Date()', 'export const x = new Date();\n', 'no-restricted-syntax'],
  ['Math.random()', 'export const x = Math.random();\n', 'no-restricted-properties'],
  ['setTimeout', 'setTimeout(() => {}, 1);\n', 'no-restricted-globals'],
  ['process', 'export const x = process.env;\n', 'no-restricted-globals'],
];

for (const [what, code, rule] of cases) {
  test(`workflow code may not use ${what}`, async () => {
    assert.ok((await ruleIdsFor(code)).includes(rule), `expected ${rule} for:\n${code}`);
  });
}

test('workflow code may import activities as types and use @temporalio/workflow', async () => {
  const code = [
    "import { proxyActivities, sleep } from '@temporalio/workflow';",
    "import type * as activities from '../activities/index.ts';",
    "const { noop } = proxyActivities<typeof activities>({ startToCloseTimeout: '1 minute' });",
    'export async function w(): Promise<void> {',
    "  await sleep('1 second');",
    '  await noop();',
    '}',
    '',
  ].join('\n');
  assert.deepEqual(await ruleIdsFor(code), []);
});
