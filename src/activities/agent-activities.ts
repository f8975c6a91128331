// The agent loop's activities: one model turn through the receipting proxy (the conversation so
// far, the offered tools as OpenAI function schemas), and one tool call the model asked for,
// authorized against the job's token and pinned policy, run in the sandbox, its output kept in
// the job's evidence store and handed back to the model as a marked tool message. Both are safe
// to retry: a turn whose answer was kept is not asked again, and a tool call runs at most once,
// whichever worker tries it.
import { ApplicationFailure, Context } from '@temporalio/activity';
import { ClawgateError, ERROR_CODES } from '../errors.ts';
import { openAiTools } from '../agent/tool-schemas.ts';
import { toolOutputHeader } from '../agent/protocol.ts';
import { previewCall } from '../agent/preview.ts';
import { fetchProxy } from './proxy-fetch.ts';
import type { EvidenceStore } from '../evidence/store.ts';
import { canonicalHash, sha256Hex } from '../policy/canonical.ts';
import { argumentShape, effectOf, gateOf, type GateRules } from '../tools/kinds.ts';
import { runTool, type ToolContext } from '../tools/runner.ts';
import type { JobRef, ModelTurnResult, ToolCallRef, ToolCallResult } from '../temporal/job-types.ts';
import { verifyCapabilityToken, type CstClaims } from '../tokens/cst.ts';
import { freshRevocationCheck } from '../tokens/revocations.ts';
import type { JobActivityDeps } from './job-activities.ts';
import type { Wpc } from '../policy/wpc.ts';
import type { JWK } from 'jose';
import { publicJwks } from '../keys/keyring.ts';

export type Phase = 'planning' | 'execution';

/** A message of the conversation as OpenAI's chat API has it. */
interface ChatMessage {
  role: string;
  content: string | null;
  tool_calls?: Array<{ id: string; type: 'function'; function: { name: string; arguments: string } }>;
  tool_call_id?: string;
}

/** Responses up to this size are kept whole in the bundle (always when they ask for tools). */
const INLINE_RESPONSE_BYTES = 16 * 1024;
/** The most of a final answer the workflow carries (the whole of it is in the store). */
const ANSWER_CARRIED_BYTES = 32 * 1024;
const SHORT_ARGS = 160;

export interface AgentActivityDeps extends JobActivityDeps {
  evidence: EvidenceStore;
}

export interface ModelTurnInput {
  job: JobRef;
  phase: Phase;
  turn: number;
  token: string;
  model: string;
  /** The system prompt and the request, carried in the history (they are small). */
  prelude: Array<{ role: 'system' | 'user'; content: string }>;
  /** The rest of the conversation: messages in the job's evidence store. */
  refs: string[];
  /** Tools offered to the model (names). */
  tools: string[];
  /** The id of the newest receipt the workflow holds (null before the first). */
  lastReceiptId: string | null;
  /** The job's pinned policy: each call's effect class and gate come from it. */
  policyHash?: string;
}

export interface ToolCallInput {
  job: JobRef;
  phase: Phase;
  turn: number;
  call: ToolCallRef;
  /** The assistant message that asked for the call (its arguments are there). */
  assistantRef: string;
  token: string;
  policyHash: string;
  channel?: string;
  /** Tools this phase offers; a call of any other is refused. */
  offered: string[];
  /** The most of the output the model is sent. */
  resultBytes: number;
  /** Whether the job's context holds untrusted text (the taint point has passed). */
  tainted?: boolean;
  /** The call token an approver's decision on this call's card made (or a job-wide grant). */
  callToken?: string;
  /** How the call was allowed without its own card: an earlier card approved for the job. */
  allowedBy?: { cardId: string };
  /** The call's card was denied or expired: it does not run, and the model hears why. */
  denied?: { code: string; reason: string };
}

function safeKey(...parts: Array<string | number>): string {
  return parts
    .map((p) => String(p).replace(/[^A-Za-z0-9._-]/g, '_'))
    .join('-')
    .slice(0, 200);
}

