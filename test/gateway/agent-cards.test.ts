// Approval cards of agent jobs through the real gateway: a person asks in a real room, the
// plan is approved with !approve in its thread, the model (scripted) reads a file and then
// proposes a write, the job posts the write's card in the thread and waits; the answer is a
// real ✅ reaction or a real !approve <card> message, read by the real gateway process on the
// real Synapse and signalled to the job on the real Temporal dev server. The job worker runs in
// a process of its own (so it can be killed), with each job's workspace made from a real git
// repository and write_pr pushing to a bare remote; the sealed bundle is verified at the end.
// The same holds in an encrypted room (a gateway account with its own crypto, people with
// theirs) and for a job started under the old workflow id form, before short ids.
import assert from 'node:assert/strict';
import { execFileSync, fork, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, test } from 'node:test';
import { WorkflowNotFoundError } from '@temporalio/client';
import { Direction } from 'matrix-js-sdk';
import type { RegisteredUser } from '../../src/devstack/synapse.ts';
import type { ClawgateConfigInput } from '../../src/config/config.ts';
import { verifyBundle } from '../../src/evidence/bundle.ts';
import { GATEWAY_FAULTS } from '../../src/ingress/gateway.ts';
import { jobWorkflowId, shortJobId } from '../../src/ingress/job-ids.ts';
import { threadRelation } from '../../src/ingress/matrix-io.ts';
import { publicJwks } from '../../src/keys/keyring.ts';
import { DEMO_SCRIPT, scriptedModel, type DemoScript } from '../../src/proxy/demo-model.ts';
import type { ChatMessage } from '../../src/proxy/demo-upstream.ts';
import {
  CALL_CARD_FIELD,
  callDecisionSignal,
  statusQuery,
  type JobStatusView,
} from '../../src/temporal/job-contract.ts';
import { decodeHistory } from '../../src/temporal/codec.ts';
import type { JobResult } from '../../src/workflows/job.ts';
import { DEMO_FILES, ensureDemoRepository } from '../../src/workspace/workspaces.ts';
import { GatewayProcess, gatewayTestConfig } from '../harness/gateway-process.ts';
import { startLegacyJob } from '../harness/legacy-job.ts';
import { MatrixTestUser } from '../harness/matrix-user.ts';
import { registerTestUser, testServers } from '../harness/servers.ts';
import { startWorkerStack, type WorkerStack } from '../harness/stack.ts';
import { testPayloadCodec } from '../harness/temporal.ts';

let stack: WorkerStack;
let dir: string;
let bot: RegisteredUser;
let requester: MatrixTestUser;
let approver: MatrixTestUser;
let roomId: string;
let gateway: GatewayProcess;
let config: ClawgateConfigInput;
let worker: ChildProcess;
let source: { repo: string; ref: string };
let remote: string;
let pushRepo: string;
/** The encrypted room, its own gateway (an account with crypto) and people with crypto clients. */
let secretRoom: string;
let cryptoBot: RegisteredUser;
let secretGateway: GatewayProcess;
let secretRequester: MatrixTestUser;
let secretApprover: MatrixTestUser;

/** The doc as the source repository has it: the demo's, with a typo in it. */
const ORIGINAL = DEMO_FILES['docs/operations.md'] as string;
const TYPO = ORIGINAL.replace('The retry limit is', 'The retyr limit is');
const FIXED = ORIGINAL;

/** The model of each job, by its request's text (the longest key the request holds). */
const scripts = new Map<string, DemoScript>();
/** When set for a request's text, the model's turn after its write waits for the promise. */
const holdsAfterWrite = new Map<string, Promise<void>>();

function requestText(messages: ChatMessage[]): string {
  const first = messages.find((m) => m.role === 'user');
  return typeof first?.content === 'string' ? first.content : '';
}

/** A model that plans, reads the doc (its text is untrusted), then proposes the fix as a branch. */
function typoFixer(branch: string): DemoScript {
  return {
    planning: [
      {
        answer: JSON.stringify({
          goal: 'Fix the typo in docs/operations.md and open a PR',
          steps: ['Read the file', 'Write the fix as a branch'],
          tools: ['read', 'write_pr'],
        }),
      },
    ],
    execution: [
      { call: { name: 'read', arguments: { path: 'docs/operations.md' } } },
      {
        call: {
          name: 'write_pr',
          arguments: {
            branch,
            message: 'Fix a typo in the operations doc',
            files: [{ path: 'docs/operations.md', content: FIXED }],
          },
        },
      },
      { answer: 'Opened the branch: {{output}}' },
    ],
  };
}

