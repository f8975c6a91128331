// write_pr against a workspace a sandboxed step could have written: git's own paths are refused
// in every spelling, nothing is written to the work tree (so nothing lands in .git through a
// symlink), and the push goes from the worker's own repository, so configuration and hooks
// planted in the workspace (core.fsmonitor, core.sshCommand, url.*.pushInsteadOf, hooks made
// executable by exec, a .git file pointing elsewhere) never run on the host.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { runTool } from '../../src/tools/runner.ts';
import type { ToolContext } from '../../src/tools/types.ts';
import { examplePolicy, toolContext } from './tool-harness.ts';

const rwPolicy = examplePolicy((p) => {
  p.execution.sandbox.workspace_access = 'rw';
  p.execution.tools.allow.push('exec');
  p.execution.tools.deny = p.execution.tools.deny.filter((t: string) => t !== 'exec');
});

const git = (dir: string, ...args: string[]) =>
  execFileSync('git', ['-C', dir, '-c', 'user.name=t', '-c', 'user.email=t@t', ...args], {
    encoding: 'utf8',
  }).trim();

/** A workspace cloned from a bare remote with one commit, as a job's checkout would be. */
function repoPair(): { workspace: string; remote: string; pushRepo: string; host: string } {
  const host = mkdtempSync(join(tmpdir(), 'clawgate-write-pr-'));
  const remote = join(host, 'remote.git');
  const workspace = join(host, 'workspace');
  execFileSync('git', ['init', '-q', '--bare', '-b', 'main', remote]);
  execFileSync('git', ['init', '-q', '-b', 'main', workspace]);
  writeFileSync(join(workspace, 'README.md'), 'hello\n');
  git(workspace, 'add', '.');
  git(workspace, 'commit', '-qm', 'init');
  git(workspace, 'push', '-q', remote, 'main');
  return { workspace, remote, pushRepo: join(host, 'push.git'), host };
}

async function context(workspace: string, extra: Partial<ToolContext> = {}): Promise<ToolContext> {
  return { ...(await toolContext({ policy: rwPolicy, workspace, tools: ['write_pr', 'exec'] })), ...extra };
}

const writePr = (
  ctx: ToolContext,
  files: Array<{ path: string; content: string }>,
  branch = 'clawgate/change',
) => runTool({ tool: 'write_pr', args: { branch, message: 'A change', files } }, ctx);

test('write_pr commits without touching the work tree, and the branch pushed is the commit shown', async () => {
  const { workspace, remote, pushRepo } = repoPair();
  const ctx = await context(workspace, { prRemote: remote, pushRepo });
  const content = 'a note; $(rm -rf /)\n'.repeat(10_000); // 200 KB: more than one environment variable holds
  const { output, record } = await writePr(ctx, [
    { path: 'docs/NOTE.md', content },
    { path: 'weird "name" \\ with ünïcode.txt'.replace('\\', '-'), content: 'x' },
  ]);
  assert.equal(record.exit_status, 0, output ?? '');
  assert.match(output ?? '', /Subject: \[PATCH\] A change/);
  assert.match(output ?? '', /pushed clawgate\/change \(([0-9a-f]{40})\) to /);
  const pushed = /pushed clawgate\/change \(([0-9a-f]{40})\)/.exec(output ?? '')?.[1];
  // The work tree and its branch are as they were; the new branch holds exactly the files.
  assert.equal(git(workspace, 'branch', '--show-current'), 'main');
  assert.equal(existsSync(join(workspace, 'docs')), false, 'nothing written to the work tree');
  assert.equal(git(workspace, 'status', '--porcelain'), '');
  assert.equal(git(workspace, 'show', 'clawgate/change:docs/NOTE.md') + '\n', content);
  // The worker's own commit is the same object as the one made in the sandbox.
  assert.equal(git(remote, 'rev-parse', 'clawgate/change'), pushed);
  assert.equal(git(workspace, 'rev-parse', 'clawgate/change'), pushed);
  assert.equal(git(remote, 'rev-parse', 'clawgate/change~1'), git(workspace, 'rev-parse', 'main'));

  // A branch that exists already is not overwritten.
  const again = await writePr(ctx, [{ path: 'b.txt', content: 'b' }]);
  assert.notEqual(again.record.exit_status, 0);
  // A read-only policy gets no commit.
  const ro = await toolContext({ workspace });
  const refused = await writePr(ro, [{ path: 'c.txt', content: 'c' }], 'clawgate/ro');
  assert.notEqual(refused.record.exit_status, 0, 'a read-only workspace cannot be committed to');
});

