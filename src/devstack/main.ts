// `npm start`: the local stack on embedded defaults. Starts a Temporal dev server with a file
// database (jobs survive a restart) and its Web UI, and a Synapse homeserver, each on loopback,
// unless the environment points at an existing one; prints where each part is; stops both on
// Ctrl-C. The clawgate processes (proxy, worker, gateway) join this stack as they are built.
import { mkdirSync } from 'node:fs';
import { resolve } from 'node:path';
import { Connection } from '@temporalio/client';
import { CLAWGATE_SEARCH_ATTRIBUTES, devServerSearchAttributeArgs } from '../temporal/search-attributes.ts';
import { startSynapse, type SynapseServer } from './synapse.ts';
import { startTemporalDevServer, type TemporalDevServer } from './temporal.ts';
import { toolPaths } from './tools.ts';

const env = process.env;

function port(name: string, fallback: number): number {
  const raw = env[name];
  if (raw === undefined || raw === '') return fallback;
  const value = Number(raw);
  if (!Number.isInteger(value) || value < 1 || value > 65_535) {
    throw new Error(`${name}=${raw} is not a TCP port (an integer from 1 to 65535)`);
  }
  return value;
}

async function checkTemporal(address: string): Promise<void> {
  const connection = await Connection.connect({ address, connectTimeout: 5_000 });
  try {
    const namespace = env['CLAWGATE_TEMPORAL_NAMESPACE'] ?? 'default';
    const { customAttributes } = await connection.operatorService.listSearchAttributes({ namespace });
    const registered = new Set(Object.keys(customAttributes ?? {}));
    const missing = CLAWGATE_SEARCH_ATTRIBUTES.filter((key) => !registered.has(key.name));
    if (missing.length > 0) {
      const flags = devServerSearchAttributeArgs()
        .filter((_, i) => i % 2 === 1)
        .filter((pair) => missing.some((key) => pair.startsWith(`${key.name}=`)))
        .map((pair) => `--name ${pair.split('=')[0]} --type ${pair.split('=')[1]}`);
      console.warn(
        `Temporal at ${address} lacks clawgate's search attributes ${missing.map((k) => k.name).join(', ')}. ` +
          `Register them once:\n${flags.map((f) => `  temporal operator search-attribute create --address ${address} --namespace ${namespace} ${f}`).join('\n')}`,
      );
    }
  } finally {
    await connection.close();
  }
}

async function checkHomeserver(url: string): Promise<void> {
  const response = await fetch(new URL('/_matrix/client/versions', url));
  if (!response.ok) throw new Error(`${url} does not answer as a Matrix homeserver (${response.status})`);
}

async function main(): Promise<void> {
  const stateDir = resolve(env['CLAWGATE_STATE_DIR'] ?? 'state');
  mkdirSync(stateDir, { recursive: true, mode: 0o700 });
  let temporal: TemporalDevServer | undefined;
  let synapse: SynapseServer | undefined;
  const stop = async (): Promise<void> => {
    await Promise.all([temporal?.stop(), synapse?.stop()]);
  };
  process.once('SIGINT', () => void stop().then(() => process.exit(0)));
  process.once('SIGTERM', () => void stop().then(() => process.exit(0)));

  const lines: string[] = [];
  const existingTemporal = env['CLAWGATE_TEMPORAL_ADDRESS'];
  if (existingTemporal) {
    await checkTemporal(existingTemporal);
    lines.push(`Temporal        ${existingTemporal} (existing, from CLAWGATE_TEMPORAL_ADDRESS)`);
  } else {
    const tools = toolPaths();
    const grpcPort = port('CLAWGATE_TEMPORAL_PORT', 7233);
    temporal = await startTemporalDevServer({
      cliPath: tools.temporal,
      dir: stateDir,
      dbFile: resolve(stateDir, 'temporal.db'),
      port: grpcPort,
      uiPort: port('CLAWGATE_TEMPORAL_UI_PORT', grpcPort + 1000),
    });
    lines.push(
      `Temporal        ${temporal.address} (dev server, database ${resolve(stateDir, 'temporal.db')})`,
    );
    lines.push(`Temporal Web UI ${temporal.uiUrl ?? ''}`);
  }
  const existingHomeserver = env['CLAWGATE_HOMESERVER_URL'];
  if (existingHomeserver) {
    await checkHomeserver(existingHomeserver);
    lines.push(`Matrix          ${existingHomeserver} (existing, from CLAWGATE_HOMESERVER_URL)`);
  } else {
    synapse = await startSynapse({
      python: toolPaths().synapsePython,
      dir: resolve(stateDir, 'synapse'),
      port: port('CLAWGATE_SYNAPSE_PORT', 8008),
      liftRateLimits: false,
    });
    lines.push(`Matrix          ${synapse.baseUrl} (Synapse, server name ${synapse.serverName})`);
  }
  lines.push(`Logs and state  ${stateDir}`);
  console.log(
    `\nclawgate stack is up:\n  ${lines.join('\n  ')}\n\nCtrl-C stops it; jobs and rooms are kept.`,
  );
}

main().catch((error: unknown) => {
  console.error(`clawgate: ${error instanceof Error ? error.message : String(error)}`);
  process.exit(1);
});
