// Job workspaces: one fresh folder per job, cloned from a source repository with the host's git
// and removed after. Real git throughout: two jobs never see each other's files, a retry reuses
// a completed folder and redoes an interrupted one, branches, tags and commit ids check out,
// bad sources and refs are refused with nothing left behind, removal never leaves the root, and
// no hook or configuration of the worker's environment reaches the clone.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  chmodSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { test } from 'node:test';
import { ClawgateError, ERROR_CODES } from '../../../src/errors.ts';
import {
  DEMO_FILES,
  DEMO_README,
  ensureDemoRepository,
  jobWorkspacePath,
  prepareJobWorkspace,
  removeJobWorkspace,
} from '../../../src/workspace/workspaces.ts';

function tempDir(label: string): string {
  return mkdtempSync(join(tmpdir(), `clawgate-ws-${label}-`));
}

/** git for the test's own repositories: no configuration of the machine's, a fixed identity. */
function git(cwd: string, ...args: string[]): string {
  return execFileSync('git', args, {
    cwd,
    encoding: 'utf8',
    env: {
      PATH: process.env['PATH'] ?? '/usr/bin:/bin',
      HOME: cwd,
      LANG: 'C',
      GIT_CONFIG_NOSYSTEM: '1',
      GIT_CONFIG_GLOBAL: '/dev/null',
      GIT_AUTHOR_NAME: 'Test',
      GIT_AUTHOR_EMAIL: 'test@example.invalid',
      GIT_COMMITTER_NAME: 'Test',
      GIT_COMMITTER_EMAIL: 'test@example.invalid',
    },
  }).trim();
}

interface Source {
  repo: string;
  /** v1 (tagged), on main */
  first: string;
  /** main's tip */
  second: string;
  /** feature's tip, on top of first */
  feature: string;
}

/** A repository with two commits on main (the first tagged v1) and a branch `feature`. */
function makeSource(): Source {
  const repo = tempDir('source');
  git(repo, 'init', '--quiet', '--initial-branch=main');
  writeFileSync(join(repo, 'version.txt'), 'one\n');
  git(repo, 'add', '--all');
  git(repo, 'commit', '--quiet', '-m', 'one');
  const first = git(repo, 'rev-parse', 'HEAD');
  git(repo, 'tag', 'v1');
  git(repo, 'checkout', '--quiet', '-b', 'feature');
  writeFileSync(join(repo, 'version.txt'), 'feature\n');
  git(repo, 'commit', '--quiet', '--all', '-m', 'feature');
  const feature = git(repo, 'rev-parse', 'HEAD');
  git(repo, 'checkout', '--quiet', 'main');
  writeFileSync(join(repo, 'version.txt'), 'two\n');
  git(repo, 'commit', '--quiet', '--all', '-m', 'two');
  const second = git(repo, 'rev-parse', 'HEAD');
  return { repo, first, second, feature };
}

function assertClawgateError(err: unknown, code: string, ...mentions: string[]): true {
  assert.ok(err instanceof ClawgateError, `expected a ClawgateError, got ${String(err)}`);
  assert.equal(err.code, code);
  for (const mention of mentions)
    assert.ok(err.message.includes(mention), `"${err.message}" names ${mention}`);
  return true;
}

test('the folder of a job is under the root, named by the first 32 hex digits of sha256(workflowId)', () => {
  const root = tempDir('root');
  const hash = createHash('sha256').update('job-1').digest('hex').slice(0, 32);
  assert.equal(jobWorkspacePath(root, 'job-1'), join(root, hash));
  assert.notEqual(jobWorkspacePath(root, 'job-1'), jobWorkspacePath(root, 'job-2'));
  assert.throws(() => jobWorkspacePath(root, ''));
});

