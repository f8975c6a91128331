// The proof bundle: the sealed evidence of one job. Entries are canonical JSON (RFC 8785); the
// bundle carries the RFC 9162 Merkle root over them and a seal, a compact JWS by the
// orchestrator key over the job, the entry count, every leaf hash and the root. Stored
// content-addressed by the SHA-256 of the whole bundle's canonical bytes.
//
// `verifyBundle` needs nothing but the bundle and a JWKS: every signature (seal, tokens,
// receipts), every hash, the root, the token's binding to the job and the plan, each receipt's
// binding to the job and a token of it and their chain, and each executed step's presence in
// the approved plan. In an agent job (an approved goal, tools and budget instead of fixed
// steps), every tool call instead was asked for by a receipted model turn of the job, with the
// arguments that turn's response holds, and every call that ran was inside the scope of the
// token of its phase; once the job's context was tainted, every call with side effects (and,
// before that too, every call whose tool the policy always gates) ran only after an approver
// accepted that exact call on an approval card, under a call token bound to its arguments. A
// failure names the entry and what is wrong with it.
import { createHash } from 'node:crypto';
import { importJWK, jwtVerify, decodeProtectedHeader, type JWK } from 'jose';
import { z } from 'zod';
import { keysFor } from '../keys/keyring.ts';
import { verifyReceipt } from '../proxy/receipts.ts';
import { effectOf, gateOf, PLANNING_TOOLS, type Gate, type GateRules } from '../tools/kinds.ts';
import { canonicalBytes, signCompactJws, verifyCompactJws, type Ed25519Signer, type Jwks } from './jws.ts';
import { leafHash, merkleRoot } from './merkle.ts';
import {
  envelopeProblem,
  gatewayReceiptPayload,
  projectBundle,
  type ClawsigEnvelope,
  type ClawsigProjection,
  type GatewayReceiptPayload,
} from './clawsig.ts';
import { didKeyFromJwkX } from './did.ts';

export const BUNDLE_FORMAT = 'clawgate-proof-bundle';
export const BUNDLE_SEAL_TYPE = 'clawgate-proof-bundle+jws';
/** The `typ` header of a capability scoped token (CST). */
export const CST_JWT_TYPE = 'clawgate-cst+jwt';

export const ENTRY_TYPES = [
  'job',
  'request',
  'policy',
  'plan',
  'approval_attempt',
  /** A scheduled job's plan approved in advance, at the schedule's creation (who, when, which policy). */
  'pre_approval',
  'cancel_request',
  'token',
  'tool_record',
  'model_receipt',
  'model_turn',
  'taint',
  'call_card',
  'call_decision',
  'card_outcome',
  'budget',
  'answer',
  'workspace',
  'outcome',
  /** The job's receipts in the Clawsig form, signed by the proxy when the job was sealed. */
  'gateway_receipts',
] as const;
export type EntryType = (typeof ENTRY_TYPES)[number];

export interface BundleEntry {
  type: EntryType;
  body: unknown;
}

const sha256HexString = z.string().regex(/^[0-9a-f]{64}$/, 'a SHA-256 digest in lowercase hex');
const jobRef = z.object({ workflow_id: z.string().min(1), run_id: z.string().min(1) }).strict();

export const bundleSchema = z
  .object({
    format: z.literal(BUNDLE_FORMAT),
    v: z.literal(1),
    job: jobRef,
    entries: z.array(z.object({ type: z.enum(ENTRY_TYPES), body: z.unknown() }).strict()).min(1),
    merkle_root: sha256HexString,
    seal: z.string().min(1),
  })
  .strict();
export type ProofBundle = z.infer<typeof bundleSchema>;

const sealPayloadSchema = z
  .object({
    format: z.literal(BUNDLE_FORMAT),
    v: z.literal(1),
    job: jobRef,
    entry_count: z.number().int().positive(),
    leaf_hashes: z.array(sha256HexString),
    merkle_root: sha256HexString,
    sealed_at: z.iso.datetime(),
  })
  .strict();

/** Bodies the verifier reads; other fields of an entry are evidence it keeps but does not interpret. */
const policyBody = z.looseObject({ document: z.unknown(), hash: sha256HexString });
const planBody = z.looseObject({
  steps: z.array(z.looseObject({ tool: z.string().min(1), args: z.unknown() })),
});
const tokenPurpose = z.enum(['planning', 'execution', 'call']);
type TokenPurpose = z.infer<typeof tokenPurpose>;
const tokenBody = z.looseObject({ purpose: tokenPurpose, jwt: z.string().min(1) });
const receiptBody = z.looseObject({ jws: z.string().min(1) });
const toolRecordBody = z.looseObject({
  step: z.number().int().nonnegative(),
  tool: z.string(),
  args_sha256: sha256HexString,
});
const outcomeBody = z.looseObject({ status: z.string().min(1) });
const taintBody = z.looseObject({
  phase: z.enum(['planning', 'execution']),
  turn: z.number().int().nonnegative(),
  call_id: z.string().min(1),
});

