// The real entry point: `clawgate start` in the background on a fresh state folder (its own
// Temporal dev server and Synapse, not the harness's), a job driven from the terminal with
// `clawgate say` from request to sealed bundle, the stack stopped and started again, and the
// job found by `clawgate jobs`. Then the whole demo as a person at a terminal sees it, in the
// end-to-end encrypted demo room: the plan and the answer read with `clawgate say --follow`
// through the demo users' own devices, the stack restarted between the request and the
// approval, and nothing of the request, the plan or the answer in the homeserver's database.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { DatabaseSync } from 'node:sqlite';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { checkClawsigExport } from '../../src/evidence/clawsig-check.ts';
import { toolPaths } from '../../src/devstack/tools.ts';
import { DEMO_README } from '../../src/workspace/workspaces.ts';
import {
  assignPorts,
  followClawgate,
  freshStackEnv,
  runClawgate,
  startClawgate,
  untilClawgate,
  type StartedStack,
} from '../harness/clawgate-start.ts';

const toolsTemporal = (): string => toolPaths().temporal;

/** Every payload's data in a history as the Temporal CLI prints it (base64), decoded as text. */
function payloadTexts(historyJson: string): string {
  const texts: string[] = [];
  const walk = (node: unknown): void => {
    if (typeof node !== 'object' || node === null) return;
    const { metadata, data } = node as { metadata?: unknown; data?: unknown };
    if (typeof metadata === 'object' && metadata !== null && typeof data === 'string') {
      texts.push(Buffer.from(data, 'base64').toString('utf8'));
    }
    for (const value of Object.values(node)) walk(value);
  };
  walk(JSON.parse(historyJson));
  return texts.join('\n');
}

let { state, env } = freshStackEnv('clawgate-start-');
let stack: StartedStack | undefined;
const clawgate = (...args: string[]) => runClawgate(env, ...args);
const until = (args: string[], pattern: RegExp, timeoutMs?: number) =>
  untilClawgate(env, args, pattern, timeoutMs);

/** Every log of a stack: the supervisor's, and each part's (state/logs/<part>.log). */
function allLogs(): string {
  const logs = join(state, 'logs');
  return [join(state, 'clawgate.log'), ...readdirSync(logs).map((name) => join(logs, name))]
    .map((file) => readFileSync(file, 'utf8'))
    .join('\n');
}

async function start(): Promise<void> {
  stack = await startClawgate(env);
}

async function stop(): Promise<void> {
  if (!stack) return;
  stack.child.kill('SIGINT');
  const code = await stack.exited;
  assert.equal(code, 0, `clawgate start stopped with ${code}:\n${stack.output()}`);
  assert.match(stack.output(), /stopped\n/);
  stack = undefined;
}

after(async () => {
  await stack?.terminate();
});

