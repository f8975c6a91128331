// `bin/clawgate` as a user runs it, for the tests of `clawgate start`: a fresh state folder and
// free ports in the environment, commands run to completion, and `clawgate start` in the
// background with its terminal output kept.
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { freeLoopbackPort } from '../../src/devstack/net.ts';

export const CLAWGATE_BIN = fileURLToPath(new URL('../../bin/clawgate', import.meta.url));

const PORT_VARIABLES = [
  'CLAWGATE_TEMPORAL_PORT',
  'CLAWGATE_TEMPORAL_UI_PORT',
  'CLAWGATE_SYNAPSE_PORT',
  'CLAWGATE_PROXY_PORT',
  'CLAWGATE_HEALTH_PORT',
  'CLAWGATE_WORKER_HEALTH_PORT',
  'CLAWGATE_EVIDENCE_PORT',
  'CLAWGATE_CODEC_PORT',
];

/** The environment of a fresh `clawgate start`: its own state folder, and its own payload keyring (as on a fresh machine). */
export function freshStackEnv(prefix: string): { state: string; env: NodeJS.ProcessEnv } {
  const state = join(mkdtempSync(join(tmpdir(), prefix)), 'state');
  const env: NodeJS.ProcessEnv = { ...process.env, CLAWGATE_STATE_DIR: state };
  delete env['CLAWGATE_CONFIG'];
  delete env['CLAWGATE_PAYLOAD_KEYS_DIR'];
  return { state, env };
}

/** A free port for each of the stack's listeners, in the environment. */
export async function assignPorts(env: NodeJS.ProcessEnv): Promise<void> {
  for (const name of PORT_VARIABLES) env[name] = String(await freeLoopbackPort());
}

export function runClawgate(
  env: NodeJS.ProcessEnv,
  ...args: string[]
): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(CLAWGATE_BIN, args, { env, cwd: tmpdir() }, (error, stdout, stderr) => {
      resolve({ code: error ? Number(error.code ?? 1) : 0, stdout, stderr });
    });
  });
}

/** Runs a command until its output matches. */
export async function untilClawgate(
  env: NodeJS.ProcessEnv,
  args: string[],
  pattern: RegExp,
  timeoutMs = 60_000,
): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const r = await runClawgate(env, ...args);
    const last = `${r.stdout}${r.stderr}`;
    if (pattern.test(r.stdout)) return r.stdout;
    if (Date.now() > deadline)
      throw new Error(`clawgate ${args.join(' ')} never matched ${pattern}; last:\n${last}`);
    await new Promise((r) => setTimeout(r, 500));
  }
}

export interface StartedStack {
  child: ChildProcess;
  /** Everything it wrote, stdout and stderr. */
  output: () => string;
  exited: Promise<number | null>;
  /** Waits until the output matches (the stack's own lines come as things happen). */
  waitFor(pattern: RegExp, timeoutMs?: number): Promise<void>;
  /** For a test's `after`: SIGTERM (the parts are stopped too), SIGKILL if it does not end in 60 s. */
  terminate(): Promise<void>;
}

/** `clawgate start` in the background, once it says it is ready. */
export async function startClawgate(env: NodeJS.ProcessEnv, timeoutMs = 180_000): Promise<StartedStack> {
  const child = spawn(CLAWGATE_BIN, ['start'], { env, cwd: tmpdir(), stdio: ['ignore', 'pipe', 'pipe'] });
  let text = '';
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => (text += chunk));
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => (text += chunk));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const waitFor = async (pattern: RegExp, waitMs = 120_000): Promise<void> => {
    const deadline = Date.now() + waitMs;
    while (!pattern.test(text)) {
      if (child.exitCode !== null) throw new Error(`clawgate start exited ${child.exitCode}:\n${text}`);
      if (Date.now() > deadline) throw new Error(`clawgate start never printed ${pattern}:\n${text}`);
      await new Promise((r) => setTimeout(r, 200));
    }
  };
  const terminate = async (): Promise<void> => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    child.kill('SIGCONT');
    child.kill('SIGTERM');
    const hard = setTimeout(() => child.kill('SIGKILL'), 60_000);
    await exited;
    clearTimeout(hard);
  };
  const stack = { child, output: () => text, exited, waitFor, terminate };
  await waitFor(/clawgate is ready/, timeoutMs);
  return stack;
}

/** `clawgate say ... --follow` running: its output so far, and a wait for a pattern in it. */
export interface Following {
  child: ChildProcess;
  exited: Promise<number | null>;
  output(): string;
  until(pattern: RegExp, timeoutMs?: number): Promise<RegExpExecArray>;
}

export function followClawgate(env: NodeJS.ProcessEnv, ...args: string[]): Following {
  const child = spawn(CLAWGATE_BIN, ['say', ...args, '--follow'], {
    env,
    cwd: tmpdir(),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let text = '';
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => (text += chunk));
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => (text += chunk));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  return {
    child,
    exited,
    output: () => text,
    async until(pattern: RegExp, timeoutMs = 90_000): Promise<RegExpExecArray> {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const found = pattern.exec(text);
        if (found) return found;
        if (child.exitCode !== null || Date.now() > deadline) {
          throw new Error(
            `clawgate say --follow never printed ${pattern} (exit ${child.exitCode}):\n${text}`,
          );
        }
        await new Promise((r) => setTimeout(r, 200));
      }
    },
  };
}