const gitEnv = (home: string) => ({
  PATH: process.env['PATH'] ?? '/usr/bin:/bin',
  HOME: home,
  GIT_CONFIG_NOSYSTEM: '1',
  GIT_AUTHOR_NAME: 't',
  GIT_AUTHOR_EMAIL: 't@example.org',
  GIT_COMMITTER_NAME: 't',
  GIT_COMMITTER_EMAIL: 't@example.org',
});

/** A job worker in a process of its own on the stack's queue, ready when this resolves. */
async function startWorker(): Promise<ChildProcess> {
  const { temporal, bwrap } = testServers();
  const child = fork(fileURLToPath(new URL('../workflows/worker-process.ts', import.meta.url)), [
    JSON.stringify({
      address: temporal.address,
      namespace: temporal.namespace,
      taskQueue: stack.taskQueue,
      state: stack.state,
      proxyUrl: stack.proxyUrl,
      bwrap,
      source,
      prRemote: remote,
      pushRepo,
    }),
  ]);
  await new Promise<void>((resolve, reject) => {
    child.once('message', () => resolve());
    child.once('exit', (code) => reject(new Error(`the worker exited with ${code} before it was ready`)));
  });
  return child;
}

async function killWorker(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGKILL');
  await exited;
}

before(async () => {
  stack = await startWorkerStack({
    worker: false,
    reply: (request) => {
      const text = requestText(request.messages);
      const key = [...scripts.keys()].filter((k) => text.includes(k)).sort((a, b) => b.length - a.length)[0];
      return scriptedModel((key !== undefined && scripts.get(key)) || DEMO_SCRIPT)(request);
    },
    beforeAnswer: async (request) => {
      const text = requestText(request.messages);
      const wrote = request.messages.some(
        (m) => m.role === 'assistant' && JSON.stringify(m.tool_calls ?? []).includes('"write_pr"'),
      );
      if (!wrote) return;
      for (const [key, hold] of holdsAfterWrite) if (text.includes(key)) await hold;
    },
  });
  dir = mkdtempSync(join(tmpdir(), 'clawgate-agent-cards-'));
  // The source of every job's workspace: the demo repository, with a typo in the operations doc.
  source = await ensureDemoRepository(join(dir, 'source'));
  const git = (...args: string[]) => execFileSync('git', ['-C', source.repo, ...args], { env: gitEnv(dir) });
  git('checkout', '-q', source.ref);
  writeFileSync(join(source.repo, 'docs', 'operations.md'), TYPO);
  git('commit', '-qam', 'a typo');
  // Where write_pr pushes: a bare remote holding the source's history, as a forge would; it
  // keeps a log of every update of its branches, so a branch pushed twice would show.
  remote = join(dir, 'remote.git');
  execFileSync('git', ['clone', '-q', '--bare', source.repo, remote], { env: gitEnv(dir) });
  execFileSync('git', ['--git-dir', remote, 'config', 'core.logAllRefUpdates', 'always']);
  pushRepo = join(stack.state, 'push.git');
  worker = await startWorker();

  bot = await registerTestUser('agentbot');
  cryptoBot = await registerTestUser('agentcryptobot');
  [requester, approver, secretRequester, secretApprover] = await Promise.all([
    MatrixTestUser.create('agentreq'),
    MatrixTestUser.create('agentappr'),
    MatrixTestUser.create('agentsecreq', { encryption: true }),
    MatrixTestUser.create('agentsecappr', { encryption: true }),
  ]);
  roomId = await requester.createRoom({ name: 'agent cards', invite: [bot.userId, approver.userId] });
  await approver.waitForMembership(roomId, 'invite');
  await approver.joinRoom(roomId);
  secretRoom = await secretRequester.createRoom({
    name: 'agent cards, encrypted',
    encrypted: true,
    invite: [cryptoBot.userId, secretApprover.userId],
  });
  await secretApprover.waitForMembership(secretRoom, 'invite');
  await secretApprover.joinRoom(secretRoom);
  await stack.activatePolicy({
    channel: 'matrix',
    rooms: [roomId, secretRoom],
    requesters: [requester.userId, secretRequester.userId],
    approvers: [approver.userId, secretApprover.userId],
    mode: 'agent',
    agent: { model_turns: 8, tool_calls: 10 },
    tools: { allow: ['read', 'search', 'write_pr'] },
    workspaceAccess: 'rw',
  });
  config = gatewayTestConfig(dir, stack, [
    { id: 'agents', userId: bot.userId, accessToken: bot.accessToken, rooms: [roomId] },
  ]);
  gateway = await GatewayProcess.start(config, { dir });
  // A gateway process of its own for the encrypted room: the restarts of the other one leave it be.
  const secretDir = mkdtempSync(join(dir, 'encrypted-'));
  secretGateway = await GatewayProcess.start(
    gatewayTestConfig(secretDir, stack, [
      {
        id: 'secure',
        userId: cryptoBot.userId,
        accessToken: cryptoBot.accessToken,
        rooms: [secretRoom],
        encryption: true,
      },
    ]),
    { dir: secretDir },
  );
  await approver.waitForJoin(roomId, bot.userId);
  await secretApprover.waitForJoin(secretRoom, cryptoBot.userId);
  for (const user of [secretRequester, secretApprover]) await user.waitForDeviceOf(cryptoBot.userId);
});

