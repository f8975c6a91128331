// The parts a job of the loop runs on, for the fault tests: keys, a policy registry with a loop
// policy for one room, the scripted demo model behind a front that can break each call the way
// a failing provider does, the real receipting proxy, a real Temporal worker with the real
// sandbox (or none, for a test that runs its worker as a process of its own), and a bot, a
// requester and an approver on the real Synapse, the bot hosting the jobs' Matrix I/O.
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { WorkflowHandle } from '@temporalio/client';
import type { Worker } from '@temporalio/worker';
import { createJobActivities } from '../../src/activities/job-activities.ts';
import { readControlState } from '../../src/activities/control-state.ts';
import { AGENT_PROMPT_HEAD } from '../../src/agent/protocol.ts';
import { verifyBundle } from '../../src/evidence/bundle.ts';
import { createMatrixActivities } from '../../src/ingress/matrix-io.ts';
import { generateKeyring, KEY_PURPOSES, loadSigner, publicJwks } from '../../src/keys/keyring.ts';
import { FilePolicyRegistry, signWpc } from '../../src/policy/registry.ts';
import { parseWpc } from '../../src/policy/wpc.ts';
import { parseProxyConfig } from '../../src/proxy/config.ts';
import { DEMO_SCRIPT, scriptedModel, type DemoScript } from '../../src/proxy/demo-model.ts';
import { startDemoUpstream, type DemoUpstream, type ReplyRequest } from '../../src/proxy/demo-upstream.ts';
import { ReceiptStore } from '../../src/proxy/receipt-store.ts';
import { verifyReceipt, type ReceiptPayload } from '../../src/proxy/receipts.ts';
import { startProxy, type RunningProxy } from '../../src/proxy/server.ts';
import { cstVerifier, registryPolicySource } from '../../src/proxy/token-check.ts';
import { bubblewrapSandbox } from '../../src/sandbox/bubblewrap.ts';
import { approvalSignal, type ApprovalAttempt, type JobRequest } from '../../src/temporal/job-contract.ts';
import { jobWorkflowId } from '../../src/ingress/job-ids.ts';
import { mintCapabilityToken } from '../../src/tokens/cst.ts';
import { FileRevocationStore } from '../../src/tokens/revocations.ts';
import type { JobResult } from '../../src/workflows/job.ts';
import { ensureDemoRepository, jobWorkspacePath } from '../../src/workspace/workspaces.ts';
import { MatrixTestUser } from '../harness/matrix-user.ts';
import { testServers } from '../harness/servers.ts';
import { bundleWorkflows, connectTemporal, type TemporalTestContext } from '../harness/temporal.ts';

/** How the front between the proxy and the model breaks the next call. */
export type UpstreamFault =
  /** Takes the call and never answers: not a header, not a byte. */
  | { kind: 'hang' }
  /** Answers 200 with half of the model's JSON answer, then cuts the connection. */
  | { kind: 'cut-json' }
  /** Streams the first `events` events of the answer, then cuts the connection. */
  | { kind: 'cut-stream'; events: number }
  /** Streams the first `events` events, then sends nothing more and keeps the connection open. */
  | { kind: 'stall-stream'; events: number }
  /** Streams the first `events` events, then an error event (code 500), then ends the stream. */
  | { kind: 'error-event'; events: number }
  /** Answers with this error status (after `delayMs`). */
  | { kind: 'status'; status: number; delayMs?: number };

/**
 * A model upstream that fails on demand: each call takes the next queued fault, or, with none
 * queued, is passed to the scripted model as it is.
 */
export interface FaultyUpstream {
  readonly url: string;
  /** Calls that reached the front, and which fault each got (null: passed through). */
  readonly calls: Array<UpstreamFault | null>;
  /** Queues faults for the next calls, in order. */
  queue(...faults: UpstreamFault[]): void;
  /** Decides each call's fault from its request, when set (the queue goes first). */
  rule: ((request: ReplyRequest) => UpstreamFault | null) | null;
  /** Calls held open by a hang or a stall whose connection has not closed yet. */
  held(): number;
  close(): Promise<void>;
}

