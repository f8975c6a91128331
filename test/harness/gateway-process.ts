// The gateway under test as a real process (`clawgate gateway --config clawgate.json`), so tests can kill
// it with SIGKILL at the worst moment and start it again on the same state folder.
import { spawn, type ChildProcess } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ClawgateConfigInput } from '../../src/config/config.ts';
import type { AccountConfigInput } from '../../src/ingress/config.ts';
import { testServers } from './servers.ts';

const root = fileURLToPath(new URL('../../', import.meta.url));

/** Keeps each line a child writes on stdout in `lines`, parsed (JSON) or as `{ msg }`; `then` after each. */
export function readJsonLines(
  child: ChildProcess,
  lines: Array<Record<string, unknown>>,
  then: (line: string) => void,
): void {
  let buffer = '';
  child.stdout?.setEncoding('utf8').on('data', (chunk: string) => {
    buffer += chunk;
    let nl: number;
    while ((nl = buffer.indexOf('\n')) >= 0) {
      const line = buffer.slice(0, nl);
      buffer = buffer.slice(nl + 1);
      try {
        lines.push(JSON.parse(line) as Record<string, unknown>);
      } catch {
        lines.push({ msg: line });
      }
      then(line);
    }
  });
}

/**
 * The configuration of a gateway under test: state in `dir`, the run's Temporal and the worker
 * stack's task queue and registry, health on a free port, these accounts on the run's Synapse.
 */
export function gatewayTestConfig(
  dir: string,
  stack: { taskQueue: string; registryDir: string },
  accounts: Array<Omit<AccountConfigInput, 'homeserverUrl'>>,
): ClawgateConfigInput {
  const { synapse, temporal, payloadKeys } = testServers();
  return {
    stateDir: join(dir, 'state'),
    // The run's payload keyring: the worker stack's jobs are encrypted with it.
    codec: { keysDir: payloadKeys },
    temporal: { address: temporal.address, namespace: temporal.namespace, taskQueue: stack.taskQueue },
    policy: { registryDir: stack.registryDir, channel: 'matrix' },
    gateway: {
      health: { host: '127.0.0.1', port: 0 },
      // Plain rooms, bots without crypto unless a test asks for it: its start is CPU heavy.
      accounts: accounts.map((a) => ({ homeserverUrl: synapse.baseUrl, encryption: false, ...a })),
    },
  };
}

/** Everything the gateway processes of this test file wrote on stderr. */
export const gatewayStderr: string[] = [];

export class GatewayProcess {
  readonly child: ChildProcess;
  readonly lines: Array<Record<string, unknown>> = [];
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  private waiters: Array<() => void> = [];

  private constructor(child: ChildProcess) {
    this.child = child;
    readJsonLines(child, this.lines, (line) => {
      if (process.env['CLAWGATE_TEST_GATEWAY_LOG'] === '1') process.stderr.write(`[gateway log] ${line}\n`);
      for (const wake of this.waiters.splice(0)) wake();
    });
    child.stderr?.setEncoding('utf8').on('data', (chunk: string) => {
      gatewayStderr.push(chunk);
      process.stderr.write(`[gateway] ${chunk}`);
    });
    this.exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  }

  /** Writes the config next to the state and starts the gateway; resolves once it runs. */
  static async start(
    config: ClawgateConfigInput,
    opts: { dir: string; fault?: string; timeoutMs?: number; nodeOptions?: string },
  ): Promise<GatewayProcess> {
    const configPath = join(opts.dir, 'clawgate.json');
    writeFileSync(configPath, JSON.stringify(config, null, 2));
    const env: NodeJS.ProcessEnv = {
      ...process.env,
      CLAWGATE_LOG_LEVEL: process.env['CLAWGATE_TEST_GATEWAY_LOG_LEVEL'] ?? 'info',
    };
    delete env['CLAWGATE_GATEWAY_FAULT'];
    if (opts.fault) env['CLAWGATE_GATEWAY_FAULT'] = opts.fault;
    if (opts.nodeOptions) env['NODE_OPTIONS'] = `${env['NODE_OPTIONS'] ?? ''} ${opts.nodeOptions}`.trim();
    const child = spawn(
      join(root, 'scripts/node'),
      [join(root, 'src/cli/main.ts'), 'gateway', '--config', configPath],
      {
        env,
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
    const gateway = new GatewayProcess(child);
    await gateway.waitForLog(
      (l) => l['msg'] === 'gateway running',
      opts.timeoutMs ?? 60_000,
      'the gateway to start',
    );
    return gateway;
  }

  /** Resolves with the first log line that matches (seen already or to come). */
  async waitForLog(
    match: (line: Record<string, unknown>) => boolean,
    timeoutMs: number,
    what: string,
  ): Promise<Record<string, unknown>> {
    const deadline = Date.now() + timeoutMs;
    let exited = false;
    void this.exited.then(() => {
      exited = true;
      for (const wake of this.waiters.splice(0)) wake();
    });
    for (;;) {
      const found = this.lines.find(match);
      if (found) return found;
      if (exited) throw new Error(`the gateway exited while the test waited for ${what}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`the gateway did not log ${what} within ${timeoutMs} ms`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }

  get healthUrl(): string {
    const line = this.lines.find((l) => l['msg'] === 'gateway running');
    return String(line?.['health']);
  }

  async kill(signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    const started = Date.now();
    const running = this.child.exitCode === null && this.child.signalCode === null;
    if (running) this.child.kill(signal);
    const { code } = await this.exited;
    // A stop asked for is a clean one: SIGTERM ends the gateway with exit code 0.
    if (running && signal === 'SIGTERM' && code !== 0) {
      throw new Error(`the gateway stopped with exit code ${code} after SIGTERM, not 0`);
    }
    if (process.env['CLAWGATE_TEST_TIMINGS'] === '1') {
      console.error(`gateway ${signal}: exited after ${Date.now() - started} ms`);
    }
  }
}
