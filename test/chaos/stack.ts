// The stack a chaos run kills, brought up from nothing in the run's folder: keyrings, the
// source repository of the jobs' workspaces and the remote write_pr pushes to, the Temporal dev
// server and Synapse, the people and the bots and two rooms, one policy for both rooms, the one
// configuration file, and `clawgate proxy`, `clawgate worker` and `clawgate gateway` from it.
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ENV_OVERRIDES } from '../../src/config/config.ts';
import { freeLoopbackPort } from '../../src/devstack/net.ts';
import { toolPaths } from '../../src/devstack/tools.ts';
import { generateKeyring, KEY_PURPOSES, loadSigner, publicJwks } from '../../src/keys/keyring.ts';
import { ensurePayloadKeyring } from '../../src/keys/payload-keyring.ts';
import { FilePolicyRegistry, signWpc } from '../../src/policy/registry.ts';
import { parseWpc } from '../../src/policy/wpc.ts';
import { ensureDemoRepository } from '../../src/workspace/workspaces.ts';
import { Human } from './humans.ts';
import { ClawgatePart, SynapsePart, TemporalPart, type Part } from './parts.ts';
import type { PartName } from './schedule.ts';
import { makeRemote, startWorld, type World } from './world.ts';

const EXAMPLE_POLICY = new URL('../../examples/policy.json', import.meta.url);

export interface ChaosStack {
  parts: Record<PartName, Part>;
  temporal: TemporalPart;
  synapse: SynapsePart;
  world: World;
  rooms: [string, string];
  bots: [Human, Human];
  requesters: [Human, Human];
  approvers: [Human, Human];
  keysDir: string;
  bundleDir: string;
  receiptsLog: string;
  /** Stops every part, the servers last, and the world outside. */
  stop(): Promise<void>;
}

/** A policy for the run's rooms: agent mode, the tools with side effects, the counting server allowed. */
function policyDoc(opts: {
  rooms: string[];
  requesters: string[];
  approvers: string[];
  expiresAfterSeconds: number;
  egress: string;
}): unknown {
  const doc = JSON.parse(readFileSync(EXAMPLE_POLICY, 'utf8')) as Record<string, any>;
  doc['matrix'].rooms_allowlist = opts.rooms;
  doc['matrix'].requesters_allowlist = opts.requesters;
  doc['matrix'].approval.approver_user_ids_allowlist = opts.approvers;
  doc['matrix'].approval.expires_after_seconds = opts.expiresAfterSeconds;
  doc['matrix'].limits = { requests_per_requester_per_hour: 1000, open_jobs_per_room: 1000 };
  doc['execution'].sandbox.workspace_access = 'rw';
  // Each call with side effects waits on its card whatever the job read before: a read cut off
  // by a kill is not in the job's context (it does not taint it), and the run's jobs must still
  // each show a card.
  doc['execution'].tools = {
    allow: ['read', 'search', 'http', 'write_pr'],
    deny: ['exec'],
    approval: { write_pr: 'always', http: 'always' },
  };
  doc['execution'].egress_allowlist = [opts.egress];
  doc['execution'].mode = 'agent';
  doc['execution'].agent = { model_turns: 8, tool_calls: 10, wall_seconds: 3600 };
  return doc;
}

/** The environment of clawgate's parts: none of this process's CLAWGATE_* settings, the bots' tokens by name. */
function partEnv(bots: [Human, Human]): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env };
  for (const { name } of ENV_OVERRIDES) delete env[name];
  for (const name of [
    'CLAWGATE_CONFIG',
    'CLAWGATE_MODEL_BASE_URL',
    'CLAWGATE_MODEL',
    'CLAWGATE_GATEWAY_FAULT',
  ]) {
    delete env[name];
  }
  // The secrets reach the gateway by name, as the README says they should, not in the file.
  env['CLAWGATE_ACCOUNT_A_ACCESS_TOKEN'] = bots[0].accessToken;
  env['CLAWGATE_ACCOUNT_B_ACCESS_TOKEN'] = bots[1].accessToken;
  return env;
}

