// The worker side of clawgate for end-to-end tests: keyrings, a policy registry, the local
// demo model upstream (answering with a fixed plan, or as a test's scripted model), the real
// receipting proxy, and a real Temporal worker running the job workflows and their activities
// in the real sandbox (or none, for a test that runs its worker as a process of its own). The
// gateway under test runs as its own process against it.
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Worker } from '@temporalio/worker';
import { createJobActivities } from '../../src/activities/job-activities.ts';
import { readControlState } from '../../src/activities/control-state.ts';
import { generateKeyring, KEY_PURPOSES, loadSigner, publicJwks } from '../../src/keys/keyring.ts';
import { FilePolicyRegistry, signWpc } from '../../src/policy/registry.ts';
import { parseWpc } from '../../src/policy/wpc.ts';
import { parseProxyConfig } from '../../src/proxy/config.ts';
import {
  startDemoUpstream,
  type AssistantReply,
  type DemoUpstream,
  type ReplyRequest,
} from '../../src/proxy/demo-upstream.ts';
import { ReceiptStore } from '../../src/proxy/receipt-store.ts';
import { startProxy, type RunningProxy } from '../../src/proxy/server.ts';
import { cstVerifier, registryPolicySource } from '../../src/proxy/token-check.ts';
import { bubblewrapSandbox } from '../../src/sandbox/bubblewrap.ts';
import { FileRevocationStore } from '../../src/tokens/revocations.ts';
import { jobWorkspacePath } from '../../src/workspace/workspaces.ts';
import { testServers, uniqueId } from './servers.ts';
import { bundleWorkflows, connectTemporal, type TemporalTestContext } from './temporal.ts';

/** The plan the demo model answers with: two sandboxed tools and a model call. */
export const DEMO_PLAN = {
  summary: 'Read the readme and find the TODOs',
  steps: [
    { tool: 'read', args: { path: 'README.md' } },
    { tool: 'search', args: { query: 'TODO' } },
    { tool: 'model', args: { model: 'demo-echo', prompt: 'Summarise: TODO write the docs' } },
  ],
};

export interface PolicyChoice {
  channel: string;
  rooms: string[];
  requesters: string[];
  approvers: string[];
  limits?: { requests_per_requester_per_hour?: number; open_jobs_per_room?: number };
  requireVerifiedDevice?: boolean;
  /** The execution mode; fixed-step jobs ('plan') unless a test asks for the agent loop. */
  mode?: 'plan' | 'agent';
  /** The agent loop's budget (`execution.agent`); the example's when absent. */
  agent?: Record<string, number>;
  /** The tools allowed (and denied: the example's list when absent); the example's when absent. */
  tools?: { allow: string[]; deny?: string[] };
  /** What the sandbox may do with the workspace; the example's when absent. */
  workspaceAccess?: 'none' | 'ro' | 'rw';
  /** The policy's schedules rule (absent: none, so no pre-approved schedules). */
  schedules?: { pre_approval: { allowed: boolean; approvers: string[] } };
}

export interface WorkerStackOptions {
  /** The model's replies, tool calls included (default: the fixed plan, DEMO_PLAN). */
  reply?: (request: ReplyRequest) => AssistantReply;
  /** Awaited before each of the model's answers (a test holds a turn with it). */
  beforeAnswer?: (request: ReplyRequest) => Promise<void>;
  /**
   * The repository each job's own workspace is made from, in `<state>/job-workspaces` (default:
   * a folder with a README per job).
   */
  source?: { repo: string; ref: string };
  /** Where write_pr pushes, and the worker's own repository it pushes from. */
  prRemote?: string;
  pushRepo?: string;
  /**
   * Whether this process runs the job worker (default true). Without it, a test runs one on
   * `taskQueue` itself (test/workflows/worker-process.ts, given `state` and `proxyUrl`).
   */
  worker?: boolean;
  /** Where the evidence pages are: the link in a job's result message. */
  evidenceBaseUrl?: string;
}

export interface WorkerStack {
  state: string;
  temporal: TemporalTestContext;
  taskQueue: string;
  registryDir: string;
  keysDir: string;
  bundleDir: string;
  /** The receipting proxy the jobs' model calls go through. */
  proxyUrl: string;
  /** Signs, registers and activates a policy made from the example for these rooms and users. */
  activatePolicy(choice: PolicyChoice): Promise<string>;
  close(): Promise<void>;
}