test('clawgate start on fresh state: a job from `clawgate say` to a sealed bundle; after a restart `clawgate jobs` still has it', async () => {
  await assignPorts(env);
  await start();
  const ready = stack?.output() ?? '';
  for (const part of [
    'Temporal Web UI',
    'Matrix ',
    'DEMO upstream',
    'Model proxy',
    'Worker',
    'Gateway health',
    'Evidence pages',
    'Codec server',
  ]) {
    assert.ok(ready.includes(part), `the start-up summary names ${part}:\n${ready}`);
  }
  assert.equal(statSync(state).mode & 0o777, 0o700);

  const asked = await clawgate('say', '--as', 'requester', 'demo', '!claw summarise the readme');
  assert.equal(asked.code, 0, asked.stderr);
  const listed = await until(['jobs', 'list'], /awaiting_approval/);
  const jobId = /^(j[a-z2-7]{9})\s+awaiting_approval/m.exec(listed)?.[1];
  assert.ok(jobId, listed);
  const approved = await clawgate('say', '--as', 'approver', 'demo', `!approve ${jobId}`);
  assert.equal(approved.code, 0, approved.stderr);
  // The turns come from a query of the finished workflow (replayed by the worker; it may miss its
  // deadline on a busy machine): asked again until they are there.
  const shown = await until(['jobs', 'show', jobId], /execution turn 2: answer[^]*outcome\s+succeeded/);
  // The new flow: the plan, the turns, and an answer built from the README the model was sent.
  assert.match(shown, /execution turn 1: read \{"path":"README\.md"\} → exit 0/);
  assert.match(shown, /execution turn 2: answer/);
  assert.ok(shown.includes(/^# (.+)$/m.exec(DEMO_README)?.[1] as string), shown);
  const digest = /bundle\s+([0-9a-f]{64})/.exec(shown)?.[1] as string;
  const bundle = join(state, 'bundles', `${digest}.json`);
  assert.ok(existsSync(bundle));
  const verified = await clawgate('verify', bundle);
  assert.equal(verified.code, 0, verified.stderr);
  assert.match(verified.stdout, /^ok: /);
  // The job's page, from the evidence server the stack started: the bundle, verified.
  // The worker it runs in its own process serves its health and metrics, as `clawgate worker` does.
  const workerBase = `http://127.0.0.1:${env['CLAWGATE_WORKER_HEALTH_PORT']}`;
  assert.ok(ready.includes(`Worker health    ${workerBase}/health`), ready);
  assert.equal((await fetch(`${workerBase}/health`)).status, 200);
  const metrics = await fetch(`${workerBase}/metrics`);
  assert.equal(metrics.status, 200);
  assert.match(
    await metrics.text(),
    /^clawgate_worker_jobs_ended_total\{[^}]*outcome="succeeded"[^}]*\} 1$/m,
  );
  const page = await fetch(`http://127.0.0.1:${env['CLAWGATE_EVIDENCE_PORT']}/bundles/${digest}`);
  assert.equal(page.status, 200);
  assert.match(await page.text(), /VERIFIED/);
  // Its Clawsig export, served beside it, passes the reference verifier's rules with the DIDs
  // `keys publish` prints; `export clawsig` makes the same bytes again.
  const served = await fetch(
    `http://127.0.0.1:${env['CLAWGATE_EVIDENCE_PORT']}/bundles/${digest}.clawsig.json`,
  );
  assert.equal(served.status, 200);
  const exportText = await served.text();
  const published = await clawgate('keys', 'publish', '--json');
  assert.equal(published.code, 0, published.stderr);
  const dids = JSON.parse(published.stdout) as {
    agent: Array<{ did: string }>;
    gateway: Array<{ did: string }>;
  };
  const checked = checkClawsigExport(JSON.parse(exportText), {
    gatewayDids: dids.gateway.map((g) => g.did),
    agentDid: dids.agent[0]?.did,
  });
  assert.deepEqual(checked.problems, []);
  assert.equal(checked.tier, 'gateway');
  const reexported = await clawgate('export', 'clawsig', bundle, '--out', '-');
  assert.equal(reexported.code, 0, reexported.stderr);
  assert.equal(reexported.stdout, exportText);
  const audit = await clawgate('security', 'audit');
  assert.equal(audit.code, 0, `${audit.stdout}${audit.stderr}`);

  // The job's payloads are encrypted with the state folder's payload keyring; the Web UI is
  // started pointed at the codec server, which decrypts for the UI's origin and refuses others.
  assert.ok(existsSync(join(state, 'keys', 'payload', 'keyring.json')));
  const codecUrl = `http://127.0.0.1:${env['CLAWGATE_CODEC_PORT']}`;
  const uiOrigin = `http://127.0.0.1:${env['CLAWGATE_TEMPORAL_UI_PORT']}`;
  const settings = await (await fetch(`${uiOrigin}/api/v1/settings`)).text();
  assert.ok(settings.includes(codecUrl), `the Web UI's settings name the codec server:\n${settings}`);
  const workflowId = /^workflow\s+(\S+)/m.exec(shown)?.[1] as string;
  const show = (...extra: string[]) =>
    new Promise<string>((resolve, reject) => {
      execFile(
        toolsTemporal(),
        [
          'workflow',
          'show',
          '--address',
          `127.0.0.1:${env['CLAWGATE_TEMPORAL_PORT']}`,
          '--workflow-id',
          workflowId,
          '--output',
          'json',
          ...extra,
        ],
        { maxBuffer: 64 * 1024 * 1024 },
        (error, stdout, stderr) =>
          error ? reject(new Error(`${error.message}\n${stderr}`)) : resolve(stdout),
      );
    });
  const rawHistory = await show();
  assert.ok(
    rawHistory.includes('YmluYXJ5L2VuY3J5cHRlZA==') || rawHistory.includes('binary/encrypted'),
    'the stored payloads are binary/encrypted',
  );
  assert.ok(!rawHistory.includes('summarise the readme'), 'no request text without the codec');
  assert.ok(!payloadTexts(rawHistory).includes('summarise the readme'), 'nor in its payloads');
  const token = readFileSync(join(state, 'codec-server.token'), 'utf8').trim();
  const decodedHistory = await show('--codec-endpoint', codecUrl, '--codec-auth', `Bearer ${token}`);
  assert.ok(
    payloadTexts(decodedHistory).includes('summarise the readme'),
    'the request text through the codec server',
  );
  for (const [origin, status] of [
    [uiOrigin, 200],
    ['http://127.0.0.1:1', 403],
  ] as const) {
    const res = await fetch(`${codecUrl}/decode`, {
      method: 'POST',
      headers: { origin, 'content-type': 'application/json' },
      body: JSON.stringify({ payloads: [] }),
    });
    assert.equal(res.status, status, origin);
  }

  // Each part's output is in a log of its own (0600), the supervisor's in clawgate.log. Secrets
  // never reach a log: the demo users' tokens and passwords are nowhere in them.
  const logs = join(state, 'logs');
  const partLogs = readdirSync(logs).sort();
  assert.deepEqual(partLogs, [
    'demo-upstream.log',
    'gateway.log',
    'proxy.log',
    'synapse.log',
    'temporal.log',
    'worker.log',
  ]);
  for (const name of partLogs) assert.equal(statSync(join(logs, name)).mode & 0o777, 0o600, name);
  assert.match(readFileSync(join(logs, 'gateway.log'), 'utf8'), /"msg":"job started"/);
  const log = [join(state, 'clawgate.log'), ...partLogs.map((name) => join(logs, name))]
    .map((file) => readFileSync(file, 'utf8'))
    .join('\n');
  const demo = JSON.parse(readFileSync(join(state, 'demo.json'), 'utf8')) as {
    users: Record<string, { accessToken: string; password: string }>;
  };
  for (const user of Object.values(demo.users)) {
    assert.ok(!log.includes(user.accessToken) && !log.includes(user.password), 'no secret in the log');
  }

  await stop();
  await start();
  const again = await clawgate('jobs', 'list');
  assert.equal(again.code, 0, again.stderr);
  assert.match(again.stdout, new RegExp(`^${jobId}\\s+succeeded`, 'm'));
  // The demo room and users are the same ones: a second job in the same room works too.
  await clawgate('say', '--as', 'requester', 'demo', '!claw once more');
  await until(['jobs', 'list', '--status', 'awaiting_approval'], /^j[a-z2-7]{9}\s+awaiting_approval/m);
  await stop();
});