test('two jobs get two folders with the same fresh content; nothing one writes reaches another', async () => {
  const source = await ensureDemoRepository(join(tempDir('demo'), 'tidewater'));
  const root = tempDir('root');
  const a = await prepareJobWorkspace({ root, workflowId: 'job-a', source });
  const b = await prepareJobWorkspace({ root, workflowId: 'job-b', source });
  assert.notEqual(a.path, b.path);
  assert.equal(a.path, jobWorkspacePath(root, 'job-a'));
  assert.equal(a.commit, b.commit);
  for (const ws of [a, b]) {
    for (const [file, content] of Object.entries(DEMO_FILES)) {
      assert.equal(readFileSync(join(ws.path, file), 'utf8'), content, file);
    }
    assert.equal(git(ws.path, 'rev-parse', 'HEAD'), a.commit);
  }

  writeFileSync(join(a.path, 'notes.txt'), 'job a was here\n');
  writeFileSync(join(a.path, 'README.md'), 'changed by job a\n');
  assert.equal(existsSync(join(b.path, 'notes.txt')), false);
  assert.equal(readFileSync(join(b.path, 'README.md'), 'utf8'), DEMO_README);

  await removeJobWorkspace({ root, workflowId: 'job-a' });
  const c = await prepareJobWorkspace({ root, workflowId: 'job-c', source });
  assert.equal(existsSync(join(c.path, 'notes.txt')), false);
  assert.equal(readFileSync(join(c.path, 'README.md'), 'utf8'), DEMO_README);
  const again = await prepareJobWorkspace({ root, workflowId: 'job-a', source });
  assert.equal(existsSync(join(again.path, 'notes.txt')), false);
  assert.equal(readFileSync(join(again.path, 'README.md'), 'utf8'), DEMO_README);
});

test("a job's clone shares no file with the source (no hardlinked objects a job could rewrite)", async () => {
  const { repo } = makeSource();
  const root = tempDir('root');
  const ws = await prepareJobWorkspace({ root, workflowId: 'job', source: { repo, ref: 'main' } });
  const objects = join(ws.path, '.git', 'objects');
  const files = readdirSync(objects, { recursive: true, withFileTypes: true }).filter((e) => e.isFile());
  assert.ok(files.length > 0);
  for (const file of files) assert.equal(statSync(join(file.parentPath, file.name)).nlink, 1, file.name);
});

test('prepare again after a completed one returns the same folder and leaves it as it is', async () => {
  const { repo, second } = makeSource();
  const root = tempDir('root');
  const first = await prepareJobWorkspace({ root, workflowId: 'job', source: { repo, ref: 'main' } });
  assert.equal(first.commit, second);
  writeFileSync(join(first.path, 'work.txt'), 'in progress\n');
  const retried = await prepareJobWorkspace({ root, workflowId: 'job', source: { repo, ref: 'main' } });
  assert.deepEqual(retried, first);
  assert.equal(readFileSync(join(first.path, 'work.txt'), 'utf8'), 'in progress\n');
});

test('what an interrupted prepare left is removed and the folder made again', async () => {
  const { repo, second } = makeSource();
  const root = tempDir('root');
  const path = jobWorkspacePath(root, 'job');
  const name = basename(path);

  // A crash mid-clone: a temporary sibling, and a folder without its completion marker.
  mkdirSync(join(root, `${name}.tmp-0123456789abcdef`, '.git'), { recursive: true });
  mkdirSync(path);
  writeFileSync(join(path, 'half.txt'), 'left by a crash\n');
  const ws = await prepareJobWorkspace({ root, workflowId: 'job', source: { repo, ref: 'main' } });
  assert.equal(ws.path, path);
  assert.equal(ws.commit, second);
  assert.equal(existsSync(join(path, 'half.txt')), false);
  assert.equal(readFileSync(join(path, 'version.txt'), 'utf8'), 'two\n');
  assert.deepEqual(readdirSync(root).sort(), [name, `${name}.done`]);

  // A marker without its folder (the folder lost): made again, not trusted.
  await removeJobWorkspace({ root, workflowId: 'job' });
  writeFileSync(join(root, `${name}.done`), JSON.stringify({ commit: 'f'.repeat(40), repo, ref: 'main' }));
  const redone = await prepareJobWorkspace({ root, workflowId: 'job', source: { repo, ref: 'main' } });
  assert.equal(redone.commit, second);
  assert.equal(readFileSync(join(path, 'version.txt'), 'utf8'), 'two\n');
});

