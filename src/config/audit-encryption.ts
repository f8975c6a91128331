// The end-to-end encryption part of `clawgate security audit`, asked of the homeserver: a bot
// account with encryption off in an encrypted room (it can neither read nor post there), and a
// room on an allowlist (an account's rooms, an active policy's rooms_allowlist) that is not
// encrypted (its requests, plans and answers lie in clear on the homeserver). Notes, not
// errors: either may be what a team chose. A room that could not be checked is said so.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { AccountState } from '../ingress/account-state.ts';
import type { AccountConfig } from '../ingress/config.ts';
import { FilePolicyRegistry } from '../policy/registry.ts';
import { demoAccount, readDemo, ROOM_ENCRYPTION } from '../stack/demo.ts';
import type { Finding } from './audit.ts';
import type { ClawgateConfig } from './config.ts';
import { statePaths } from './config.ts';

/** How long one question to the homeserver may take. */
const ASK_MS = 10_000;

type Answer<T> = { ok: true; value: T } | { ok: false; reason: string };

/** A GET on the client-server API: its JSON, or why there is none (404 is an answer of its own). */
async function ask(
  homeserverUrl: string,
  token: string,
  path: string,
): Promise<Answer<{ status: number; body: Record<string, unknown> }>> {
  let res: Response;
  try {
    res = await fetch(`${homeserverUrl}/_matrix/client/v3${path}`, {
      headers: { authorization: `Bearer ${token}` },
      signal: AbortSignal.timeout(ASK_MS),
    });
  } catch (error) {
    return {
      ok: false,
      reason: `the homeserver ${homeserverUrl} does not answer (${(error as Error).message})`,
    };
  }
  const body = (await res.json().catch(() => ({}))) as Record<string, unknown>;
  if (res.ok || res.status === 404) return { ok: true, value: { status: res.status, body } };
  const said = typeof body['error'] === 'string' ? `: ${body['error']}` : '';
  return { ok: false, reason: `the homeserver answered ${res.status}${said}` };
}

/** Whether a room is encrypted, as its state says to a member of it. */
async function roomEncrypted(
  account: AccountConfig,
  token: string,
  roomId: string,
): Promise<Answer<boolean>> {
  const path = `/rooms/${encodeURIComponent(roomId)}/state/${ROOM_ENCRYPTION.type}/`;
  const answer = await ask(account.homeserverUrl, token, path);
  if (!answer.ok) return answer;
  return { ok: true, value: answer.value.status === 200 };
}

/** The account's token: the configured one, else the one its password login gave and the gateway kept. */
function tokenOf(config: ClawgateConfig, account: AccountConfig): string | null {
  if (account.accessToken) return account.accessToken;
  const gatewayDir = statePaths(config).gateway;
  if (!existsSync(join(gatewayDir, 'accounts', account.id))) return null;
  const saved = new AccountState(gatewayDir, account.id).credentials();
  const same = saved?.userId === account.userId && saved.homeserverUrl === account.homeserverUrl;
  return same ? saved.accessToken : null;
}

/** The rooms of every active policy's allowlist, with the channel that lists it. */
function policyRooms(config: ClawgateConfig): Map<string, string> {
  const rooms = new Map<string, string>();
  try {
    const registry = new FilePolicyRegistry(statePaths(config).registry);
    for (const { channel, hash } of registry.channels()) {
      for (const room of registry.policy(hash).matrix.rooms_allowlist) rooms.set(room, channel);
    }
  } catch {
    // An unreadable registry or policy is a finding of the audit's own already.
  }
  return rooms;
}

/** The accounts the gateway runs: the configured ones, else the demo bot of `clawgate start`. */
function accountsOf(config: ClawgateConfig): AccountConfig[] {
  if (config.gateway.accounts) return config.gateway.accounts;
  const demo = config.matrix.homeserverUrl ? null : readDemo(config);
  return demo ? [demoAccount(demo)] : [];
}

const PLAIN_FIX =
  "turn on encryption in the room's settings (it cannot be turned off again), or move to a new encrypted room";

export async function auditEncryption(config: ClawgateConfig): Promise<Finding[]> {
  const findings: Finding[] = [];
  const note = (what: string, fix: string): void => void findings.push({ severity: 'note', what, fix });
  const allowlisted = policyRooms(config);
  const served = new Set<string>();
  for (const account of accountsOf(config)) {
    const who = `gateway account ${account.id} (${account.userId})`;
    const token = tokenOf(config, account);
    if (!token) {
      note(
        `could not check the rooms of ${who}: it has no access token yet (it logs in at its first start)`,
        'run the audit again after the gateway has started once',
      );
      continue;
    }
    for (const room of account.rooms) served.add(room);
    const rooms = new Set(account.rooms);
    if (!account.encryption) {
      // Every room it is in: an encrypted one it was invited to before is as unreadable.
      const joined = await ask(account.homeserverUrl, token, '/joined_rooms');
      if (!joined.ok) {
        note(
          `could not check the rooms of ${who}: ${joined.reason}`,
          'run the audit where the homeserver answers',
        );
        continue;
      }
      const list = joined.value.body['joined_rooms'];
      for (const room of Array.isArray(list) ? list : []) if (typeof room === 'string') rooms.add(room);
    }
    for (const roomId of rooms) {
      const encrypted = await roomEncrypted(account, token, roomId);
      if (!encrypted.ok) {
        note(
          `could not check whether room ${roomId} (of ${who}) is encrypted: ${encrypted.reason}`,
          'run the audit where the homeserver answers, once the bot is in the room',
        );
        continue;
      }
      if (encrypted.value && !account.encryption) {
        note(
          `${who} has encryption off and is in the encrypted room ${roomId}: it can neither read nor post there`,
          `remove encryption: false from gateway.accounts (${account.id}); encryption is on by default`,
        );
      }
      const listedBy = account.rooms.includes(roomId) ? `the rooms of ${who}` : allowlisted.get(roomId);
      if (!encrypted.value && listedBy !== undefined) {
        note(
          `room ${roomId} (allowlisted: ${listedBy}) is not end-to-end encrypted: its requests, plans and answers are stored in clear on the homeserver`,
          PLAIN_FIX,
        );
      }
    }
  }
  for (const [roomId, channel] of allowlisted) {
    if (served.has(roomId)) continue;
    note(
      `could not check whether room ${roomId} (allowlisted by the policy of channel ${channel}) is encrypted: no gateway account here serves it`,
      'run the audit with the configuration of the gateway that serves the room',
    );
  }
  return findings;
}