const count = z.number().int().nonnegative();
const agentPlanBody = z.looseObject({
  mode: z.literal('agent'),
  goal: z.string(),
  steps: z.array(z.string()),
  tools: z.array(z.string()),
  budget: z.looseObject({ model_turns: count, tool_calls: count, model_tokens: count, wall_seconds: count }),
});
type AgentPlanBody = z.infer<typeof agentPlanBody>;
const phaseSchema = z.enum(['planning', 'execution']);
type Phase = z.infer<typeof phaseSchema>;
const listedToolCall = z.object({ id: z.string(), name: z.string(), args_sha256: sha256HexString }).strict();
const modelTurnBody = z.looseObject({
  phase: phaseSchema,
  turn: count,
  receipt_id: z.string().min(1).nullable(),
  response_sha256: sha256HexString,
  finish: z.enum(['tool_calls', 'answer', 'error']),
  tool_calls: z.array(listedToolCall),
  response: z.string().optional(),
});
const agentToolRecordBody = z.looseObject({
  phase: phaseSchema,
  turn: count,
  call_id: z.string().min(1),
  tool: z.string(),
  args_sha256: sha256HexString,
  denial: z.object({ code: z.string(), reason: z.string() }).nullable(),
  // Since calls are gated: the call's effect class and gate, its argument shape, and the
  // approval it ran under (its own card, or a card approved for the job's later calls alike).
  effect: z.enum(['read', 'write']).optional(),
  gate: z.enum(['never', 'when_tainted', 'always']).optional(),
  shape_sha256: sha256HexString.nullable().optional(),
  card_id: z.string().min(1).nullable().optional(),
  allowed_by: z
    .looseObject({ card_id: z.string().min(1) })
    .nullable()
    .optional(),
});
const callCardBody = z.looseObject({
  card_id: z.string().min(1),
  phase: phaseSchema,
  turn: count,
  call_id: z.string().min(1),
  tool: z.string().min(1),
  args_sha256: sha256HexString,
  shape_sha256: sha256HexString,
  effect: z.enum(['read', 'write']),
  gate: z.enum(['always', 'when_tainted']),
  taint: z.looseObject({ phase: phaseSchema, turn: count, call_id: z.string().min(1) }).nullable(),
  event_id: z.string().min(1),
  expires_at: count,
});
type CallCard = z.infer<typeof callCardBody>;
const callDecisionBody = z.looseObject({
  card_id: z.string().min(1).nullable(),
  event_id: z.string().min(1),
  sender: z.string().min(1),
  via: z.enum(['command', 'reaction']),
  decision: z.enum(['approve', 'deny']),
  scope: z.enum(['call', 'job']),
  accepted: z.boolean(),
  code: z.string().nullable(),
  reason: z.string(),
  origin_server_ts: count,
});
type CallDecision = z.infer<typeof callDecisionBody>;
const cardOutcomeBody = z.looseObject({
  card_id: z.string().min(1),
  state: z.enum(['approved', 'denied', 'expired']),
  by: z.string().nullable(),
  reason: z.string(),
});
type CardOutcome = z.infer<typeof cardOutcomeBody>;
/** A call token's claim: the card it was approved on and the exact call it may run. */
const callClaim = z.object({ card_id: z.string(), call_id: z.string(), args_sha256: z.string() }).strict();
const approvalClaim = z.looseObject({ approvers: z.array(z.string()), event_ids: z.array(z.string()) });
const budgetBody = z.looseObject({
  limits: z.unknown(),
  used: z.unknown(),
  exhausted: z.string().nullable(),
});
const gatewayReceiptsBody = z
  .object({
    envelopes: z.array(z.looseObject({ payload: z.looseObject({}) })),
    refused: z.string().nullable(),
  })
  .strict();
const answerBody = z.looseObject({ turn: count, sha256: sha256HexString, bytes: count });

