// Encrypted by default: an account reads encrypted rooms unless its configuration says
// `encryption: false`, the sample says so, and the audit's encryption notes (asked of a
// homeserver, here a stand-in that answers room state and joined rooms): an account with
// encryption off in an encrypted room, an allowlisted room in clear, and a room or homeserver
// it could not ask, each said, none of them failing the audit.
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import pino from 'pino';
import { auditEncryption } from '../../../src/config/audit-encryption.ts';
import { renderFindings } from '../../../src/config/audit.ts';
import { parseConfig, statePaths } from '../../../src/config/config.ts';
import { SAMPLE_CONFIG } from '../../../src/config/sample.ts';
import { freeLoopbackPort } from '../../../src/devstack/net.ts';
import { parseGatewayConfig } from '../../../src/ingress/config.ts';
import { generateKeyring } from '../../../src/keys/keyring.ts';
import { ensurePolicy } from '../../../src/stack/demo.ts';

const TOKEN = 'syt_test_token';
/** Room state as the stand-in homeserver tells it: encrypted, in clear, or not for this user. */
const ROOMS: Record<string, 'encrypted' | 'plain' | 'forbidden'> = {
  '!enc:hs': 'encrypted',
  '!enc2:hs': 'encrypted',
  '!plain:hs': 'plain',
  '!gone:hs': 'forbidden',
};
let server: Server;
let homeserverUrl: string;
const asked: string[] = [];

before(async () => {
  server = createServer((req, res) => {
    const url = decodeURIComponent(req.url ?? '');
    asked.push(url);
    const send = (status: number, body: unknown): void => {
      res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body));
    };
    if (req.headers.authorization !== `Bearer ${TOKEN}`) return send(401, { errcode: 'M_UNKNOWN_TOKEN' });
    if (url === '/_matrix/client/v3/joined_rooms')
      return send(200, { joined_rooms: ['!plain:hs', '!enc2:hs'] });
    const room = /^\/_matrix\/client\/v3\/rooms\/([^/]+)\/state\/m\.room\.encryption\/$/.exec(url)?.[1];
    const kind = room === undefined ? undefined : ROOMS[room];
    if (kind === 'encrypted') return send(200, { algorithm: 'm.megolm.v1.aes-sha2' });
    if (kind === 'plain') return send(404, { errcode: 'M_NOT_FOUND', error: 'Event not found.' });
    if (kind === 'forbidden') return send(403, { errcode: 'M_FORBIDDEN', error: 'You are not in the room.' });
    send(404, { errcode: 'M_UNRECOGNIZED' });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address() as { port: number };
  homeserverUrl = `http://127.0.0.1:${address.port}`;
});
after(() => server.close());

const account = (over: Record<string, unknown>) => ({
  id: 'ops',
  homeserverUrl,
  userId: '@bot:hs',
  accessToken: TOKEN,
  rooms: ['!enc:hs'],
  ...over,
});
const configWith = (...accounts: Array<Record<string, unknown>>) =>
  parseConfig({
    stateDir: join(mkdtempSync(join(tmpdir(), 'clawgate-audit-e2ee-')), 'state'),
    matrix: { homeserverUrl },
    gateway: { accounts },
  });

test('an account has encryption on unless it says encryption: false; the sample says so', () => {
  const base = { stateDir: '/s', policy: { registryDir: '/r' } };
  const on = parseGatewayConfig({ ...base, accounts: [account({})] });
  assert.equal(on.accounts[0]?.encryption, true);
  const off = parseGatewayConfig({ ...base, accounts: [account({ encryption: false })] });
  assert.equal(off.accounts[0]?.encryption, false);
  assert.equal(configWith(account({})).gateway.accounts?.[0]?.encryption, true);
  assert.match(SAMPLE_CONFIG, /encryption: true +# the default/);
});

test('encryption off in an encrypted room, and an allowlisted room in clear: notes, not errors', async () => {
  const findings = await auditEncryption(configWith(account({ encryption: false, rooms: ['!plain:hs'] })));
  assert.deepEqual(
    findings.map((f) => f.severity),
    findings.map(() => 'note'),
  );
  const said = findings.map((f) => f.what);
  // Its joined rooms are asked too: !enc2 is not on its list, and it still cannot read it.
  assert.ok(
    said.some((w) =>
      /account ops \(@bot:hs\) has encryption off and is in the encrypted room !enc2:hs/.test(w),
    ),
    renderFindings(findings),
  );
  assert.ok(
    said.some((w) =>
      /room !plain:hs \(allowlisted: the rooms of gateway account ops .*\) is not end-to-end encrypted/.test(
        w,
      ),
    ),
    renderFindings(findings),
  );
  assert.equal(findings.length, 2, renderFindings(findings));
  assert.match(renderFindings(findings), /^NOTE +gateway account ops/m);
  assert.match(findings.find((f) => /encryption off/.test(f.what))?.fix ?? '', /remove encryption: false/);
});

test('an encrypted room read with encryption on: nothing to say; a room it cannot ask about is said so', async () => {
  asked.length = 0;
  const findings = await auditEncryption(configWith(account({ rooms: ['!enc:hs', '!gone:hs'] })));
  assert.deepEqual(
    findings.map((f) => [f.severity, f.what]),
    [
      [
        'note',
        'could not check whether room !gone:hs (of gateway account ops (@bot:hs)) is encrypted: the homeserver answered 403: You are not in the room.',
      ],
    ],
  );
  // With encryption on, its joined rooms are not asked for: only its own rooms matter.
  assert.ok(!asked.includes('/_matrix/client/v3/joined_rooms'));
});

test('a homeserver that does not answer, or an account without a token yet: could not check, said', async () => {
  const down = `http://127.0.0.1:${await freeLoopbackPort()}`;
  const findings = await auditEncryption(
    configWith(
      account({ homeserverUrl: down }),
      account({
        id: 'pw',
        userId: '@pw:hs',
        accessToken: undefined,
        password: 'secret',
        rooms: ['!enc2:hs'],
      }),
    ),
  );
  const said = findings.map((f) => f.what);
  assert.match(
    said[0] ?? '',
    new RegExp(`^could not check whether room !enc:hs .* the homeserver ${down} does not answer`),
  );
  assert.match(
    said[1] ?? '',
    /^could not check the rooms of gateway account pw \(@pw:hs\): it has no access token yet/,
  );
  assert.equal(findings.length, 2);
});

test("an active policy's allowlisted room that no account here serves: could not check, said", async () => {
  const config = configWith(account({}));
  await generateKeyring(statePaths(config).keys, 'policy');
  const user = { userId: '@u:hs', accessToken: 't', deviceId: 'D', password: 'p' };
  const demo = {
    homeserverUrl,
    roomId: '!elsewhere:hs',
    users: { requester: user, approver: user, bot: user },
  };
  await ensurePolicy(config, demo, 'demo/model', pino({ level: 'silent' }));
  const findings = await auditEncryption(config);
  assert.deepEqual(
    findings.map((f) => f.what),
    [
      'could not check whether room !elsewhere:hs (allowlisted by the policy of channel matrix) is encrypted: no gateway account here serves it',
    ],
  );
});
