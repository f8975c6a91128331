// The worker's workflow code (src/workflows/), bundled by the Temporal SDK's webpack in a Node.js
// process of its own, which exits once it has handed the bundle over. Bundled inside the worker,
// webpack's heap (some 150 MiB) stays in the worker's resident memory for good: a Node.js
// process does not give a grown heap back, and the worker lives for days.
//
// A bundle is kept in the state folder under a key of everything it is made from (the project's
// sources, its lockfile, the Node.js version), so a restarted worker takes the one it made
// before instead of bundling again: a worker killed and started again is back in about a second
// rather than five.
import { fork } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { bundleWorkflowCode } from '@temporalio/worker';
import { FAILURE_CONVERTER_PATH } from '../temporal/codec.ts';

/** The module the worker's workflows come from. */
export const WORKFLOWS_PATH = fileURLToPath(new URL('../workflows/index.ts', import.meta.url));

const self = fileURLToPath(import.meta.url);
const SOURCES = fileURLToPath(new URL('..', import.meta.url));
const LOCKFILE = fileURLToPath(new URL('../../package-lock.json', import.meta.url));
const CACHED = /^workflow-bundle-[0-9a-f]{64}\.js$/;

/** Every .ts file under a folder, sorted, with its path relative to `root`. */
function sourceFiles(dir: string, root: string): string[] {
  const out: string[] = [];
  for (const name of readdirSync(dir).sort()) {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) out.push(...sourceFiles(path, root));
    else if (name.endsWith('.ts')) out.push(relative(root, path));
  }
  return out;
}

/**
 * The key of the bundle these sources make: a hash of every source file (path and bytes), the
 * lockfile (the SDK's version and webpack's) and the Node.js version. A changed file anywhere
 * under src/ makes a new bundle, even one no workflow imports: simple, and never stale.
 */
export function workflowBundleKey(): string {
  const hash = createHash('sha256').update(`node ${process.version}\n`);
  for (const file of sourceFiles(SOURCES, SOURCES)) {
    hash
      .update(`${file}\n`)
      .update(readFileSync(join(SOURCES, file)))
      .update('\n');
  }
  try {
    hash.update(readFileSync(LOCKFILE));
  } catch {
    hash.update('no lockfile');
  }
  return hash.digest('hex');
}

/**
 * The workflow bundle, from `cacheDir` when it holds the one for these sources, else bundled
 * (bundleWorkflowsApart) and kept there, written whole or not at all; bundles of other
 * sources are removed.
 */
export async function cachedWorkflowBundle(cacheDir: string): Promise<{ code: string; cached: boolean }> {
  const name = `workflow-bundle-${workflowBundleKey()}.js`;
  const path = join(cacheDir, name);
  try {
    return { code: readFileSync(path, 'utf8'), cached: true };
  } catch {
    // Not made yet for these sources.
  }
  const code = await bundleWorkflowsApart();
  mkdirSync(cacheDir, { recursive: true, mode: 0o700 });
  const partial = `${path}.${process.pid}.partial`;
  writeFileSync(partial, code, { mode: 0o600 });
  renameSync(partial, path);
  // Bundles of other sources go; a partial one only when it is old (another worker may be
  // writing it now).
  for (const other of readdirSync(cacheDir)) {
    const at = join(cacheDir, other);
    const stale =
      other !== name &&
      (CACHED.test(other) || (other.endsWith('.partial') && Date.now() - statSync(at).mtimeMs > 600_000));
    if (stale) rmSync(at, { force: true });
  }
  return { code, cached: false };
}

/** The bundled code of WORKFLOWS_PATH (what `Worker.create({ workflowBundle: { code } })` takes). */
export function bundleWorkflowsApart(): Promise<string> {
  return new Promise((resolve, reject) => {
    // No execArgv: the flags this process was started with (a test runner's) are not the bundler's.
    const child = fork(self, ['--bundle'], { execArgv: [], stdio: ['ignore', 'ignore', 'pipe', 'ipc'] });
    let code: string | undefined;
    let stderr = '';
    child.stderr?.setEncoding('utf8').on('data', (chunk: string) => {
      stderr = (stderr + chunk).slice(-4000);
    });
    child.on('message', (message: { code?: string }) => {
      code = message.code;
    });
    child.once('error', reject);
    child.once('exit', (exitCode, signal) => {
      if (exitCode === 0 && typeof code === 'string') resolve(code);
      else {
        reject(
          new Error(
            `bundling the workflow code (${WORKFLOWS_PATH}) failed: the bundler exited with ${signal ?? exitCode}${stderr ? `:\n${stderr}` : ''}`,
          ),
        );
      }
    });
  });
}

if (process.argv[1] === self && process.argv[2] === '--bundle') {
  const quiet = () => {};
  const { code } = await bundleWorkflowCode({
    workflowsPath: WORKFLOWS_PATH,
    // Failures the workflow code raises are encoded in the workflow sandbox (src/temporal/codec.ts).
    failureConverterPath: FAILURE_CONVERTER_PATH,
    logger: {
      log: quiet,
      trace: quiet,
      debug: quiet,
      info: quiet,
      warn: (message) => process.stderr.write(`${message}\n`),
      error: (message) => process.stderr.write(`${message}\n`),
    },
  });
  process.send?.({ code }, () => process.disconnect());
}