export function sha256Hex(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

/** SHA-256 of the canonical JSON of a value: how plans, policies and tool arguments are named. */
export function canonicalHash(value: unknown): string {
  return sha256Hex(canonicalBytes(value));
}

/**
 * The SHA-256 a tool call's arguments are named by, as the agent loop names them: the canonical
 * JSON of the arguments when they parse, else the raw text.
 */
export function toolArgsSha256(raw: string): string {
  try {
    return canonicalHash(JSON.parse(raw));
  } catch {
    return sha256Hex(Buffer.from(raw, 'utf8'));
  }
}

/** A tool call as a `model_turn` entry lists it. */
export interface ListedToolCall {
  id: string;
  name: string;
  args_sha256: string;
}

/** What a chat completion's text holds for the verifier: its first choice's tool calls and text. */
function completionOf(response: string): { toolCalls: ListedToolCall[]; content: string } {
  let completion: unknown;
  try {
    completion = JSON.parse(response);
  } catch {
    return { toolCalls: [], content: '' };
  }
  const message = (completion as { choices?: Array<{ message?: unknown }> } | null)?.choices?.[0]?.message as
    { tool_calls?: unknown; content?: unknown } | null | undefined;
  const calls = Array.isArray(message?.tool_calls) ? (message.tool_calls as unknown[]) : [];
  return {
    toolCalls: calls.map((c) => {
      // Typed as the model promises; String() below reads whatever it sent, as the loop does.
      const call = c as { id?: string; function?: { name?: string; arguments?: unknown } } | null;
      const raw = typeof call?.function?.arguments === 'string' ? call.function.arguments : '';
      return {
        id: String(call?.id),
        name: String(call?.function?.name ?? ''),
        args_sha256: toolArgsSha256(raw),
      };
    }),
    content: typeof message?.content === 'string' ? message.content : '',
  };
}

/**
 * The tool calls a chat completion (the text a model turn received) asks for, as its `model_turn`
 * entry lists them: `choices[0].message.tool_calls`, arguments named by `toolArgsSha256`.
 */
export function responseToolCalls(response: string): ListedToolCall[] {
  return completionOf(response).toolCalls;
}

export function sealBundle(
  job: { workflow_id: string; run_id: string },
  entries: BundleEntry[],
  signer: Ed25519Signer,
  sealedAt: Date,
): ProofBundle {
  const leaves = entries.map((entry) => leafHash(canonicalBytes(entry)));
  const root = merkleRoot(leaves).toString('hex');
  const seal = signCompactJws(
    canonicalBytes({
      format: BUNDLE_FORMAT,
      v: 1,
      job,
      entry_count: entries.length,
      leaf_hashes: leaves.map((l) => l.toString('hex')),
      merkle_root: root,
      sealed_at: sealedAt.toISOString(),
    }),
    signer,
    BUNDLE_SEAL_TYPE,
  );
  return { format: BUNDLE_FORMAT, v: 1, job, entries, merkle_root: root, seal };
}

/** The bundle's content address: SHA-256 of its canonical bytes. */
export function bundleDigest(bundle: ProofBundle): string {
  return canonicalHash(bundle);
}

export interface BundleProblem {
  /** Index of the entry at fault, or null for the bundle as a whole. */
  entry: number | null;
  type: EntryType | 'bundle';
  problem: string;
}

export interface BundleVerification {
  ok: boolean;
  problems: BundleProblem[];
  digest: string | null;
}

/** Decodes and verifies a CST offline: signature and type, as of its own issue time. */
async function verifyTokenOffline(jwt: string, jwks: Jwks): Promise<Record<string, unknown>> {
  const header = decodeProtectedHeader(jwt);
  const jwk = jwks.keys.find((k: JWK) => k.kid === header.kid);
  if (!jwk) throw new Error(`no key ${String(header.kid)} in the JWKS`);
  const key = await importJWK({ ...jwk, alg: 'EdDSA' }, 'EdDSA');
  // Offline verification happens long after a short-lived token expired: check the signature
  // and the claims as of the moment the token was issued.
  const unverifiedIat = JSON.parse(Buffer.from(jwt.split('.')[1] ?? '', 'base64url').toString('utf8')) as {
    iat?: unknown;
  };
  const iat = typeof unverifiedIat.iat === 'number' ? unverifiedIat.iat : 0;
  const { payload } = await jwtVerify(jwt, key, {
    algorithms: ['EdDSA'],
    typ: CST_JWT_TYPE,
    currentDate: new Date(iat * 1000),
  });
  return payload;
}

export async function verifyBundle(input: unknown, jwks: Jwks): Promise<BundleVerification> {
  const problems: BundleProblem[] = [];
  const parsed = bundleSchema.safeParse(input);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const path = issue?.path ?? [];
    const entry = path[0] === 'entries' && typeof path[1] === 'number' ? path[1] : null;
    return {
      ok: false,
      digest: null,
      problems: [
        { entry, type: 'bundle', problem: `${path.join('.') || '(root)'}: ${issue?.message ?? 'invalid'}` },
      ],
    };
  }
  const bundle = parsed.data;
  const entries = bundle.entries as BundleEntry[];
  const fail = (entry: number | null, problem: string): void => {
    problems.push({ entry, type: entry === null ? 'bundle' : (entries[entry]?.type ?? 'bundle'), problem });
  };

  // 1. The seal: signature, and what it commits to.
  let sealed: z.infer<typeof sealPayloadSchema> | undefined;
  try {
    const payload = await verifyCompactJws(bundle.seal, keysFor(jwks, 'bundle'), BUNDLE_SEAL_TYPE);
    const result = sealPayloadSchema.safeParse(JSON.parse(payload.toString('utf8')));
    if (!result.success) fail(null, `seal payload is malformed: ${result.error.issues[0]?.message ?? ''}`);
    else sealed = result.data;
  } catch (error) {
    fail(null, `seal: ${error instanceof Error ? error.message : String(error)}`);
  }

  // 2. Every entry's leaf hash against the sealed list, then the root.
  const leaves = entries.map((entry) => leafHash(canonicalBytes(entry)));
  if (sealed) {
    if (JSON.stringify(sealed.job) !== JSON.stringify(bundle.job))
      fail(null, 'the job differs from the sealed job');
    if (sealed.entry_count !== entries.length) {
      fail(null, `the bundle has ${entries.length} entries; the seal covers ${sealed.entry_count}`);
    }
    leaves.forEach((leaf, i) => {
      if (sealed.leaf_hashes[i] !== leaf.toString('hex')) fail(i, 'its content differs from what was sealed');
    });
    const root = merkleRoot(sealed.leaf_hashes.map((h) => Buffer.from(h, 'hex'))).toString('hex');
    if (root !== sealed.merkle_root) fail(null, 'the sealed leaf hashes do not make the sealed Merkle root');
  }
  if (merkleRoot(leaves).toString('hex') !== bundle.merkle_root) {
    fail(null, 'merkle_root does not match the entries');
  }
  if (sealed && sealed.merkle_root !== bundle.merkle_root)
    fail(null, 'merkle_root differs from the sealed root');

  // 3. What the entries say, and how they bind to each other.
  const indexes = (type: EntryType): number[] => entries.flatMap((e, i) => (e.type === type ? [i] : []));
  for (const type of ['job', 'request', 'policy', 'plan', 'outcome'] as const) {
    if (indexes(type).length !== 1)
      fail(null, `a bundle has exactly one ${type} entry; this one has ${indexes(type).length}`);
  }
  for (const type of ['workspace', 'budget', 'answer'] as const) {
    if (indexes(type).length > 1)
      fail(null, `a bundle has at most one ${type} entry; this one has ${indexes(type).length}`);
  }
  if (entries.at(-1)?.type !== 'outcome') fail(entries.length - 1, 'the last entry must be the outcome');

  const jobIndex = indexes('job')[0];
  if (jobIndex !== undefined) {
    const body = jobRef.safeParse(entries[jobIndex]?.body);
    if (!body.success || JSON.stringify(body.data) !== JSON.stringify(bundle.job)) {
      fail(jobIndex, 'does not name the bundle job');
    }
  }

  let policyHash: string | undefined;
  const policyIndex = indexes('policy')[0];
  if (policyIndex !== undefined) {
    const body = policyBody.safeParse(entries[policyIndex]?.body);
    if (!body.success) fail(policyIndex, 'needs document and hash');
    else if (canonicalHash(body.data.document) !== body.data.hash) {
      fail(policyIndex, 'hash is not the SHA-256 of the canonical policy document');
    } else policyHash = body.data.hash;
  }

  let plan: z.infer<typeof planBody> | undefined;
  let agentPlan: AgentPlanBody | undefined;
  let planHash: string | undefined;
  const planIndex = indexes('plan')[0];
  // An agent job's plan says so; a job whose planning failed has no plan, but its model turns.
  const agentMode =
    planIndex !== undefined
      ? (entries[planIndex]?.body as { mode?: unknown } | null)?.mode === 'agent'
      : indexes('model_turn').length > 0;
  if (planIndex !== undefined && agentMode) {
    const body = agentPlanBody.safeParse(entries[planIndex]?.body);
    if (!body.success) fail(planIndex, `is not an agent plan: ${issueText(body.error)}`);
    else {
      agentPlan = body.data;
      planHash = canonicalHash(body.data);
    }
  } else if (planIndex !== undefined) {
    const body = planBody.safeParse(entries[planIndex]?.body);
    if (!body.success) fail(planIndex, `is not a plan: ${body.error.issues[0]?.message ?? ''}`);
    else {
      plan = body.data;
      planHash = canonicalHash(body.data);
    }
  }

  const tokenIds = new Set<string>();
  const tokens: TokenSeen[] = [];
  for (const i of indexes('token')) {
    const body = tokenBody.safeParse(entries[i]?.body);
    if (!body.success) {
      fail(i, 'needs purpose and jwt');
      continue;
    }
    try {
      const claims = await verifyTokenOffline(body.data.jwt, keysFor(jwks, 'token'));
      if (claims['sub'] !== bundle.job.workflow_id)
        fail(i, `token is for job ${String(claims['sub'])}, not this one`);
      if (typeof claims['jti'] === 'string') tokenIds.add(claims['jti']);
      else fail(i, 'token has no jti');
      // An execution token and a call token both act on the approved plan.
      if (body.data.purpose !== 'planning') {
        if (claims['plan_hash'] !== planHash)
          fail(i, 'token is not bound to the approved plan (plan_hash differs)');
        if (claims['wpc_hash'] !== undefined && claims['wpc_hash'] !== policyHash) {
          fail(i, 'token is pinned to another policy than the one in the bundle');
        }
      }
      const scope = claims['scope'] as { tools?: unknown } | undefined;
      const tools =
        Array.isArray(scope?.tools) && scope.tools.every((t) => typeof t === 'string') ? scope.tools : null;
      const call = callClaim.safeParse(claims['call']);
      const approval = approvalClaim.safeParse(claims['approval']);
      tokens.push({
        index: i,
        purpose: body.data.purpose,
        jti: typeof claims['jti'] === 'string' ? claims['jti'] : null,
        tools,
        call: call.success ? call.data : null,
        approval: approval.success ? approval.data : null,
      });
    } catch (error) {
      fail(i, `token does not verify: ${error instanceof Error ? error.message : String(error)}`);
    }
  }

  let previous: string | null = null;
  const receipts = new Map<string, ReceiptSeen>();
  for (const i of indexes('model_receipt')) {
    const body = receiptBody.safeParse(entries[i]?.body);
    if (!body.success) {
      fail(i, 'needs jws');
      continue;
    }
    try {
      const receipt = await verifyReceipt(body.data.jws, keysFor(jwks, 'receipt'));
      if (receipt.payload.job?.workflow_id !== bundle.job.workflow_id) fail(i, 'receipt is of another job');
      if (receipt.payload.token_id === null || !tokenIds.has(receipt.payload.token_id)) {
        fail(
          i,
          `receipt was made with token ${String(receipt.payload.token_id)}, which is not in this bundle`,
        );
      }
      if (receipt.payload.prev_receipt_sha256 !== previous)
        fail(i, 'receipt breaks the chain (a receipt is missing or out of order)');
      previous = receipt.payloadSha256;
      if (receipts.has(receipt.payload.receipt_id))
        fail(i, `receipt ${receipt.payload.receipt_id} is in the bundle twice`);
      else {
        receipts.set(receipt.payload.receipt_id, {
          index: i,
          responseSha256: receipt.payload.response_sha256,
          tokenId: receipt.payload.token_id,
        });
      }
    } catch (error) {
      fail(i, `receipt does not verify: ${error instanceof Error ? error.message : String(error)}`);
    }
  }

  const turns = checkModelTurns({ entries, indexes, fail, planIndex, tokens, receipts });
  if (agentMode)
    checkAgentEvidence({ entries, indexes, fail, planIndex, tokens, receipts }, agentPlan, turns);
  else checkSteps({ entries, indexes, fail }, plan);

  const outcomeIndex = indexes('outcome')[0];
  if (outcomeIndex !== undefined && !outcomeBody.safeParse(entries[outcomeIndex]?.body).success) {
    fail(outcomeIndex, 'needs a status');
  }

  checkGatewayReceipts({ bundle, entries, indexes, fail }, jwks, sealed?.sealed_at ?? null);

  return { ok: problems.length === 0, problems, digest: bundleDigest(bundle) };
}