test('a branch, a tag, a commit id (full or abbreviated) each check out, detached', async () => {
  const { repo, first, second, feature } = makeSource();
  const root = tempDir('root');
  const cases: Array<[string, string, string]> = [
    ['main', second, 'two\n'],
    ['feature', feature, 'feature\n'],
    ['v1', first, 'one\n'],
    [first, first, 'one\n'],
    [feature.slice(0, 12), feature, 'feature\n'],
    ['refs/tags/v1', first, 'one\n'],
  ];
  for (const [ref, commit, content] of cases) {
    const ws = await prepareJobWorkspace({ root, workflowId: `job-${ref}`, source: { repo, ref } });
    assert.equal(ws.commit, commit, ref);
    assert.equal(readFileSync(join(ws.path, 'version.txt'), 'utf8'), content, ref);
    assert.equal(git(ws.path, 'rev-parse', 'HEAD'), commit, ref);
    assert.equal(git(ws.path, 'status', '--porcelain'), '', ref);
    // Detached: HEAD names the commit, not a branch.
    assert.equal(readFileSync(join(ws.path, '.git', 'HEAD'), 'utf8').trim(), commit, ref);
  }
});

test('a file:// URL and a relative path work as sources too', async () => {
  const { repo, second } = makeSource();
  const root = tempDir('root');
  const viaUrl = await prepareJobWorkspace({
    root,
    workflowId: 'url',
    source: { repo: `file://${repo}`, ref: 'main' },
  });
  assert.equal(viaUrl.commit, second);
  mkdirSync(join(repo, 'sub'));
  const cwd = process.cwd();
  process.chdir(join(repo, 'sub'));
  try {
    const viaRelative = await prepareJobWorkspace({
      root,
      workflowId: 'relative',
      source: { repo: '..', ref: 'v1' },
    });
    assert.equal(readFileSync(join(viaRelative.path, 'version.txt'), 'utf8'), 'one\n');
  } finally {
    process.chdir(cwd);
  }
});

test('a missing source, a folder that is no repository, a broken repository: refused, nothing left', async () => {
  const root = tempDir('root');
  const missing = join(tempDir('gone'), 'no-such-repo');
  await assert.rejects(
    prepareJobWorkspace({ root, workflowId: 'job', source: { repo: missing, ref: 'main' } }),
    (err) => assertClawgateError(err, ERROR_CODES.workspaceSourceInvalid, missing, 'not found'),
  );
  assert.deepEqual(readdirSync(root), []);

  const plain = tempDir('plain');
  writeFileSync(join(plain, 'file.txt'), 'not a repository\n');
  await assert.rejects(
    prepareJobWorkspace({ root, workflowId: 'job', source: { repo: plain, ref: 'main' } }),
    (err) => assertClawgateError(err, ERROR_CODES.workspaceSourceInvalid, plain, 'not a git repository'),
  );
  await assert.rejects(
    prepareJobWorkspace({ root, workflowId: 'job', source: { repo: join(plain, 'file.txt'), ref: 'main' } }),
    (err) => assertClawgateError(err, ERROR_CODES.workspaceSourceInvalid, 'not a git repository'),
  );
  assert.deepEqual(readdirSync(root), []);

  // Looks like a repository (it has a .git) but git cannot clone it: git's own words.
  const broken = tempDir('broken');
  mkdirSync(join(broken, '.git'));
  await assert.rejects(
    prepareJobWorkspace({ root, workflowId: 'job', source: { repo: broken, ref: 'main' } }),
    (err) => assertClawgateError(err, ERROR_CODES.workspaceCloneFailed, broken, 'fatal:'),
  );
  assert.deepEqual(readdirSync(root), []);
});

test('a missing ref is refused, naming the ref and the source, and leaves nothing under the root', async () => {
  const { repo } = makeSource();
  const root = tempDir('root');
  for (const ref of ['no-such-branch', 'f'.repeat(40), 'v9']) {
    await assert.rejects(prepareJobWorkspace({ root, workflowId: 'job', source: { repo, ref } }), (err) =>
      assertClawgateError(err, ERROR_CODES.workspaceRefNotFound, `"${ref}"`, repo, 'not found'),
    );
    assert.deepEqual(readdirSync(root), [], ref);
  }
  for (const ref of ['--upload-pack=touch pwned', 'main..feature', '']) {
    await assert.rejects(prepareJobWorkspace({ root, workflowId: 'job', source: { repo, ref } }), (err) =>
      assertClawgateError(err, ERROR_CODES.workspaceRefNotFound, repo),
    );
    assert.deepEqual(readdirSync(root), [], ref);
  }
});

