// The worker's workflow code (src/workflows/), bundled by the Temporal SDK's webpack in a Node.js
// process of its own, which exits once it has handed the bundle over. Bundled inside the worker,
// webpack's heap (some 150 MiB) stays in the worker's resident memory for good: a Node.js
// process does not give a grown heap back, and the worker lives for days.
import { fork } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { bundleWorkflowCode } from '@temporalio/worker';

/** The module the worker's workflows come from. */
export const WORKFLOWS_PATH = fileURLToPath(new URL('../workflows/index.ts', import.meta.url));

const self = fileURLToPath(import.meta.url);

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