/**
 * The `gateway_receipts` entry: at most one, right before the outcome; each envelope signed by a receipt key of
 * the JWKS (as its did:key), and exactly the Clawsig form of the bundle's receipt of that id,
 * bound to that call's event in the bundle's event chain and to its span, as the export makes it.
 */
function checkGatewayReceipts(
  ctx: {
    bundle: ProofBundle;
    entries: BundleEntry[];
    indexes: (type: EntryType) => number[];
    fail: (entry: number | null, problem: string) => void;
  },
  jwks: Jwks,
  sealedAt: string | null,
): void {
  const { bundle, entries, indexes, fail } = ctx;
  const at = indexes('gateway_receipts');
  if (at.length === 0) return;
  if (at.length > 1) fail(null, `a bundle has at most one gateway_receipts entry; this one has ${at.length}`);
  const i = at[0] as number;
  if (i !== entries.length - 2) fail(i, 'gateway_receipts comes right before the outcome');
  const body = gatewayReceiptsBody.safeParse(entries[i]?.body);
  if (!body.success) return fail(i, 'needs envelopes (a list) and refused (a reason or null)');
  if (sealedAt === null) return; // the seal's own problem is reported already
  const dids = new Set(
    keysFor(jwks, 'receipt').keys.flatMap((k) => (typeof k.x === 'string' ? [didKeyFromJwkX(k.x)] : [])),
  );
  let projection;
  try {
    projection = projectBundle({ job: bundle.job, entries }, sealedAt);
  } catch (error) {
    return fail(
      i,
      `the bundle's model calls cannot be chained: ${error instanceof Error ? error.message : String(error)}`,
    );
  }
  const envelopes = body.data.envelopes as unknown as ClawsigEnvelope<GatewayReceiptPayload>[];
  if (envelopes.length === 0) return;
  if (envelopes.length !== projection.calls.length) {
    fail(i, `${envelopes.length} gateway receipts for ${projection.calls.length} model calls`);
  }
  envelopes.forEach((env, n) => {
    const call = projection.calls[n];
    const problem = envelopeProblem(env);
    if (problem) return fail(i, `gateway receipt ${n}: ${problem}`);
    if (!dids.has(env.signer_did)) return fail(i, `gateway receipt ${n} is not signed by a receipt key`);
    if (!call) return;
    const expected = signedShape(call, projection.runId);
    if (
      JSON.stringify(env.payload) !== JSON.stringify(expected.payload) ||
      env.issued_at !== expected.issuedAt
    ) {
      fail(
        i,
        `gateway receipt ${n} is not the Clawsig form of receipt ${call.receipt.receipt_id} bound to its event`,
      );
    }
  });
}

function signedShape(call: ClawsigProjection['calls'][number], runId: string) {
  const sha = sha256Hex(canonicalBytes(call.receipt));
  return {
    payload: gatewayReceiptPayload(call.receipt, sha, runId, call.binding),
    issuedAt: call.receipt.ended_at,
  };
}

function issueText(error: z.ZodError): string {
  const issue = error.issues[0];
  const path = (issue?.path ?? []).join('.');
  return `${path ? `${path}: ` : ''}${issue?.message ?? 'invalid'}`;
}

