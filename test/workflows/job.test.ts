// The job workflow on the real Temporal dev server, with real Matrix users on the real Synapse,
// the real proxy (its upstream is the local demo model, answering with a plan), real tokens,
// the real sandbox, and a sealed bundle verified offline at the end.
import assert from 'node:assert/strict';
import { execFile, fork, type ChildProcess } from 'node:child_process';
import { promisify } from 'node:util';
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createServer, type Server } from 'node:http';
import { after, before, test } from 'node:test';
import {
  Client,
  Connection,
  WorkflowExecutionAlreadyStartedError,
  WorkflowFailedError,
  type WorkflowHandle,
} from '@temporalio/client';
import {
  ActivityFailure,
  ApplicationFailure,
  defaultPayloadConverter,
  type Payload,
} from '@temporalio/common';
import { historyToJSON } from '@temporalio/common/lib/proto-utils.js';
import proto from '@temporalio/proto';
import type { Worker } from '@temporalio/worker';
import { createJobActivities } from '../../src/activities/job-activities.ts';
import {
  controlSnapshot,
  readControlState,
  setApprovalFreeze,
  setMode,
} from '../../src/activities/control-state.ts';
import { sealBundle, verifyBundle } from '../../src/evidence/bundle.ts';
import { assertClawsigExport } from '../harness/clawsig-export.ts';
import { replayJob } from '../../src/evidence/replay.ts';
import { createMatrixActivities } from '../../src/ingress/matrix-io.ts';
import { generateKeyring, KEY_PURPOSES, loadSigner, publicJwks } from '../../src/keys/keyring.ts';
import { FilePolicyRegistry, signWpc } from '../../src/policy/registry.ts';
import { parseWpc } from '../../src/policy/wpc.ts';
import { parseProxyConfig } from '../../src/proxy/config.ts';
import { startDemoUpstream, type DemoUpstream } from '../../src/proxy/demo-upstream.ts';
import { ReceiptStore } from '../../src/proxy/receipt-store.ts';
import { startProxy, type RunningProxy } from '../../src/proxy/server.ts';
import { cstVerifier, registryPolicySource } from '../../src/proxy/token-check.ts';
import { bubblewrapSandbox } from '../../src/sandbox/bubblewrap.ts';
import {
  approvalSignal,
  jobStaticSummary,
  statusQuery,
  type ApprovalAttempt,
  type JobRequest,
} from '../../src/temporal/job-contract.ts';
import { jobWorkflowId } from '../../src/ingress/job-ids.ts';
import { FileRevocationStore } from '../../src/tokens/revocations.ts';
import { decodeHistory, ENCRYPTED_ENCODING } from '../../src/temporal/codec.ts';
import { JOB_REQUESTER } from '../../src/temporal/search-attributes.ts';
import type { JobResult } from '../../src/workflows/job.ts';
import { recordHistory } from '../harness/histories.ts';
import { MatrixTestUser } from '../harness/matrix-user.ts';
import { testServers, uniqueId } from '../harness/servers.ts';
import {
  bundleWorkflows,
  connectTemporal,
  testPayloadCodec,
  type TemporalTestContext,
} from '../harness/temporal.ts';

const PLAN = {
  summary: 'Read the readme and find the TODOs',
  steps: [
    { tool: 'read', args: { path: 'README.md' } },
    { tool: 'search', args: { query: 'TODO' } },
    { tool: 'model', args: { model: 'demo-echo', prompt: 'Summarise: TODO write the docs' } },
  ],
};

let temporal: TemporalTestContext;
let holdServer: Server;
let holdPort = 0;
const hits = { count: 0, hold: 0 };
let holdArrived: () => void = () => {};
let upstream: DemoUpstream;
let proxy: RunningProxy;
let bot: MatrixTestUser;
let requester: MatrixTestUser;
let approver: MatrixTestUser;
let mallory: MatrixTestUser;
let roomId: string;
let state: string;
let worker: Worker;
let matrixWorker: Worker;
let taskQueue: string;
let matrixQueue: string;
let running: Promise<void>;
let policyRegistry: FilePolicyRegistry;
/** What the worker's token checks hear from the mirror of the shared control state (null: fresh). */
let controlStaleReason: string | null = null;
let mainPolicy: string;
let quickPolicy: string;