test("write_pr refuses git's own paths in every spelling a file system reads as .git, and writes nothing", async () => {
  const { workspace } = repoPair();
  const ctx = await context(workspace);
  const configBefore = readFileSync(join(workspace, '.git/config'), 'utf8');
  const hooksBefore = readdirSync(join(workspace, '.git/hooks')).sort();
  const paths = [
    '.git/config',
    '.git/hooks/post-commit',
    '.GIT/hooks/pre-push',
    '.Git/config',
    'sub/.git',
    'sub/.git/config',
    '.git',
    '.git./config',
    '.git ./config',
    '.git::$INDEX_ALLOCATION/config',
    'git~1/config',
    'GIT~2/config',
    '.g\u200cit/config',
    '.git\ufeff/hooks/post-commit',
    '.git\\hooks\\post-commit',
    'a//b',
    './a',
    'a/./b',
    'a/',
    'a\nb',
    'a\u0007b',
    '../escape',
    '/etc/passwd',
  ];
  for (const path of paths) {
    const { record } = await writePr(ctx, [{ path, content: '#!/bin/sh\ntouch /tmp/pwned\n' }]);
    assert.equal(record.denial?.code, 'TOOL_ARGUMENTS_INVALID', JSON.stringify(path));
  }
  // Neighbours that are ordinary files are written.
  const ok = await writePr(ctx, [
    { path: '.gitignore', content: 'x\n' },
    { path: '.github/workflows/ci.yml', content: 'x\n' },
    { path: 'git/notes', content: 'x\n' },
  ]);
  assert.equal(ok.record.exit_status, 0, ok.output ?? '');
  assert.equal(readFileSync(join(workspace, '.git/config'), 'utf8'), configBefore);
  assert.deepEqual(readdirSync(join(workspace, '.git/hooks')).sort(), hooksBefore);
  const dup = await writePr(ctx, [
    { path: 'a', content: '1' },
    { path: 'a', content: '2' },
  ]);
  assert.equal(dup.record.denial?.code, 'TOOL_ARGUMENTS_INVALID');
  const nul = await writePr(ctx, [{ path: 'a', content: 'x\0y' }]);
  assert.match(nul.record.denial?.reason ?? '', /NUL/);
});

test('a work-tree folder that is a symlink into .git gets nothing through it', async () => {
  const { workspace } = repoPair();
  const ctx = await context(workspace);
  symlinkSync('.git', join(workspace, 'docs'));
  const { record, output } = await writePr(ctx, [{ path: 'docs/hooks/post-commit', content: '#!/bin/sh\n' }]);
  void output;
  void record; // git may refuse the path beyond a symlink or record it as a file of the branch
  assert.equal(existsSync(join(workspace, '.git/hooks/post-commit')), false);
});