interface TokenSeen {
  index: number;
  purpose: TokenPurpose;
  jti: string | null;
  /** The token's scope.tools, or null when it has none. */
  tools: string[] | null;
  /** A call token's card, call and argument hash. */
  call: z.infer<typeof callClaim> | null;
  /** Who approved what the token carries, and their events. */
  approval: z.infer<typeof approvalClaim> | null;
}

interface ReceiptSeen {
  index: number;
  responseSha256: string | null;
  tokenId: string | null;
}

interface TurnSeen {
  index: number;
  finish: 'tool_calls' | 'answer' | 'error';
  /** The calls the turn lists, by id (a model may repeat an id). */
  calls: Map<string, ListedToolCall[]>;
  /** The SHA-256 and UTF-8 length of the answer text, when the turn carries its response. */
  answer: { sha256: string; bytes: number } | null;
}

interface Checking {
  entries: BundleEntry[];
  indexes: (type: EntryType) => number[];
  fail: (entry: number | null, problem: string) => void;
}

interface AgentChecking extends Checking {
  planIndex: number | undefined;
  tokens: TokenSeen[];
  receipts: Map<string, ReceiptSeen>;
}

/** The newest token of a purpose before entry `i`: the one a call there was made under. */
function tokenBefore(tokens: TokenSeen[], purpose: Phase, i: number): TokenSeen | undefined {
  return tokens.filter((t) => t.purpose === purpose && t.index < i).at(-1);
}

const turnKey = (phase: Phase, turn: number): string => `${phase}:${turn}`;
const sameSet = (a: readonly string[], b: readonly string[]): boolean =>
  JSON.stringify([...new Set(a)].sort()) === JSON.stringify([...new Set(b)].sort());

/**
 * Each model turn: named by a receipt of the bundle whose signed response hash is its own, made
 * with a token of its phase, placed in its phase, and, when it carries the response, that
 * response is the one hashed and holds the tool calls it lists.
 */
function checkModelTurns(c: AgentChecking): Map<string, TurnSeen> {
  const { entries, fail } = c;
  const turns = new Map<string, TurnSeen>();
  const receiptNamedBy = new Map<string, number>();
  const purposeOf = new Map(c.tokens.flatMap((t) => (t.jti === null ? [] : [[t.jti, t.purpose] as const])));
  for (const i of c.indexes('model_turn')) {
    const body = modelTurnBody.safeParse(entries[i]?.body);
    if (!body.success) {
      fail(i, `is not a model turn: ${issueText(body.error)}`);
      continue;
    }
    const t = body.data;
    const name = `${t.phase} turn ${t.turn}`;
    if (turns.has(turnKey(t.phase, t.turn))) {
      fail(i, `${name} is in the bundle twice`);
      continue;
    }
    if (t.phase === 'planning') {
      if (!tokenBefore(c.tokens, 'planning', i)) fail(i, `${name} comes before the planning token`);
      if (c.planIndex !== undefined && i > c.planIndex) fail(i, `${name} comes after the plan`);
    } else if (!tokenBefore(c.tokens, 'execution', i)) {
      fail(i, `${name} comes before the execution token (the plan's approval)`);
    }

    if (t.receipt_id === null) {
      // Only a call the proxy answered without a receipt (it never reached a decision) has none.
      if (t.finish !== 'error') fail(i, `${name} names no model receipt`);
    } else {
      const receipt = c.receipts.get(t.receipt_id);
      const other = receiptNamedBy.get(t.receipt_id);
      if (!receipt)
        fail(i, `${name} names receipt ${t.receipt_id}, which is not a verified receipt of this bundle`);
      else if (other !== undefined)
        fail(i, `${name} names receipt ${t.receipt_id}, which entry ${other} names too`);
      else {
        receiptNamedBy.set(t.receipt_id, i);
        // An error the proxy answered itself (a refusal, a timeout) is not the upstream's response.
        if (t.finish !== 'error' && receipt.responseSha256 !== t.response_sha256) {
          fail(i, `${name}: response_sha256 is not the response hash receipt ${t.receipt_id} signed`);
        }
        const purpose = receipt.tokenId === null ? undefined : purposeOf.get(receipt.tokenId);
        if (purpose !== undefined && purpose !== t.phase) {
          fail(i, `${name} was receipted under the ${purpose} token`);
        }
      }
    }

    if (t.finish === 'tool_calls') {
      if (t.tool_calls.length === 0) fail(i, `${name} finishes with tool calls but lists none`);
      if (t.response === undefined) fail(i, `${name} asks for tools but does not carry its response`);
    } else if (t.tool_calls.length > 0) {
      fail(i, `${name} finishes with ${t.finish} but lists tool calls`);
    }
    let answer: TurnSeen['answer'] = null;
    if (t.response !== undefined) {
      if (sha256Hex(Buffer.from(t.response, 'utf8')) !== t.response_sha256) {
        fail(i, `${name}: its response is not the one response_sha256 names`);
      } else {
        const completion = completionOf(t.response);
        if (canonicalHash(completion.toolCalls) !== canonicalHash(t.tool_calls)) {
          fail(i, `${name}: the tool calls it lists are not those its response asks for`);
        }
        answer = {
          sha256: sha256Hex(Buffer.from(completion.content, 'utf8')),
          bytes: Buffer.byteLength(completion.content, 'utf8'),
        };
      }
    }
    const calls = new Map<string, ListedToolCall[]>();
    for (const call of t.tool_calls) calls.set(call.id, [...(calls.get(call.id) ?? []), call]);
    turns.set(turnKey(t.phase, t.turn), { index: i, finish: t.finish, calls, answer });
  }
  return turns;
}

/**
 * Agent mode: every tool call was asked for by a receipted model turn of this job, with those
 * arguments; every call that ran was inside the scope of the token of its phase; the tokens'
 * scopes are what the plan and the planning phase allow; the budget and the answer are the
 * plan's and a turn's.
 */
