// The Clawsig v1 form of a sealed proof bundle, for auditors who run the public Clawsig verifier
// (clawverify). clawgate's own bundle stays the record; this is a faithful projection of it:
//
// - `event_chain`: one event per bundle entry (but the `job` entry, which is metadata, and the
//   `gateway_receipts` entry, which holds the receipts below), in bundle order, `event_id`
//   `entry-<index>`; its `payload_hash_b64u` is the SHA-256 of the RFC 8785 JSON of the entry
//   `{type, body}` (the bytes under the entry's Merkle leaf), so each event names its entry;
//   timestamps are the entry's own time (the Matrix event's, the token's `iat`, the receipt's
//   or tool call's start, the seal's for the outcome), else the time of the event before it.
// - `receipts`: every model call as a `gateway_receipt` envelope signed by the proxy's own key
//   (its did:key, not the bundle's), bound to the run and to the call's `llm_call` event, the
//   calls linked in one causal chain of spans (planning, then execution). The proxy signs them
//   when the job is sealed (`POST /v1/clawsig/receipts`), from its own receipts.
// - `human_approval_receipts`: each counted approval and denial (the plan's, and each approval
//   card's), and each approval that timed out, anchored to the span of the model call whose
//   proposal it decided; `tool_receipts`: each tool call, hash only.
// - `metadata.clawgate`: the job, its workflow and run id, the policy and plan hashes, the
//   bundle's digest and Merkle root.
//
// Hashes follow the Clawsig verifier exactly: an envelope's `payload_hash_b64u` is base64url
// (no padding) of SHA-256 over `JSON.stringify(payload)` in the key order written, and the
// Ed25519 signature is over the UTF-8 bytes of that string. Everything here is a function of the
// bundle (and Ed25519 signatures are deterministic): exporting a bundle twice gives the same bytes.
import { createHash, sign, verify, type KeyObject } from 'node:crypto';
import { ClawgateError, ERROR_CODES } from '../errors.ts';
import type { ReceiptPayload } from '../proxy/receipts.ts';
import { canonicalBytes } from './jws.ts';
import { didKeyOf, publicKeyOfDid } from './did.ts';
import type { BundleEntry, ProofBundle } from './bundle.ts';

/** The `typ` of a sealer's request to the proxy to bind a job's receipts (signed by the bundle key). */
export const CLAWSIG_BINDING_JWS_TYPE = 'clawgate-clawsig-binding+jws';
export const CLAWSIG_HARNESS = { id: 'clawgate', version: '0.1.0' } as const;
/** The Clawsig verifier's limits: events and receipts per bundle, metadata size. */
export const CLAWSIG_MAX_EVENTS = 1000;
export const CLAWSIG_MAX_RECEIPTS = 1000;
const MAX_TOKENS = 10_000_000;
const MAX_LATENCY_MS = 3_600_000;

export type ClawsigPhase = 'planning' | 'execution';

export interface ClawsigEvent {
  event_id: string;
  run_id: string;
  event_type: string;
  timestamp: string;
  payload_hash_b64u: string;
  prev_hash_b64u: string | null;
  event_hash_b64u: string;
}

export interface ClawsigEnvelope<P> {
  envelope_version: '1';
  envelope_type: string;
  payload: P;
  payload_hash_b64u: string;
  hash_algorithm: 'SHA-256';
  signature_b64u: string;
  algorithm: 'Ed25519';
  signer_did: string;
  issued_at: string;
}

/**
 * What a gateway receipt is bound to besides its run: at call time, what the caller's headers
 * said (X-Event-Hash, X-Idempotency-Key); at seal time, the call's event and span.
 */
export interface GatewayBinding {
  event_hash_b64u?: string | undefined;
  nonce?: string | undefined;
  span_id?: string | undefined;
  parent_span_id?: string | null | undefined;
  phase?: ClawsigPhase | undefined;
}

/** What the worker asks the proxy to bind one of its receipts to. */
export interface ReceiptBindingRequest {
  receipt_id: string;
  event_hash_b64u: string;
  span_id: string;
  parent_span_id: string | null;
  phase: ClawsigPhase;
}

export type GatewayReceiptPayload = ReturnType<typeof gatewayReceiptPayload>;

export function sha256B64u(data: string | Uint8Array): string {
  return createHash('sha256').update(data).digest('base64url');
}