after(async () => {
  await gateway?.kill('SIGTERM');
  await secretGateway?.kill('SIGTERM');
  for (const user of [requester, approver, secretRequester, secretApprover]) user?.stop();
  if (worker) await killWorker(worker);
  await stack?.close();
});

interface RawEvent {
  event_id: string;
  type: string;
  sender: string;
  content: Record<string, unknown>;
}

const bodyOf = (e: RawEvent) => (typeof e.content['body'] === 'string' ? e.content['body'] : '');
const relOf = (e: RawEvent) =>
  (e.content['m.relates_to'] ?? {}) as {
    rel_type?: string;
    event_id?: string;
    key?: string;
    'm.in_reply_to'?: { event_id?: string };
  };

async function send(
  user: MatrixTestUser,
  body: string,
  opts: { thread?: string; room?: string } = {},
): Promise<string> {
  const content: Record<string, unknown> = { msgtype: 'm.text', body };
  if (opts.thread) content['m.relates_to'] = threadRelation(opts.thread);
  const { event_id: eventId } = await user.client.sendEvent(
    opts.room ?? roomId,
    'm.room.message' as never,
    content as never,
  );
  return eventId;
}

/**
 * A real reaction (`m.reaction`, an annotation) on an event. In an encrypted room too it goes
 * in clear: matrix-js-sdk (Element's SDK) does not encrypt reactions.
 */
async function react(user: MatrixTestUser, target: string, key: string, room = roomId): Promise<string> {
  const { event_id: eventId } = await user.client.sendEvent(
    room,
    'm.reaction' as never,
    { 'm.relates_to': { rel_type: 'm.annotation', event_id: target, key } } as never,
  );
  return eventId;
}

/** The room's latest events as the server has them (a client's live timeline can be reset). */
async function serverEvents(): Promise<RawEvent[]> {
  const res = await requester.client.createMessagesRequest(roomId, null, 500, Direction.Backward);
  return (res.chunk as unknown as RawEvent[]).reverse();
}

async function waitForServerEvent(
  filter: (e: RawEvent) => boolean,
  message: string,
  timeoutMs = 60_000,
): Promise<RawEvent> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const events = await serverEvents();
    const found = events.find(filter);
    if (found) return found;
    if (Date.now() > deadline) {
      const said = events
        .filter((e) => e.type === 'm.room.message')
        .map((e) => `${e.sender}: ${bodyOf(e).slice(0, 160)}`)
        .join('\n  ');
      throw new Error(`waited ${timeoutMs} ms for ${message}; the room's messages:\n  ${said}`);
    }
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** The bot's messages in the thread of `about` or replying to it. */
const botAbout = (about: string, pattern: RegExp) => (e: RawEvent) => {
  const rel = relOf(e);
  const related = rel.event_id === about || rel['m.in_reply_to']?.event_id === about;
  return e.sender === bot.userId && e.type === 'm.room.message' && related && pattern.test(bodyOf(e));
};

