// `clawgate worker` under test as a real process, on a worker stack's state folder, task queue
// and proxy, with its health port: its JSON log lines are kept for the test to read.
import { spawn, type ChildProcess } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ClawgateConfigInput } from '../../src/config/config.ts';
import { freeLoopbackPort } from '../../src/devstack/net.ts';
import { readJsonLines } from './gateway-process.ts';
import { testServers } from './servers.ts';
import type { WorkerStack } from './stack.ts';

const root = fileURLToPath(new URL('../../', import.meta.url));

export interface WorkerCli {
  child: ChildProcess;
  lines: Array<Record<string, unknown>>;
  healthUrl: string;
  metricsUrl: string;
  /** Stops it with SIGTERM and waits for it to exit. */
  stop(): Promise<void>;
}

/**
 * Starts `clawgate worker` (config in `dir`); resolves once it runs and its health endpoint
 * answers. `temporalAddress`: where it reaches Temporal (the run's server when absent).
 */
export async function startWorkerCli(
  stack: WorkerStack,
  dir: string,
  opts: {
    temporalAddress?: string;
    /** Resolve once its health endpoint answers, before the worker runs (Temporal may be away). */
    healthOnly?: boolean;
  } = {},
): Promise<WorkerCli> {
  const { temporal } = testServers();
  const port = await freeLoopbackPort();
  const config: ClawgateConfigInput = {
    stateDir: stack.state,
    temporal: {
      address: opts.temporalAddress ?? temporal.address,
      namespace: temporal.namespace,
      taskQueue: stack.taskQueue,
    },
    policy: { registryDir: stack.registryDir, channel: 'matrix' },
    worker: {
      planningModel: 'demo-echo',
      health: { host: '127.0.0.1', port },
      sandbox: { bwrap: testServers().bwrap },
    },
  };
  const configPath = join(dir, 'worker.json');
  writeFileSync(configPath, JSON.stringify(config, null, 2));
  const child = spawn(
    join(root, 'scripts/node'),
    [join(root, 'src/cli/main.ts'), 'worker', '--config', configPath, '--proxy-url', stack.proxyUrl],
    { env: { ...process.env, CLAWGATE_LOG_LEVEL: 'info' }, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  child.stderr?.setEncoding('utf8').on('data', (chunk: string) => process.stderr.write(`[worker] ${chunk}`));
  const lines: Array<Record<string, unknown>> = [];
  const base = `http://127.0.0.1:${port}`;
  const running = new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('the worker did not start within 120 s')), 120_000);
    child.once('exit', (code) => reject(new Error(`the worker exited with ${code} before it ran`)));
    readJsonLines(child, lines, (line) => {
      if (process.env['CLAWGATE_TEST_WORKER_LOG'] === '1') process.stderr.write(`[worker log] ${line}\n`);
      if (lines.at(-1)?.['msg'] === 'worker running') {
        clearTimeout(timer);
        resolve();
      }
    });
  });
  running.catch(() => undefined);
  if (!opts.healthOnly) await running;
  // The health server listens before the worker connects to Temporal.
  for (let i = 0; ; i++) {
    try {
      if ((await fetch(`${base}/metrics`)).ok) break;
    } catch {
      if (i > 600) throw new Error(`no answer at ${base}/metrics`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    child,
    lines,
    healthUrl: `${base}/health`,
    metricsUrl: `${base}/metrics`,
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = new Promise((resolve) => child.once('exit', resolve));
      child.kill('SIGTERM');
      await exited;
    },
  };
}