export async function startChaosStack(opts: {
  outDir: string;
  seed: number;
  expirySeconds: number;
  note: (line: string) => void;
}): Promise<ChaosStack> {
  const { outDir, note } = opts;
  const tools = toolPaths();
  const state = join(outDir, 'state');
  const keysDir = join(state, 'keys');
  for (const purpose of KEY_PURPOSES) await generateKeyring(keysDir, purpose);
  // The parts' payload keyring, made before any part starts: this process's client reads with it.
  ensurePayloadKeyring(keysDir);
  const source = await ensureDemoRepository(join(outDir, 'source'));
  makeRemote(source.repo, join(outDir, 'remote.git'));
  const ports = {
    temporal: await freeLoopbackPort(),
    synapse: await freeLoopbackPort(),
    proxy: await freeLoopbackPort(),
    workerHealth: await freeLoopbackPort(),
    gatewayHealth: await freeLoopbackPort(),
    evidence: await freeLoopbackPort(),
  };
  mkdirSync(join(outDir, 'temporal'), { recursive: true });
  const temporal = new TemporalPart(
    {
      cliPath: tools.temporal,
      dir: join(outDir, 'temporal'),
      dbFile: join(outDir, 'temporal', 'temporal.db'),
      port: ports.temporal,
    },
    note,
  );
  const synapse = new SynapsePart(
    { python: tools.synapsePython, dir: join(outDir, 'synapse'), port: ports.synapse },
    note,
  );
  const world = await startWorld({ remote: join(outDir, 'remote.git'), proxyPort: ports.proxy });
  const clawgate: ClawgatePart[] = [];
  const stop = async (): Promise<void> => {
    // The order that loses least: the gateway, the worker, the proxy, then the servers.
    for (const part of clawgate.reverse()) await part.stop();
    await Promise.all([synapse.stop(), temporal.stop()]);
    await world.close();
  };
  try {
    note('starting Temporal and Synapse');
    await Promise.all([temporal.up(), synapse.up()]);
    const secret = synapse.server?.registrationSharedSecret as string;
    const register = (name: string) => Human.register(synapse.baseUrl, secret, `${name}-${opts.seed}`);
    const [botA, botB, req0, req1, appr0, appr1] = (await Promise.all(
      ['chaosbot-a', 'chaosbot-b', 'requester-a', 'requester-b', 'approver-a', 'approver-b'].map(register),
    )) as [Human, Human, Human, Human, Human, Human];
    const people = [req1, appr0, appr1];
    // Two rooms, each served by a bot account of its own in the one gateway.
    const rooms: [string, string] = [
      await req0.createRoom('chaos a', [...people.map((p) => p.userId), botA.userId]),
      await req0.createRoom('chaos b', [...people.map((p) => p.userId), botB.userId]),
    ];
    for (const person of people) for (const room of rooms) await person.join(room);

    // One policy for both rooms (the proxy checks a job's pinned policy against the active one
    // of its own channel, so every job is of that channel). Plans expire after expirySeconds: the
    // jobs left alone time out then; the others are approved well before.
    const registry = new FilePolicyRegistry(join(state, 'policy-registry'));
    const signed = signWpc(
      parseWpc(
        policyDoc({
          rooms,
          requesters: [req0.userId, req1.userId],
          approvers: [appr0.userId, appr1.userId],
          expiresAfterSeconds: opts.expirySeconds,
          egress: world.countHost,
        }),
      ),
      loadSigner(keysDir, 'policy'),
    );
    await registry.register(signed, publicJwks(keysDir, ['policy']));
    registry.activate('matrix', signed.hash);

    const configPath = join(outDir, 'clawgate.json');
    const account = (id: string, bot: Human, room: string) => ({
      id,
      homeserverUrl: synapse.baseUrl,
      userId: bot.userId,
      rooms: [room],
      encryption: false,
    });
    const config = {
      stateDir: 'state',
      temporal: { address: temporal.address, namespace: 'default' },
      matrix: { homeserverUrl: synapse.baseUrl },
      proxy: {
        listen: { host: '127.0.0.1', port: ports.proxy },
        upstreams: [{ name: 'chaos-model', baseUrl: `${world.upstream.url}/v1`, models: ['demo-echo'] }],
      },
      worker: {
        health: { host: '127.0.0.1', port: ports.workerHealth },
        workspace: { source: 'source', ref: source.ref },
        prRemote: 'remote.git',
        sandbox: { bwrap: tools.bwrap },
      },
      gateway: {
        health: { host: '127.0.0.1', port: ports.gatewayHealth },
        accounts: [account('a', botA, rooms[0]), account('b', botB, rooms[1])],
      },
      evidence: { listen: { host: '127.0.0.1', port: ports.evidence } },
      log: { level: 'info' },
    };
    writeFileSync(configPath, `${JSON.stringify(config, null, 2)}\n`);
    const env = partEnv([botA, botB]);
    const logDir = join(outDir, 'logs');
    mkdirSync(logDir, { recursive: true });
    const part = (name: 'proxy' | 'worker' | 'gateway', args: string[], healthUrl: string): ClawgatePart => {
      const made = new ClawgatePart(
        name,
        { args: ['--config', configPath, ...args], env, cwd: outDir, logDir, healthUrl },
        note,
      );
      clawgate.push(made);
      return made;
    };
    const proxy = part('proxy', [], `http://127.0.0.1:${ports.proxy}/healthz`);
    // The worker reaches the proxy through the tap (world.ts), which shows when a job seals.
    const worker = part(
      'worker',
      ['--proxy-url', world.relayUrl],
      `http://127.0.0.1:${ports.workerHealth}/health`,
    );
    const gateway = part('gateway', [], `http://127.0.0.1:${ports.gatewayHealth}/health`);
    note('starting clawgate proxy, worker and gateway');
    await Promise.all([proxy.up(), worker.up(), gateway.up()]);
    // The bots join their rooms on the gateway's first sync.
    for (const [room, bot] of [
      [rooms[0], botA],
      [rooms[1], botB],
    ] as const) {
      const deadline = Date.now() + 60_000;
      for (;;) {
        const members = await appr0.call<{ joined: Record<string, unknown> }>(
          'GET',
          `/rooms/${encodeURIComponent(room)}/joined_members`,
        );
        if (bot.userId in members.joined) break;
        if (Date.now() > deadline) throw new Error(`${bot.userId} did not join ${room}`);
        await new Promise((r) => setTimeout(r, 250));
      }
    }
    return {
      parts: { temporal, synapse, proxy, worker, gateway },
      temporal,
      synapse,
      world,
      rooms,
      bots: [botA, botB],
      requesters: [req0, req1],
      approvers: [appr0, appr1],
      keysDir,
      bundleDir: join(state, 'bundles'),
      receiptsLog: join(state, 'proxy', 'receipts.log'),
      stop,
    };
  } catch (error) {
    await stop();
    throw error;
  }
}
