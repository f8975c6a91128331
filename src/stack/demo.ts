// The demo on the embedded Synapse: a requester, an approver and the bot, an end-to-end
// encrypted room the requester made with the other two invited, and a policy for that room.
// Kept in <stateDir>/demo.json (0600: it holds the demo users' tokens and the recovery key of
// the bot's key backup) so `clawgate say --as requester ...` can act as them and a restart
// finds the same room. The requester and the approver get their devices' crypto stores on the
// first start (src/stack/demo-device.ts), before the bot first speaks in the room: every
// message of the bot's is encrypted for them too.
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { encodeRecoveryKey } from 'matrix-js-sdk/lib/crypto-api/index.js';
import type { Logger } from 'pino';
import { z } from 'zod';
import type { ClawgateConfig } from '../config/config.ts';
import { statePaths } from '../config/config.ts';
import type { SynapseServer } from '../devstack/synapse.ts';
import { ClawgateError, ERROR_CODES } from '../errors.ts';
import type { AccountConfig } from '../ingress/config.ts';
import { quietMatrixSdkLogging } from '../ingress/sdk-logging.ts';
import { loadSigner, publicJwks } from '../keys/keyring.ts';
import { FilePolicyRegistry, signWpc } from '../policy/registry.ts';
import { loadWpc, parseWpc, type WpcInput } from '../policy/wpc.ts';
import { writeFileAtomic } from '../storage/files.ts';
import { demoDeviceExists, openDemoDevice } from './demo-device.ts';

const demoUser = z.object({
  userId: z.string(),
  accessToken: z.string(),
  deviceId: z.string(),
  password: z.string(),
});
export const demoSchema = z
  .object({
    homeserverUrl: z.string(),
    roomId: z.string(),
    users: z.object({ requester: demoUser, approver: demoUser, bot: demoUser }).strict(),
    /** The recovery key of the bot's server-side key backup (made at the first start). */
    recoveryKey: z.string().min(1).optional(),
  })
  .strict();
export type DemoState = z.infer<typeof demoSchema>;
export const DEMO_USERS = ['requester', 'approver', 'bot'] as const;
/** The demo users a person acts as with `clawgate say`. */
export const DEMO_PEOPLE = ['requester', 'approver'] as const;
export type DemoPerson = (typeof DEMO_PEOPLE)[number];

/** The state of a demo room made encrypted: the event Matrix clients make for an encrypted room. */
export const ROOM_ENCRYPTION = { type: 'm.room.encryption', content: { algorithm: 'm.megolm.v1.aes-sha2' } };

export function readDemo(config: ClawgateConfig): DemoState | null {
  const path = statePaths(config).demo;
  if (!existsSync(path)) return null;
  const parsed = demoSchema.safeParse(JSON.parse(readFileSync(path, 'utf8')));
  if (!parsed.success) {
    throw new ClawgateError(
      ERROR_CODES.stateCorrupt,
      `${path} is not what clawgate start wrote; remove the state folder to start the demo afresh`,
    );
  }
  return parsed.data;
}