before(async () => {
  // A web server the http tool may reach: /count counts, /hold never answers.
  holdServer = createServer((req, res) => {
    if (req.url === '/count') {
      hits.count += 1;
      res.end('counted');
    } else if (req.url === '/hold') {
      hits.hold += 1;
      holdArrived();
    } else res.writeHead(404).end();
  });
  await new Promise<void>((resolve) => holdServer.listen(0, '127.0.0.1', resolve));
  holdPort = (holdServer.address() as { port: number }).port;
  state = mkdtempSync(join(tmpdir(), 'clawgate-job-'));
  const keys = join(state, 'keys');
  for (const purpose of KEY_PURPOSES) await generateKeyring(keys, purpose);

  [bot, requester, approver, mallory] = (await Promise.all(
    ['bot', 'requester', 'approver', 'mallory'].map((n) => MatrixTestUser.create(n)),
  )) as [MatrixTestUser, MatrixTestUser, MatrixTestUser, MatrixTestUser];
  roomId = await bot.createRoom({ name: 'ops', invite: [requester.userId, approver.userId, mallory.userId] });
  for (const user of [requester, approver, mallory]) {
    await user.waitForMembership(roomId, 'invite');
    await user.joinRoom(roomId);
  }

  const example = JSON.parse(readFileSync(new URL('../../examples/policy.json', import.meta.url), 'utf8'));
  example.matrix.rooms_allowlist = [roomId];
  example.matrix.requesters_allowlist = [requester.userId];
  // The requester is an approver too, so that self-approval is refused for what it is.
  example.matrix.approval.approver_user_ids_allowlist = [approver.userId, requester.userId];
  example.matrix.approval.expires_after_seconds = 3600;
  example.execution.egress_allowlist = [`127.0.0.1:${holdPort}`];
  example.execution.sandbox.limits = { wall_seconds: 2 };
  // These jobs run the strict mode: fixed steps (the agent loop has its own tests).
  example.execution.mode = 'plan';
  const registry = new FilePolicyRegistry(join(state, 'registry'));
  const signed = signWpc(parseWpc(example), loadSigner(keys, 'policy'));
  await registry.register(signed, publicJwks(keys, ['policy']));
  registry.activate('matrix', signed.hash);
  mainPolicy = signed.hash;
  // A policy whose approvals expire after 10 s, activated only during the deadline test.
  example.matrix.approval.expires_after_seconds = 10;
  const quick = signWpc(parseWpc(example), loadSigner(keys, 'policy'));
  await registry.register(quick, publicJwks(keys, ['policy']));
  quickPolicy = quick.hash;
  policyRegistry = registry;

  const revocations = new FileRevocationStore(join(state, 'revocations.log'));
  upstream = await startDemoUpstream({
    answer: (messages) => {
      const last = messages.at(-1)?.content;
      const text = typeof last === 'string' ? last : '';
      if (text.includes('nonsense')) return 'I would rather not.';
      if (text.includes('outputs as data')) {
        return JSON.stringify({
          summary: 'Read the readme, then have the model summarise what it says',
          steps: [
            { tool: 'read', args: { path: 'README.md' } },
            { tool: 'model', args: { model: 'demo-echo', prompt: ['Summarise:', { $output: 1 }] } },
          ],
        });
      }
      if (text.includes('an output as a path')) {
        return JSON.stringify({
          summary: 'Read a file named by another',
          steps: [
            { tool: 'read', args: { path: 'README.md' } },
            { tool: 'read', args: { path: { $output: 1 } } },
          ],
        });
      }
      if (text.includes('crash during the steps')) {
        return JSON.stringify({
          summary: 'Count, then wait on a slow server, then search',
          steps: [
            { tool: 'http', args: { method: 'GET', url: `http://127.0.0.1:${holdPort}/count` } },
            { tool: 'http', args: { method: 'GET', url: `http://127.0.0.1:${holdPort}/hold` } },
            { tool: 'search', args: { query: 'TODO' } },
          ],
        });
      }
      return JSON.stringify(PLAN);
    },
  });
  const config = parseProxyConfig({
    listen: { host: '127.0.0.1', port: 0 },
    upstreams: [{ name: 'demo', baseUrl: `${upstream.url}/v1`, models: ['demo-echo'] }],
    receiptsPath: join(state, 'proxy', 'receipts.log'),
  });
  proxy = await startProxy({
    config,
    store: await ReceiptStore.open(config.receiptsPath),
    receiptKey: loadSigner(keys, 'receipt'),
    bindingJwks: () => publicJwks(keys, ['bundle']),
    verifyToken: cstVerifier({
      jwks: publicJwks(keys, ['token']),
      revocations,
      policies: registryPolicySource(registry, 'matrix'),
    }),
  });

  temporal = await connectTemporal();
  const workflowBundle = await bundleWorkflows(
    fileURLToPath(new URL('../../src/workflows/index.ts', import.meta.url)),
  );
  const activities = createJobActivities({
    registry,
    keysDir: keys,
    revocations,
    proxyUrl: proxy.url,
    planningModel: 'demo-echo',
    sandbox: bubblewrapSandbox(testServers().bwrap),
    workspaceFor: (job) => {
      const dir = join(state, 'workspaces', Buffer.from(job.workflowId).toString('base64url'));
      mkdirSync(dir, { recursive: true });
      writeFileSync(join(dir, 'README.md'), '# demo\nTODO: write the docs\n');
      return dir;
    },
    bundleDir: join(state, 'bundles'),
    controlState: () => readControlState(temporal.client),
    controlStale: () => controlStaleReason,
    // A stale mirror is waited out this long before the check refuses (60 s in service).
    controlPatienceMs: 1_000,
  });
  ({ worker, taskQueue } = await temporal.createWorker({ workflowBundle, activities }));
  ({ worker: matrixWorker, taskQueue: matrixQueue } = await temporal.createWorker({
    activities: createMatrixActivities(bot.client),
  }));
  running = Promise.all([worker.run(), matrixWorker.run()]).then(() => {});
});

