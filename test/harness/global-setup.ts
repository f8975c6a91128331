// Starts the real servers once per test run (`npm test`): a Temporal dev server with
// clawgate's search attributes and a Synapse homeserver, both on free loopback ports, and
// checks the bubblewrap sandbox. Their logs stay in test-output/run-*/ and the path is printed,
// so a failure can be read after the run; older runs are pruned.
import { mkdirSync, readdirSync, rmSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { startSynapse, type SynapseServer } from '../../src/devstack/synapse.ts';
import { startTemporalDevServer, type TemporalDevServer } from '../../src/devstack/temporal.ts';
import { toolPaths } from '../../src/devstack/tools.ts';
import { ensurePayloadKeyring } from '../../src/keys/payload-keyring.ts';
import { ENV } from './servers.ts';

const OUTPUT_DIR = resolve(import.meta.dirname, '../../test-output');
const RUNS_KEPT = 5;

let temporal: TemporalDevServer | undefined;
let synapse: SynapseServer | undefined;
let runDir = '';

function pruneOldRuns(): void {
  const runs = readdirSync(OUTPUT_DIR)
    .filter((name) => name.startsWith('run-'))
    .sort();
  for (const old of runs.slice(0, Math.max(0, runs.length - RUNS_KEPT))) {
    rmSync(join(OUTPUT_DIR, old), { recursive: true, force: true });
  }
}

export async function globalSetup(): Promise<void> {
  const tools = toolPaths();
  mkdirSync(OUTPUT_DIR, { recursive: true });
  pruneOldRuns();
  runDir = join(OUTPUT_DIR, `run-${new Date().toISOString().replace(/[:.]/g, '-')}-${process.pid}`);
  mkdirSync(runDir, { recursive: true });
  const started = Date.now();
  const results = await Promise.allSettled([
    startTemporalDevServer({ cliPath: tools.temporal, dir: runDir }),
    startSynapse({ python: tools.synapsePython, dir: join(runDir, 'synapse'), liftRateLimits: true }),
  ]);
  if (results[0].status === 'fulfilled') temporal = results[0].value;
  if (results[1].status === 'fulfilled') synapse = results[1].value;
  const failures = results.filter((r) => r.status === 'rejected').map((r) => String(r.reason));
  if (!temporal || !synapse) {
    await Promise.all([temporal?.stop(), synapse?.stop()]);
    throw new Error(`The test servers did not start (logs in ${runDir}):\n${failures.join('\n')}`);
  }
  process.env[ENV.runDir] = runDir;
  process.env[ENV.temporalAddress] = temporal.address;
  process.env[ENV.temporalNamespace] = temporal.namespace;
  process.env[ENV.synapseUrl] = synapse.baseUrl;
  process.env[ENV.synapseServerName] = synapse.serverName;
  process.env[ENV.synapseSecret] = synapse.registrationSharedSecret;
  process.env[ENV.bwrap] = tools.bwrap;
  const payloadKeys = join(runDir, 'payload-keys');
  ensurePayloadKeyring(payloadKeys);
  process.env[ENV.payloadKeys] = payloadKeys;
  console.log(
    `test servers up in ${Date.now() - started} ms: Temporal ${temporal.address}, Synapse ${synapse.baseUrl}; ` +
      `logs in ${runDir}`,
  );
}

export async function globalTeardown(): Promise<void> {
  await Promise.all([temporal?.stop(), synapse?.stop()]);
  console.log(`test server logs kept in ${runDir}`);
}