function checkAgentEvidence(
  c: AgentChecking,
  plan: AgentPlanBody | undefined,
  turns: Map<string, TurnSeen>,
): void {
  const { entries, fail } = c;
  for (const token of c.tokens) {
    if (token.tools === null) fail(token.index, 'token has no scope.tools');
    else if (token.purpose === 'planning') {
      const writing = token.tools.filter((t) => !PLANNING_TOOLS.includes(t));
      if (writing.length > 0)
        fail(token.index, `planning token holds tools that are not read-only: ${writing.join(', ')}`);
    } else if (token.purpose === 'call') {
      if (token.call === null)
        fail(token.index, 'call token names no call (its card, call and argument hash)');
      if (token.tools.length !== 1) {
        fail(token.index, `call token holds ${token.tools.length} tools; it holds the one tool of its call`);
      } else if (plan && !plan.tools.includes(token.tools[0] ?? '')) {
        fail(token.index, `call token is for ${token.tools[0]}, which is not among the plan's tools`);
      }
    } else if (plan && !sameSet(token.tools, plan.tools)) {
      fail(
        token.index,
        `execution token scope.tools (${token.tools.join(', ')}) is not the plan's tools (${plan.tools.join(', ')})`,
      );
    }
  }

  const recorded = new Map<string, number>();
  for (const i of c.indexes('tool_record')) {
    const body = agentToolRecordBody.safeParse(entries[i]?.body);
    if (!body.success) {
      fail(i, `is not a tool call record: ${issueText(body.error)}`);
      continue;
    }
    const r = body.data;
    const name = `${r.phase} turn ${r.turn}`;
    const turn = turns.get(turnKey(r.phase, r.turn));
    const listed = turn?.calls.get(r.call_id) ?? [];
    const callKey = `${turnKey(r.phase, r.turn)}:${r.call_id}`;
    const seen = recorded.get(callKey) ?? 0;
    recorded.set(callKey, seen + 1);
    if (!turn || turn.index > i) {
      fail(
        i,
        `${r.tool} call ${r.call_id} was not asked for by a receipted model turn of this job (no ${name} before it)`,
      );
    } else if (listed.length === 0) {
      fail(i, `${r.tool} call ${r.call_id} was not asked for by ${name} (it lists no such call)`);
    } else if (!listed.some((l) => l.name === r.tool)) {
      fail(i, `call ${r.call_id} ran ${r.tool}; ${name} asked for ${listed.map((l) => l.name).join(', ')}`);
    } else if (!listed.some((l) => l.name === r.tool && l.args_sha256 === r.args_sha256)) {
      fail(i, `call ${r.call_id} ran ${r.tool} with other arguments than ${name} asked for`);
    } else if (seen >= listed.length) {
      fail(i, `call ${r.call_id} of ${name} is recorded more than once`);
    }
    if (r.denial !== null) continue; // refused: nothing ran
    const token = tokenBefore(c.tokens, r.phase, i);
    if (!token) {
      fail(
        i,
        r.phase === 'planning'
          ? `${r.tool} ran before the planning token`
          : `${r.tool} ran before the execution token (the plan's approval)`,
      );
    } else if (!(token.tools ?? []).includes(r.tool)) {
      fail(
        i,
        `${r.tool} ran outside the scope of the ${r.phase} token (${(token.tools ?? []).join(', ') || 'no tools'})`,
      );
    }
    if (r.phase === 'planning' && c.planIndex !== undefined && i > c.planIndex) {
      fail(i, `${r.tool} ran as a planning call after the plan`);
    }
  }

  // The taint point: the first call that ran is where untrusted text entered the job's context;
  // the bundle must say so, right after it, and name exactly that call.
  const firstRan = c.indexes('tool_record').find((i) => {
    const body = agentToolRecordBody.safeParse(entries[i]?.body);
    return body.success && body.data.denial === null;
  });
  const taints = c.indexes('taint');
  if (taints.length > 1) fail(null, `a bundle has at most one taint entry; this one has ${taints.length}`);
  const taintIndex = taints[0];
  if (firstRan !== undefined) {
    const ran = agentToolRecordBody.parse(entries[firstRan]?.body);
    const taint = taintIndex === undefined ? undefined : taintBody.safeParse(entries[taintIndex]?.body);
    if (taintIndex === undefined || !taint) {
      fail(firstRan, `${ran.tool} ran, and no taint entry records that its output entered the job's context`);
    } else if (!taint.success) {
      fail(taintIndex, `needs phase, turn and call_id: ${issueText(taint.error)}`);
    } else if (
      taintIndex !== firstRan + 1 ||
      taint.data.phase !== ran.phase ||
      taint.data.turn !== ran.turn ||
      taint.data.call_id !== ran.call_id
    ) {
      fail(
        taintIndex,
        `does not name the first call that ran (${ran.phase} turn ${ran.turn}, ${ran.call_id})`,
      );
    }
  } else if (taintIndex !== undefined) {
    fail(taintIndex, 'names a taint point, but no tool call ran');
  }
  const taint = taintIndex === undefined ? undefined : taintBody.safeParse(entries[taintIndex]?.body);
  checkCallApprovals(c, turns, firstRan, taint?.success ? taint.data : null);

  const budgetIndex = c.indexes('budget')[0];
  if (budgetIndex !== undefined) {
    const body = budgetBody.safeParse(entries[budgetIndex]?.body);
    if (!body.success) fail(budgetIndex, `needs limits, used and exhausted: ${issueText(body.error)}`);
    else if (plan && canonicalHash(body.data.limits ?? null) !== canonicalHash(plan.budget)) {
      fail(budgetIndex, "its limits are not the approved plan's budget");
    }
  }

  const answerIndex = c.indexes('answer')[0];
  if (answerIndex !== undefined) {
    const body = answerBody.safeParse(entries[answerIndex]?.body);
    if (!body.success) fail(answerIndex, `needs turn, sha256 and bytes: ${issueText(body.error)}`);
    else {
      const a = body.data;
      const turn = turns.get(turnKey('execution', a.turn));
      if (!turn || turn.index > answerIndex) {
        fail(answerIndex, `names execution turn ${a.turn}, which is not before it in this bundle`);
      } else if (turn.finish !== 'answer') {
        fail(
          answerIndex,
          `names execution turn ${a.turn}, which finished with ${turn.finish}, not an answer`,
        );
      } else if (turn.answer && (turn.answer.sha256 !== a.sha256 || turn.answer.bytes !== a.bytes)) {
        fail(answerIndex, `is not the answer in the response of execution turn ${a.turn}`);
      }
    }
  }
}