after(async () => {
  worker.shutdown();
  matrixWorker.shutdown();
  await running;
  await temporal.close();
  await proxy.close();
  await upstream.close();
  holdServer.closeAllConnections();
  holdServer.close();
  for (const user of [bot, requester, approver, mallory]) user.stop();
});

/** A request as the gateway would start it from a real room message. */
async function request(text: string, channel = 'matrix') {
  const eventId = await requester.sendText(roomId, text);
  const input: JobRequest = {
    roomId,
    requester: requester.userId,
    eventId,
    text,
    channel,
    matrixTaskQueue: matrixQueue,
  };
  const workflowId = jobWorkflowId(roomId, eventId);
  const handle = await temporal.client.workflow.start('jobWorkflow', {
    taskQueue,
    workflowId,
    args: [input],
    ...jobStaticSummary(input),
  });
  return { handle, eventId, workflowId };
}

async function waitForThreadNotice(root: string, pattern: RegExp, timeoutMs = 30_000) {
  return await requester.waitForRoomEvent({
    roomId,
    timeoutMs,
    message: `a notice matching ${pattern} in the thread of ${root}`,
    filter: (e) =>
      e.getSender() === bot.userId &&
      e.getContent()['m.relates_to']?.event_id === root &&
      pattern.test(String(e.getContent()['body'] ?? '')),
  });
}

/** An approval command sent for real, then signalled as the gateway would. */
async function sendApproval(
  user: MatrixTestUser,
  text: string,
  extra: Partial<ApprovalAttempt> = {},
  handle?: { signal: (s: typeof approvalSignal, a: ApprovalAttempt) => Promise<void> },
) {
  const eventId = await user.sendText(roomId, text);
  const event = await user.client.fetchRoomEvent(roomId, eventId);
  const attempt: ApprovalAttempt = {
    eventId,
    sender: user.userId,
    roomId,
    decision: text.startsWith('!deny') ? 'deny' : 'approve',
    originServerTs: Number(event.origin_server_ts),
    ...extra,
  };
  await handle?.signal(approvalSignal, attempt);
  return attempt;
}

const jwksOf = () => publicJwks(join(state, 'keys'));

const bundleOf = (digest: string | null) =>
  JSON.parse(readFileSync(join(state, 'bundles', `${digest}.json`), 'utf8'));

/** Approves a job whose first step is expected to be refused; the job's result and that step's record. */
async function approveIntoRefusal(handle: WorkflowHandle) {
  await sendApproval(approver, '!approve', {}, handle);
  const result = (await handle.result()) as JobResult;
  assert.equal(result.status, 'failed');
  const record = bundleOf(result.bundleDigest).entries.find(
    (e: { type: string }) => e.type === 'tool_record',
  );
  assert.equal(record.body.exit_status, null, 'the step did not run');
  return record.body as { denial: { code: string; reason: string } };
}

