// The evidence page as a reviewer sees it, in a real headless Chromium: a real agent job through
// the real gateway process on the real Synapse and Temporal dev server (real users typing in a
// real room, the real proxy and sandbox), with a non-approver's !approve refused before the
// approver's counts and a tool call the policy denies; then the real evidence server over the
// job's bundle folder, the page opened in the browser, and what its rendered text says. A copy
// of the bundle with one entry changed gets a page that says verification FAILED.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { after, before, test } from 'node:test';
import { Direction } from 'matrix-js-sdk';
import puppeteer, { type Browser, type Page } from 'puppeteer-core';
import type { RegisteredUser } from '../../src/devstack/synapse.ts';
import { chromiumPath } from '../../src/devstack/tools.ts';
import { bundleDigest, bundleSchema, type ProofBundle } from '../../src/evidence/bundle.ts';
import {
  evidencePageUrl,
  startEvidenceServer,
  type RunningEvidenceServer,
} from '../../src/evidence/server.ts';
import { jobWorkflowId, shortJobId } from '../../src/ingress/job-ids.ts';
import { threadRelation } from '../../src/ingress/matrix-io.ts';
import { publicJwks } from '../../src/keys/keyring.ts';
import { scriptedModel, type DemoScript } from '../../src/proxy/demo-model.ts';
import type { JobResult } from '../../src/workflows/job.ts';
import { ensureDemoRepository } from '../../src/workspace/workspaces.ts';
import { GatewayProcess, gatewayTestConfig } from '../harness/gateway-process.ts';
import { MatrixTestUser } from '../harness/matrix-user.ts';
import { registerTestUser, testServers } from '../harness/servers.ts';
import { startWorkerStack, type WorkerStack } from '../harness/stack.ts';
import { freeLoopbackPort } from '../../src/devstack/net.ts';

const bin = fileURLToPath(new URL('../../bin/clawgate', import.meta.url));
/** What the requester asks: a request that also tries to put markup on the reviewer's page. */
const REQUEST =
  'summarise the readme <script>document.title="pwned"</script><img src=x onerror="document.title=\'pwned\'">';
const ANSWER = 'The readme, in short: {{summary}} <img src=y onerror="document.title=\'pwned\'">';

/** The model: plans to read, reads the readme and asks for exec too (the policy denies it), answers. */
const SCRIPT: DemoScript = {
  planning: [
    {
      answer: JSON.stringify({
        goal: 'Summarise the readme',
        steps: ['Read README.md', 'Answer with a summary'],
        tools: ['read', 'search'],
      }),
    },
  ],
  execution: [
    {
      calls: [
        { name: 'read', arguments: { path: 'README.md' } },
        { name: 'exec', arguments: { argv: ['id'] } },
      ],
    },
    { answer: ANSWER },
  ],
};

let stack: WorkerStack;
let dir: string;
let bot: RegisteredUser;
let requester: MatrixTestUser;
let approver: MatrixTestUser;
let mallory: MatrixTestUser;
let roomId: string;
let gateway: GatewayProcess;
let evidence: RunningEvidenceServer;
let evidencePort: number;
let browser: Browser;
let outputDir: string;

before(async () => {
  // The browser first: without it this test cannot do its work, and says so (the bootstrap
  // installs it), rather than being skipped.
  const executablePath = chromiumPath();
  assert.ok(existsSync(executablePath), `Chromium is not at ${executablePath}; run \`npm run bootstrap\``);
  browser = await puppeteer.launch({
    executablePath,
    headless: true,
    // Chromium's own sandbox refuses to start as root (as CI runs); elsewhere it stays on.
    args: process.getuid?.() === 0 ? ['--no-sandbox'] : [],
  });
  outputDir = join(testServers().runDir, 'evidence-page');
  mkdirSync(outputDir, { recursive: true });

  dir = mkdtempSync(join(tmpdir(), 'clawgate-evidence-page-'));
  const source = await ensureDemoRepository(join(dir, 'source'));
  // The evidence server's port, known before the worker starts: the link in the job's result.
  evidencePort = await freeLoopbackPort();
  stack = await startWorkerStack({
    reply: scriptedModel(SCRIPT),
    source,
    evidenceBaseUrl: `http://127.0.0.1:${evidencePort}`,
  });
  bot = await registerTestUser('evidencebot');
  [requester, approver, mallory] = (await Promise.all(
    ['evreq', 'evappr', 'evmallory'].map((n) => MatrixTestUser.create(n)),
  )) as [MatrixTestUser, MatrixTestUser, MatrixTestUser];
  roomId = await requester.createRoom({
    name: 'evidence page',
    invite: [bot.userId, approver.userId, mallory.userId],
  });
  for (const user of [approver, mallory]) {
    await user.waitForMembership(roomId, 'invite');
    await user.joinRoom(roomId);
  }
  await stack.activatePolicy({
    channel: 'matrix',
    rooms: [roomId],
    requesters: [requester.userId],
    approvers: [approver.userId],
    mode: 'agent',
    agent: { model_turns: 6, tool_calls: 6 },
    tools: { allow: ['read', 'search'] },
  });
  gateway = await GatewayProcess.start(
    gatewayTestConfig(dir, stack, [
      { id: 'evidence', userId: bot.userId, accessToken: bot.accessToken, rooms: [roomId] },
    ]),
    { dir },
  );
  await approver.waitForJoin(roomId, bot.userId);
  evidence = await startEvidenceServer({
    host: '127.0.0.1',
    port: evidencePort,
    bundleDir: stack.bundleDir,
    jwks: () => publicJwks(stack.keysDir),
    keysSource: "the public keys of this clawgate's keyrings",
  });
});