/** A lowercase-hex SHA-256 as base64url without padding (the Clawsig encoding). */
export function hexToB64u(hex: string): string {
  return Buffer.from(hex, 'hex').toString('base64url');
}

const EMPTY_SHA256_B64U = sha256B64u('');

/** `payload_hash_b64u` of a Clawsig envelope: SHA-256 over JSON.stringify, in the order written. */
export function envelopePayloadHash(payload: unknown): string {
  return sha256B64u(JSON.stringify(payload));
}

/** Signs a Clawsig envelope: Ed25519 over the UTF-8 bytes of the payload hash string. */
export function signClawsigEnvelope<P>(
  type: string,
  payload: P,
  key: KeyObject,
  issuedAt: string,
): ClawsigEnvelope<P> {
  const hash = envelopePayloadHash(payload);
  return {
    envelope_version: '1',
    envelope_type: type,
    payload,
    payload_hash_b64u: hash,
    hash_algorithm: 'SHA-256',
    signature_b64u: sign(null, Buffer.from(hash, 'utf8'), key).toString('base64url'),
    algorithm: 'Ed25519',
    signer_did: didKeyOf(key),
    issued_at: issuedAt,
  };
}

/** Why a Clawsig envelope does not verify (hash, then signature by its did:key), or null. */
export function envelopeProblem(envelope: ClawsigEnvelope<unknown>): string | null {
  const e = envelope as unknown as Record<string, unknown>;
  for (const key of ['payload_hash_b64u', 'signature_b64u', 'signer_did'] as const) {
    if (typeof e[key] !== 'string') return `${key} must be a string`;
  }
  if (envelope.hash_algorithm !== 'SHA-256' || envelope.algorithm !== 'Ed25519') {
    return 'hash_algorithm must be SHA-256 and algorithm Ed25519';
  }
  if (envelopePayloadHash(envelope.payload) !== envelope.payload_hash_b64u) {
    return 'payload_hash_b64u does not match the payload';
  }
  let key: KeyObject;
  try {
    key = publicKeyOfDid(envelope.signer_did);
  } catch (error) {
    return error instanceof Error ? error.message : String(error);
  }
  const ok = verify(
    null,
    Buffer.from(envelope.payload_hash_b64u, 'utf8'),
    key,
    Buffer.from(envelope.signature_b64u, 'base64url'),
  );
  return ok ? null : 'the signature does not verify with its signer_did';
}

/** The hash of an event header, its keys in the Clawsig order. */
export function eventHash(event: Omit<ClawsigEvent, 'event_hash_b64u'>): string {
  return sha256B64u(
    JSON.stringify({
      event_id: event.event_id,
      run_id: event.run_id,
      event_type: event.event_type,
      timestamp: event.timestamp,
      payload_hash_b64u: event.payload_hash_b64u,
      prev_hash_b64u: event.prev_hash_b64u,
    }),
  );
}

/**
 * The Clawsig gateway receipt of one of the proxy's receipts, bound as asked. Every fact comes
 * from the proxy's receipt; the binding names the run, the call's event and its span.
 */
export function gatewayReceiptPayload(
  r: ReceiptPayload,
  receiptSha256: string,
  runId: string,
  binding: GatewayBinding,
) {
  const latency = Date.parse(r.ended_at) - Date.parse(r.started_at);
  return {
    receipt_version: '1' as const,
    receipt_id: r.receipt_id,
    gateway_id: r.proxy_id,
    provider: r.upstream?.name ?? 'none',
    model: r.model ?? 'none',
    // Nothing sent (a refused call) is the hash of no bytes.
    request_hash_b64u: r.request_sha256 ? hexToB64u(r.request_sha256) : EMPTY_SHA256_B64U,
    response_hash_b64u: r.response_sha256 ? hexToB64u(r.response_sha256) : EMPTY_SHA256_B64U,
    tokens_input: Math.min(r.usage?.prompt_tokens ?? 0, MAX_TOKENS),
    tokens_output: Math.min(r.usage?.completion_tokens ?? 0, MAX_TOKENS),
    latency_ms: Math.max(0, Math.min(Number.isFinite(latency) ? latency : 0, MAX_LATENCY_MS)),
    timestamp: r.started_at,
    binding: {
      run_id: runId,
      ...(binding.event_hash_b64u ? { event_hash_b64u: binding.event_hash_b64u } : {}),
      nonce: binding.nonce ?? r.receipt_id,
      ...(r.policy_hash ? { policy_hash: r.policy_hash } : {}),
      ...(binding.span_id ? { span_id: binding.span_id } : {}),
      ...(binding.parent_span_id ? { parent_span_id: binding.parent_span_id } : {}),
      ...(binding.phase ? { phase: binding.phase } : {}),
    },
    metadata: {
      clawgate: {
        status: r.status,
        http_status: r.http_status,
        receipt_sha256: receiptSha256,
        prev_receipt_sha256: r.prev_receipt_sha256,
        token_id: r.token_id,
      },
    },
  };
}