export async function startWorkerStack(opts: WorkerStackOptions = {}): Promise<WorkerStack> {
  const state = mkdtempSync(join(tmpdir(), 'clawgate-stack-'));
  const keysDir = join(state, 'keys');
  for (const purpose of KEY_PURPOSES) await generateKeyring(keysDir, purpose);
  const registryDir = join(state, 'registry');
  const registry = new FilePolicyRegistry(registryDir);
  const revocations = new FileRevocationStore(join(state, 'revocations.log'));
  const upstream: DemoUpstream = await startDemoUpstream({
    answer: () => JSON.stringify(DEMO_PLAN),
    ...(opts.reply ? { reply: opts.reply } : {}),
    ...(opts.beforeAnswer ? { beforeAnswer: opts.beforeAnswer } : {}),
  });
  const config = parseProxyConfig({
    listen: { host: '127.0.0.1', port: 0 },
    upstreams: [{ name: 'demo', baseUrl: `${upstream.url}/v1`, models: ['demo-echo'] }],
    receiptsPath: join(state, 'proxy', 'receipts.log'),
  });
  const proxy: RunningProxy = await startProxy({
    config,
    store: await ReceiptStore.open(config.receiptsPath),
    receiptKey: loadSigner(keysDir, 'receipt'),
    bindingJwks: () => publicJwks(keysDir, ['bundle']),
    verifyToken: cstVerifier({
      jwks: publicJwks(keysDir, ['token']),
      revocations,
      policies: registryPolicySource(registry, 'matrix'),
    }),
  });
  const temporal = await connectTemporal();
  const bundleDir = join(state, 'bundles');
  const source = opts.source;
  const workspacesRoot = join(state, 'job-workspaces');
  let worker: Worker | null = null;
  let taskQueue = uniqueId('tq');
  if (opts.worker !== false) {
    const workflowBundle = await bundleWorkflows(
      fileURLToPath(new URL('../../src/workflows/index.ts', import.meta.url)),
    );
    const activities = createJobActivities({
      registry,
      keysDir,
      revocations,
      proxyUrl: proxy.url,
      planningModel: 'demo-echo',
      sandbox: bubblewrapSandbox(testServers().bwrap),
      ...(source ? { workspaces: { root: workspacesRoot, source: () => Promise.resolve(source) } } : {}),
      workspaceFor: (job) => {
        if (source) return jobWorkspacePath(workspacesRoot, job.workflowId);
        const dir = join(state, 'workspaces', Buffer.from(job.workflowId).toString('base64url'));
        mkdirSync(dir, { recursive: true });
        writeFileSync(join(dir, 'README.md'), '# demo\nTODO: write the docs\n');
        return dir;
      },
      bundleDir,
      controlState: () => readControlState(temporal.client),
      ...(opts.prRemote ? { prRemote: opts.prRemote } : {}),
      ...(opts.pushRepo ? { pushRepo: opts.pushRepo } : {}),
      ...(opts.evidenceBaseUrl ? { evidenceBaseUrl: opts.evidenceBaseUrl } : {}),
    });
    ({ worker, taskQueue } = await temporal.createWorker({ workflowBundle, activities }));
  }
  const running = worker?.run() ?? Promise.resolve();
  const example = JSON.parse(readFileSync(new URL('../../examples/policy.json', import.meta.url), 'utf8'));
  return {
    state,
    temporal,
    taskQueue,
    registryDir,
    keysDir,
    bundleDir,
    proxyUrl: proxy.url,
    async activatePolicy(choice) {
      const doc = structuredClone(example);
      doc.matrix.rooms_allowlist = choice.rooms;
      doc.matrix.requesters_allowlist = choice.requesters;
      doc.matrix.approval.approver_user_ids_allowlist = choice.approvers;
      doc.matrix.approval.expires_after_seconds = 3600;
      doc.execution.mode = choice.mode ?? 'plan'; // fixed-step jobs unless a test asks for the agent loop
      if (choice.agent) doc.execution.agent = choice.agent;
      if (choice.tools) {
        doc.execution.tools = {
          allow: choice.tools.allow,
          deny: choice.tools.deny ?? doc.execution.tools.deny,
        };
      }
      if (choice.workspaceAccess) doc.execution.sandbox.workspace_access = choice.workspaceAccess;
      if (choice.limits) doc.matrix.limits = choice.limits;
      if (choice.requireVerifiedDevice) doc.matrix.approval.require_verified_device = true;
      if (choice.schedules) doc.schedules = choice.schedules;
      const signed = signWpc(parseWpc(doc), loadSigner(keysDir, 'policy'));
      await registry.register(signed, publicJwks(keysDir, ['policy']));
      registry.activate(choice.channel, signed.hash);
      return signed.hash;
    },
    async close() {
      worker?.shutdown();
      await running;
      await temporal.close();
      await proxy.close();
      await upstream.close();
    },
  };
}
