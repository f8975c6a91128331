// The real entry point: `clawgate start` in the background on a fresh state folder (its own
// Temporal dev server and Synapse, not the harness's), a job driven from the terminal with
// `clawgate say` from request to sealed bundle, the stack stopped and started again, and the
// job found by `clawgate jobs`.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { checkClawsigExport } from '../../src/evidence/clawsig-check.ts';
import { toolPaths } from '../../src/devstack/tools.ts';
import { DEMO_README } from '../../src/workspace/workspaces.ts';
import {
  assignPorts,
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

const { state, env } = freshStackEnv('clawgate-start-');
let stack: StartedStack | undefined;
const clawgate = (...args: string[]) => runClawgate(env, ...args);
const until = (args: string[], pattern: RegExp, timeoutMs?: number) =>
  untilClawgate(env, args, pattern, timeoutMs);

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
  const shown = await until(['jobs', 'show', jobId], /outcome\s+succeeded/);
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