/** The proxy's signed Clawsig gateway receipt; issued when the call ended. */
export function signGatewayReceipt(
  r: ReceiptPayload,
  receiptSha256: string,
  runId: string,
  binding: GatewayBinding,
  key: KeyObject,
): ClawsigEnvelope<GatewayReceiptPayload> {
  return signClawsigEnvelope(
    'gateway_receipt',
    gatewayReceiptPayload(r, receiptSha256, runId, binding),
    key,
    r.ended_at,
  );
}

// ---------------------------------------------------------------------------------------------
// The projection of a bundle.

function decodeJwsPayload(jws: string): Record<string, unknown> {
  const part = jws.split('.')[1] ?? '';
  return JSON.parse(Buffer.from(part, 'base64url').toString('utf8')) as Record<string, unknown>;
}

type Body = Record<string, unknown>;
const bodyOf = (entry: BundleEntry): Body =>
  typeof entry.body === 'object' && entry.body !== null ? (entry.body as Body) : {};
const str = (v: unknown): string | null => (typeof v === 'string' && v !== '' ? v : null);
const num = (v: unknown): number | null => (typeof v === 'number' && Number.isFinite(v) ? v : null);
const isoOfMs = (ms: number | null): string | null => {
  if (ms === null) return null;
  const d = new Date(ms);
  return Number.isFinite(d.getTime()) ? d.toISOString() : null;
};

/** Entries that are not events: the job's ids (in metadata) and the gateway receipts. */
const NOT_EVENTS: ReadonlySet<string> = new Set(['job', 'gateway_receipts']);

function eventTypeOf(entry: BundleEntry, receipt: ReceiptPayload | null): string {
  const b = bodyOf(entry);
  switch (entry.type) {
    case 'request':
      return 'request';
    case 'policy':
      return 'policy_pinned';
    case 'approval_attempt':
      if (b['accepted'] !== true) return 'approval_refused';
      return b['decision'] === 'deny' ? 'denial' : 'approval';
    case 'call_decision':
      if (b['accepted'] !== true) return 'call_approval_refused';
      return b['decision'] === 'deny' ? 'call_denial' : 'call_approval';
    case 'call_card':
      return 'approval_requested';
    case 'card_outcome':
      return `card_${str(b['state']) ?? 'outcome'}`;
    case 'token':
      return 'token_minted';
    case 'model_receipt':
      return receipt?.status === 'refused' ? 'llm_call_refused' : 'llm_call';
    case 'tool_record':
      return b['denial'] ? 'tool_call_refused' : 'tool_call';
    case 'cancel_request':
      return b['accepted'] === false ? 'cancel_refused' : 'cancel_request';
    default:
      return entry.type;
  }
}

/** An entry's own time, when it carries one. */
function ownTimeOf(entry: BundleEntry, receipt: ReceiptPayload | null): string | null {
  const b = bodyOf(entry);
  switch (entry.type) {
    case 'request':
      return isoOfMs(num(b['origin_server_ts']));
    case 'approval_attempt':
      return isoOfMs(num(b['originServerTs']));
    case 'call_decision':
      return isoOfMs(num(b['origin_server_ts']));
    case 'cancel_request':
      return isoOfMs(num(b['originServerTs']) ?? num(b['origin_server_ts']));
    case 'token': {
      const jwt = str(b['jwt']);
      if (!jwt) return null;
      const iat = num(decodeJwsPayload(jwt)['iat']);
      return iat === null ? null : isoOfMs(iat * 1000);
    }
    case 'model_receipt':
      return receipt?.started_at ?? null;
    case 'tool_record':
      return str(b['started_at']);
    default:
      return null;
  }
}

