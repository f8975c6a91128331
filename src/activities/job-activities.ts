// The worker's activities for a job: resolve and pin the policy, draft a plan through the
// proxy with a planning-only token, mint the execution token after approval, run one approved
// step through the tool layer, revoke, and seal the proof bundle. Built by a factory so the
// worker passes its dependencies in (registry, keys, revocations, proxy, sandbox, stores).
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { ApplicationFailure } from '@temporalio/activity';
import { z } from 'zod';
import { ClawgateError, ERROR_CODES } from '../errors.ts';
import { sealJob } from '../evidence/seal.ts';
import { fetchProxy } from './proxy-fetch.ts';
import { jobWorkflowId, shortJobId } from '../ingress/job-ids.ts';
import { evidencePageUrl } from '../evidence/server.ts';
import { loadSigner } from '../keys/keyring.ts';
import { canonicalHash, sha256Hex } from '../policy/canonical.ts';
import type { FilePolicyRegistry } from '../policy/registry.ts';
import { registryPolicyReader } from '../proxy/token-check.ts';
import type { Sandbox } from '../sandbox/bubblewrap.ts';
import type {
  AgentPlan,
  BundleEntryInput,
  ControlState,
  JobRef,
  PinnedPolicy,
  Plan,
  PlanDraft,
  PlanStep,
  StepResult,
} from '../temporal/job-types.ts';
import { mintCapabilityToken, type CstClaims } from '../tokens/cst.ts';
import type { RevocationStore } from '../tokens/revocations.ts';
import { runTool } from '../tools/runner.ts';
import { EvidenceStore } from '../evidence/store.ts';
import { wpcSchema } from '../policy/wpc.ts';
import { prepareJobWorkspace, removeJobWorkspace } from '../workspace/workspaces.ts';
import { createAgentActivities, heartbeating, jobTokenVerifier } from './agent-activities.ts';
import { checkOutputRefs, outputsUsed, resolveOutputRefs } from '../policy/step-outputs.ts';
import type { WorkerMetrics } from '../metrics/worker.ts';

export interface JobActivityDeps {
  registry: FilePolicyRegistry;
  keysDir: string;
  revocations: RevocationStore;
  /** Base URL of clawgate's model proxy. */
  proxyUrl: string;
  planningModel: string;
  sandbox: Sandbox;
  /** The host folder a job's tools work in. */
  workspaceFor: (job: JobRef) => string;
  /**
   * Where jobs' own workspaces are made (each fresh from the source, removed after the job);
   * `workspaceFor` must then name the same folders. Absent: `workspaceFor` as it is.
   */
  workspaces?: { root: string; source: () => Promise<{ repo: string; ref: string }> };
  /** The jobs' evidence stores (tool outputs, conversations, tool-call claims). */
  evidence?: EvidenceStore;
  /** Where write_pr pushes, and the worker's own repository it pushes from. */
  prRemote?: string;
  pushRepo?: string;
  bundleDir: string;
  /** Where reviewers open a bundle's page (the evidence server); absent: no link in the result. */
  evidenceBaseUrl?: string;
  /** Says what a seal could not do (a job sealed without its Clawsig export, say). */
  warn?: (message: string) => void;
  /** The operators' controls (read-only mode, approval freeze); normal when absent. */
  controlState?: () => ControlState | Promise<ControlState>;
  /** Why revocations cannot be trusted now (a stale mirror of the shared state), or null. */
  controlStale?: () => string | null;
  /**
   * How long a token check waits for a stale mirror to be read again before it refuses (at most
   * half the activity's time limit): 60 s when absent.
   */
  controlPatienceMs?: number;
  /** The worker's metrics (jobs ended, plan to approval); none counted when absent. */
  metrics?: WorkerMetrics;
}

export const PLANNER_PROMPT = [
  'You plan work for an approval-gated agent. Answer with JSON only:',
  '{"summary": "<one line>", "steps": [{"tool": "<tool>", "args": {...}}]}.',
  'Tools: read {path}, search {query, path?}, http {method, url}, write_pr {branch, message, files}, exec {argv}.',
  'Use only tools the policy allows. Every argument is final: nothing is decided later.',
  'A later step may take an earlier one\'s output as data, as {"$output": <step number>}: as a model',
  "prompt, as a part of one (a list of strings and such references), or as a write_pr file's content.",
].join('\n');