const effectRecord = z.record(z.string(), z.enum(['read', 'write']));
const gateRecord = z.record(z.string(), z.enum(['never', 'when_tainted', 'always']));
const policyRules = z.looseObject({
  matrix: z
    .looseObject({
      approval: z
        .looseObject({
          approver_user_ids_allowlist: z.array(z.string()).catch([]),
          requester_may_approve: z.boolean().catch(false),
        })
        .catch({ approver_user_ids_allowlist: [], requester_may_approve: false }),
    })
    .catch({ approval: { approver_user_ids_allowlist: [], requester_may_approve: false } }),
  execution: z
    .looseObject({
      sandbox: z.looseObject({ workspace_access: z.enum(['none', 'ro', 'rw']).catch('none') }).catch({
        workspace_access: 'none',
      }),
      tools: z
        .looseObject({
          effects: effectRecord.optional().catch(undefined),
          http_effects: effectRecord.optional().catch(undefined),
          approval: gateRecord.optional().catch(undefined),
        })
        .catch({}),
    })
    .catch({ sandbox: { workspace_access: 'none' }, tools: {} }),
});

/** What the bundle's policy says of call approvals: who approves, and each tool's effect and gate. */
function callPolicyOf(document: unknown): {
  approvers: string[];
  requesterMayApprove: boolean;
  rules: GateRules;
} {
  const parsed = policyRules.safeParse(document);
  if (!parsed.success)
    return { approvers: [], requesterMayApprove: false, rules: { workspaceAccess: 'none' } };
  const { matrix, execution } = parsed.data;
  const tools = execution.tools;
  return {
    approvers: matrix.approval.approver_user_ids_allowlist,
    requesterMayApprove: matrix.approval.requester_may_approve,
    rules: {
      workspaceAccess: execution.sandbox.workspace_access,
      ...(tools.effects ? { effects: tools.effects } : {}),
      ...(tools.http_effects ? { httpEffects: tools.http_effects } : {}),
      ...(tools.approval ? { approval: tools.approval } : {}),
    },
  };
}

const GATE_RANK: Record<Gate, number> = { never: 0, when_tainted: 1, always: 2 };

interface Seen<T> {
  index: number;
  body: T;
}

/**
 * Per-call approvals (agent mode). A call that ran needs an approval of that exact call when it
 * has side effects and the job's context was tainted before it, or when the policy always gates
 * its tool: an approval card for the call and its arguments before it (or, named by
 * `allowed_by`, an earlier card for the same tool and argument shape approved for the whole
 * job), an accepted approval of that card by an approver of the policy (not the requester,
 * unless the policy lets requesters approve), the card's approved outcome, and, for its own
 * card, a call token bound to the card, the call and its arguments, used by that call alone.
 * Each record's effect and gate are at least what the policy makes them.
 */