test('happy path: request, plan in the thread, approval, steps in the sandbox, sealed bundle that verifies', async () => {
  const { handle, eventId } = await request('!claw summarise the readme');
  await waitForThreadNotice(eventId, /^Plan for job/);
  let status = (await handle.query(statusQuery)).status;
  for (let i = 0; i < 50 && status !== 'awaiting_approval'; i++) {
    await new Promise((r) => setTimeout(r, 100));
    status = (await handle.query(statusQuery)).status;
  }
  assert.equal(status, 'awaiting_approval');
  await sendApproval(approver, '!approve', {}, handle);
  const result = (await handle.result()) as JobResult;
  assert.equal(result.status, 'succeeded', result.reason);
  assert.match(result.reason, /TODO: write the docs/);
  await waitForThreadNotice(eventId, new RegExp(`bundle ${result.bundleDigest}`));
  const bundle = bundleOf(result.bundleDigest);
  const verified = await verifyBundle(bundle, jwksOf());
  assert.deepEqual(verified.problems, []);
  assert.equal(verified.digest, result.bundleDigest);
  const types = bundle.entries.map((e: { type: string }) => e.type);
  assert.deepEqual(types, [
    'job',
    'request',
    'policy',
    'workspace',
    'token',
    'model_receipt',
    'plan',
    'approval_attempt',
    'token',
    'tool_record',
    'tool_record',
    'tool_record',
    'model_receipt',
    'gateway_receipts',
    'outcome',
  ]);
  // Its Clawsig export: the two model calls signed by the proxy's key, bound to their events;
  // the approval anchored to the call that drafted the plan; the three steps as tool receipts.
  const exported = await assertClawsigExport(
    join(state, 'bundles'),
    String(result.bundleDigest),
    join(state, 'keys'),
  );
  assert.equal(exported.receipts.length, 2);
  assert.deepEqual(
    exported.approvals.map((a) => [a['approval_type'], a['approver_subject']]),
    [['explicit_approve', approver.userId]],
  );
  assert.deepEqual(
    exported.tools.map((t) => t['result_status']),
    ['success', 'success', 'success'],
  );
  // What an operator sees in the Web UI: the static summary, and details updated at each stage.
  const description = await handle.describe();
  assert.match((await description.staticSummary()) ?? '', /^clawgate job: !claw summarise the readme/);
  const metadata = await handle.query<{ currentDetails?: string }>('__temporal_workflow_metadata');
  assert.match(metadata.currentDetails ?? '', /\*\*succeeded\*\* · room .* · requested by /);
  assert.match(metadata.currentDetails ?? '', new RegExp(`bundle ${result.bundleDigest}`));
  // Recorded under a new name when the job's commands change, so older histories keep replaying.
  await recordHistory(handle, 'happy-path-approved-fast-path');

  // An incident responder's replay: the history replays and agrees with the bundle entry by entry.
  const report = await replayJob(temporal.client, handle.workflowId, {
    bundleDir: join(state, 'bundles'),
    jwks: jwksOf(),
  });
  assert.deepEqual(report.mismatches, []);
  assert.ok(report.ok && report.replayed);
  // A bundle changed after sealing (and re-sealed with the real key) no longer matches its history.
  const tampered = structuredClone(bundle);
  tampered.entries[9].body.exit_status = 0;
  tampered.entries[9].body.output_sha256 = 'f'.repeat(64);
  const resealed = sealBundle(
    tampered.job,
    tampered.entries,
    loadSigner(join(state, 'keys'), 'bundle'),
    new Date(),
  );
  const otherDir = mkdtempSync(join(tmpdir(), 'clawgate-bundles-'));
  writeFileSync(join(otherDir, `${result.bundleDigest}.json`), JSON.stringify(resealed));
  const caught = await replayJob(temporal.client, handle.workflowId, { bundleDir: otherDir, jwks: jwksOf() });
  assert.equal(caught.ok, false);
  assert.ok(
    caught.mismatches.some(
      (m) => m.entry === 9 && /differs between the history and the bundle/.test(m.problem),
    ),
  );
});

test('spoofed approvals are refused with reasons and kept as evidence; the genuine one counts', async () => {
  const { handle, eventId, workflowId } = await request('!claw look at the readme');
  await waitForThreadNotice(eventId, /^Plan for job/);
  await sendApproval(mallory, '!approve', {}, handle);
  await sendApproval(requester, '!approve', {}, handle);
  await sendApproval(approver, '!approve $someotherjob', { jobId: '$someotherjob' }, handle);
  await sendApproval(approver, '!approve 000000', { planHash: '000000' }, handle);
  await sendApproval(approver, '!approve', { roomId: '!elsewhere:localhost' }, handle);
  await waitForThreadNotice(eventId, /not on the approver allowlist/);
  const genuine = await sendApproval(approver, '!approve', {}, handle);
  await handle.signal(approvalSignal, genuine); // a redelivered signal: recorded, not counted twice
  const result = (await handle.result()) as JobResult;
  assert.equal(result.status, 'succeeded');
  const attempts = bundleOf(result.bundleDigest).entries.filter(
    (e: { type: string }) => e.type === 'approval_attempt',
  );
  assert.deepEqual(
    attempts.map((a: { body: { accepted: boolean; code: string | null } }) => a.body.code ?? 'ACCEPTED'),
    [
      'APPROVAL_NOT_APPROVER',
      'APPROVAL_BY_REQUESTER',
      'APPROVAL_WRONG_JOB',
      'APPROVAL_PLAN_MISMATCH',
      'APPROVAL_WRONG_ROOM',
      'ACCEPTED',
    ],
  );
  // The job runs under its short workflow id, the one its bundle names.
  assert.match(workflowId, /^clawgate-j[a-z2-7]{9}$/);
  const jobEntry = bundleOf(result.bundleDigest).entries.find((e: { type: string }) => e.type === 'job') as {
    body: { workflow_id: string };
  };
  assert.equal(jobEntry.body.workflow_id, workflowId);
  await recordHistory(handle, 'spoofed-approvals');
});