const planSchema = z
  .object({
    summary: z.string().min(1).max(500),
    steps: z
      .array(z.object({ tool: z.string().min(1).max(64), args: z.record(z.string(), z.unknown()) }).strict())
      .min(1)
      .max(20),
  })
  .strict();

/** A plan step that is a model call through the proxy rather than a tool. */
export const MODEL_STEP = 'model';
const modelStepArgs = z.object({ model: z.string().min(1), prompt: z.string().min(1).max(100_000) }).strict();
/** A model step as approved: its prompt may take earlier steps' outputs as data. */
const plannedModelStepArgs = z
  .object({
    model: z.string().min(1),
    prompt: z.union([
      z.string().min(1).max(100_000),
      z.object({ $output: z.number().int() }).strict(),
      z
        .array(z.union([z.string().max(100_000), z.object({ $output: z.number().int() }).strict()]))
        .min(1)
        .max(50),
    ]),
  })
  .strict();

function nonRetryable(type: string, message: string): ApplicationFailure {
  return ApplicationFailure.create({ type, message, nonRetryable: true });
}

/** One approved step of a fixed-step plan, as the workflow hands it over. */
interface StepInput {
  job: JobRef;
  index: number;
  step: PlanStep;
  token: string;
  policyHash: string;
  /** The policy channel: a token pinned to a policy no longer active there is refused. */
  channel?: string;
  /** Outputs of earlier steps (by step number, in the evidence store) this step takes as data. */
  outputs?: Record<string, string>;
}