after(async () => {
  await browser?.close();
  await evidence?.close();
  await gateway?.kill('SIGTERM');
  for (const user of [requester, approver, mallory]) user?.stop();
  await stack?.close();
});

interface RawEvent {
  event_id: string;
  type: string;
  sender: string;
  content: Record<string, unknown>;
}

async function send(user: MatrixTestUser, body: string, thread?: string): Promise<string> {
  const content: Record<string, unknown> = { msgtype: 'm.text', body };
  if (thread) content['m.relates_to'] = threadRelation(thread);
  const { event_id: eventId } = await user.client.sendEvent(
    roomId,
    'm.room.message' as never,
    content as never,
  );
  return eventId;
}

/** Waits for an event in the room as the server has it. */
async function waitForEvent(
  filter: (e: RawEvent) => boolean,
  what: string,
  timeoutMs = 60_000,
): Promise<RawEvent> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const res = await requester.client.createMessagesRequest(roomId, null, 200, Direction.Backward);
    const found = (res.chunk as unknown as RawEvent[]).find(filter);
    if (found) return found;
    if (Date.now() > deadline) throw new Error(`waited ${timeoutMs} ms for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

const reactedTo = (eventId: string, key: string) => (e: RawEvent) => {
  const rel = (e.content['m.relates_to'] ?? {}) as { event_id?: string; key?: string };
  return e.type === 'm.reaction' && e.sender === bot.userId && rel.event_id === eventId && rel.key === key;
};

/** What a reviewer sees of a page: its rendered text, and the texts of its refusal elements. */
async function open(page: Page, url: string): Promise<{ text: string; refusals: string[]; status: number }> {
  const response = await page.goto(url, { waitUntil: 'load' });
  const text = await page.evaluate(() => document.body.innerText);
  const refusals = await page.$$eval('.refusal', (els) => els.map((e) => (e as HTMLElement).innerText));
  return { text, refusals, status: response?.status() ?? 0 };
}

test('a real job: its page shows the request, the approver, the steps and tool calls, the refusals, the outcome, verified; a tampered copy says FAILED', async () => {
  // The job, from the room: the request, a non-approver's !approve (refused), the approver's.
  const requestEvent = await send(requester, `!claw ${REQUEST}`);
  const workflowId = jobWorkflowId(roomId, requestEvent);
  const jobId = shortJobId(workflowId);
  await waitForEvent(
    (e) =>
      e.sender === bot.userId &&
      typeof e.content['body'] === 'string' &&
      e.content['body'].startsWith(`Plan for job ${jobId}`),
    'the plan in the thread',
  );
  const refused = await send(mallory, '!approve', requestEvent);
  await waitForEvent(reactedTo(refused, '❌'), "the bot's ❌ on the non-approver's !approve");
  const approval = await send(approver, '!approve', requestEvent);
  await waitForEvent(reactedTo(approval, '✅'), "the bot's ✅ on the approver's !approve");
  const result = (await stack.temporal.client.workflow.getHandle(workflowId).result()) as JobResult;
  assert.equal(result.status, 'succeeded', result.reason);
  const digest = result.bundleDigest;
  assert.ok(digest, 'the job sealed a bundle');
  const bundlePath = join(stack.bundleDir, `${digest}.json`);
  const bundle: ProofBundle = bundleSchema.parse(JSON.parse(readFileSync(bundlePath, 'utf8')));
  assert.ok(
    bundle.entries.some((e) => e.type === 'tool_record' && (e.body as { denial?: unknown }).denial !== null),
    'the job has a denied tool call',
  );

  // The job's result in the room links to its page on the evidence server.
  const resultMessage = await waitForEvent(
    (e) =>
      e.sender === bot.userId &&
      typeof e.content['body'] === 'string' &&
      e.content['body'].startsWith(`Job ${jobId}: succeeded`),
    'the result in the thread',
  );
  const url = evidencePageUrl(evidence.url, digest);
  assert.match(
    String(resultMessage.content['body']),
    new RegExp(`\\nevidence: ${url.replace(/[.]/g, '\\.')}$`),
  );

  // The page, served, in the browser.
  const page = await browser.newPage();
  await page.setViewport({ width: 1200, height: 900 });
  const requested: string[] = [];
  page.on('request', (r) => requested.push(r.url()));
  const shown = await open(page, url);
  assert.equal(shown.status, 200);
  await page.screenshot({ path: join(outputDir, 'verified.png'), fullPage: true });
  const text = shown.text;
  assert.match(text, /VERIFIED/);
  assert.match(text, /Outcome\s+succeeded/i);
  assert.ok(text.includes(approver.userId), "the approver's Matrix id");
  assert.ok(text.includes(requester.userId), "the requester's Matrix id");
  assert.ok(text.includes(roomId), 'the room');
  assert.ok(text.includes('Summarise the readme') && text.includes('Read README.md'), 'the plan');
  assert.match(text, /Tool read, execution turn 1, call \S+: ran, exit 0/);
  assert.match(text, /Model, execution turn 1: asked for 2 tool call\(s\)/);
  assert.match(text, /Model, execution turn 2: answered/);
  assert.ok(text.includes(digest), 'the bundle digest');
  assert.ok(text.includes(`clawgate verify ${digest}.json`), 'how to verify it offline');
  // Refusals are highlighted, each with its reason.
  const notApprover = `${mallory.userId} is not on the approver allowlist`;
  assert.ok(
    shown.refusals.some((t) => t.includes(mallory.userId) && t.includes(notApprover)),
    `a refusal element names the non-approver and why: ${shown.refusals.join(' | ')}`,
  );
  assert.ok(
    shown.refusals.some((t) => /Tool exec/.test(t) && /TOOL_(DENIED_BY_POLICY|NOT_IN_TOKEN_SCOPE)/.test(t)),
    `a refusal element shows the denied exec call: ${shown.refusals.join(' | ')}`,
  );
  // What the requester and the model wrote is text on the page, not markup that runs.
  assert.ok(text.includes('<script>document.title="pwned"</script>'), 'the request text, shown as written');
  assert.ok(text.includes('<img src=y onerror='), "the model's answer, shown as written");
  assert.equal(await page.$$eval('script, img, iframe, object, embed, link', (els) => els.length), 0);
  assert.notEqual(await page.title(), 'pwned');
  assert.match(await page.title(), /^Verified: succeeded/);
  // One self-contained page: the browser asked for nothing but the page itself.
  assert.deepEqual(
    requested.filter((u) => !u.endsWith('/favicon.ico')),
    [url],
  );

  // The bundle and the page's header are served beside it.
  const file = await fetch(`${url}.json`);
  assert.ok(Buffer.from(await file.arrayBuffer()).equals(readFileSync(bundlePath)));
  const head = await fetch(url, { method: 'HEAD' });
  assert.match(head.headers.get('content-security-policy') ?? '', /default-src 'none'/);

  // A copy with one entry changed, stored under its own digest: the page says FAILED.
  const tampered = structuredClone(bundle);
  const record = tampered.entries.find((e) => e.type === 'tool_record') as { body: { tool: string } };
  record.body.tool = 'search';
  const tamperedDigest = bundleDigest(tampered);
  writeFileSync(join(stack.bundleDir, `${tamperedDigest}.json`), JSON.stringify(tampered));
  const failed = await open(page, evidencePageUrl(evidence.url, tamperedDigest));
  await page.screenshot({ path: join(outputDir, 'tampered.png'), fullPage: true });
  assert.match(failed.text, /Verification FAILED/);
  assert.match(failed.text, /its content differs from what was sealed/);
  assert.doesNotMatch(failed.text, /VERIFIED/);
  assert.match(await page.title(), /^FAILED/);

  // `clawgate evidence html` writes the same kind of page as one file, opened from disk.
  const htmlFile = join(outputDir, `${digest}.html`);
  const made = await promisify(execFile)(bin, [
    'evidence',
    'html',
    bundlePath,
    '--keys',
    stack.keysDir,
    '--out',
    htmlFile,
  ]);
  assert.match(made.stdout, new RegExp(`page written to .*: verified \\(bundle digest ${digest}\\)`));
  requested.length = 0;
  const fromDisk = await open(page, `file://${htmlFile}`);
  assert.match(fromDisk.text, /VERIFIED/);
  assert.ok(fromDisk.text.includes(approver.userId));
  assert.deepEqual(requested, [`file://${htmlFile}`], 'the file asks for nothing else');
  await page.close();
});