async function botSays(about: string, pattern: RegExp, timeoutMs = 60_000): Promise<RawEvent> {
  return await waitForServerEvent(
    botAbout(about, pattern),
    `the bot saying ${pattern} about ${about}`,
    timeoutMs,
  );
}

/** Waits until the bot has said `pattern` about `about` exactly `times` times. */
async function botSaysTimes(
  about: string,
  pattern: RegExp,
  times: number,
  timeoutMs = 60_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const said = (await serverEvents()).filter(botAbout(about, pattern));
    if (said.length === times) return;
    if (said.length > times || Date.now() > deadline) {
      throw new Error(`the bot said ${pattern} ${said.length} times about ${about}, not ${times}`);
    }
    await new Promise((r) => setTimeout(r, 200));
  }
}

async function botReacted(eventId: string, key: string): Promise<RawEvent> {
  return await waitForServerEvent(
    (e) =>
      e.type === 'm.reaction' &&
      e.sender === bot.userId &&
      relOf(e).event_id === eventId &&
      relOf(e).key === key,
    `the bot reacting ${key} to ${eventId}`,
  );
}

function escape(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

const handleOf = (workflowId: string) => stack.temporal.client.workflow.getHandle(workflowId);

async function view(workflowId: string): Promise<JobStatusView> {
  return await handleOf(workflowId).query(statusQuery);
}

type CallDecision = NonNullable<JobStatusView['callDecisions']>[number];

/** The job's record of the answer given by event `eventId`, once the job has it. */
async function callDecision(workflowId: string, eventId: string, timeoutMs = 60_000): Promise<CallDecision> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const current = await view(workflowId);
    const found = current.callDecisions?.find((d) => d.eventId === eventId);
    if (found) return found;
    if (Date.now() > deadline) {
      throw new Error(
        `${workflowId} has no call decision of ${eventId} after ${timeoutMs} ms; it has ${JSON.stringify(current.callDecisions ?? null)}`,
      );
    }
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** How many times the job was signalled the card answer of event `eventId`. */
async function signalsOf(workflowId: string, eventId: string): Promise<number> {
  // As stored, the history's payloads are encrypted: decrypted here with the run's keyring.
  const history = await decodeHistory(await handleOf(workflowId).fetchHistory(), testPayloadCodec());
  return (history.events ?? []).filter((e) => {
    const signalled = e.workflowExecutionSignaledEventAttributes;
    if (signalled?.signalName !== callDecisionSignal.name) return false;
    const data = signalled.input?.payloads?.[0]?.data;
    if (!(data instanceof Uint8Array)) return false;
    return (JSON.parse(Buffer.from(data).toString('utf8')) as { eventId?: string }).eventId === eventId;
  }).length;
}

/**
 * Waits until the job's history shows it signalled `times` times the card answer of event
 * `eventId`. Polled: a signal that arrives while a workflow task runs is written to the history
 * only when that task completes.
 */
async function signalledTimes(workflowId: string, eventId: string, times: number, what: string) {
  const deadline = Date.now() + 15_000;
  for (;;) {
    const count = await signalsOf(workflowId, eventId);
    if (count === times) return;
    if (count > times || Date.now() > deadline)
      assert.fail(`${what}: signalled ${count} times, not ${times}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** The commit of a branch on the remote, or null when the remote has no such branch. */
function remoteHas(branch: string): string | null {
  try {
    return execFileSync('git', ['--git-dir', remote, 'rev-parse', '--verify', '-q', `refs/heads/${branch}`], {
      stdio: ['ignore', 'pipe', 'ignore'],
    })
      .toString()
      .trim();
  } catch {
    return null;
  }
}

/** Every update the remote's branch has seen, newest first. */
function branchUpdates(branch: string): string[] {
  return execFileSync('git', ['--git-dir', remote, 'reflog', 'show', '--format=%H', `refs/heads/${branch}`])
    .toString()
    .split('\n')
    .filter(Boolean);
}

function remoteFile(commit: string, path: string): string {
  return execFileSync('git', ['--git-dir', remote, 'show', `${commit}:${path}`]).toString();
}

interface Job {
  eventId: string;
  workflowId: string;
  jobId: string;
}

/** A request from the requester in the room; resolves once its plan is in its thread. */
async function requestJob(text: string, branch: string): Promise<Job> {
  scripts.set(text, typoFixer(branch));
  const eventId = await send(requester, `!claw ${text}`);
  const workflowId = jobWorkflowId(roomId, eventId);
  const jobId = shortJobId(workflowId);
  const plan = await botSays(eventId, new RegExp(`^Plan for job ${jobId}`));
  assert.match(bodyOf(plan), /Tools: read, write_pr/);
  return { eventId, workflowId, jobId };
}

/** The approver approves the plan in its thread; resolves with the write's card once it is posted. */
async function approvePlanUntilCard(job: Job): Promise<RawEvent> {
  const approval = await send(approver, '!approve', { thread: job.eventId });
  await botReacted(approval, '✅');
  const card = await botSays(
    job.eventId,
    new RegExp(`^Approval needed for job ${job.jobId}, card c2\\.1: write_pr`),
  );
  assert.deepEqual(card.content[CALL_CARD_FIELD], { card_id: 'c2.1', workflow_id: job.workflowId });
  assert.equal(relOf(card).rel_type, 'm.thread', 'the card is in the job thread');
  return card;
}

interface Bundle {
  entries: Array<{ type: string; body: Record<string, unknown> }>;
}

const ofType = (bundle: Bundle, type: string) =>
  bundle.entries.filter((e) => e.type === type).map((e) => e.body);

/** The job's result, once it has succeeded, and its sealed bundle, verified. */
async function succeeded(workflowId: string): Promise<{ result: JobResult; bundle: Bundle }> {
  const result = (await handleOf(workflowId).result()) as JobResult;
  assert.equal(result.status, 'succeeded', result.reason);
  const bundle = JSON.parse(
    readFileSync(join(stack.bundleDir, `${result.bundleDigest}.json`), 'utf8'),
  ) as Bundle;
  const check = await verifyBundle(bundle, publicJwks(stack.keysDir));
  assert.deepEqual(check.problems, []);
  assert.equal(check.ok, true);
  return { result, bundle };
}

/** The job's result, its answer in the thread, and its sealed bundle, verified. */
async function finished(job: Job): Promise<{ result: JobResult; answer: string; bundle: Bundle }> {
  const { result, bundle } = await succeeded(job.workflowId);
  const answer = bodyOf(await botSays(job.eventId, /^Answer for job/));
  await botSays(job.eventId, new RegExp(`bundle ${result.bundleDigest}`));
  return { result, answer, bundle };
}

/** The bundle's call decisions: card, event, sender, how it came, whether it counted. */
const callDecisionsOf = (bundle: Bundle) =>
  ofType(bundle, 'call_decision').map((d) => [
    d['card_id'],
    d['event_id'],
    d['sender'],
    d['via'],
    d['accepted'],
  ]);

/** What the bundle says of the write: one card, one approved outcome, one call token, one push. */
function assertOneWrite(bundle: Bundle): void {
  assert.deepEqual(
    ofType(bundle, 'tool_record').map((r) => [r['tool'], r['gate'], r['card_id'] ?? null, r['denial']]),
    [
      ['read', 'never', null, null],
      ['write_pr', 'when_tainted', 'c2.1', null],
    ],
  );
  assert.equal(ofType(bundle, 'taint')[0]?.['tool'], 'read', "the read's output tainted the job");
  assert.deepEqual(
    ofType(bundle, 'call_card').map((c) => c['card_id']),
    ['c2.1'],
  );
  assert.deepEqual(
    ofType(bundle, 'card_outcome').map((o) => [o['card_id'], o['state']]),
    [['c2.1', 'approved']],
  );
  const callTokens = bundle.entries.filter((e) => e.type === 'token' && e.body['purpose'] === 'call');
  assert.equal(callTokens.length, 1, 'one call token, for the approved write');
}

test('"Fix the typo in docs/operations.md and open a PR": the plan is approved, the write waits on its card, the approver\'s ✅ lands the branch', async () => {
  const branch = 'fix-typo';
  const job = await requestJob('Fix the typo in docs/operations.md and open a PR', branch);
  const card = await approvePlanUntilCard(job);
  const shown = bodyOf(card);
  // What would change: the branch and message, and the file's diff against the job's workspace.
  assert.match(shown, new RegExp(`^branch ${branch}: Fix a typo in the operations doc$`, 'm'));
  assert.match(shown, /^-The retyr limit is/m);
  assert.match(shown, /^\+The retry limit is/m);
  assert.match(shown, /untrusted text since execution turn 1 \(output of read\)/);
  assert.match(shown, /arguments sha256 [0-9a-f]{64}/);
  const waiting = await view(job.workflowId);
  assert.equal(waiting.waitingCard, 'c2.1');
  assert.equal(remoteHas(branch), null, 'nothing is pushed before the approval');

  const tick = await react(approver, card.event_id, '✅');
  const decided = await callDecision(job.workflowId, tick);
  assert.deepEqual(
    [decided.sender, decided.cardId, decided.accepted],
    [approver.userId, 'c2.1', true],
    decided.reason,
  );
  const { answer, bundle } = await finished(job);
  const head = remoteHas(branch);
  assert.ok(head, 'the branch landed on the remote');
  assert.equal(remoteFile(head, 'docs/operations.md'), FIXED);
  assert.match(answer, new RegExp(`pushed ${branch} \\(${head}\\)`));
  assert.deepEqual(callDecisionsOf(bundle), [['c2.1', tick, approver.userId, 'reaction', true]]);
  assertOneWrite(bundle);
  assert.deepEqual(branchUpdates(branch), [head], 'pushed once');
});

test("the requester's ✅ and !approve do not count, nor an !approve outside the thread; the approver's !approve in the thread does", async () => {
  const branch = 'fix-typo-by-command';
  const job = await requestJob(
    'Fix the typo in docs/operations.md and open a PR, the card answered by command',
    branch,
  );
  const card = await approvePlanUntilCard(job);
  const notCounted = new RegExp(
    `^${escape(requester.userId)}: not counted\\. ${escape(requester.userId)} is not on the approver allowlist\\.$`,
  );

  // The requester's ✅ on the card: refused, answered in the thread, recorded.
  const ownTick = await react(requester, card.event_id, '✅');
  const onTick = await callDecision(job.workflowId, ownTick);
  assert.deepEqual([onTick.sender, onTick.cardId, onTick.accepted], [requester.userId, 'c2.1', false]);
  await botSays(job.eventId, notCounted);
  // The requester's !approve c2.1 in the thread: refused (❌ on it), answered, recorded.
  const ownCommand = await send(requester, '!approve c2.1', { thread: job.eventId });
  const onCommand = await callDecision(job.workflowId, ownCommand);
  assert.deepEqual(
    [onCommand.sender, onCommand.cardId, onCommand.accepted],
    [requester.userId, 'c2.1', false],
  );
  await botReacted(ownCommand, '❌');
  await botSaysTimes(job.eventId, notCounted, 2); // each refusal is answered in the thread

  // The approver's !approve c2.1 outside the thread: the gateway answers it; it reaches no job.
  const outside = await send(approver, '!approve c2.1');
  await botSays(
    outside,
    new RegExp(
      `^${escape(approver.userId)}: a card is answered in its job's thread; send !approve c2\\.1 there\\. Nothing was changed\\.$`,
    ),
  );
  const meanwhile = await view(job.workflowId);
  assert.equal(meanwhile.waitingCard, 'c2.1', 'the card still waits');
  assert.equal(
    meanwhile.callDecisions?.filter((d) => d.eventId === outside).length,
    0,
    'the command outside the thread did not reach the job',
  );
  assert.equal(remoteHas(branch), null, 'nothing is pushed yet');

  // The approver's !approve c2.1 in the thread counts.
  const counted = await send(approver, '!approve c2.1', { thread: job.eventId });
  const accepted = await callDecision(job.workflowId, counted);
  assert.deepEqual([accepted.sender, accepted.accepted], [approver.userId, true], accepted.reason);
  await botReacted(counted, '✅');
  const { answer, bundle } = await finished(job);
  const head = remoteHas(branch);
  assert.ok(head, 'the branch landed on the remote');
  assert.match(answer, new RegExp(`pushed ${branch} \\(${head}\\)`));
  assert.deepEqual(
    ofType(bundle, 'call_decision').map((d) => [
      d['event_id'],
      d['sender'],
      d['via'],
      d['accepted'],
      d['code'],
    ]),
    [
      [ownTick, requester.userId, 'reaction', false, 'APPROVAL_NOT_APPROVER'],
      [ownCommand, requester.userId, 'command', false, 'APPROVAL_NOT_APPROVER'],
      [counted, approver.userId, 'command', true, null],
    ],
  );
  assertOneWrite(bundle);
  assert.deepEqual(branchUpdates(branch), [head], 'pushed once');
});