function checkCallApprovals(
  c: AgentChecking,
  turns: Map<string, TurnSeen>,
  firstRan: number | undefined,
  taint: z.infer<typeof taintBody> | null,
): void {
  const { entries, fail } = c;
  const policy = policyBody.safeParse(entries[c.indexes('policy')[0] ?? -1]?.body);
  const { approvers, requesterMayApprove, rules } = callPolicyOf(
    policy.success ? policy.data.document : undefined,
  );
  const requester = (entries[c.indexes('request')[0] ?? -1]?.body as { sender?: unknown } | null)?.sender;

  const cards = new Map<string, Seen<CallCard>>();
  for (const i of c.indexes('call_card')) {
    const body = callCardBody.safeParse(entries[i]?.body);
    if (!body.success) {
      fail(i, `is not an approval card: ${issueText(body.error)}`);
      continue;
    }
    const card = body.data;
    const name = `card ${card.card_id}`;
    const other = cards.get(card.card_id);
    if (other) {
      fail(i, `${name} is in the bundle twice (entry ${other.index} is the first)`);
      continue;
    }
    cards.set(card.card_id, { index: i, body: card });
    const turn = turns.get(turnKey(card.phase, card.turn));
    const asked = (turn?.calls.get(card.call_id) ?? []).some(
      (l) => l.name === card.tool && l.args_sha256 === card.args_sha256,
    );
    if (!turn || turn.index > i || !asked) {
      fail(
        i,
        `${name} is for ${card.tool} call ${card.call_id}, which ${card.phase} turn ${card.turn} before it did not ask for with those arguments`,
      );
    }
    if (card.taint === null) {
      if (card.gate === 'when_tainted') fail(i, `${name} is gated when_tainted but names no taint point`);
    } else if (
      taint === null ||
      card.taint.phase !== taint.phase ||
      card.taint.turn !== taint.turn ||
      card.taint.call_id !== taint.call_id
    ) {
      fail(i, `${name} names another taint point than the bundle's`);
    }
  }

  const decisions: Array<Seen<CallDecision>> = [];
  for (const i of c.indexes('call_decision')) {
    const body = callDecisionBody.safeParse(entries[i]?.body);
    if (!body.success) {
      fail(i, `is not an answer to an approval card: ${issueText(body.error)}`);
      continue;
    }
    const d = body.data;
    decisions.push({ index: i, body: d });
    if (!d.accepted) continue;
    const card = d.card_id === null ? undefined : cards.get(d.card_id);
    if (d.card_id === null) fail(i, `${d.sender}'s ${d.decision} is accepted but names no card`);
    else if (!card || card.index > i)
      fail(i, `accepts an answer to card ${d.card_id}, which is not before it`);
  }
  /** The accepted approvals of a card between it and entry `before`. */
  const approvalsOf = (card: Seen<CallCard>, before: number): Array<Seen<CallDecision>> =>
    decisions.filter(
      (d) =>
        d.body.card_id === card.body.card_id &&
        d.index > card.index &&
        d.index < before &&
        d.body.accepted &&
        d.body.decision === 'approve',
    );

  const outcomes: Array<Seen<CardOutcome>> = [];
  for (const i of c.indexes('card_outcome')) {
    const body = cardOutcomeBody.safeParse(entries[i]?.body);
    if (!body.success) {
      fail(i, `is not an approval card's outcome: ${issueText(body.error)}`);
      continue;
    }
    const o = body.data;
    const card = cards.get(o.card_id);
    const other = outcomes.find((p) => p.body.card_id === o.card_id);
    outcomes.push({ index: i, body: o });
    if (!card || card.index > i) fail(i, `is the outcome of card ${o.card_id}, which is not before it`);
    else if (other) fail(i, `card ${o.card_id} has an outcome already (entry ${other.index})`);
    else if (o.state === 'approved' && !approvalsOf(card, i).some((d) => d.body.sender === o.by)) {
      fail(
        i,
        `card ${o.card_id} is approved by ${String(o.by)}, whose accepted approval of it is not before it`,
      );
    }
  }

  const usedBy = new Map<number, number>();
  for (const i of c.indexes('tool_record')) {
    const body = agentToolRecordBody.safeParse(entries[i]?.body);
    if (!body.success || body.data.denial !== null) continue; // malformed (told above), or refused
    const r = body.data;
    const what = `${r.tool} call ${r.call_id}`;
    if (r.effect === undefined || r.gate === undefined) {
      if (r.effect !== undefined || r.gate !== undefined) {
        fail(i, `${what} has ${r.effect ? 'an effect class but no gate' : 'a gate but no effect class'}`);
      } else if (r.tool !== 'http' && effectOf(r.tool, null, rules) === 'write') {
        // Before calls were gated the agent loop ran tools without side effects only (http
        // for GET and HEAD), so a record of a call with side effects says how it was gated.
        fail(i, `${what} ran with side effects, and its record has no effect class or gate`);
      }
      continue;
    }
    let effect = r.effect;
    // The effect of an http call depends on its method, which the bundle does not hold.
    if (effect === 'read' && r.tool !== 'http' && effectOf(r.tool, null, rules) === 'write') {
      fail(i, `${what} is recorded as without side effects; the policy says ${r.tool} has them`);
      effect = 'write';
    }
    let gate = r.gate;
    const policyGate = gateOf(r.tool, effect, rules);
    if (GATE_RANK[gate] < GATE_RANK[policyGate]) {
      fail(i, `${what} is recorded with gate ${gate}; the policy's gate for it is ${policyGate}`);
      gate = policyGate;
    }
    // The gate decides (checked above against the policy): a `never` gate is the policy's own
    // choice to let that tool run unasked; `when_tainted` needs an approval after the taint point.
    const afterTaint = firstRan !== undefined && i > firstRan;
    const needed = gate === 'always' || (gate === 'when_tainted' && afterTaint);
    if (!needed) continue;

    const when = gate === 'always' ? 'ran with gate always' : 'ran after the taint point';
    const unapproved = (why: string): void =>
      fail(i, `${what} ${when} without an accepted approval of its arguments (${why})`);
    const own = r.card_id ?? null;
    const cardId = own ?? r.allowed_by?.card_id ?? null;
    if (cardId === null) {
      unapproved('it names no approval card');
      continue;
    }
    const card = cards.get(cardId);
    if (!card || card.index > i) {
      unapproved(`card ${cardId} is not before it in this bundle`);
      continue;
    }
    const k = card.body;
    if (own !== null) {
      if (k.phase !== r.phase || k.turn !== r.turn || k.call_id !== r.call_id || k.tool !== r.tool) {
        unapproved(`card ${cardId} is for ${k.tool} call ${k.call_id} of ${k.phase} turn ${k.turn}`);
        continue;
      }
      if (k.args_sha256 !== r.args_sha256) {
        unapproved(`card ${cardId} shows other arguments`);
        continue;
      }
    } else if (k.tool !== r.tool) {
      unapproved(`card ${cardId}, which it names as allowing it, is for ${k.tool}`);
      continue;
    } else if (r.shape_sha256 == null || k.shape_sha256 !== r.shape_sha256) {
      unapproved(`card ${cardId}, which it names as allowing it, is for arguments of another shape`);
      continue;
    }

    const accepted = approvalsOf(card, i);
    if (accepted.length === 0) {
      unapproved(`card ${cardId} has no accepted approval before it`);
      continue;
    }
    const valid: Array<Seen<CallDecision>> = [];
    for (const d of accepted) {
      const by = d.body.sender;
      if (!approvers.includes(by))
        fail(i, `${what}: card ${cardId} was approved by ${by}, who is not an approver`);
      else if (by === requester && !requesterMayApprove) {
        fail(
          i,
          `${what}: card ${cardId} was approved by ${by}, who requested the job (the policy does not let requesters approve)`,
        );
      } else valid.push(d);
    }
    if (valid.length === 0) continue;
    if (own === null && !valid.some((d) => d.body.scope === 'job')) {
      unapproved(`card ${cardId} was approved for its own call only, not for the job`);
      continue;
    }
    if (
      !outcomes.some(
        (o) =>
          o.body.card_id === cardId && o.index > card.index && o.index < i && o.body.state === 'approved',
      )
    ) {
      fail(i, `${what}: card ${cardId} has no approved outcome before it`);
    }
    if (own === null) continue;

    const binding = canonicalHash({ card_id: cardId, call_id: r.call_id, args_sha256: r.args_sha256 });
    const bound = c.tokens.filter(
      (t) => t.purpose === 'call' && t.index < i && t.call !== null && canonicalHash(t.call) === binding,
    );
    const token = bound.find((t) => !usedBy.has(t.index));
    if (!token) {
      const first = bound[0];
      if (first)
        fail(
          i,
          `${what}: its call token (entry ${first.index}) was used by entry ${usedBy.get(first.index)} already`,
        );
      else fail(i, `${what} ran with no call token bound to its arguments (card ${cardId})`);
      continue;
    }
    usedBy.set(token.index, i);
    if (token.tools?.length !== 1 || token.tools[0] !== r.tool) {
      fail(
        i,
        `${what}: its call token (entry ${token.index}) is scoped to ${(token.tools ?? []).join(', ') || 'no tools'}, not ${r.tool} alone`,
      );
    }
    const carried = valid.some(
      (d) =>
        d.index < token.index &&
        (token.approval?.event_ids ?? []).includes(d.body.event_id) &&
        (token.approval?.approvers ?? []).includes(d.body.sender),
    );
    if (!carried) {
      fail(
        i,
        `${what}: its call token (entry ${token.index}) does not carry an accepted approval of card ${cardId} made before it`,
      );
    }
  }
}

/** Fixed steps: each executed step is a step of the approved plan, with its arguments. */
function checkSteps(c: Checking, plan: z.infer<typeof planBody> | undefined): void {
  const { entries, fail } = c;
  for (const i of c.indexes('tool_record')) {
    const body = toolRecordBody.safeParse(entries[i]?.body);
    if (!body.success) {
      fail(i, 'needs step, tool and args_sha256');
      continue;
    }
    const step = plan?.steps[body.data.step];
    if (!step) fail(i, `step ${body.data.step} is not in the approved plan`);
    else if (step.tool !== body.data.tool || canonicalHash(step.args) !== body.data.args_sha256) {
      fail(i, `step ${body.data.step} ran ${body.data.tool} with other arguments than the approved plan`);
    }
  }
}
