// What an approval card shows of a call: a diff for write_pr, the command line for exec, the
// request for http, and the raw arguments (with why) when the tool would refuse them.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { previewCall } from '../../../src/agent/preview.ts';
import { parseWpc } from '../../../src/policy/wpc.ts';
import type { Sandbox } from '../../../src/sandbox/bubblewrap.ts';

const policy = parseWpc(
  JSON.parse(readFileSync(new URL('../../../examples/policy.json', import.meta.url), 'utf8')),
);
/** A sandbox that has one file in the workspace (unit test: the real one is tested in test/sandbox/). */
const files: Record<string, string> = { '/workspace/docs/a.md': '# A\nteh typo\n' };
const sandbox = {
  run: (cmd: { argv: string[] }) => {
    const content = files[cmd.argv.at(-1) ?? ''];
    return Promise.resolve({
      exitCode: content === undefined ? 1 : 0,
      signal: null,
      stdout: content ?? '',
      stderr: content === undefined ? 'No such file' : '',
      timedOut: false,
      outputTruncated: false,
    });
  },
  profile: () => 'fake',
} as unknown as Sandbox;

const preview = (tool: string, args: unknown) =>
  previewCall({ tool, args, raw: JSON.stringify(args), policy, sandbox, workspace: '/unused' });

test('write_pr: a unified diff of each file against the workspace, new files from /dev/null', async () => {
  const text = await preview('write_pr', {
    branch: 'fix',
    message: 'Fix the typo',
    files: [
      { path: 'docs/a.md', content: '# A\nthe typo\n' },
      { path: 'docs/new.md', content: 'new\n' },
    ],
  });
  assert.match(text, /^branch fix: Fix the typo$/m);
  assert.match(text, /^--- a\/docs\/a\.md\n\+\+\+ b\/docs\/a\.md/m);
  assert.match(text, /^-teh typo$/m);
  assert.match(text, /^\+the typo$/m);
  assert.match(text, /^--- \/dev\/null\n\+\+\+ b\/docs\/new\.md/m);
});

test('exec shows the command line quoted; http the request; refused arguments as sent, with why', async () => {
  assert.equal(
    (await preview('exec', { argv: ['sh', '-c', "echo 'hi' > x"], env: { A: 'b c' } })).split('\n')[0],
    `$ A='b c' sh -c 'echo '\\''hi'\\'' > x'`,
  );
  assert.equal(
    await preview('http', {
      method: 'POST',
      url: 'https://example.org/x',
      headers: { 'X-A': '1' },
      body: '{"a":1}',
    }),
    'POST https://example.org/x\nX-A: 1\n\n{"a":1}',
  );
  const bad = await preview('write_pr', {
    branch: 'x',
    message: 'm',
    files: [{ path: '.git/config', content: 'x' }],
  });
  assert.match(bad, /^\{"branch":"x".*\(the tool refuses these arguments: may not name a \.git folder/);
  assert.equal(await preview('nope', { a: 1 }), '{"a":1}');
});