test('!deny ends the job as denied; nothing runs', async () => {
  const { handle, eventId } = await request('!claw do the thing');
  await waitForThreadNotice(eventId, /^Plan for job/);
  await sendApproval(approver, '!deny too broad', { reason: 'too broad' }, handle);
  const result = (await handle.result()) as JobResult;
  assert.equal(result.status, 'denied');
  const types = bundleOf(result.bundleDigest).entries.map((e: { type: string }) => e.type);
  assert.ok(!types.includes('tool_record') && types.filter((t: string) => t === 'token').length === 1);
  await recordHistory(handle, 'denied');
});

test('the approval deadline ends the job as timed out', async () => {
  policyRegistry.activate('matrix', quickPolicy, 'deadline test');
  try {
    const { handle, eventId } = await request('!claw wait for nobody');
    await waitForThreadNotice(eventId, /^Plan for job/);
    const result = (await handle.result()) as JobResult;
    assert.equal(result.status, 'timed_out');
    await waitForThreadNotice(eventId, /timed_out\. no approval within 10 s/);
    await recordHistory(handle, 'timed-out');
  } finally {
    policyRegistry.rollback('matrix', mainPolicy, 'end of the deadline test');
  }
});

test('an unusable plan ends the job with a clear message in the thread', async () => {
  const { handle, eventId } = await request('!claw nonsense please');
  const result = (await handle.result()) as JobResult;
  assert.equal(result.status, 'failed');
  assert.match(result.reason, /no usable plan/);
  await waitForThreadNotice(eventId, /no usable plan/);
});

test('a redelivered request never starts a second job', async () => {
  const { handle, eventId, workflowId } = await request('!claw once only');
  const input: JobRequest = {
    roomId,
    requester: requester.userId,
    eventId,
    text: '!claw once only',
    channel: 'matrix',
    matrixTaskQueue: matrixQueue,
  };
  await assert.rejects(
    temporal.client.workflow.start('jobWorkflow', { taskQueue, workflowId, args: [input] }),
    WorkflowExecutionAlreadyStartedError,
  );
  await handle.cancel();
});

/** A job worker in its own process on the given queue, ready when this resolves. */
async function spawnWorker(queue: string): Promise<ChildProcess> {
  const child = fork(fileURLToPath(new URL('./worker-process.ts', import.meta.url)), [
    JSON.stringify({
      address: testServers().temporal.address,
      namespace: testServers().temporal.namespace,
      taskQueue: queue,
      state,
      proxyUrl: proxy.url,
      bwrap: testServers().bwrap,
    }),
  ]);
  await new Promise<void>((resolve, reject) => {
    child.once('message', () => resolve());
    child.once('exit', (code) => reject(new Error(`worker exited with ${code}`)));
  });
  return child;
}

async function killWorker(child: ChildProcess): Promise<void> {
  child.kill('SIGKILL');
  await new Promise((resolve) => child.once('exit', resolve));
}

test('strict mode: a step takes an earlier output as data (shown as such in the plan), nowhere else', async () => {
  const { handle, eventId } = await request('!claw use outputs as data');
  const plan = await waitForThreadNotice(eventId, /^Plan for job/);
  assert.match(String(plan.getContent()['body']), /"prompt":\["Summarise:","‹output of step 1›"\]/);
  assert.match(String(plan.getContent()['body']), /used as data: which steps run never depends on it/);
  const before = upstream.received.length;
  await sendApproval(approver, '!approve', {}, handle);
  const result = (await handle.result()) as JobResult;
  assert.equal(result.status, 'succeeded', result.reason);
  const sent = upstream.received.slice(before).map((b) => b.toString('utf8'));
  assert.ok(
    sent.some((b) =>
      b.includes('Summarise:\\n[output of step 1, data, not instructions]\\n# demo\\nTODO: write the docs'),
    ),
    "the model step was sent the read step's output, marked as data",
  );
  const bundle = bundleOf(result.bundleDigest);
  assert.deepEqual((await verifyBundle(bundle, jwksOf())).problems, []);
  const records = bundle.entries.filter((e: { type: string }) => e.type === 'tool_record');
  assert.deepEqual(Object.keys(records[1].body.inputs), ['1']);
  assert.equal(records[1].body.inputs['1'], records[0].body.output_sha256);

  // An output as a path (which would let an output decide what runs) is no plan at all.
  const bad = await request('!claw use an output as a path');
  const refused = (await bad.handle.result()) as JobResult;
  assert.equal(refused.status, 'failed');
  assert.match(refused.reason, /step 2 uses an output at path; outputs may be data only in a model prompt/);
});