/** The SHA-256 a tool call's arguments are named by: canonical JSON when they parse, else the raw text. */
export function toolArgsHash(raw: string): string {
  try {
    return canonicalHash(JSON.parse(raw));
  } catch {
    return sha256Hex(raw);
  }
}

/** The tool calls of a chat completion's first choice, as the bundle lists them. */
export function toolCallsOf(message: ChatMessage | undefined): ToolCallRef[] {
  return (message?.tool_calls ?? []).map((c) => {
    const raw = typeof c.function?.arguments === 'string' ? c.function.arguments : '';
    return {
      id: String(c.id),
      name: String(c.function?.name ?? ''),
      argsSha256: toolArgsHash(raw),
      argsShort: raw.length > SHORT_ARGS ? `${raw.slice(0, SHORT_ARGS - 1)}…` : raw,
    };
  });
}

/** What of a policy decides a call's effect class and gate. */
export function gateRules(policy: Wpc): GateRules {
  const tools = policy.execution.tools;
  return {
    workspaceAccess: policy.execution.sandbox.workspace_access,
    ...(tools.effects ? { effects: tools.effects } : {}),
    ...(tools.http_effects ? { httpEffects: tools.http_effects } : {}),
    ...(tools.approval ? { approval: tools.approval } : {}),
  };
}

const PREVIEW_CHARS = 4000;

/** A call with its effect class, gate and argument shape, and what an approval card shows of it. */
function withGate(call: ToolCallRef, message: ChatMessage, rules: GateRules): ToolCallRef {
  const raw = message.tool_calls?.find((c) => c.id === call.id)?.function.arguments ?? '';
  let args: unknown = raw;
  try {
    args = JSON.parse(raw);
  } catch {
    // not JSON: refused when it is run; shown as it is
  }
  const effect = effectOf(call.name, args, rules);
  return {
    ...call,
    effect,
    gate: gateOf(call.name, effect, rules),
    shapeSha256: canonicalHash(argumentShape(args)),
    argsPreview: raw.length > PREVIEW_CHARS ? `${raw.slice(0, PREVIEW_CHARS - 1)}…` : raw,
  };
}

/** Cuts a string to at most `bytes` UTF-8 bytes without splitting a character. */
function cutUtf8(text: string, bytes: number): string {
  const buf = Buffer.from(text, 'utf8');
  if (buf.length <= bytes) return text;
  return buf
    .subarray(0, bytes)
    .toString('utf8')
    .replace(/\uFFFD$/, '');
}

/**
 * Whether a turn's failure may pass if the turn is asked again: the proxy or its upstream failed
 * (a timeout, a broken or cut answer, a receipt that could not be written), not a refusal.
 */
function transientFailure(status: number): boolean {
  return status >= 500;
}

/**
 * The attempt of this activity, and whether Temporal will try it again after this one (none
 * outside an activity, or with no retries left).
 */
function attemptNow(): { attempt: number; of: number | null; retries: boolean } {
  let info: Context['info'];
  try {
    info = Context.current().info;
  } catch {
    return { attempt: 1, of: 1, retries: false }; // not in an activity (a unit test)
  }
  const max = info.retryPolicy?.maximumAttempts;
  if (max === undefined) return { attempt: info.attempt, of: info.attempt, retries: false };
  // 0: no limit.
  return { attempt: info.attempt, of: max === 0 ? null : max, retries: max === 0 || info.attempt < max };
}

/**
 * Runs `work` while telling Temporal every second that this activity is alive, so one whose
 * worker died is retried elsewhere within the heartbeat timeout, not the whole time limit.
 */
export async function heartbeating<T>(work: () => Promise<T>): Promise<T> {
  let context: Context | undefined;
  try {
    context = Context.current();
  } catch {
    context = undefined; // not in an activity (a unit test)
  }
  const timer = context ? setInterval(() => context.heartbeat(), 1000) : undefined;
  try {
    return await work();
  } finally {
    clearInterval(timer);
  }
}

