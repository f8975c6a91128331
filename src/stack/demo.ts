// The demo on the embedded Synapse: a requester, an approver and the bot, a room the requester
// made with the other two invited, and a policy for that room. Kept in <stateDir>/demo.json
// (0600: it holds the demo users' tokens) so `clawgate say --as requester ...` can act as them
// and a restart finds the same room.
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import type { Logger } from 'pino';
import { z } from 'zod';
import type { ClawgateConfig } from '../config/config.ts';
import { statePaths } from '../config/config.ts';
import type { SynapseServer } from '../devstack/synapse.ts';
import { ClawgateError, ERROR_CODES } from '../errors.ts';
import { loadSigner, publicJwks } from '../keys/keyring.ts';
import { FilePolicyRegistry, signWpc } from '../policy/registry.ts';
import { loadWpc, parseWpc, type WpcInput } from '../policy/wpc.ts';
import { writeFileAtomic } from '../storage/files.ts';

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
  })
  .strict();
export type DemoState = z.infer<typeof demoSchema>;
export const DEMO_USERS = ['requester', 'approver', 'bot'] as const;

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

/** The demo users and room, made on the first start and read back on later ones. */
export async function ensureDemo(
  config: ClawgateConfig,
  synapse: SynapseServer,
  logger: Logger,
): Promise<DemoState> {
  const existing = readDemo(config);
  if (existing) {
    if (existing.homeserverUrl === synapse.baseUrl) return existing;
    // Synapse moved (matrix.port changed): the gateway and `clawgate say` read the address here.
    const moved = { ...existing, homeserverUrl: synapse.baseUrl };
    writeFileAtomic(statePaths(config).demo, `${JSON.stringify(moved, null, 2)}\n`);
    return moved;
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
  })) as { room_id: string };
  await matrix(base, users.approver.accessToken, 'POST', `/join/${encodeURIComponent(roomId)}`, {});
  const demo: DemoState = { homeserverUrl: base, roomId, users };
  writeFileAtomic(statePaths(config).demo, `${JSON.stringify(demo, null, 2)}\n`);
  return demo;
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