test('a ✅ given while the gateway and the worker are both down is acted on once they are back, once', async () => {
  const branch = 'fix-typo-after-restart';
  const text = 'Fix the typo in docs/operations.md and open a PR, answered while everything is down';
  // The job's turn after the write waits until the test has seen the reaction delivered twice.
  let release: () => void = () => {};
  holdsAfterWrite.set(
    text,
    new Promise<void>((resolve) => {
      release = resolve;
    }),
  );
  try {
    const job = await requestJob(text, branch);
    const card = await approvePlanUntilCard(job);
    // The status line under the plan says what the job waits for: all the job had to post is out.
    await waitForServerEvent(
      (e) =>
        e.sender === bot.userId &&
        relOf(e).rel_type === 'm.replace' &&
        /waiting for approval of card c2\.1/.test(
          String((e.content['m.new_content'] as { body?: string })?.body),
        ),
      'the status line saying the job waits on card c2.1',
    );
    await gateway.kill('SIGKILL');
    await killWorker(worker);

    const tick = await react(approver, card.event_id, '✅');
    assert.equal(remoteHas(branch), null, 'nothing acts on the reaction while both are down');

    worker = await startWorker();
    // The gateway reads the reaction, signals it, and dies before it saves its sync position:
    // the reaction comes again to the next gateway, which signals it again.
    gateway = await GatewayProcess.start(config, { dir, fault: GATEWAY_FAULTS.crashBeforeSyncToken });
    assert.equal(
      (await gateway.exited).signal,
      'SIGKILL',
      'the gateway died before saving its sync position',
    );
    await signalledTimes(job.workflowId, tick, 1, 'the reaction was signalled before that');
    gateway = await GatewayProcess.start(config, { dir });
    await gateway.waitForLog(
      (l) => l['eventId'] === tick && l['msg'] === 'signal sent',
      60_000,
      'the reaction signalled again',
    );
    await signalledTimes(job.workflowId, tick, 2, 'the job was told of the reaction twice');
    release();

    const { answer, bundle } = await finished(job);
    const head = remoteHas(branch);
    assert.ok(head, 'the branch landed on the remote');
    assert.equal(remoteFile(head, 'docs/operations.md'), FIXED);
    assert.match(answer, new RegExp(`pushed ${branch} \\(${head}\\)`));
    assert.deepEqual(
      callDecisionsOf(bundle),
      [['c2.1', tick, approver.userId, 'reaction', true]],
      'the reaction is decided once',
    );
    assert.equal((await view(job.workflowId)).callDecisions?.filter((d) => d.eventId === tick).length, 1);
    assertOneWrite(bundle);
    assert.deepEqual(branchUpdates(branch), [head], 'the branch landed once');
  } finally {
    release();
    holdsAfterWrite.delete(text);
  }
});