export interface ClawsigProjection {
  runId: string;
  events: ClawsigEvent[];
  /** The event of each entry (null for the entries that are not events). */
  eventOfEntry: (ClawsigEvent | null)[];
  /** Each model call, in the order of the causal chain, with its binding. */
  calls: Array<{
    entry: number;
    receipt: ReceiptPayload;
    receiptJws: string;
    binding: ReceiptBindingRequest;
  }>;
}

/** The event chain of a bundle's entries and the binding of each model call to it. */
export function projectBundle(
  bundle: Pick<ProofBundle, 'job' | 'entries'>,
  sealedAt: string,
): ClawsigProjection {
  const entries = bundle.entries as BundleEntry[];
  const runId = bundle.job.run_id;
  const receipts = entries.map((e) => {
    if (e.type !== 'model_receipt') return null;
    const jws = str(bodyOf(e)['jws']);
    return jws ? (decodeJwsPayload(jws) as unknown as ReceiptPayload) : null;
  });
  // Times: the entry's own, else the one before it (the first ones take the first time found).
  const own = entries.map((e, i) => (e.type === 'outcome' ? sealedAt : ownTimeOf(e, receipts[i] ?? null)));
  const firstKnown = own.find((t) => t !== null) ?? sealedAt;
  const events: ClawsigEvent[] = [];
  const eventOfEntry: (ClawsigEvent | null)[] = [];
  let last = firstKnown;
  let prev: string | null = null;
  entries.forEach((entry, i) => {
    if (NOT_EVENTS.has(entry.type)) {
      eventOfEntry.push(null);
      return;
    }
    const timestamp = own[i] ?? last;
    last = timestamp;
    const header = {
      event_id: `entry-${i}`,
      run_id: runId,
      event_type: eventTypeOf(entry, receipts[i] ?? null),
      timestamp,
      payload_hash_b64u: sha256B64u(canonicalBytes({ type: entry.type, body: entry.body })),
      prev_hash_b64u: prev,
    };
    const event = { ...header, event_hash_b64u: eventHash(header) };
    prev = event.event_hash_b64u;
    events.push(event);
    eventOfEntry.push(event);
  });

  // The model calls: one causal chain of spans, in the order they started; a call made before
  // the first execution token is the planning phase's.
  const firstExecution = entries.findIndex((e) => e.type === 'token' && bodyOf(e)['purpose'] !== 'planning');
  const order = receipts
    .map((r, i) => ({ r, i }))
    .filter((x): x is { r: ReceiptPayload; i: number } => x.r !== null)
    .sort((a, b) => Date.parse(a.r.started_at) - Date.parse(b.r.started_at) || a.i - b.i);
  const calls: ClawsigProjection['calls'] = [];
  let parent: string | null = null;
  let phaseSoFar: ClawsigPhase = 'planning';
  for (const { r, i } of order) {
    const phase: ClawsigPhase = firstExecution !== -1 && i > firstExecution ? 'execution' : 'planning';
    // A phase never goes back (the verifier refuses execution -> planning): a late planning
    // receipt would be a bundle out of order, which the bundle's own checks report.
    if (phaseSoFar === 'execution' && phase === 'planning') {
      throw new ClawgateError(
        ERROR_CODES.bundleInvalid,
        `model call ${r.receipt_id} of the planning phase started after one of the execution phase`,
      );
    }
    phaseSoFar = phase;
    const event = eventOfEntry[i];
    if (!event) continue;
    calls.push({
      entry: i,
      receipt: r,
      receiptJws: str(bodyOf(entries[i] as BundleEntry)['jws']) ?? '',
      binding: {
        receipt_id: r.receipt_id,
        event_hash_b64u: event.event_hash_b64u,
        span_id: r.receipt_id,
        parent_span_id: parent,
        phase,
      },
    });
    parent = r.receipt_id;
  }
  return { runId, events, eventOfEntry, calls };
}

function bindingsOf(projection: ClawsigProjection): ReceiptBindingRequest[] {
  return projection.calls.map((c) => c.binding);
}

/** What the worker sends the proxy to have the job's receipts signed in the Clawsig form. */
export function receiptBindingRequests(
  bundle: Pick<ProofBundle, 'job' | 'entries'>,
  sealedAt: string,
): { run_id: string; receipts: ReceiptBindingRequest[] } {
  const projection = projectBundle(bundle, sealedAt);
  return { run_id: projection.runId, receipts: bindingsOf(projection) };
}