/** `clawgate say --follow` in this test's stack. */
const follow = (...args: string[]) => followClawgate(env, ...args);

/** Every text value of the tables that hold a homeserver's events (Synapse's sqlite database). */
function homeserverEvents(): { text: string; encrypted: number } {
  const db = new DatabaseSync(join(state, 'synapse', 'homeserver.db'), { readOnly: true });
  try {
    const texts: string[] = [];
    for (const table of ['events', 'event_json']) {
      for (const row of db.prepare(`SELECT * FROM ${table}`).all()) {
        for (const value of Object.values(row)) if (typeof value === 'string') texts.push(value);
      }
    }
    const { n } = db.prepare(`SELECT count(*) AS n FROM events WHERE type = 'm.room.encrypted'`).get() as {
      n: number;
    };
    return { text: texts.join('\n'), encrypted: n };
  } finally {
    db.close();
  }
}

test('the demo, end-to-end encrypted: say --follow shows the plan and the answer decrypted, across a restart; the homeserver holds none of it in clear', async () => {
  // A stack an earlier test left running (it failed half-way) is not left behind.
  await stack?.terminate();
  stack = undefined;
  ({ state, env } = freshStackEnv('clawgate-e2ee-demo-'));
  await assignPorts(env);
  await start();
  const demo = JSON.parse(readFileSync(join(state, 'demo.json'), 'utf8')) as {
    homeserverUrl: string;
    roomId: string;
    recoveryKey?: string;
    users: Record<'requester' | 'approver', { userId: string; accessToken: string; deviceId: string }>;
  };
  // The room is encrypted from its creation; the bot's key backup has its recovery key, kept 0600.
  const roomState = await fetch(
    `${demo.homeserverUrl}/_matrix/client/v3/rooms/${encodeURIComponent(demo.roomId)}/state/m.room.encryption/`,
    { headers: { authorization: `Bearer ${demo.users.requester.accessToken}` } },
  );
  assert.equal(roomState.status, 200);
  assert.deepEqual(await roomState.json(), { algorithm: 'm.megolm.v1.aes-sha2' });
  assert.match(demo.recoveryKey ?? '', /^E[st][A-Za-z0-9 ]{40,}$/);
  assert.equal(statSync(join(state, 'demo.json')).mode & 0o777, 0o600);
  for (const who of ['requester', 'approver'] as const) {
    assert.equal(statSync(join(state, 'demo-devices', who, 'crypto-store.bin')).mode & 0o777, 0o600);
  }
  const health = async () =>
    (await (await fetch(`http://127.0.0.1:${env['CLAWGATE_HEALTH_PORT']}/health`)).json()) as {
      accounts: Array<{
        encryption: { available: boolean; backup: { version: string | null; error: string | null } | null };
      }>;
    };
  const botCrypto = (await health()).accounts[0]?.encryption;
  assert.equal(botCrypto?.available, true);
  assert.ok(botCrypto?.backup?.version, `the key backup is made: ${JSON.stringify(botCrypto)}`);
  assert.equal(botCrypto?.backup?.error, null);

  // The requester asks and sees the plan, decrypted, in the request's thread; Ctrl-C stops following.
  const request = '!claw summarise the readme, the end-to-end encrypted way';
  const asking = follow('--as', 'requester', 'demo', request);
  const root = (await asking.until(/said it in \S+ \(event (\$\S+), end-to-end encrypted\)/))[1] as string;
  const jobId = (
    await asking.until(/^@clawgate:\S+: Plan for job (j[a-z2-7]{9}): summarise the readme/m)
  )[1] as string;
  await asking.until(/Status: waiting for approval/);
  asking.child.kill('SIGINT');
  assert.equal(await asking.exited, 0, asking.output());
  assert.match(asking.output(), /stopped following\n$/);
  assert.doesNotMatch(asking.output(), /unable to decrypt/);

  // The stack restarts between the request and the approval.
  await stop();
  await start();
  // The approver approves in the thread and follows it: the plan sent before the restart, and
  // everything after, decrypted by the approver's own device.
  const approving = follow('--as', 'approver', 'demo', '--thread', root, '!approve');
  await approving.until(new RegExp(`job ${jobId} ended: succeeded\n`), 180_000);
  assert.equal(await approving.exited, 0, approving.output());
  const seen = approving.output();
  assert.match(seen, new RegExp(`Plan for job ${jobId}`));
  assert.match(seen, /@clawgate:\S+ reacted ✅/);
  assert.match(seen, /\(edited\): Status: approved; running/);
  const answerTitle = /^# (.+)$/m.exec(DEMO_README)?.[1] as string;
  assert.match(seen, new RegExp(`Answer for job ${jobId}:[^]*Title: ${answerTitle}`));
  assert.doesNotMatch(seen, /unable to decrypt/);

  // The requester's device, restored after the restart under the same device id, still reads
  // the thread: the plan from before the restart and the answer from after it.
  const rereading = follow('--as', 'requester', 'demo', '--thread', root, 'thanks');
  await rereading.until(new RegExp(`job ${jobId} ended: succeeded\n`));
  assert.equal(await rereading.exited, 0, rereading.output());
  assert.match(rereading.output(), new RegExp(`Plan for job ${jobId}[^]*Answer for job ${jobId}`));
  assert.doesNotMatch(rereading.output(), /unable to decrypt/);
  for (const who of ['requester', 'approver'] as const) {
    const user = demo.users[who];
    const devices = (await (
      await fetch(`${demo.homeserverUrl}/_matrix/client/v3/devices`, {
        headers: { authorization: `Bearer ${user.accessToken}` },
      })
    ).json()) as { devices: Array<{ device_id: string }> };
    assert.deepEqual(
      devices.devices.map((d) => d.device_id),
      [user.deviceId],
      `${who}: one device, the same every run`,
    );
  }
  const audit = await clawgate('security', 'audit');
  assert.equal(audit.code, 0, `${audit.stdout}${audit.stderr}`);
  assert.doesNotMatch(audit.stdout, /NOTE/);
  // A device whose store is lost is not made again under its id (the others hold its old keys):
  // the user logs in as a new device, said on stderr, and its messages still reach the bot.
  rmSync(join(state, 'demo-devices', 'requester'), { recursive: true });
  const lost = await clawgate('say', '--as', 'requester', 'demo', '!claw summarise the readme once more');
  assert.equal(lost.code, 0, lost.stderr);
  assert.match(
    lost.stderr,
    new RegExp(`device ${demo.users.requester.deviceId} was lost; it speaks as the new device`),
  );
  const renewed = JSON.parse(readFileSync(join(state, 'demo.json'), 'utf8')) as typeof demo;
  assert.notEqual(renewed.users.requester.deviceId, demo.users.requester.deviceId);
  await until(['jobs', 'list', '--status', 'awaiting_approval'], /^j[a-z2-7]{9}\s+awaiting_approval/m);
  await stop();
  // The recovery key of the bot's key backup is a secret: nowhere in the log.
  assert.ok(!allLogs().includes(demo.recoveryKey as string));

  // What the homeserver stored: encrypted events, and not a word of the request, plan or answer.
  const stored = homeserverEvents();
  assert.ok(stored.encrypted >= 6, `the thread's messages are stored encrypted (${stored.encrypted})`);
  for (const plain of [
    request,
    'summarise the readme',
    `Plan for job ${jobId}`,
    'Read README.md',
    answerTitle,
  ]) {
    assert.ok(!stored.text.includes(plain), `the homeserver's database holds "${plain}" in clear`);
  }
  assert.ok(stored.text.includes(demo.roomId), 'the tables read are those of the demo room');
});

test('bad input to the commands: one clear line, exit 1', async () => {
  const wrongUser = await clawgate('say', '--as', 'mallory', 'demo', 'hi');
  assert.equal(wrongUser.code, 1);
  assert.match(wrongUser.stderr, /^clawgate: --as mallory: requester or approver\n$/);
  const badLimit = await clawgate('jobs', 'list', '--limit', 'many');
  assert.equal(badLimit.code, 1);
  assert.match(badLimit.stderr, /--limit: a whole number/);
  const badPort = await clawgate('config', 'check');
  assert.equal(badPort.code, 0, badPort.stderr);
  env['CLAWGATE_PROXY_PORT'] = 'eighty';
  const invalid = await clawgate('config', 'check');
  assert.equal(invalid.code, 1);
  assert.match(invalid.stderr, /^clawgate: CLAWGATE_PROXY_PORT=eighty: not a TCP port/);
});