async function matrix(base: string, token: string, method: string, path: string, body?: unknown) {
  const res = await fetch(`${base}/_matrix/client/v3${path}`, {
    method,
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
  });
  const json = (await res.json()) as Record<string, unknown>;
  if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${JSON.stringify(json)}`);
  return json;
}

export function writeDemo(config: ClawgateConfig, demo: DemoState): void {
  writeFileAtomic(statePaths(config).demo, `${JSON.stringify(demo, null, 2)}\n`);
}

/**
 * The demo users and room, made on the first start and read back on later ones. A demo from
 * before the room was encrypted gets its encryption turned on (it cannot be turned off again),
 * its recovery key, and its people's devices.
 */
export async function ensureDemo(
  config: ClawgateConfig,
  synapse: SynapseServer,
  logger: Logger,
): Promise<DemoState> {
  const existing = readDemo(config);
  if (existing) {
    // Synapse may have moved (matrix.port changed): the gateway and `clawgate say` read the address here.
    const demo: DemoState = { ...existing, homeserverUrl: synapse.baseUrl };
    await encryptDemoRoom(demo, logger);
    const moved = existing.homeserverUrl !== synapse.baseUrl;
    if (!demo.recoveryKey) demo.recoveryKey = newRecoveryKey();
    if (moved || !existing.recoveryKey) writeDemo(config, demo);
    await ensureDemoDevices(config, demo, logger);
    return demo;
  }
  logger.info('creating the demo users and room');
  const register = async (localpart: string) => {
    const password = randomBytes(12).toString('base64url');
    return { ...(await synapse.registerUser(localpart, { password })), password };
  };
  const users = {
    requester: await register('demo-requester'),
    approver: await register('demo-approver'),
    bot: await register('clawgate'),
  };
  const base = synapse.baseUrl;
  const { room_id: roomId } = (await matrix(base, users.requester.accessToken, 'POST', '/createRoom', {
    name: 'clawgate demo',
    topic: 'Ask with !claw <what to do>; approve with !approve in the plan thread.',
    preset: 'private_chat',
    invite: [users.approver.userId, users.bot.userId],
    // Encrypted from its creation, as Matrix clients make private rooms.
    initial_state: [{ ...ROOM_ENCRYPTION, state_key: '' }],
  })) as { room_id: string };
  await matrix(base, users.approver.accessToken, 'POST', `/join/${encodeURIComponent(roomId)}`, {});
  const demo: DemoState = { homeserverUrl: base, roomId, users, recoveryKey: newRecoveryKey() };
  writeDemo(config, demo);
  await ensureDemoDevices(config, demo, logger);
  return demo;
}

/** A recovery key for a key backup, in the form Element shows (and asks for). */
function newRecoveryKey(): string {
  const key = encodeRecoveryKey(randomBytes(32));
  if (!key) throw new Error('matrix-js-sdk made no recovery key');
  return key;
}

/** Turns on the encryption of a demo room made before it was encrypted from its creation. */
async function encryptDemoRoom(demo: DemoState, logger: Logger): Promise<void> {
  const path = `/rooms/${encodeURIComponent(demo.roomId)}/state/${ROOM_ENCRYPTION.type}/`;
  const token = demo.users.requester.accessToken;
  const res = await fetch(`${demo.homeserverUrl}/_matrix/client/v3${path}`, {
    headers: { authorization: `Bearer ${token}` },
  });
  if (res.ok) return;
  if (res.status !== 404) throw new Error(`GET ${path}: ${res.status} ${await res.text()}`);
  await matrix(demo.homeserverUrl, token, 'PUT', path, ROOM_ENCRYPTION.content);
  logger.info({ roomId: demo.roomId }, 'the demo room is now end-to-end encrypted');
}

/**
 * The requester's and the approver's devices, with their crypto stores, made (their keys on
 * the homeserver) before the bot speaks in the room. A device made before is left as it is.
 */
async function ensureDemoDevices(config: ClawgateConfig, demo: DemoState, logger: Logger): Promise<void> {
  for (const who of DEMO_PEOPLE) {
    if (demoDeviceExists(config, who)) continue;
    // As the gateway has it: the SDK's chatty logging kept out of the stack's output.
    quietMatrixSdkLogging();
    logger.info({ user: demo.users[who].userId }, "making the demo user's device keys");
    const device = await openDemoDevice(config, demo, who);
    try {
      await device.keysPublished();
    } finally {
      await device.close();
    }
  }
}

/**
 * The demo bot's gateway account: encryption on, its crypto store in the gateway's state
 * folder, its key backup under the demo's recovery key.
 */
export function demoAccount(demo: DemoState): AccountConfig {
  return {
    id: 'demo',
    homeserverUrl: demo.homeserverUrl,
    userId: demo.users.bot.userId,
    accessToken: demo.users.bot.accessToken,
    rooms: [demo.roomId],
    encryption: true,
    ...(demo.recoveryKey === undefined ? {} : { recoveryKey: demo.recoveryKey }),
  };
}

/** The demo policy: the demo room, its requester and approver, read-only tools, the demo model. */
export function demoPolicy(demo: DemoState, channel: string, model: string): WpcInput {
  return {
    wpc_version: '1',
    channel: 'matrix',
    description: `clawgate demo (${channel})`,
    matrix: {
      rooms_allowlist: [demo.roomId],
      requesters_allowlist: [demo.users.requester.userId],
      approval: {
        required: true,
        approver_user_ids_allowlist: [demo.users.approver.userId],
      },
    },
    execution: {
      sandbox: { mode: 'all', workspace_access: 'ro' },
      tools: { allow: ['read', 'search'], deny: ['exec'] },
      // The agent loop: the model reads what the tools return; read and search have no side effects.
      mode: 'agent',
      agent: { model_turns: 12, tool_calls: 24, wall_seconds: 600 },
    },
    tokens: { cst: { job_scoped: true, pin_policy_hash: true } },
    model_access: { route_via: 'clawgate-proxy', receipts: 'required', allowed_models: [model] },
  };
}

/**
 * Makes sure a policy is active on the channel: the configured initial policy, else the demo
 * one; returns the active hash, or null when there is none to activate.
 */
export async function ensurePolicy(
  config: ClawgateConfig,
  demo: DemoState | null,
  model: string,
  logger: Logger,
): Promise<string | null> {
  const paths = statePaths(config);
  const registry = new FilePolicyRegistry(paths.registry);
  const channel = config.policy.channel;
  const active = registry.activeHash(channel);
  if (active) return active;
  let wpc;
  if (config.policy.initial) wpc = loadWpc(readFileSync(config.policy.initial, 'utf8')).wpc;
  else if (demo) wpc = parseWpc(demoPolicy(demo, channel, model));
  else {
    logger.warn(
      { channel },
      'no policy is active on the channel: requests are refused until `clawgate policy activate` makes one active',
    );
    return null;
  }
  const signed = signWpc(wpc, loadSigner(paths.keys, 'policy'));
  await registry.register(signed, publicJwks(paths.keys, ['policy']));
  registry.activate(channel, signed.hash, { reason: 'first start', by: 'clawgate start' });
  logger.info({ channel, hash: signed.hash }, 'policy activated');
  return signed.hash;
}