// ---------------------------------------------------------------------------------------------
// The export.

export interface ClawsigExportInput {
  bundle: ProofBundle;
  digest: string;
  sealedAt: string;
  /** The gateway receipts the proxy signed at seal time (the bundle's `gateway_receipts` entry). */
  gatewayReceipts: ClawsigEnvelope<GatewayReceiptPayload>[];
}

function approvalAnchor(
  projection: ClawsigProjection,
  beforeEntry: number,
  receiptId?: string | null,
): string | null {
  if (receiptId && projection.calls.some((c) => c.binding.span_id === receiptId)) return receiptId;
  let anchor: string | null = null;
  for (const c of projection.calls) if (c.entry < beforeEntry) anchor = c.binding.span_id;
  return anchor ?? projection.calls[0]?.binding.span_id ?? null;
}

/** A tool call that did what it was asked: exit status 0 (a fixed plan's model step: HTTP 2xx). */
function succeeded(record: Body): boolean {
  const status = num(record['exit_status']);
  if (record['tool'] === 'model') return status !== null && status >= 200 && status < 300;
  return status === 0;
}

/** The payload of the Clawsig proof bundle of a sealed, verified clawgate bundle. */
export function clawsigBundlePayload(input: ClawsigExportInput, agentDid: string) {
  const { bundle, digest, sealedAt } = input;
  const entries = bundle.entries as BundleEntry[];
  const projection = projectBundle(bundle, sealedAt);
  if (projection.events.length > CLAWSIG_MAX_EVENTS) {
    throw new ClawgateError(
      ERROR_CODES.bundleInvalid,
      `the bundle has ${projection.events.length} events; a Clawsig v1 bundle holds at most ${CLAWSIG_MAX_EVENTS}`,
    );
  }
  const { runId, eventOfEntry } = projection;
  const hashOf = (i: number): string => (eventOfEntry[i] as ClawsigEvent).event_hash_b64u;
  const find = (type: string): number => entries.findIndex((e) => e.type === type);
  const planEntry = find('plan');
  const policyBody = bodyOf(entries[find('policy')] ?? { type: 'policy', body: {} });
  const policyHash = str(policyBody['hash']);
  const planHash =
    planEntry === -1
      ? null
      : createHash('sha256').update(canonicalBytes(entries[planEntry]?.body)).digest('hex');
  const tokens = entries.flatMap((e, i) => {
    if (e.type !== 'token') return [];
    const jwt = str(bodyOf(e)['jwt']);
    return jwt ? [{ i, claims: decodeJwsPayload(jwt) }] : [];
  });
  const tokenAfter = (i: number, pick: (claims: Record<string, unknown>) => boolean) =>
    tokens.find((t) => t.i > i && pick(t.claims))?.claims;
  const turnReceipt = new Map<string, string>();
  for (const e of entries) {
    if (e.type !== 'model_turn') continue;
    const b = bodyOf(e);
    const id = str(b['receipt_id']);
    if (id) turnReceipt.set(`${String(b['phase'])}/${String(b['turn'])}`, id);
  }

  // The human approval receipts: only when a gateway receipt can anchor them.
  const haveReceipts = input.gatewayReceipts.length > 0;
  const approvals: Record<string, unknown>[] = [];
  const minted = (claims: Record<string, unknown> | undefined) =>
    claims
      ? {
          minted_capability_id: String(claims['jti']),
          minted_capability_ttl_seconds: Number(claims['exp']) - Number(claims['iat']),
        }
      : {};
  const approvalBinding = (i: number, anchor: string | null) => ({
    run_id: runId,
    event_hash_b64u: hashOf(i),
    ...(anchor ? { parent_span_id: anchor } : {}),
  });
  const cards = new Map<string, Body>();
  entries.forEach((e, i) => {
    const b = bodyOf(e);
    if (e.type === 'call_card') cards.set(String(b['card_id']), b);
    if (!haveReceipts) return;
    if (e.type === 'approval_attempt' && b['accepted'] === true) {
      const approve = b['decision'] !== 'deny';
      approvals.push({
        receipt_version: '1',
        receipt_id: `approval-entry-${i}`,
        approval_type: approve ? 'explicit_approve' : 'explicit_deny',
        approver_subject: String(b['sender']),
        approver_method: 'cli_confirm',
        agent_did: agentDid,
        scope_hash_b64u: hexToB64u(planHash ?? ''),
        scope_summary:
          `${approve ? 'approved' : 'denied'} the plan ${planHash?.slice(0, 12) ?? ''} of job ${bundle.job.workflow_id}`.slice(
            0,
            1024,
          ),
        ...(policyHash ? { policy_hash_b64u: hexToB64u(policyHash) } : {}),
        ...(approve ? minted(tokenAfter(i, (c) => c['purpose'] === 'execution')) : {}),
        ...(planHash ? { plan_hash_b64u: hexToB64u(planHash) } : {}),
        hash_algorithm: 'SHA-256',
        timestamp: (eventOfEntry[i] as ClawsigEvent).timestamp,
        binding: approvalBinding(i, approvalAnchor(projection, planEntry === -1 ? i : planEntry)),
      });
    }
    if (e.type === 'call_decision' && b['accepted'] === true) {
      const card = cards.get(String(b['card_id'])) ?? {};
      const approve = b['decision'] !== 'deny';
      const forJob = b['scope'] === 'job';
      const scopeHex = str(forJob ? card['shape_sha256'] : card['args_sha256']);
      approvals.push({
        receipt_version: '1',
        receipt_id: `approval-entry-${i}`,
        approval_type: approve ? 'explicit_approve' : 'explicit_deny',
        approver_subject: String(b['sender']),
        approver_method: b['via'] === 'reaction' ? 'ui_click' : 'cli_confirm',
        agent_did: agentDid,
        scope_hash_b64u: scopeHex ? hexToB64u(scopeHex) : EMPTY_SHA256_B64U,
        scope_summary:
          `${approve ? 'approved' : 'denied'} card ${String(b['card_id'])}: ${str(card['tool']) ?? '?'} call ${str(card['call_id']) ?? '?'}${forJob ? ', and later calls of the same shape in this job' : ''}`.slice(
            0,
            1024,
          ),
        ...(policyHash ? { policy_hash_b64u: hexToB64u(policyHash) } : {}),
        ...(approve
          ? minted(
              tokenAfter(
                i,
                (c) =>
                  c['purpose'] === 'call' &&
                  (c['call'] as Body | undefined)?.['card_id'] === String(b['card_id']),
              ),
            )
          : {}),
        hash_algorithm: 'SHA-256',
        timestamp: (eventOfEntry[i] as ClawsigEvent).timestamp,
        binding: approvalBinding(
          i,
          approvalAnchor(projection, i, turnReceipt.get(`${String(card['phase'])}/${String(card['turn'])}`)),
        ),
      });
    }
    if (e.type === 'card_outcome' && b['state'] === 'expired') {
      const card = cards.get(String(b['card_id'])) ?? {};
      const scopeHex = str(card['args_sha256']);
      approvals.push({
        receipt_version: '1',
        receipt_id: `approval-entry-${i}`,
        approval_type: 'timeout_deny',
        approver_subject: 'clawgate:timeout',
        approver_method: 'timeout',
        agent_did: agentDid,
        scope_hash_b64u: scopeHex ? hexToB64u(scopeHex) : EMPTY_SHA256_B64U,
        scope_summary: `card ${String(b['card_id'])} expired: no approver answered`.slice(0, 1024),
        ...(policyHash ? { policy_hash_b64u: hexToB64u(policyHash) } : {}),
        hash_algorithm: 'SHA-256',
        timestamp: (eventOfEntry[i] as ClawsigEvent).timestamp,
        binding: approvalBinding(
          i,
          approvalAnchor(projection, i, turnReceipt.get(`${String(card['phase'])}/${String(card['turn'])}`)),
        ),
      });
    }
    if (e.type === 'outcome' && b['status'] === 'timed_out' && planHash) {
      approvals.push({
        receipt_version: '1',
        receipt_id: `approval-entry-${i}`,
        approval_type: 'timeout_deny',
        approver_subject: 'clawgate:timeout',
        approver_method: 'timeout',
        agent_did: agentDid,
        scope_hash_b64u: hexToB64u(planHash),
        scope_summary: `no approval of the plan ${planHash.slice(0, 12)} in time`,
        ...(policyHash ? { policy_hash_b64u: hexToB64u(policyHash) } : {}),
        plan_hash_b64u: hexToB64u(planHash),
        hash_algorithm: 'SHA-256',
        timestamp: (eventOfEntry[i] as ClawsigEvent).timestamp,
        binding: approvalBinding(i, approvalAnchor(projection, planEntry)),
      });
    }
  });

  const tools: Record<string, unknown>[] = [];
  entries.forEach((e, i) => {
    if (e.type !== 'tool_record') return;
    const b = bodyOf(e);
    const denial = b['denial'] as Body | null | undefined;
    const output = str(b['output_sha256']);
    const duration = num(b['duration_ms']);
    tools.push({
      receipt_version: '1',
      receipt_id: `tool-entry-${i}`,
      tool_name: str(b['tool']) ?? 'unknown',
      args_hash_b64u: hexToB64u(str(b['args_sha256']) ?? ''),
      // A refused call produced nothing: its result is the refusal.
      result_hash_b64u: output ? hexToB64u(output) : sha256B64u(canonicalBytes(denial ?? null)),
      result_status: denial
        ? 'error'
        : b['timed_out'] === true
          ? 'timeout'
          : succeeded(b)
            ? 'success'
            : 'error',
      hash_algorithm: 'SHA-256',
      agent_did: agentDid,
      timestamp: (eventOfEntry[i] as ClawsigEvent).timestamp,
      latency_ms: Math.max(0, duration ?? 0),
      binding: { run_id: runId, event_hash_b64u: hashOf(i) },
    });
  });
  if (input.gatewayReceipts.length > CLAWSIG_MAX_RECEIPTS || tools.length > CLAWSIG_MAX_RECEIPTS) {
    throw new ClawgateError(
      ERROR_CODES.bundleInvalid,
      `a Clawsig v1 bundle holds at most ${CLAWSIG_MAX_RECEIPTS} receipts of a kind; this job has ${input.gatewayReceipts.length} model calls and ${tools.length} tool calls`,
    );
  }
  const outcome = bodyOf(entries[find('outcome')] ?? { type: 'outcome', body: {} });
  const requestBody = bodyOf(entries[find('request')] ?? { type: 'request', body: {} });
  return {
    bundle_version: '1' as const,
    bundle_id: `clawgate-${digest}`,
    agent_did: agentDid,
    event_chain: projection.events,
    ...(haveReceipts ? { receipts: input.gatewayReceipts } : {}),
    ...(approvals.length > 0 ? { human_approval_receipts: approvals } : {}),
    ...(tools.length > 0 ? { tool_receipts: tools } : {}),
    metadata: {
      harness: { id: CLAWSIG_HARNESS.id, version: CLAWSIG_HARNESS.version, runtime: 'host' },
      clawgate: {
        job: { workflow_id: bundle.job.workflow_id, run_id: bundle.job.run_id },
        room_id: str(requestBody['room_id']),
        requester: str(requestBody['sender']),
        policy_hash: policyHash,
        plan_hash: planHash,
        outcome: str(outcome['status']),
        bundle_digest: digest,
        merkle_root: bundle.merkle_root,
        sealed_at: sealedAt,
        gateway_dids: [...new Set(input.gatewayReceipts.map((r) => r.signer_did))],
        events:
          'one event per bundle entry but job and gateway_receipts; event_id entry-<index>; payload_hash_b64u = base64url(SHA-256(RFC 8785 JSON of the entry {type, body}))',
        ...(haveReceipts
          ? {}
          : {
              approvals:
                'the bundle has no gateway receipts to anchor approvals to: they are its events only',
            }),
      },
    },
  };
}

export type ClawsigBundlePayload = ReturnType<typeof clawsigBundlePayload>;

/** The Clawsig proof bundle envelope of a sealed bundle, signed with the key that sealed it. */
export function exportClawsig(
  input: ClawsigExportInput,
  bundleKey: KeyObject,
): ClawsigEnvelope<ClawsigBundlePayload> {
  const payload = clawsigBundlePayload(input, didKeyOf(bundleKey));
  return signClawsigEnvelope('proof_bundle', payload, bundleKey, input.sealedAt);
}

/** The file an export is written as: JSON, two-space indented, a final newline. */
export function clawsigExportText(envelope: ClawsigEnvelope<unknown>): string {
  return `${JSON.stringify(envelope, null, 2)}\n`;
}
