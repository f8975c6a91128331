// `clawgate security audit` asks the real homeserver about the rooms: a bot with encryption
// off that is in an encrypted room, and a room of its list in clear, are notes; a room the bot
// is not in is one it could not check; the command still succeeds (notes are not errors).
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { test } from 'node:test';
import type { RegisteredUser } from '../../src/devstack/synapse.ts';
import { registerTestUser, testServers } from '../harness/servers.ts';

const bin = fileURLToPath(new URL('../../bin/clawgate', import.meta.url));

async function matrix(user: RegisteredUser, method: string, path: string, body: unknown = {}) {
  const res = await fetch(`${testServers().synapse.baseUrl}/_matrix/client/v3${path}`, {
    method,
    headers: { authorization: `Bearer ${user.accessToken}`, 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  const json = (await res.json()) as Record<string, unknown>;
  assert.ok(res.ok, `${method} ${path}: ${res.status} ${JSON.stringify(json)}`);
  return json;
}

/** A room the owner makes with the bot invited and joined; encrypted from its creation or not. */
async function room(owner: RegisteredUser, bot: RegisteredUser | null, encrypted: boolean): Promise<string> {
  const { room_id: roomId } = (await matrix(owner, 'POST', '/createRoom', {
    preset: 'private_chat',
    invite: bot ? [bot.userId] : [],
    initial_state: encrypted
      ? [{ type: 'm.room.encryption', state_key: '', content: { algorithm: 'm.megolm.v1.aes-sha2' } }]
      : [],
  })) as { room_id: string };
  if (bot) await matrix(bot, 'POST', `/join/${encodeURIComponent(roomId)}`);
  return roomId;
}

function audit(configPath: string): Promise<{ code: number; stdout: string; stderr: string }> {
  const env = { ...process.env, CLAWGATE_CONFIG: configPath };
  return new Promise((resolve) => {
    execFile(bin, ['security', 'audit'], { env, cwd: tmpdir() }, (error, stdout, stderr) => {
      resolve({ code: error ? Number(error.code ?? 1) : 0, stdout, stderr });
    });
  });
}

test('the audit asks Synapse: encryption off in an encrypted room, a listed room in clear, a room it is not in', async () => {
  const [owner, plainBot, cryptoBot] = await Promise.all([
    registerTestUser('auditowner'),
    registerTestUser('auditplainbot'),
    registerTestUser('auditcryptobot'),
  ]);
  const encrypted = await room(owner, plainBot, true);
  const plain = await room(owner, plainBot, false);
  const secret = await room(owner, cryptoBot, true);
  const notJoined = await room(owner, null, true);
  const dir = mkdtempSync(join(tmpdir(), 'clawgate-audit-synapse-'));
  const configPath = join(dir, 'clawgate.yaml');
  const { synapse } = testServers();
  writeFileSync(
    configPath,
    JSON.stringify({
      stateDir: join(dir, 'state'),
      matrix: { homeserverUrl: synapse.baseUrl },
      gateway: {
        accounts: [
          // Its list names the plain room only; the encrypted one it was invited to is found too.
          {
            id: 'plain',
            homeserverUrl: synapse.baseUrl,
            userId: plainBot.userId,
            accessToken: plainBot.accessToken,
            rooms: [plain],
            encryption: false,
          },
          // Encryption on by default, in its encrypted room: nothing to say; not in the other.
          {
            id: 'secure',
            homeserverUrl: synapse.baseUrl,
            userId: cryptoBot.userId,
            accessToken: cryptoBot.accessToken,
            rooms: [secret, notJoined],
          },
        ],
      },
    }),
    { mode: 0o600 },
  );
  const r = await audit(configPath);
  assert.equal(r.code, 0, `${r.stdout}${r.stderr}`);
  const notes = r.stdout.split('\n').filter((line) => line.startsWith('NOTE'));
  const has = (pattern: string): boolean => notes.some((line) => line.includes(pattern));
  assert.ok(
    has(
      `gateway account plain (${plainBot.userId}) has encryption off and is in the encrypted room ${encrypted}`,
    ),
    r.stdout,
  );
  assert.ok(has(`room ${plain} (allowlisted: the rooms of gateway account plain`), r.stdout);
  assert.ok(has(`could not check whether room ${notJoined} (of gateway account secure`), r.stdout);
  assert.ok(
    !r.stdout.includes(secret),
    `the encrypted room read with encryption on is not named:\n${r.stdout}`,
  );
  assert.equal(notes.length, 3, r.stdout);
});