async function readAll(req: IncomingMessage): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of req) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

/** Resolves once what was written so far left the socket. */
const flushed = (res: ServerResponse): Promise<void> =>
  new Promise((resolve) => res.write('', () => resolve()));

export async function startFaultyUpstream(model: DemoUpstream): Promise<FaultyUpstream> {
  const queued: UpstreamFault[] = [];
  const rules = { rule: null as FaultyUpstream['rule'] };
  const calls: Array<UpstreamFault | null> = [];
  const open = new Set<ServerResponse>();
  const hold = (res: ServerResponse): void => {
    open.add(res);
    res.once('close', () => open.delete(res));
  };

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const body = await readAll(req);
    let fault = queued.shift() ?? null;
    if (fault === null && rules.rule) {
      const parsed = JSON.parse(body.toString('utf8')) as {
        model?: string;
        messages?: ReplyRequest['messages'];
      };
      fault = rules.rule({ model: parsed.model ?? '', messages: parsed.messages ?? [], tools: [] });
    }
    calls.push(fault);
    if (fault?.kind === 'hang') return hold(res);
    if (fault?.kind === 'status') {
      await new Promise((r) => setTimeout(r, fault.delayMs ?? 0));
      const error = Buffer.from(
        JSON.stringify({
          error: { message: 'the provider is overloaded', type: 'server_error', code: 'overloaded' },
        }),
      );
      res.writeHead(fault.status, { 'content-type': 'application/json', 'content-length': error.length });
      res.end(error);
      return;
    }
    const answer = await fetch(`${model.url}${req.url ?? ''}`, {
      method: req.method ?? 'POST',
      headers: { 'content-type': 'application/json', authorization: req.headers.authorization ?? '' },
      body: new Uint8Array(body),
    });
    const text = Buffer.from(await answer.arrayBuffer());
    const type = answer.headers.get('content-type') ?? 'application/json';
    if (fault === null) {
      res.writeHead(answer.status, { 'content-type': type, 'content-length': text.length });
      res.end(text);
      return;
    }
    if (fault.kind === 'cut-json') {
      res.writeHead(200, { 'content-type': type, 'content-length': text.length });
      res.write(text.subarray(0, Math.floor(text.length / 2)));
      await flushed(res);
      res.socket?.destroy();
      return;
    }
    // The stream faults: the answer's events, as the model sent them, up to the fault.
    const events = text
      .toString('utf8')
      .split('\n\n')
      .filter((e) => e !== '')
      .map((e) => `${e}\n\n`);
    assert.ok(events.length > fault.events + 1, `the answer has more than ${fault.events + 1} events`);
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
    for (const event of events.slice(0, fault.events)) res.write(event);
    await flushed(res);
    if (fault.kind === 'cut-stream') {
      await new Promise((r) => setTimeout(r, 20));
      res.socket?.destroy();
    } else if (fault.kind === 'stall-stream') {
      hold(res);
    } else {
      // What OpenRouter sends when the provider fails after the stream began: an error event
      // with the HTTP-like code, a last chunk that finishes with "error", then the stream's end.
      res.write(
        `data: ${JSON.stringify({
          id: 'gen-cut',
          object: 'chat.completion.chunk',
          error: { code: 500, message: 'Internal Server Error: the provider failed mid-answer' },
          choices: [{ index: 0, delta: { content: '' }, finish_reason: 'error' }],
        })}\n\n`,
      );
      res.end('data: [DONE]\n\n');
    }
  }

  const server: Server = createServer((req, res) => {
    handle(req, res).catch((error: unknown) => {
      if (!res.headersSent) res.writeHead(500).end(String(error));
      else res.destroy();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    calls,
    queue: (...faults) => queued.push(...faults),
    get rule() {
      return rules.rule;
    },
    set rule(rule) {
      rules.rule = rule;
    },
    held: () => open.size,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

export interface JobStackOptions {
  /** Where the proxy writes its receipt log (default: in the stack's state folder). */
  receiptsPath?: string;
  /** The proxy's limit on the upstream's first byte and between chunks (default: the config's). */
  upstreamTimeoutMs?: number;
  /** The agent block of the policy (default: 8 model turns, 10 tool calls). */
  agent?: Record<string, number>;
  /** Whether this process runs the job worker (default true); else the test runs one on `taskQueue`. */
  worker?: boolean;
  /** The proxy's clock (default the machine's). */
  proxyNow?: () => Date;
}

export interface JobStack {
  state: string;
  keys: string;
  registry: FilePolicyRegistry;
  temporal: TemporalTestContext;
  /** The job worker's task queue (this process's, or the one the test's own worker is to poll). */
  taskQueue: string;
  matrixQueue: string;
  /** The repository every job's workspace is cloned from. */
  source: { repo: string; ref: string };
  model: DemoUpstream;
  upstream: FaultyUpstream;
  proxy: RunningProxy;
  receiptsPath: string;
  bot: MatrixTestUser;
  requester: MatrixTestUser;
  approver: MatrixTestUser;
  roomId: string;
  /** Scripts by a word of the request (the demo's own behaviour for any other request). */
  scripts: Array<[string, DemoScript]>;
  /** Awaited before each of the model's answers, when set (a test holds a turn or breaks the disk). */
  beforeAnswer: ((request: ReplyRequest) => Promise<void>) | null;
  /** Signs, registers and activates a variant of the stack's policy; returns its hash. */
  activatePolicy(change: (policy: Record<string, any>) => void): Promise<string>;
  /** Posts `text` as the requester and starts its job on `queue`. */
  request(
    text: string,
    queue?: string,
  ): Promise<{ handle: WorkflowHandle; eventId: string; workflowId: string }>;
  /** Waits for the plan, then approves it as the approver. */
  approve(handle: WorkflowHandle, eventId: string): Promise<void>;
  /** The bot's notice in the thread of `root` that matches. */
  threadNotice(root: string, pattern: RegExp, timeoutMs?: number): Promise<string>;
  /** The sealed bundle of a result, verified offline (no problem allowed). */
  verified(result: JobResult): Promise<Bundle>;
  /** Every receipt of a job in the proxy's log, verified, in order. */
  receiptsOf(workflowId: string): Promise<ReceiptPayload[]>;
  /** A planning token for a job that exists only in the test, for calls made directly to the proxy. */
  directToken(workflowId: string): Promise<string>;
  /** Stops the proxy and starts it again on the same receipt log and port. */
  restartProxy(): Promise<void>;
  close(): Promise<void>;
}

export interface Bundle {
  entries: Array<{ type: string; body: Record<string, unknown> }>;
}

export const ofType = (bundle: Bundle, type: string): Array<Record<string, unknown>> =>
  bundle.entries.filter((e) => e.type === type).map((e) => e.body);

/** Which turn of which job's conversation a model request is: its phase, turn and request text. */
export function turnOf(request: ReplyRequest): {
  phase: 'planning' | 'execution';
  turn: number;
  text: string;
} {
  const system = request.messages.find((m) => m.role === 'system')?.content;
  return {
    phase: typeof system === 'string' && system.startsWith(AGENT_PROMPT_HEAD) ? 'execution' : 'planning',
    turn: request.messages.filter((m) => m.role === 'assistant').length,
    text: requestText(request.messages),
  };
}

function requestText(messages: Array<{ role?: unknown; content?: unknown }>): string {
  const first = messages.find((m) => m.role === 'user');
  return typeof first?.content === 'string' ? first.content : '';
}

export async function startJobStack(opts: JobStackOptions = {}): Promise<JobStack> {
  const state = mkdtempSync(join(tmpdir(), 'clawgate-faults-'));
  const keys = join(state, 'keys');
  for (const purpose of KEY_PURPOSES) await generateKeyring(keys, purpose);
  const source = await ensureDemoRepository(join(state, 'source'));
  const registry = new FilePolicyRegistry(join(state, 'registry'));
  const revocations = new FileRevocationStore(join(state, 'revocations.log'));

  const [bot, requester, approver] = (await Promise.all(
    ['bot', 'requester', 'approver'].map((n) => MatrixTestUser.create(n)),
  )) as [MatrixTestUser, MatrixTestUser, MatrixTestUser];
  const roomId = await bot.createRoom({ name: 'faults', invite: [requester.userId, approver.userId] });
  for (const user of [requester, approver]) {
    await user.waitForMembership(roomId, 'invite');
    await user.joinRoom(roomId);
  }

  const example = JSON.parse(readFileSync(new URL('../../examples/policy.json', import.meta.url), 'utf8'));
  example.matrix.rooms_allowlist = [roomId];
  example.matrix.requesters_allowlist = [requester.userId];
  example.matrix.approval.approver_user_ids_allowlist = [approver.userId];
  example.matrix.approval.expires_after_seconds = 3600;
  example.execution.sandbox.limits = { wall_seconds: 5 };
  example.execution.mode = 'agent';
  example.execution.agent = opts.agent ?? { model_turns: 8, tool_calls: 10 };
  const activatePolicy = async (change: (policy: Record<string, any>) => void): Promise<string> => {
    const doc = structuredClone(example);
    change(doc);
    const signed = signWpc(parseWpc(doc), loadSigner(keys, 'policy'));
    await registry.register(signed, publicJwks(keys, ['policy']));
    registry.activate('matrix', signed.hash);
    return signed.hash;
  };
  await activatePolicy(() => {});

  const scripts: Array<[string, DemoScript]> = [];
  const stack = { beforeAnswer: null as JobStack['beforeAnswer'] };
  const model = await startDemoUpstream({
    reply: (request) => {
      const text = requestText(request.messages);
      const script = scripts.find(([key]) => text.includes(key))?.[1] ?? DEMO_SCRIPT;
      return scriptedModel(script)(request);
    },
    beforeAnswer: async (request) => {
      await stack.beforeAnswer?.(request);
    },
  });
  const upstream = await startFaultyUpstream(model);
  const receiptsPath = opts.receiptsPath ?? join(state, 'proxy', 'receipts.log');
  let port = 0;
  const startOurProxy = async (): Promise<RunningProxy> => {
    const config = parseProxyConfig({
      listen: { host: '127.0.0.1', port },
      upstreams: [{ name: 'demo', baseUrl: `${upstream.url}/v1`, models: ['demo-echo'] }],
      receiptsPath,
      ...(opts.upstreamTimeoutMs ? { limits: { upstreamTimeoutMs: opts.upstreamTimeoutMs } } : {}),
    });
    const running = await startProxy({
      config,
      store: await ReceiptStore.open(config.receiptsPath),
      receiptKey: loadSigner(keys, 'receipt'),
      bindingJwks: () => publicJwks(keys, ['bundle']),
      ...(opts.proxyNow ? { now: opts.proxyNow } : {}),
      verifyToken: cstVerifier({
        jwks: publicJwks(keys, ['token']),
        revocations,
        policies: registryPolicySource(registry, 'matrix'),
        ...(opts.proxyNow ? { now: opts.proxyNow } : {}),
      }),
    });
    port = Number(new URL(running.url).port);
    return running;
  };
  let proxy = await startOurProxy();

  const temporal = await connectTemporal();
  const workspaces = join(state, 'job-workspaces');
  let worker: Worker | null = null;
  let taskQueue = `faults-${Math.random().toString(36).slice(2, 10)}`;
  if (opts.worker !== false) {
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
      workspaces: { root: workspaces, source: () => Promise.resolve(source) },
      workspaceFor: (job) => jobWorkspacePath(workspaces, job.workflowId),
      bundleDir: join(state, 'bundles'),
      controlState: () => readControlState(temporal.client),
    });
    ({ worker, taskQueue } = await temporal.createWorker({ workflowBundle, activities }));
  }
  const { worker: matrixWorker, taskQueue: matrixQueue } = await temporal.createWorker({
    activities: createMatrixActivities(bot.client),
  });
  const running = Promise.all([worker?.run(), matrixWorker.run()]).then(() => {});

  const result: JobStack = {
    state,
    keys,
    registry,
    temporal,
    taskQueue,
    matrixQueue,
    source,
    model,
    upstream,
    get proxy() {
      return proxy;
    },
    receiptsPath,
    bot,
    requester,
    approver,
    roomId,
    scripts,
    get beforeAnswer() {
      return stack.beforeAnswer;
    },
    set beforeAnswer(hook) {
      stack.beforeAnswer = hook;
    },
    activatePolicy,
    async request(text, queue = taskQueue) {
      const eventId = await requester.sendText(roomId, text);
      const input: JobRequest = {
        roomId,
        requester: requester.userId,
        eventId,
        text,
        channel: 'matrix',
        matrixTaskQueue: matrixQueue,
      };
      const workflowId = jobWorkflowId(roomId, eventId);
      const handle = await temporal.client.workflow.start('jobWorkflow', {
        taskQueue: queue,
        workflowId,
        args: [input],
      });
      return { handle, eventId, workflowId };
    },
    async approve(handle, eventId) {
      await result.threadNotice(eventId, /^Plan for job/);
      const approval = await approver.sendText(roomId, '!approve');
      const event = await approver.client.fetchRoomEvent(roomId, approval);
      const attempt: ApprovalAttempt = {
        eventId: approval,
        sender: approver.userId,
        roomId,
        decision: 'approve',
        originServerTs: Number(event.origin_server_ts),
      };
      await handle.signal(approvalSignal, attempt);
    },
    async threadNotice(root, pattern, timeoutMs = 60_000) {
      const event = await requester.waitForRoomEvent({
        roomId,
        timeoutMs,
        message: `a notice matching ${pattern} in the thread of ${root}`,
        filter: (e) =>
          e.getSender() === bot.userId &&
          e.getContent()['m.relates_to']?.event_id === root &&
          pattern.test(String(e.getContent()['body'] ?? '')),
      });
      return String(event.getContent()['body'] ?? '');
    },
    async verified(jobResult) {
      const bundle = JSON.parse(
        readFileSync(join(state, 'bundles', `${jobResult.bundleDigest}.json`), 'utf8'),
      ) as Bundle;
      const check = await verifyBundle(bundle, publicJwks(keys));
      assert.deepEqual(check.problems, [], 'the bundle verifies offline');
      return bundle;
    },
    async receiptsOf(workflowId) {
      const jwks = publicJwks(keys, ['receipt']);
      const out: ReceiptPayload[] = [];
      for (const r of proxy.store.forJob(workflowId)) out.push((await verifyReceipt(r.jws, jwks)).payload);
      return out;
    },
    async directToken(workflowId) {
      const { token } = await mintCapabilityToken(
        {
          purpose: 'planning',
          job: { workflowId, runId: 'direct' },
          roomId,
          scope: { tools: [], models: ['demo-echo'] },
          ttlSeconds: 900,
        },
        loadSigner(keys, 'token'),
      );
      return token;
    },
    async restartProxy() {
      await proxy.close();
      proxy = await startOurProxy();
    },
    async close() {
      worker?.shutdown();
      matrixWorker.shutdown();
      await running;
      await temporal.close();
      await proxy.close();
      await upstream.close();
      await model.close();
      for (const user of [bot, requester, approver]) user.stop();
    },
  };
  return result;
}

/** A chat call straight to the proxy, as any OpenAI client makes it. */
export async function chat(
  proxyUrl: string,
  token: string | null,
  text: string,
  opts: { stream?: boolean } = {},
): Promise<Response> {
  return await fetch(`${proxyUrl}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...(token ? { authorization: `Bearer ${token}` } : {}) },
    body: JSON.stringify({
      model: 'demo-echo',
      messages: [{ role: 'user', content: text }],
      ...(opts.stream ? { stream: true } : {}),
    }),
  });
}