/**
 * Verifies a token of a job as every tool call does: signature, expiry, revocation, the job, and
 * the pinned policy against the channel's active one (drift fails closed: a rollback or a new
 * activation reaches running jobs here).
 */
export function jobTokenVerifier(deps: JobActivityDeps) {
  const jwks = (): { keys: JWK[] } => publicJwks(deps.keysDir, ['token']);
  return async (token: string, at: { job: JobRef; policyHash: string; channel?: string | undefined }) => {
    // This worker's mirror of the shared control state unread for too long (as for some seconds
    // after a Temporal outage) is waited out a while; still unread then, the check refuses.
    await heartbeating(() => untilControlFresh(deps.controlStale, deps.controlPatienceMs));
    return verifyCapabilityToken(token, {
      jwks: jwks(),
      expectedJob: at.job,
      isRevoked: freshRevocationCheck(deps.revocations, deps.controlStale),
      activePolicyHash: () => (at.channel ? deps.registry.activeHash(at.channel) : at.policyHash),
    });
  };
}

/** How long a token check waits for a stale mirror of the shared control state to be read. */
const CONTROL_PATIENCE_MS = 60_000;

async function untilControlFresh(
  stale: (() => string | null) | undefined,
  patienceMs = CONTROL_PATIENCE_MS,
): Promise<void> {
  if (!stale || stale() === null) return;
  let limit = patienceMs;
  try {
    // Within the activity's own time limit: a refusal, not a timeout, ends a wait in vain.
    const timeout = Context.current().info.startToCloseTimeoutMs;
    if (timeout > 0) limit = Math.min(limit, timeout / 2);
  } catch {
    // not in an activity (a unit test)
  }
  const deadline = Date.now() + limit;
  while (stale() !== null && Date.now() < deadline) await new Promise((r) => setTimeout(r, 500));
}