test('remove: the folder and its siblings go, twice is fine, and a symlink is not followed out', async () => {
  const { repo } = makeSource();
  const root = tempDir('root');
  const ws = await prepareJobWorkspace({ root, workflowId: 'job', source: { repo, ref: 'main' } });
  const other = await prepareJobWorkspace({ root, workflowId: 'other', source: { repo, ref: 'main' } });
  const name = basename(ws.path);
  mkdirSync(join(root, `${name}.tmp-feedfacefeedface`));
  await removeJobWorkspace({ root, workflowId: 'job' });
  assert.equal(existsSync(ws.path), false);
  assert.deepEqual(
    readdirSync(root).filter((entry) => entry.startsWith(name)),
    [],
  );
  assert.equal(readFileSync(join(other.path, 'version.txt'), 'utf8'), 'two\n');
  await removeJobWorkspace({ root, workflowId: 'job' });
  await removeJobWorkspace({ root, workflowId: 'never-prepared' });
  await removeJobWorkspace({ root: join(root, 'no-such-root'), workflowId: 'job' });

  // The job's name made a symlink to a folder outside the root: the link goes, the folder stays.
  const outside = tempDir('outside');
  writeFileSync(join(outside, 'precious.txt'), 'keep\n');
  symlinkSync(outside, ws.path);
  await removeJobWorkspace({ root, workflowId: 'job' });
  assert.equal(existsSync(ws.path), false);
  assert.equal(readFileSync(join(outside, 'precious.txt'), 'utf8'), 'keep\n');

  // And a symlink inside the folder is not followed either.
  const again = await prepareJobWorkspace({ root, workflowId: 'job', source: { repo, ref: 'main' } });
  symlinkSync(outside, join(again.path, 'escape'));
  await removeJobWorkspace({ root, workflowId: 'job' });
  assert.equal(existsSync(again.path), false);
  assert.equal(readFileSync(join(outside, 'precious.txt'), 'utf8'), 'keep\n');
});

test("no hook runs: not the source's, not one the worker's HOME, templates or GIT_* variables name", async () => {
  const { repo } = makeSource();
  const marker = join(tempDir('marker'), 'hook-ran');
  const hook = `#!/bin/sh\necho "$0" >> '${marker}'\n`;

  // The source's own hook and hooksPath (neither is cloned).
  writeFileSync(join(repo, '.git', 'hooks', 'post-checkout'), hook);
  chmodSync(join(repo, '.git', 'hooks', 'post-checkout'), 0o755);
  // Hooks the worker's environment would supply: a hooks folder, and a template that copies one in.
  const hooks = tempDir('hooks');
  writeFileSync(join(hooks, 'post-checkout'), hook);
  chmodSync(join(hooks, 'post-checkout'), 0o755);
  const template = tempDir('template');
  mkdirSync(join(template, 'hooks'));
  writeFileSync(join(template, 'hooks', 'post-checkout'), hook);
  chmodSync(join(template, 'hooks', 'post-checkout'), 0o755);
  const home = tempDir('home');
  const gitconfig = `[core]\n\thooksPath = ${hooks}\n[init]\n\ttemplateDir = ${template}\n`;
  writeFileSync(join(home, '.gitconfig'), gitconfig);
  mkdirSync(join(home, '.config', 'git'), { recursive: true });
  writeFileSync(join(home, '.config', 'git', 'config'), gitconfig);

  const planted: Record<string, string> = {
    HOME: home,
    XDG_CONFIG_HOME: join(home, '.config'),
    GIT_CONFIG_GLOBAL: join(home, '.gitconfig'),
    GIT_TEMPLATE_DIR: template,
    GIT_CONFIG_COUNT: '1',
    GIT_CONFIG_KEY_0: 'core.hooksPath',
    GIT_CONFIG_VALUE_0: hooks,
  };
  const saved = Object.fromEntries(Object.keys(planted).map((key) => [key, process.env[key]]));
  Object.assign(process.env, planted);
  try {
    // The environment is potent: a plain clone and checkout in it runs the hook.
    const control = join(tempDir('control'), 'clone');
    execFileSync('git', ['clone', '--quiet', '--no-checkout', repo, control], { env: process.env });
    execFileSync('git', ['-C', control, 'checkout', '--quiet', '--detach', 'main'], { env: process.env });
    assert.equal(existsSync(marker), true, 'the control clone ran the hook');
    writeFileSync(marker, '');

    const root = tempDir('root');
    const ws = await prepareJobWorkspace({ root, workflowId: 'job', source: { repo, ref: 'main' } });
    assert.equal(readFileSync(marker, 'utf8'), '', 'no hook ran');
    assert.equal(readFileSync(join(ws.path, 'version.txt'), 'utf8'), 'two\n');
    assert.equal(existsSync(join(ws.path, '.git', 'hooks', 'post-checkout')), false);
    const config = readFileSync(join(ws.path, '.git', 'config'), 'utf8');
    assert.equal(config.includes('hooksPath'), false);
  } finally {
    for (const [key, value] of Object.entries(saved)) {
      if (value === undefined) delete process.env[key];
      else process.env[key] = value;
    }
  }
});