test('configuration and hooks a step planted in the workspace never run on the host, and the push goes where configured', async () => {
  const { workspace, remote, pushRepo, host } = repoPair();
  const marks = join(host, 'marks');
  mkdirSync(marks);
  const decoy = join(host, 'decoy.git');
  execFileSync('git', ['init', '-q', '--bare', decoy]);
  // The plant, by a sandboxed step: every hook, and config that runs commands or redirects pushes.
  const hook = (name: string) => `#!/bin/sh\ntouch ${marks}/${name}\n`;
  const hooks = [
    'pre-commit',
    'post-commit',
    'pre-push',
    'reference-transaction',
    'post-checkout',
    'pre-auto-gc',
  ];
  const script = [
    'set -e',
    ...hooks.map(
      (h) =>
        `printf '%s' "$(printf '${hook(h).replace(/\n/g, '\\n')}')" > .git/hooks/${h}; chmod +x .git/hooks/${h}`,
    ),
    `git config core.fsmonitor 'touch ${marks}/fsmonitor; false'`,
    `git config core.sshCommand 'touch ${marks}/ssh'`,
    `git config core.hooksPath .git/hooks`,
    `git config url.${decoy}.pushInsteadOf ${remote}`,
    `git config url.${decoy}.insteadOf ${remote}`,
    `git config core.gitProxy 'touch ${marks}/proxy'`,
    `git config credential.helper '!touch ${marks}/credential'`,
    `git config remote.origin.url ${decoy}`,
  ].join('\n');
  const ctx = await context(workspace, { prRemote: remote, pushRepo });
  const plant = await runTool({ tool: 'exec', args: { argv: ['sh', '-c', script] } }, ctx);
  assert.equal(plant.record.exit_status, 0, plant.output ?? '');
  assert.match(readFileSync(join(workspace, '.git/config'), 'utf8'), /fsmonitor/);

  const { record, output } = await writePr(ctx, [{ path: 'fix.txt', content: 'fixed\n' }], 'clawgate/fix');
  assert.equal(record.exit_status, 0, output ?? '');
  assert.match(output ?? '', /pushed clawgate\/fix/);
  assert.deepEqual(readdirSync(marks), [], 'no planted hook or command ran, on the host or in the sandbox');
  assert.match(git(remote, 'branch', '--list'), /clawgate\/fix/);
  assert.equal(git(decoy, 'branch', '--list'), '', 'the planted url rewrite sent nothing elsewhere');
  // The worker's repository has none of the workspace's configuration.
  assert.doesNotMatch(
    readFileSync(join(pushRepo, 'config'), 'utf8'),
    /fsmonitor|sshCommand|insteadOf|hooksPath/,
  );
});

test('a .git file or symlink pointing at another repository of the host gets nothing written there', async () => {
  const { workspace: victim } = repoPair();
  const before = git(victim, 'for-each-ref');
  for (const kind of ['gitfile', 'symlink']) {
    const host = mkdtempSync(join(tmpdir(), 'clawgate-write-pr-'));
    const workspace = join(host, 'workspace');
    mkdirSync(workspace);
    if (kind === 'gitfile') writeFileSync(join(workspace, '.git'), `gitdir: ${join(victim, '.git')}\n`);
    else symlinkSync(join(victim, '.git'), join(workspace, '.git'));
    const ctx = await context(workspace, {
      prRemote: join(host, 'remote.git'),
      pushRepo: join(host, 'push.git'),
    });
    const { record, output } = await writePr(ctx, [{ path: 'x.txt', content: 'x' }], `clawgate/${kind}`);
    assert.notEqual(record.exit_status, 0, `${kind}: ${output ?? ''}`);
    assert.equal(git(victim, 'for-each-ref'), before, `${kind}: the other repository is unchanged`);
    assert.equal(existsSync(join(host, 'push.git')), false, `${kind}: nothing was pushed`);
  }
});

test('history made in the workspace is not pushed: the base must be a commit the remote has', async () => {
  const { workspace, remote, pushRepo } = repoPair();
  writeFileSync(join(workspace, 'local.txt'), 'unreviewed\n');
  git(workspace, 'add', '.');
  git(workspace, 'commit', '-qm', 'a local commit');
  const ctx = await context(workspace, { prRemote: remote, pushRepo });
  const { record, output } = await writePr(ctx, [{ path: 'x.txt', content: 'x' }]);
  assert.equal(record.exit_status, 1);
  assert.match(
    output ?? '',
    /push to .* failed: the workspace's commit [0-9a-f]{12} is not on .*history made in the workspace is not pushed/,
  );
  assert.equal(git(remote, 'branch', '--list', 'clawgate/change'), '');
});