test('in an encrypted room, a job under its short workflow id: its plan and card go out encrypted, and a ✅ on the card lands the branch', async () => {
  const branch = 'fix-typo-encrypted';
  const text = 'Fix the typo in docs/operations.md and open a PR, asked in an encrypted room';
  scripts.set(text, typoFixer(branch));
  const eventId = await send(secretRequester, `!claw ${text}`, { room: secretRoom });
  const workflowId = jobWorkflowId(secretRoom, eventId);
  assert.match(workflowId, /^clawgate-j[a-z2-7]{9}$/);
  const jobId = shortJobId(workflowId);
  const plan = await secretApprover.waitForDecrypted(
    secretRoom,
    cryptoBot.userId,
    new RegExp(`^Plan for job ${jobId}`),
  );
  assert.equal(plan.getWireType(), 'm.room.encrypted', 'the plan went out encrypted');
  await send(secretApprover, '!approve', { thread: eventId, room: secretRoom });
  const card = await secretApprover.waitForDecrypted(
    secretRoom,
    cryptoBot.userId,
    new RegExp(`^Approval needed for job ${jobId}, card c2\\.1: write_pr`),
  );
  assert.equal(card.getWireType(), 'm.room.encrypted', 'the card went out encrypted');
  // The card names the short id inside its encrypted content; its thread is in clear, and the
  // gateway checks that the short id is the one of that thread's root in this room.
  assert.deepEqual(card.getContent()[CALL_CARD_FIELD], { card_id: 'c2.1', workflow_id: workflowId });
  assert.equal(card.getWireContent()['m.relates_to']?.event_id, eventId);
  assert.equal(remoteHas(branch), null, 'nothing is pushed before the approval');

  const tick = await react(secretApprover, card.getId() as string, '✅', secretRoom);
  const decided = await callDecision(workflowId, tick);
  assert.deepEqual(
    [decided.sender, decided.cardId, decided.accepted],
    [secretApprover.userId, 'c2.1', true],
    decided.reason,
  );
  const { bundle } = await succeeded(workflowId);
  const answer = await secretRequester.waitForDecrypted(secretRoom, cryptoBot.userId, /^Answer for job/);
  assert.equal(answer.getWireType(), 'm.room.encrypted');
  const head = remoteHas(branch);
  assert.ok(head, 'the branch landed on the remote');
  assert.equal(remoteFile(head, 'docs/operations.md'), FIXED);
  assert.deepEqual(callDecisionsOf(bundle), [['c2.1', tick, secretApprover.userId, 'reaction', true]]);
  assertOneWrite(bundle);
});