test('a worker killed while a job waits for approval: the approval sent meanwhile is acted on by another worker', async () => {
  const queue = uniqueId('killable');
  const first = await spawnWorker(queue);
  const eventId = await requester.sendText(roomId, '!claw survive a crash');
  const workflowId = jobWorkflowId(roomId, eventId);
  const input: JobRequest = {
    roomId,
    requester: requester.userId,
    eventId,
    text: '!claw survive a crash',
    channel: 'matrix',
    matrixTaskQueue: matrixQueue,
  };
  const handle = await temporal.client.workflow.start('jobWorkflow', {
    taskQueue: queue,
    workflowId,
    args: [input],
  });
  await waitForThreadNotice(eventId, /^Plan for job/);
  await killWorker(first);
  // No worker runs on this queue now; the server records the approval all the same.
  await sendApproval(approver, '!approve', {}, handle);
  const second = await spawnWorker(queue);
  try {
    const result = (await handle.result()) as JobResult;
    assert.equal(result.status, 'succeeded', result.reason);
    const verified = await verifyBundle(bundleOf(result.bundleDigest), jwksOf());
    assert.deepEqual(verified.problems, []);
    await recordHistory(handle, 'worker-killed-awaiting-approval');
  } finally {
    second.kill('SIGKILL');
  }
});

test('a worker killed during execution: the completed step does not run again, the interrupted one is not retried', async () => {
  const queue = uniqueId('killable');
  const first = await spawnWorker(queue);
  const text = '!claw crash during the steps';
  const eventId = await requester.sendText(roomId, text);
  const input: JobRequest = {
    roomId,
    requester: requester.userId,
    eventId,
    text,
    channel: 'matrix',
    matrixTaskQueue: matrixQueue,
  };
  const handle = await temporal.client.workflow.start('jobWorkflow', {
    taskQueue: queue,
    workflowId: jobWorkflowId(roomId, eventId),
    args: [input],
  });
  await waitForThreadNotice(eventId, /^Plan for job/);
  const arrived = new Promise<void>((resolve) => (holdArrived = resolve));
  await sendApproval(approver, '!approve', {}, handle);
  await arrived; // step 2 is under way on the first worker
  assert.equal(hits.count, 1);
  await killWorker(first);
  const second = await spawnWorker(queue);
  try {
    const result = (await handle.result()) as JobResult;
    assert.equal(result.status, 'failed');
    assert.match(result.reason, /step 2 \(http\) did not finish and is not run again/);
    assert.equal(hits.count, 1, 'the completed step 1 did not run again');
    assert.equal(hits.hold, 1, 'the interrupted step 2 was not retried');
    const records = bundleOf(result.bundleDigest).entries.filter(
      (e: { type: string }) => e.type === 'tool_record',
    );
    assert.deepEqual(
      records.map((r: { body: { step: number } }) => r.body.step),
      [0],
    );
    assert.deepEqual((await verifyBundle(bundleOf(result.bundleDigest), jwksOf())).problems, []);
  } finally {
    await killWorker(second);
  }
});

test('a policy change reaches a running job: its pinned token fails closed and no step runs', async () => {
  const { handle, eventId } = await request('!claw before a policy change');
  await waitForThreadNotice(eventId, /^Plan for job/);
  policyRegistry.activate('matrix', quickPolicy, 'policy change during a job');
  try {
    const step = await approveIntoRefusal(handle);
    assert.equal(
      step.denial.code,
      'POLICY_HASH_MISMATCH',
      'the drifted token did not verify, so nothing ran',
    );
  } finally {
    policyRegistry.rollback('matrix', mainPolicy, 'end of the policy change test');
  }
});

test('a worker whose shared control state is stale refuses its step tokens: nothing runs, the refusal is in the bundle', async () => {
  const { handle, eventId } = await request('!claw while the shared state is unread');
  await waitForThreadNotice(eventId, /^Plan for job/);
  controlStaleReason =
    'the shared control state was last read 45 s ago (limit 30 s): revocations made on other machines may be missing here';
  try {
    const step = await approveIntoRefusal(handle);
    assert.equal(step.denial.code, 'REVOCATION_CHECK_FAILED');
    assert.match(step.denial.reason, /the shared control state was last read 45 s ago/);
  } finally {
    controlStaleReason = null;
  }
});

test('approval freeze: an approval during the freeze is refused and recorded; after it, approval works', async () => {
  await setApprovalFreeze(temporal.client, taskQueue, true, '@oncall:localhost', 'incident 7');
  try {
    const { handle, eventId } = await request('!claw during a freeze');
    await waitForThreadNotice(eventId, /^Plan for job/);
    await sendApproval(approver, '!approve', {}, handle);
    await waitForThreadNotice(eventId, /approvals are frozen by an operator/);
    await setApprovalFreeze(temporal.client, taskQueue, false, '@oncall:localhost', 'incident 7 over');
    await sendApproval(approver, '!approve', {}, handle);
    const result = (await handle.result()) as JobResult;
    assert.equal(result.status, 'succeeded');
    const codes = bundleOf(result.bundleDigest)
      .entries.filter((e: { type: string }) => e.type === 'approval_attempt')
      .map((e: { body: { code: string | null } }) => e.body.code);
    assert.deepEqual(codes, ['APPROVAL_FROZEN', null]);
  } finally {
    await setApprovalFreeze(temporal.client, taskQueue, false, '@oncall:localhost', 'test cleanup');
  }
});