test('the demo repository: the same commit wherever it is made, left alone once there, facts in its README', async () => {
  const one = await ensureDemoRepository(join(tempDir('demo'), 'tidewater'));
  const two = await ensureDemoRepository(join(tempDir('demo'), 'nested', 'tidewater'));
  assert.equal(one.ref, 'main');
  const commitOne = git(one.repo, 'rev-parse', 'main');
  const commitTwo = git(two.repo, 'rev-parse', 'main');
  assert.match(commitOne, /^[0-9a-f]{40}$/);
  assert.equal(commitOne, commitTwo);
  assert.equal(git(one.repo, 'status', '--porcelain'), '');

  // Left alone: a second call changes nothing.
  writeFileSync(join(one.repo, 'local-note.txt'), 'mine\n');
  assert.deepEqual(await ensureDemoRepository(one.repo), one);
  assert.equal(readFileSync(join(one.repo, 'local-note.txt'), 'utf8'), 'mine\n');
  assert.equal(git(one.repo, 'rev-parse', 'main'), commitOne);

  // An empty folder is filled; one with something else in it is refused.
  const empty = tempDir('empty');
  await ensureDemoRepository(empty);
  assert.equal(git(empty, 'rev-parse', 'main'), commitOne);
  const occupied = tempDir('occupied');
  writeFileSync(join(occupied, 'other.txt'), 'x\n');
  await assert.rejects(ensureDemoRepository(occupied), (err) =>
    assertClawgateError(err, ERROR_CODES.workspaceSourceInvalid, occupied),
  );
  assert.deepEqual(readdirSync(occupied), ['other.txt']);

  // The facts a summary would give, and the ones a question needing two searches and a read finds.
  assert.match(DEMO_README, /^# Tidewater\n\n/);
  assert.ok(DEMO_README.split('\n').filter((line) => line.startsWith('## ')).length >= 4);
  for (const fact of ['port 8417', 'at most 5 times', 'MIT licence', 'TODO: ', '60 seconds']) {
    assert.ok(DEMO_README.includes(fact), fact);
  }
  assert.equal(readFileSync(join(one.repo, 'README.md'), 'utf8'), DEMO_README);
  const operations = readFileSync(join(one.repo, 'docs', 'operations.md'), 'utf8');
  assert.ok(operations.includes('`MAX_RETRIES` in `src/retry.ts`'));
  const retry = readFileSync(join(one.repo, 'src', 'retry.ts'), 'utf8');
  assert.ok(retry.includes('export const MAX_RETRIES = 5;'));
  assert.ok(retry.includes('2 + 4 + 8 + 16 + 32 = 62 seconds'));
  assert.ok(readFileSync(join(one.repo, 'src', 'server.ts'), 'utf8').includes('DEFAULT_PORT = 8417'));
});