test('a job started under the old workflow id form: its card names the old id, and an !approve and a ✅ on it still reach the job', async () => {
  const branch = 'fix-typo-old-id';
  const text = 'Fix the typo in docs/operations.md and open a PR, a job of the old id form';
  scripts.set(text, typoFixer(branch));
  // The request as the gateway made it before short ids: plain chat here, so this gateway
  // starts nothing for it, and the job is started under the old id as it was then.
  const eventId = await send(requester, text);
  const { legacy, workflowId, jobId } = await startLegacyJob(stack, {
    roomId,
    requester: requester.userId,
    eventId,
    text,
    account: 'agents',
  });
  const job = { eventId, workflowId: legacy, jobId };
  await botSays(eventId, new RegExp(`^Plan for job ${jobId}`));
  // The plan's !approve in its thread, then the card (naming the old id): approvePlanUntilCard.
  const card = await approvePlanUntilCard(job);

  // A card command in the thread: no job has the short id, the old one does. The requester's
  // reaches the job (which refuses it: not an approver).
  const command = await send(requester, '!approve c2.1', { thread: eventId });
  const onCommand = await callDecision(legacy, command);
  assert.deepEqual(
    [onCommand.sender, onCommand.cardId, onCommand.accepted],
    [requester.userId, 'c2.1', false],
  );
  await botReacted(command, '❌');
  // The approver's ✅ on the card: the card's old id names this room and thread.
  const tick = await react(approver, card.event_id, '✅');
  const decided = await callDecision(legacy, tick);
  assert.deepEqual([decided.sender, decided.accepted], [approver.userId, true], decided.reason);
  const { bundle } = await finished(job);
  const head = remoteHas(branch);
  assert.ok(head, 'the branch landed on the remote');
  assert.deepEqual(callDecisionsOf(bundle), [
    ['c2.1', command, requester.userId, 'command', false],
    ['c2.1', tick, approver.userId, 'reaction', true],
  ]);
  assertOneWrite(bundle);
  await assert.rejects(
    handleOf(workflowId).describe(),
    WorkflowNotFoundError,
    'nothing ran under the short id',
  );
});