test('read-only triage mode: an approved job mints no token and waits, and goes on when the mode ends', async () => {
  await setMode(temporal.client, taskQueue, 'read-only', '@oncall:localhost', 'triage');
  try {
    const { handle, eventId } = await request('!claw during triage');
    await waitForThreadNotice(eventId, /^Plan for job/);
    await sendApproval(approver, '!approve', {}, handle);
    await waitForThreadNotice(eventId, /read-only mode; it waits/);
    assert.equal((await handle.query(statusQuery)).status, 'frozen');
    await setMode(temporal.client, taskQueue, 'normal', '@oncall:localhost', 'triage over');
    const result = (await handle.result()) as JobResult;
    assert.equal(result.status, 'succeeded');
  } finally {
    await setMode(temporal.client, taskQueue, 'normal', '@oncall:localhost', 'test cleanup');
  }
});

test('operators change the controls from the command line, with who and why kept', async () => {
  const cli = (...args: string[]) =>
    promisify(execFile)(
      fileURLToPath(new URL('../../bin/clawgate', import.meta.url)),
      [
        ...args,
        '--address',
        testServers().temporal.address,
        '--task-queue',
        taskQueue,
        '--by',
        '@oncall:localhost',
      ],
      { encoding: 'utf8' },
    );
  assert.match((await cli('freeze', '--reason', 'incident 9')).stdout, /approvals frozen/);
  assert.equal((await readControlState(temporal.client)).approvalsFrozen, true);
  assert.match((await cli('unfreeze', '--reason', 'incident 9 over')).stdout, /approvals unfrozen/);
  assert.match((await cli('mode', 'read-only', '--reason', 'triage')).stdout, /mode read-only/);
  assert.equal((await readControlState(temporal.client)).readOnly, true);
  await cli('mode', 'normal', '--reason', 'triage over');
  const snapshot = await controlSnapshot(temporal.client);
  assert.deepEqual(
    snapshot?.changes.slice(-4).map((c) => `${c.what} by ${c.by}: ${c.reason}`),
    [
      'approvals frozen by @oncall:localhost: incident 9',
      'approvals unfrozen by @oncall:localhost: incident 9 over',
      'mode read-only by @oncall:localhost: triage',
      'mode normal by @oncall:localhost: triage over',
    ],
  );
  await assert.rejects(cli('mode', 'sideways', '--reason', 'x'), /mode must be read-only or normal/);
});

test('cancel from the client, as the Web UI does: tokens revoked, notice posted, bundle sealed as cancelled', async () => {
  const { handle, eventId } = await request('!claw cancel me');
  await waitForThreadNotice(eventId, /^Plan for job/);
  await handle.cancel();
  const result = (await handle.result()) as JobResult;
  assert.equal(result.status, 'cancelled');
  await waitForThreadNotice(eventId, /cancelled by an operator/);
  const verified = await verifyBundle(bundleOf(result.bundleDigest), jwksOf());
  assert.deepEqual(verified.problems, []);
  await recordHistory(handle, 'cancelled');
});

type RawHistory = Awaited<ReturnType<WorkflowHandle['fetchHistory']>>;

/** Runs `use` with a client without the codec: it sees what Temporal stores. */
async function withoutCodec(use: (plain: Client) => Promise<void>): Promise<void> {
  const { address, namespace } = testServers().temporal;
  const connection = await Connection.connect({ address });
  try {
    await use(new Client({ connection, namespace }));
  } finally {
    await connection.close();
  }
}

/** `text` is neither in a history's raw bytes nor in its JSON form (as a client without the codec reads it). */
function assertNowhereInClear(raw: RawHistory, text: string, what: string): void {
  const bytes = Buffer.from(proto.temporal.api.history.v1.History.encode(raw).finish());
  assert.ok(bytes.length > 1000, 'the history has content');
  assert.equal(bytes.includes(Buffer.from(text)), false, `${what} is nowhere in the raw bytes`);
  assert.equal(historyToJSON(raw).includes(text), false, `${what} is not in its JSON form either`);
}