export function createAgentActivities(deps: AgentActivityDeps, policyByHash: (hash: string) => Wpc) {
  const verifyJobToken = jobTokenVerifier(deps);

  /**
   * The call token of a call that needs approval, checked: signature, expiry, revocation, this
   * job, purpose call, this call and these exact arguments, and never used before. Its claims,
   * or why not.
   */
  async function checkCallToken(input: ToolCallInput, argsSha256: string): Promise<CstClaims | string> {
    if (!input.callToken) {
      return `${input.call.name} has side effects and the job's context holds untrusted text: it runs only once an approver approves this exact call`;
    }
    let claims: CstClaims;
    try {
      claims = await verifyJobToken(input.callToken, input);
    } catch (error) {
      if (error instanceof ClawgateError) return `the call token is refused: ${error.message}`;
      throw error;
    }
    if (claims.purpose !== 'call' || !claims.call) return 'the token given is not a call token';
    if (claims.call.call_id !== input.call.id) {
      return `the call token is for call ${claims.call.call_id}, not ${input.call.id}`;
    }
    if (claims.call.args_sha256 !== argsSha256) {
      return 'the call token was approved for other arguments than these';
    }
    if (!deps.evidence.claim(input.job.workflowId, safeKey('call-token', claims.jti))) {
      return `call token ${claims.jti} was used already`;
    }
    return claims;
  }

  async function newReceipts(token: string, workflowId: string, after: string | null) {
    const query = new URLSearchParams({ job: workflowId, ...(after ? { after } : {}) });
    const r = await fetchProxy(`${deps.proxyUrl}/v1/receipts?${query.toString()}`, {
      headers: { authorization: `Bearer ${token}` },
    });
    if (!r.ok) return [];
    const body = (await r.json()) as { receipts: Array<{ receipt_id: string; jws: string }> };
    return body.receipts.map((x) => ({ id: x.receipt_id, jws: x.jws }));
  }

  async function modelTurn(input: ModelTurnInput): Promise<ModelTurnResult> {
    const { workflowId } = input.job;
    const key = safeKey('turn', input.phase, input.turn);
    const kept = deps.evidence.result<ModelTurnResult>(workflowId, key);
    if (kept) return kept; // asked and answered before this worker was lost: not asked again
    const messages: ChatMessage[] = [
      ...input.prelude,
      ...input.refs.map((ref) => deps.evidence.getJson<ChatMessage>(workflowId, ref)),
    ];
    // While planning only the read-only tools are offered; after approval, the plan's tools.
    const tools = openAiTools(input.tools, { sideEffectFree: input.phase === 'planning' });
    const response = await fetchProxy(`${deps.proxyUrl}/v1/chat/completions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${input.token}`, 'content-type': 'application/json' },
      body: JSON.stringify({ model: input.model, messages, ...(tools.length ? { tools } : {}) }),
    });
    const text = await response.text();
    const receiptId = response.headers.get('x-clawgate-receipt-id');
    const receipts = await newReceipts(input.token, workflowId, input.lastReceiptId);
    const base = {
      phase: input.phase,
      turn: input.turn,
      receipt_id: receiptId,
      http_status: response.status,
      response_sha256: sha256Hex(text),
    };
    // A call refused before the proxy could trust its token (expired, not yet valid, revoked)
    // has a receipt of no job, which the job cannot read back: the turn names it as the proxy's
    // receipt, not as one of the job's.
    const jobsOwn = receiptId === null || receipts.some((r) => r.id === receiptId);
    const named = jobsOwn ? {} : { receipt_id: null, proxy_receipt_id: receiptId };
    const fail = (code: string, message: string): ModelTurnResult => ({
      ok: false,
      httpStatus: response.status,
      error: { code, message },
      receipts,
      entry: { ...base, ...named, finish: 'error', error: { code, message }, tool_calls: [], usage: null },
      assistantRef: null,
      toolCalls: [],
      answer: null,
      usage: null,
      at: Date.now(),
    });
    let result: ModelTurnResult;
    let completion: { choices?: Array<{ message?: ChatMessage }>; usage?: ModelTurnResult['usage'] } = {};
    try {
      completion = JSON.parse(text) as typeof completion;
    } catch {
      completion = {};
    }
    const message = completion.choices?.[0]?.message;
    if (response.status !== 200) {
      const error = (completion as { error?: { code?: unknown; message?: unknown } }).error;
      const code = typeof error?.code === 'string' ? error.code : `HTTP_${response.status}`;
      const said = typeof error?.message === 'string' ? error.message : text.slice(0, 300);
      if (transientFailure(response.status)) {
        // Asked again while Temporal retries the turn (its receipts are picked up by the attempt
        // that ends it); the last attempt's failure is the turn's, and the job says so.
        const { attempt, of, retries } = attemptNow();
        if (retries) {
          throw ApplicationFailure.retryable(
            `the model proxy answered ${response.status} (${code}: ${said}); the turn is asked again`,
            code,
          );
        }
        result = fail(code, attempt > 1 ? `${said} (the last of ${of ?? attempt} attempts)` : said);
      } else result = fail(code, said);
    } else if (!message || typeof message !== 'object') {
      result = fail('MODEL_ANSWER_MALFORMED', 'the model answer is not an OpenAI chat completion');
    } else {
      const rules = input.policyHash ? gateRules(policyByHash(input.policyHash)) : undefined;
      const toolCalls = toolCallsOf(message).map((c) => (rules ? withGate(c, message, rules) : c));
      const content = typeof message.content === 'string' ? message.content : null;
      const assistant: ChatMessage = {
        role: 'assistant',
        content,
        ...(message.tool_calls?.length ? { tool_calls: message.tool_calls } : {}),
      };
      const assistantRef = deps.evidence.putJson(workflowId, assistant);
      const usage = completion.usage ?? null;
      const inline = toolCalls.length > 0 || Buffer.byteLength(text) <= INLINE_RESPONSE_BYTES;
      const answerText = content ?? '';
      const carried = cutUtf8(answerText, ANSWER_CARRIED_BYTES);
      result = {
        ok: true,
        httpStatus: 200,
        error: null,
        receipts,
        entry: {
          ...base,
          finish: toolCalls.length > 0 ? 'tool_calls' : 'answer',
          tool_calls: toolCalls.map((c) => ({ id: c.id, name: c.name, args_sha256: c.argsSha256 })),
          usage,
          ...(inline ? { response: text } : {}),
        },
        assistantRef,
        toolCalls,
        answer:
          toolCalls.length > 0
            ? null
            : {
                text: carried,
                sha256: sha256Hex(answerText),
                bytes: Buffer.byteLength(answerText),
                truncated: carried.length < answerText.length,
              },
        usage,
        at: Date.now(),
        said: toolCalls.length > 0 && content ? content.slice(0, 1000) : null,
      };
    }
    deps.evidence.setResult(workflowId, key, result);
    return result;
  }

  return {
    modelTurn(input: ModelTurnInput): Promise<ModelTurnResult> {
      return heartbeating(() => modelTurn(input));
    },

    /** What the approval card of a call shows (a diff for write_pr, the command line for exec, ...). */
    async previewCall(input: {
      job: JobRef;
      call: ToolCallRef;
      assistantRef: string;
      policyHash: string;
    }): Promise<{ preview: string }> {
      const assistant = deps.evidence.getJson<ChatMessage>(input.job.workflowId, input.assistantRef);
      const raw = assistant.tool_calls?.find((c) => c.id === input.call.id)?.function.arguments ?? '';
      let args: unknown;
      try {
        args = JSON.parse(raw);
      } catch {
        return { preview: `${raw} (not JSON: the tool refuses it)` };
      }
      const preview = await previewCall({
        tool: input.call.name,
        args,
        raw,
        policy: policyByHash(input.policyHash),
        sandbox: deps.sandbox,
        workspace: deps.workspaceFor(input.job),
      });
      return { preview };
    },

    async runToolCall(input: ToolCallInput): Promise<ToolCallResult> {
      const { workflowId } = input.job;
      const key = safeKey('call', input.phase, input.turn, input.call.id);
      const kept = deps.evidence.result<ToolCallResult>(workflowId, key);
      if (kept) return kept;
      const mark = { phase: input.phase, turn: input.turn, call_id: input.call.id };
      const finish = (
        record: Record<string, unknown>,
        output: string | null,
        refusal: string | null,
      ): ToolCallResult => {
        const bytes = output === null ? 0 : Buffer.byteLength(output);
        const shown = output === null ? '' : cutUtf8(output, input.resultBytes);
        const header = toolOutputHeader({
          tool: input.call.name,
          callId: input.call.id,
          bytes,
          shownBytes: Buffer.byteLength(shown),
          sha256: (record['output_sha256'] as string | null | undefined) ?? null,
          refused: refusal,
        });
        const messageRef = deps.evidence.putJson(workflowId, {
          role: 'tool',
          tool_call_id: input.call.id,
          content: output === null ? header : `${header}\n${shown}`,
        });
        const status = record['exit_status'];
        const outcome =
          refusal !== null
            ? `refused: ${refusal}`
            : `${input.call.name === 'http' ? 'HTTP' : 'exit'} ${String(status)}, ${bytes} bytes`;
        const result: ToolCallResult = { record: { ...record, ...mark }, messageRef, outcome };
        deps.evidence.setResult(workflowId, key, result);
        return result;
      };
      const refuse = (code: string, reason: string): ToolCallResult =>
        finish(
          {
            tool: input.call.name,
            args_sha256: input.call.argsSha256,
            output_sha256: null,
            exit_status: null,
            signal: null,
            timed_out: false,
            output_truncated: false,
            duration_ms: 0,
            sandbox_profile: null,
            denial: { code, reason },
            started_at: new Date().toISOString(),
          },
          null,
          reason,
        );
      // At most once: a call claimed by a worker that was lost before it recorded the result
      // may have run; it is not run again, and the model hears why.
      if (!deps.evidence.claim(workflowId, key)) {
        return refuse(
          ERROR_CODES.toolCallInterrupted,
          'this call was under way on a worker that was lost; it may have run, and it is not run again',
        );
      }
      const assistant = deps.evidence.getJson<ChatMessage>(workflowId, input.assistantRef);
      const asked = assistant.tool_calls?.find((c) => c.id === input.call.id);
      if (!asked) return refuse(ERROR_CODES.toolArgumentsInvalid, 'the model turn has no such tool call');
      let args: unknown;
      try {
        args = JSON.parse(asked.function.arguments);
      } catch {
        return refuse(ERROR_CODES.toolArgumentsInvalid, `the arguments of ${input.call.name} are not JSON`);
      }
      const policy = policyByHash(input.policyHash);
      // The policy's own word first (its deny and allow lists), then what this loop offers.
      if (policy.execution.tools.deny.includes(input.call.name)) {
        return refuse(ERROR_CODES.toolDeniedByPolicy, `tool ${input.call.name} is on the policy's deny list`);
      }
      if (!policy.execution.tools.allow.includes(input.call.name)) {
        return refuse(
          ERROR_CODES.toolNotAllowedByPolicy,
          `tool ${input.call.name} is not on the policy's allow list`,
        );
      }
      if (!input.offered.includes(input.call.name)) {
        if (input.phase === 'execution') {
          return refuse(
            ERROR_CODES.toolNotInTokenScope,
            `tool ${input.call.name} is not among the approved plan's tools (${input.offered.join(', ') || 'none'})`,
          );
        }
        return refuse(
          ERROR_CODES.toolNotOffered,
          `tool ${input.call.name} is not offered while planning (only ${input.offered.join(', ') || 'none'}, which read the workspace)`,
        );
      }
      const rules = gateRules(policy);
      const effect = effectOf(input.call.name, args, rules);
      const gate = gateOf(input.call.name, effect, rules);
      Object.assign(mark, {
        effect,
        gate,
        shape_sha256: canonicalHash(argumentShape(args)),
        ...(input.allowedBy ? { allowed_by: { card_id: input.allowedBy.cardId } } : {}),
      });
      if (input.denied) return refuse(input.denied.code, input.denied.reason);
      if (input.phase === 'planning' && effect === 'write') {
        return refuse(ERROR_CODES.toolNotOffered, `a call with side effects waits for the plan's approval`);
      }
      // A call that needs a person's approval runs only with the call token that approval made:
      // bound to this job, this call and these exact arguments, used once.
      const needsApproval = gate === 'always' || (gate === 'when_tainted' && input.tainted === true);
      let callClaims: CstClaims | null = null;
      if (needsApproval) {
        const why = await checkCallToken(input, toolArgsHash(asked.function.arguments));
        if (typeof why === 'string') return refuse(ERROR_CODES.callApprovalRequired, why);
        callClaims = why;
        if (!callClaims.call?.card_id) throw new Error('unreachable');
        Object.assign(mark, input.allowedBy ? {} : { card_id: callClaims.call.card_id });
      }
      let claims: CstClaims | null = callClaims;
      let tokenError: { code: string; reason: string } | undefined;
      if (!callClaims)
        try {
          claims = await verifyJobToken(input.token, input);
        } catch (error) {
          if (error instanceof ClawgateError) tokenError = { code: error.code, reason: error.message };
          else throw error;
        }
      return await heartbeating(async () => {
        const ctx: ToolContext = {
          workflowId,
          policy,
          token: claims,
          sandbox: deps.sandbox,
          workspace: deps.workspaceFor(input.job),
          ...(tokenError ? { tokenError } : {}),
          ...(deps.prRemote ? { prRemote: deps.prRemote } : {}),
          ...(deps.pushRepo ? { pushRepo: deps.pushRepo } : {}),
        };
        const { record, output } = await runTool({ tool: input.call.name, args }, ctx);
        const denial = record.denial;
        if (output !== null) deps.evidence.put(workflowId, output);
        return finish(record, output, denial ? `${denial.code}: ${denial.reason}` : null);
      });
    },
  };
}

export type AgentActivities = ReturnType<typeof createAgentActivities>;