export function createJobActivities(deps: JobActivityDeps) {
  const policyByHash = registryPolicyReader(deps.registry);
  const evidence = deps.evidence ?? new EvidenceStore(join(deps.bundleDir, '..', 'evidence'));
  const agent = createAgentActivities({ ...deps, evidence }, policyByHash);
  const verifyJobToken = jobTokenVerifier(deps);

  async function callProxy(token: string, messages: Array<{ role: string; content: string }>, model: string) {
    const response = await fetchProxy(`${deps.proxyUrl}/v1/chat/completions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      body: JSON.stringify({ model, messages }),
    });
    const receiptId = response.headers.get('x-clawgate-receipt-id');
    const text = await response.text();
    let receipt: string | null = null;
    if (receiptId) {
      const r = await fetchProxy(`${deps.proxyUrl}/v1/receipts/${encodeURIComponent(receiptId)}`, {
        headers: { authorization: `Bearer ${token}` },
      });
      if (r.ok) receipt = ((await r.json()) as { receipts: Array<{ jws: string }> }).receipts[0]?.jws ?? null;
    }
    return { status: response.status, text, receipt };
  }

  /** A model-call step: the approved prompt to the approved model, through the proxy, receipted. */
  async function modelStep(
    input: { job: JobRef; index: number; step: PlanStep; token: string },
    claims: unknown,
    tokenError: { code: string; reason: string } | undefined,
  ): Promise<StepResult> {
    const startedAt = new Date().toISOString();
    const started = performance.now();
    const base = {
      step: input.index,
      tool: MODEL_STEP,
      args_sha256: canonicalHash(input.step.args),
      started_at: startedAt,
    };
    const args = modelStepArgs.safeParse(input.step.args);
    if (!claims || !args.success) {
      const denial = tokenError ?? {
        code: 'TOOL_ARGUMENTS_INVALID',
        reason: 'a model step needs { model, prompt }',
      };
      return {
        record: {
          ...base,
          output_sha256: null,
          exit_status: null,
          signal: null,
          timed_out: false,
          output_truncated: false,
          duration_ms: performance.now() - started,
          sandbox_profile: null,
          denial,
        },
        excerpt: `refused: ${denial.reason}`,
        ok: false,
      };
    }
    const answer = await callProxy(
      input.token,
      [{ role: 'user', content: args.data.prompt }],
      args.data.model,
    );
    let content = answer.text;
    try {
      content =
        (JSON.parse(answer.text) as { choices: Array<{ message: { content: string } }> }).choices[0]?.message
          .content ?? '';
    } catch {
      // not a completion: the raw answer is the output
    }
    evidence.put(input.job.workflowId, content);
    return {
      record: {
        ...base,
        output_sha256: sha256Hex(content),
        exit_status: answer.status,
        signal: null,
        timed_out: false,
        output_truncated: false,
        duration_ms: performance.now() - started,
        sandbox_profile: 'model call through the receipting proxy',
        denial: null,
      },
      excerpt: content.slice(0, 500),
      ok: answer.status === 200,
      receipts: answer.receipt ? [answer.receipt] : [],
    };
  }

  /** A planning token: the planning model, these read-only tools, the planning budget if any. */
  async function mintPlanning(
    input: { job: JobRef; roomId: string; policy: PinnedPolicy },
    tools: string[],
    modelCalls?: number,
  ): Promise<{ token: string; model: string }> {
    const model = deps.planningModel;
    if (!input.policy.rules.allowedModels.includes(model)) {
      throw nonRetryable(
        'PLANNING_MODEL_NOT_ALLOWED',
        `the planning model ${model} is not allowed by the policy`,
      );
    }
    const { token } = await mintCapabilityToken(
      {
        purpose: 'planning',
        job: input.job,
        roomId: input.roomId,
        scope: { tools, models: [model] },
        ...(input.policy.rules.pinPolicyHash ? { wpcHash: input.policy.hash } : {}),
        ...(modelCalls !== undefined ? { budget: { modelCalls } } : {}),
        ttlSeconds: input.policy.rules.tokenTtlSeconds,
      },
      loadSigner(deps.keysDir, 'token'),
    );
    return { token, model };
  }

  /** One approved step: its token checked, earlier outputs it takes filled in, then run. */
  async function runApprovedStep(input: StepInput): Promise<StepResult> {
    const wpc = policyByHash(input.policyHash);
    let claims: CstClaims | null;
    let tokenError: { code: string; reason: string } | undefined;
    try {
      claims = await verifyJobToken(input.token, input);
    } catch (error) {
      // Fail closed: the step goes on without a token, refused and recorded with the reason.
      claims = null;
      if (error instanceof ClawgateError) tokenError = { code: error.code, reason: error.message };
    }
    // Earlier outputs the step takes as data, from the evidence store; one missing refuses the step.
    let args = input.step.args;
    if (outputsUsed(args).length > 0) {
      try {
        args = resolveOutputRefs(args, (n) => {
          const hash = input.outputs?.[String(n)];
          if (!hash) {
            throw new ClawgateError(
              ERROR_CODES.toolArgumentsInvalid,
              `step ${n} has no output for step ${input.index + 1} to use (it was refused or failed)`,
            );
          }
          return evidence.get(input.job.workflowId, hash).toString('utf8');
        });
      } catch (error) {
        if (!(error instanceof ClawgateError)) throw error;
        claims = null;
        tokenError = { code: error.code, reason: error.message };
      }
    }
    const step = { tool: input.step.tool, args };
    if (step.tool === MODEL_STEP) return await modelStep({ ...input, step }, claims, tokenError);
    const workspace = deps.workspaceFor(input.job);
    mkdirSync(workspace, { recursive: true });
    const { record, output } = await runTool(
      { tool: step.tool, args: step.args },
      {
        workflowId: input.job.workflowId,
        policy: wpc,
        token: claims,
        sandbox: deps.sandbox,
        workspace,
        ...(tokenError ? { tokenError } : {}),
        ...(deps.prRemote ? { prRemote: deps.prRemote } : {}),
        ...(deps.pushRepo ? { pushRepo: deps.pushRepo } : {}),
      },
    );
    if (output !== null) evidence.put(input.job.workflowId, output);
    // http reports the HTTP status; every other tool its exit status.
    const status = record.exit_status ?? -1;
    const ok =
      record.denial === null && (input.step.tool === 'http' ? status >= 200 && status < 300 : status === 0);
    const excerpt = output === null ? `refused: ${record.denial?.reason ?? ''}` : output.slice(0, 500);
    return { record: { ...record, step: input.index }, excerpt, ok };
  }

  return withHeartbeats({
    ...agent,
    /**
     * The ids of the job of a request event: the workflow id the gateway would start it under
     * and the job id people see. Workflow code cannot hash, so a scheduled run asks here.
     */
    jobIdsOf(input: { roomId: string; eventId: string }): Promise<{ workflowId: string; jobId: string }> {
      const workflowId = jobWorkflowId(input.roomId, input.eventId);
      return Promise.resolve({ workflowId, jobId: shortJobId(workflowId) });
    },
    resolvePolicy(input: { channel: string }): Promise<PinnedPolicy> {
      const hash = deps.registry.activeHash(input.channel);
      if (!hash) {
        throw nonRetryable(
          'NO_ACTIVE_POLICY',
          `no policy is active on channel ${input.channel}: nothing may run`,
        );
      }
      const wpc = policyByHash(hash);
      return Promise.resolve({
        hash,
        jws: deps.registry.get(hash).jws,
        document: wpc,
        rules: {
          roomsAllowlist: wpc.matrix.rooms_allowlist,
          requestersAllowlist: wpc.matrix.requesters_allowlist,
          approvers: wpc.matrix.approval.approver_user_ids_allowlist,
          requesterMayApprove: wpc.matrix.approval.requester_may_approve,
          approvalsRequired: wpc.matrix.approval.approvals_required,
          approvalExpirySeconds: wpc.matrix.approval.expires_after_seconds,
          requireVerifiedDevice: wpc.matrix.approval.require_verified_device,
          pinPolicyHash: wpc.tokens.cst.pin_policy_hash,
          tokenTtlSeconds: wpc.tokens.cst.ttl_seconds,
          stepWallSeconds: wpc.execution.sandbox.limits.wall_seconds,
          allowedModels: wpc.model_access.allowed_models,
          allowedTools: wpc.execution.tools.allow,
          deniedTools: wpc.execution.tools.deny,
          mode: wpc.execution.mode ?? 'plan',
          ...(wpc.schedules ? { preApproval: wpc.schedules.pre_approval } : {}),
          // An agent policy without an agent block has the defaults.
          agent: wpcSchema.shape.execution.shape.agent.unwrap().parse(wpc.execution.agent ?? {}),
        },
      });
    },

    async draftPlan(input: {
      job: JobRef;
      roomId: string;
      text: string;
      policy: PinnedPolicy;
    }): Promise<PlanDraft> {
      const { token, model } = await mintPlanning(input, []);
      const answer = await callProxy(
        token,
        [
          { role: 'system', content: PLANNER_PROMPT },
          { role: 'user', content: input.text },
        ],
        model,
      );
      const receipts = answer.receipt ? [answer.receipt] : [];
      if (answer.status !== 200) {
        return {
          ok: false,
          reason: `the model proxy answered ${answer.status}`,
          planningToken: token,
          receipts,
        };
      }
      let content: string;
      try {
        content =
          (JSON.parse(answer.text) as { choices: Array<{ message: { content: string } }> }).choices[0]
            ?.message.content ?? '';
      } catch {
        return {
          ok: false,
          reason: 'the model answer is not an OpenAI chat completion',
          planningToken: token,
          receipts,
        };
      }
      const json = /```(?:json)?\s*([\s\S]*?)```/.exec(content)?.[1] ?? content;
      let plan: Plan;
      try {
        plan = planSchema.parse(JSON.parse(json));
      } catch (error) {
        const detail = error instanceof z.ZodError ? (error.issues[0]?.message ?? '') : 'not JSON';
        return {
          ok: false,
          reason: `the model did not answer with a usable plan (${detail})`,
          planningToken: token,
          receipts,
        };
      }
      for (const [i, step] of plan.steps.entries()) {
        const refs = checkOutputRefs(step.tool, step.args, i);
        if (refs !== null) {
          return { ok: false, reason: refs, planningToken: token, receipts };
        }
        if (step.tool === MODEL_STEP) {
          const args = plannedModelStepArgs.safeParse(step.args);
          if (!args.success || !input.policy.rules.allowedModels.includes(args.data.model)) {
            return {
              ok: false,
              reason: `step ${i + 1} calls a model the policy does not allow, or without { model, prompt }`,
              planningToken: token,
              receipts,
            };
          }
          continue;
        }
        if (
          input.policy.rules.deniedTools.includes(step.tool) ||
          !input.policy.rules.allowedTools.includes(step.tool)
        ) {
          return {
            ok: false,
            reason: `step ${i + 1} uses tool ${step.tool}, which the policy does not allow`,
            planningToken: token,
            receipts,
          };
        }
      }
      return { ok: true, plan, planHash: canonicalHash(plan), planningToken: token, receipts };
    },

    /** The name of an agent plan: SHA-256 of its canonical JSON (what the approver approves). */
    hashPlan(input: { plan: AgentPlan }): Promise<string> {
      return Promise.resolve(canonicalHash(input.plan));
    },

    async readControlState(): Promise<ControlState> {
      return (await deps.controlState?.()) ?? { readOnly: false, approvalsFrozen: false };
    },

    async mintExecutionToken(input: {
      job: JobRef;
      roomId: string;
      policy: PinnedPolicy;
      planHash: string;
      tools: string[];
      approvers: string[];
      eventIds: string[];
      /** Agent mode: the one model of the loop, and the job's model-call budget. */
      models?: string[];
      modelCalls?: number;
      /**
       * The first token of a job: the homeserver's times of its plan's posting and of its
       * deciding approval (ms), for the plan-to-approval metric. A renewal has none.
       */
      approvalTimes?: { planPostedAt: number; approvedAt: number };
    }): Promise<{ token: string; jti: string; exp: number; iat: number }> {
      const { token, claims } = await mintCapabilityToken(
        {
          purpose: 'execution',
          job: input.job,
          roomId: input.roomId,
          scope: { tools: input.tools, models: input.models ?? input.policy.rules.allowedModels },
          planHash: input.planHash,
          approval: { approvers: input.approvers, eventIds: input.eventIds },
          ...(input.policy.rules.pinPolicyHash ? { wpcHash: input.policy.hash } : {}),
          ...(input.modelCalls !== undefined ? { budget: { modelCalls: input.modelCalls } } : {}),
          ttlSeconds: input.policy.rules.tokenTtlSeconds,
        },
        loadSigner(deps.keysDir, 'token'),
      );
      // Counted once the token exists: the approval is then in the job's history for good.
      if (input.approvalTimes) {
        const { planPostedAt, approvedAt } = input.approvalTimes;
        deps.metrics?.approvalRecorded(input.job.workflowId, planPostedAt, approvedAt);
      }
      return { token, jti: claims.jti, exp: claims.exp, iat: claims.iat };
    },

    /**
     * A call token: one approved call with side effects (this card, this call, these exact
     * arguments), its one tool, short-lived, used once; minted only after the approver's decision.
     */
    async mintCallToken(input: {
      job: JobRef;
      roomId: string;
      policy: PinnedPolicy;
      planHash: string;
      tool: string;
      card: { cardId: string; callId: string; argsSha256: string };
      approver: string;
      decisionEventId: string;
    }): Promise<{ token: string; jti: string }> {
      const { token, claims } = await mintCapabilityToken(
        {
          purpose: 'call',
          job: input.job,
          roomId: input.roomId,
          scope: { tools: [input.tool], models: [] },
          planHash: input.planHash,
          approval: { approvers: [input.approver], eventIds: [input.decisionEventId] },
          call: input.card,
          ...(input.policy.rules.pinPolicyHash ? { wpcHash: input.policy.hash } : {}),
          ttlSeconds: Math.min(input.policy.rules.tokenTtlSeconds, 300),
        },
        loadSigner(deps.keysDir, 'token'),
      );
      return { token, jti: claims.jti };
    },

    /**
     * Agent mode: the planning token (the read-only tools, the planning model, the planning
     * budget) and which model plans and works.
     */
    async mintPlanningToken(input: {
      job: JobRef;
      roomId: string;
      policy: PinnedPolicy;
      tools: string[];
      modelCalls: number;
    }): Promise<{ token: string; model: string }> {
      return await mintPlanning(input, input.tools, input.modelCalls);
    },

    /** The job's own workspace, fresh from the configured source (idempotent). */
    async prepareWorkspace(input: { job: JobRef }): Promise<{ commit: string | null }> {
      // Only the commit goes back: a host path has no place in the job's history.
      if (!deps.workspaces) {
        mkdirSync(deps.workspaceFor(input.job), { recursive: true });
        return { commit: null };
      }
      const made = await prepareJobWorkspace({
        root: deps.workspaces.root,
        workflowId: input.job.workflowId,
        source: await deps.workspaces.source(),
      });
      return { commit: made.commit };
    },

    /** Removes the job's workspace once the job is over (idempotent). */
    async removeWorkspace(input: { job: JobRef }): Promise<void> {
      if (deps.workspaces) {
        await removeJobWorkspace({ root: deps.workspaces.root, workflowId: input.job.workflowId });
      }
    },

    async runStep(input: StepInput): Promise<StepResult> {
      const result = await runApprovedStep(input);
      // The record names the approved arguments (references and all) and what they took.
      const used = outputsUsed(input.step.args);
      if (used.length === 0) return result;
      return {
        ...result,
        record: {
          ...result.record,
          args_sha256: canonicalHash(input.step.args),
          inputs: Object.fromEntries(used.map((n) => [String(n), input.outputs?.[String(n)] ?? null])),
        },
      };
    },

    revokeJobTokens(input: { workflowId: string; reason: string }): Promise<void> {
      if (!deps.revocations.isRevoked('', input.workflowId))
        deps.revocations.revokeJob(input.workflowId, input.reason);
      return Promise.resolve();
    },

    async sealJobBundle(input: {
      job: JobRef;
      entries: BundleEntryInput[];
    }): Promise<{ digest: string; pageUrl?: string }> {
      const { digest } = await sealJob(
        {
          keysDir: deps.keysDir,
          bundleDir: deps.bundleDir,
          proxyUrl: deps.proxyUrl,
          signer: loadSigner(deps.keysDir, 'bundle'),
          // A proxy being restarted is waited for, not counted as the seal's failure.
          fetch: (url, init) => fetchProxy(url instanceof Request ? url.url : url, init),
          ...(deps.warn ? { warn: deps.warn } : {}),
        },
        { workflow_id: input.job.workflowId, run_id: input.job.runId },
        input.entries,
        new Date(),
      );
      // Counted where the bundle is sealed, once it is: a seal that failed and is retried is
      // counted when it succeeds, and a retry after a success is not counted again.
      const outcome = input.entries.findLast((e) => e.type === 'outcome')?.body as
        { status?: unknown } | undefined;
      deps.metrics?.jobSealed(
        input.job.workflowId,
        typeof outcome?.status === 'string' ? outcome.status : 'unknown',
      );
      return deps.evidenceBaseUrl
        ? { digest, pageUrl: evidencePageUrl(deps.evidenceBaseUrl, digest) }
        : { digest };
    },
  });
}

/**
 * The activities, each telling Temporal it is alive while it runs: the job's activities have a
 * heartbeat timeout, so one whose worker died is tried again on another within seconds rather
 * than after its whole time limit (a job whose worker was killed while it minted a token, or
 * cloned its workspace, waited two minutes).
 */
function withHeartbeats<T extends object>(activities: T): T {
  return Object.fromEntries(
    Object.entries(activities).map(([name, fn]) => [
      name,
      (...args: unknown[]) => heartbeating(() => (fn as (...a: unknown[]) => Promise<unknown>)(...args)),
    ]),
  ) as T;
}

export type JobActivities = ReturnType<typeof createJobActivities>;