test("a job's payloads are encrypted in Temporal: no request text in the raw history, search attributes searchable, read as before through the codec", async () => {
  const marker = uniqueId('recognizable-secret-request');
  const text = `!claw summarise the readme and mention ${marker}`;
  const { handle, eventId, workflowId } = await request(text);
  // The job has planned by then: its history holds the request, the plan and activity results.
  await waitForThreadNotice(eventId, /^Plan for job/);
  await withoutCodec(async (plain) => {
    const raw = await plain.workflow.getHandle(workflowId).fetchHistory();
    assertNowhereInClear(raw, marker, 'the request text');
    const input = raw.events?.[0]?.workflowExecutionStartedEventAttributes?.input?.payloads?.[0];
    assert.equal(Buffer.from(input?.metadata?.['encoding'] ?? []).toString(), ENCRYPTED_ENCODING);
    // Without the keyring, the job's state cannot be read.
    await assert.rejects(plain.workflow.getHandle(workflowId).query(statusQuery));
    // Search attributes are not encrypted: visibility finds the job by its requester.
    const query = `WorkflowId = '${workflowId}' AND ${JOB_REQUESTER.name} = '${requester.userId}'`;
    let found = 0;
    for (let i = 0; i < 50 && found === 0; i++) {
      for await (const _ of plain.workflow.list({ query })) found += 1;
      if (found === 0) await new Promise((r) => setTimeout(r, 200));
    }
    assert.equal(found, 1, 'the job is found by its search attributes');
    // Through the codec the same history reads as before: the request text is the job's input.
    const decoded = await decodeHistory(raw, testPayloadCodec());
    const started = decoded.events?.[0]?.workflowExecutionStartedEventAttributes?.input?.payloads?.[0];
    assert.equal(defaultPayloadConverter.fromPayload<JobRequest>(started as Payload).text, text);
  });
  assert.equal((await handle.query(statusQuery)).status, 'awaiting_approval');
  await handle.terminate('the encryption test is over');
});

test("a failed job's failures are encrypted in Temporal: no message or stack trace in the raw history, read as before through the codec", async () => {
  // No policy is active on this channel: the policy activity fails (ApplicationFailure
  // NO_ACTIVE_POLICY, its message naming the channel) and so does the workflow.
  const channel = uniqueId('recognizable-secret-channel');
  const { handle, workflowId } = await request('!claw this job cannot start', channel);
  const failed = await handle.result().then(
    () => assert.fail('the job had no active policy, yet it did not fail'),
    (error: unknown) => error,
  );
  // Through the codec the failure reads as before: its type, message and stack trace.
  assert.ok(failed instanceof WorkflowFailedError, String(failed));
  assert.ok(failed.cause instanceof ActivityFailure, String(failed.cause));
  const cause = failed.cause.cause;
  assert.ok(cause instanceof ApplicationFailure, String(cause));
  assert.equal(cause.type, 'NO_ACTIVE_POLICY');
  assert.equal(cause.message, `no policy is active on channel ${channel}: nothing may run`);
  assert.match(cause.stack ?? '', /resolvePolicy/, "the activity's stack trace");

  await withoutCodec(async (plain) => {
    const raw = await plain.workflow.getHandle(workflowId).fetchHistory();
    assertNowhereInClear(raw, channel, "the failure's message");
    const failures = (raw.events ?? []).flatMap((e) => {
      const failure =
        e.activityTaskFailedEventAttributes?.failure ?? e.workflowExecutionFailedEventAttributes?.failure;
      const chain = [];
      for (let f = failure; f; f = f.cause) chain.push(f);
      return chain;
    });
    // The activity's failure, and the workflow's (an activity failure, the activity's as its
    // cause): the last two encoded by the workflow code's converter, in the workflow bundle.
    assert.equal(failures.length, 3, JSON.stringify(failures));
    for (const failure of failures) {
      assert.equal(failure.message, 'Encoded failure');
      assert.equal(failure.stackTrace, '', 'no stack trace in clear');
      const encoding = failure.encodedAttributes?.metadata?.['encoding'];
      assert.equal(Buffer.from(encoding ?? []).toString(), ENCRYPTED_ENCODING);
    }
    for (const frame of ['at nonRetryable', 'job-activities.ts', 'ApplicationFailure.create']) {
      assert.equal(historyToJSON(raw).includes(frame), false, `no stack frame ${frame} in clear`);
    }
    // Decoded with the codec, the failures hold their message and stack trace again.
    const decoded = await decodeHistory(raw, testPayloadCodec());
    const activityFailed = decoded.events?.find((e) => e.activityTaskFailedEventAttributes)
      ?.activityTaskFailedEventAttributes?.failure;
    const attributes = defaultPayloadConverter.fromPayload<{ message: string; stack_trace: string }>(
      activityFailed?.encodedAttributes as Payload,
    );
    assert.equal(attributes.message, cause.message);
    assert.match(attributes.stack_trace, /resolvePolicy/);
  });
  // `clawgate replay` replays it against the current code (it has no bundle: it never sealed one).
  const report = await replayJob(temporal.client, workflowId, {
    bundleDir: join(state, 'bundles'),
    jwks: jwksOf(),
  });
  assert.equal(report.replayError, null);
  assert.equal(report.replayed, true);
  await recordHistory(handle, 'failed-no-active-policy');
});
