// An offline check of a Clawsig v1 proof bundle envelope by the rules the public reference
// verifier (clawverify) applies: the envelope's exact keys, its payload hash and Ed25519
// signature by its did:key, the agent DID, the event chain's links and hashes, each gateway
// receipt's signature by an allowlisted gateway DID and its binding to the run and to an event,
// the receipts' causal spans (one connected tree, no dangling parent, no child earlier than its
// parent, no phase going back), each human approval anchored to a receipt's span, and each tool
// receipt bound to an event. Given the clawgate bundle it came from, it also checks that each
// event names its entry. Problems carry the reference verifier's reason codes.
import { canonicalBytes } from './jws.ts';
import {
  CLAWSIG_MAX_EVENTS,
  CLAWSIG_MAX_RECEIPTS,
  envelopeProblem,
  eventHash,
  sha256B64u,
  type ClawsigEnvelope,
} from './clawsig.ts';

export interface ClawsigProblem {
  code: string;
  field: string;
  problem: string;
}

export interface ClawsigCheck {
  ok: boolean;
  /** `gateway` when every receipt verifies and is bound; `self` when there are none. */
  tier: 'gateway' | 'self' | null;
  agentDid: string | null;
  problems: ClawsigProblem[];
}

const ENVELOPE_KEYS = [
  'envelope_version',
  'envelope_type',
  'payload',
  'payload_hash_b64u',
  'hash_algorithm',
  'signature_b64u',
  'algorithm',
  'signer_did',
  'issued_at',
];
const OPTIONAL_ENVELOPE_KEYS = ['expires_at'];
const EVENT_KEYS = [
  'event_id',
  'run_id',
  'event_type',
  'timestamp',
  'payload_hash_b64u',
  'prev_hash_b64u',
  'event_hash_b64u',
];
const BUNDLE_KEYS = new Set([
  'bundle_version',
  'bundle_id',
  'agent_did',
  'eip8004_agent_id',
  'eip8004_registry',
  'urm',
  'event_chain',
  'vir_receipts',
  'receipts',
  'web_receipts',
  'coverage_attestations',
  'binary_semantic_evidence_attestations',
  'tool_receipts',
  'side_effect_receipts',
  'human_approval_receipts',
  'delegation_receipts',
  'rate_limit_claims',
  'attestations',
  'metadata',
]);
const PHASES: Record<string, readonly string[]> = {
  setup: ['setup', 'planning'],
  planning: ['planning', 'reasoning', 'execution'],
  reasoning: ['reasoning', 'execution', 'observation'],
  execution: ['execution', 'observation', 'reflection', 'teardown'],
  observation: ['observation', 'reflection', 'teardown'],
  reflection: ['reflection', 'teardown'],
  teardown: ['teardown'],
};
const B64U = /^[A-Za-z0-9_-]+$/;

type Rec = Record<string, unknown>;
const isRec = (v: unknown): v is Rec => typeof v === 'object' && v !== null && !Array.isArray(v);
const isB64u = (v: unknown, min = 8): v is string => typeof v === 'string' && v.length >= min && B64U.test(v);
const isIso = (v: unknown): v is string =>
  typeof v === 'string' &&
  /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$/.test(v) &&
  Number.isFinite(Date.parse(v));

function envelopeShapeProblem(env: Rec, type: string): string | null {
  for (const key of ENVELOPE_KEYS) if (!(key in env)) return `${key} is missing`;
  for (const key of Object.keys(env)) {
    if (!ENVELOPE_KEYS.includes(key) && !OPTIONAL_ENVELOPE_KEYS.includes(key)) return `unknown key ${key}`;
  }
  if (env['envelope_version'] !== '1') return 'envelope_version must be "1"';
  if (env['envelope_type'] !== type) return `envelope_type must be ${type}`;
  if (!isRec(env['payload'])) return 'payload must be an object';
  if (!isIso(env['issued_at'])) return 'issued_at is not an RFC 3339 date-time';
  if (typeof env['signer_did'] !== 'string' || !env['signer_did'].startsWith('did:'))
    return 'signer_did is not a DID';
  return null;
}

export interface ClawsigCheckOptions {
  /** The gateway DIDs the auditor allows (never read from the file). */
  gatewayDids: readonly string[];
  /** The agent DID the auditor pinned, if any. */
  agentDid?: string;
  /** The clawgate bundle the export was made from: each event must name its entry. */
  bundle?: { entries: Array<{ type: string; body: unknown }> };
  now?: Date;
}

export function checkClawsigExport(input: unknown, opts: ClawsigCheckOptions): ClawsigCheck {
  const problems: ClawsigProblem[] = [];
  const fail = (code: string, field: string, problem: string): void =>
    void problems.push({ code, field, problem });
  const done = (tier: ClawsigCheck['tier'], agentDid: string | null): ClawsigCheck => ({
    ok: problems.length === 0,
    tier: problems.length === 0 ? tier : null,
    agentDid,
    problems,
  });

  // The envelope.
  if (!isRec(input)) {
    fail('MALFORMED_ENVELOPE', '(root)', 'the export is not a JSON object');
    return done(null, null);
  }
  const shape = envelopeShapeProblem(input, 'proof_bundle');
  if (shape) {
    fail('MALFORMED_ENVELOPE', '(root)', shape);
    return done(null, null);
  }
  const env = input as unknown as ClawsigEnvelope<Rec>;
  const sig = envelopeProblem(env);
  if (sig) fail(sig.includes('hash') ? 'HASH_MISMATCH' : 'SIGNATURE_INVALID', 'payload_hash_b64u', sig);
  if (
    typeof input['expires_at'] === 'string' &&
    Date.parse(input['expires_at']) < (opts.now ?? new Date()).getTime()
  )
    fail('EXPIRED_TTL', 'expires_at', 'the envelope has expired');
  const p = env.payload;
  const agentDid = typeof p['agent_did'] === 'string' ? p['agent_did'] : null;
  if (p['bundle_version'] !== '1') fail('SCHEMA_VALIDATION_FAILED', 'payload.bundle_version', 'must be "1"');
  if (typeof p['bundle_id'] !== 'string' || p['bundle_id'] === '')
    fail('SCHEMA_VALIDATION_FAILED', 'payload.bundle_id', 'must be a non-empty string');
  if (agentDid !== env.signer_did)
    fail('SIGNATURE_INVALID', 'payload.agent_did', 'agent_did must equal the envelope signer_did');
  if (opts.agentDid && agentDid !== opts.agentDid)
    fail('AGENT_DID_NOT_PINNED', 'payload.agent_did', `agent_did is not the pinned ${opts.agentDid}`);
  for (const key of Object.keys(p)) {
    if (!BUNDLE_KEYS.has(key)) fail('SCHEMA_VALIDATION_FAILED', `payload.${key}`, 'unknown key');
  }
  if (isRec(p['metadata']) && canonicalBytes(p['metadata']).length > 16 * 1024)
    fail('SCHEMA_VALIDATION_FAILED', 'payload.metadata', 'metadata is larger than 16 KiB');

  // The event chain.
  const events = Array.isArray(p['event_chain']) ? (p['event_chain'] as unknown[]) : [];
  if (!Array.isArray(p['event_chain']) || events.length === 0)
    fail('SCHEMA_VALIDATION_FAILED', 'payload.event_chain', 'no event chain (at least one event)');
  if (events.length > CLAWSIG_MAX_EVENTS)
    fail('SCHEMA_VALIDATION_FAILED', 'payload.event_chain', `more than ${CLAWSIG_MAX_EVENTS} events`);
  const eventHashes = new Set<string>();
  const entryOfEvent = new Map<string, { type: string; body: unknown }>();
  const ids = new Set<string>();
  let runId: string | null = null;
  let prev: string | null = null;
  events.forEach((raw, i) => {
    const field = `payload.event_chain[${i}]`;
    if (!isRec(raw)) return fail('SCHEMA_VALIDATION_FAILED', field, 'not an object');
    const keys = Object.keys(raw);
    if (keys.length !== EVENT_KEYS.length || !EVENT_KEYS.every((k) => keys.includes(k)))
      fail('SCHEMA_VALIDATION_FAILED', field, `an event has exactly ${EVENT_KEYS.join(', ')}`);
    const e = raw as unknown as Parameters<typeof eventHash>[0] & { event_hash_b64u: string };
    if (typeof e.event_id !== 'string' || e.event_id === '')
      fail('SCHEMA_VALIDATION_FAILED', field, 'empty event_id');
    if (ids.has(e.event_id))
      fail('SCHEMA_VALIDATION_FAILED', `${field}.event_id`, `event_id ${e.event_id} repeats`);
    ids.add(e.event_id);
    if (runId === null) runId = e.run_id;
    else if (e.run_id !== runId)
      fail('EVENT_CHAIN_INVALID', `${field}.run_id`, `inconsistent run_id (expected ${runId})`);
    if (!isIso(e.timestamp)) fail('EVENT_CHAIN_INVALID', `${field}.timestamp`, 'invalid timestamp');
    if (!isB64u(e.payload_hash_b64u))
      fail('EVENT_CHAIN_INVALID', `${field}.payload_hash_b64u`, 'not base64url');
    if (i === 0 ? e.prev_hash_b64u !== null : e.prev_hash_b64u !== prev)
      fail('EVENT_CHAIN_INVALID', `${field}.prev_hash_b64u`, 'hash chain break');
    if (eventHash(e) !== e.event_hash_b64u)
      fail('HASH_MISMATCH', `${field}.event_hash_b64u`, 'the event hash does not recompute');
    prev = e.event_hash_b64u;
    eventHashes.add(e.event_hash_b64u);
    // Against the clawgate bundle: `entry-<index>` names the entry whose bytes it hashes.
    if (opts.bundle) {
      const m = /^entry-(\d+)$/.exec(e.event_id);
      const entry = m ? opts.bundle.entries[Number(m[1])] : undefined;
      if (entry) entryOfEvent.set(e.event_hash_b64u, entry);
      if (!entry) fail('EVENT_ENTRY_MISSING', `${field}.event_id`, `names no entry of the bundle`);
      else if (sha256B64u(canonicalBytes({ type: entry.type, body: entry.body })) !== e.payload_hash_b64u)
        fail(
          'EVENT_ENTRY_MISMATCH',
          `${field}.payload_hash_b64u`,
          `differs from entry ${m?.[1]} of the bundle`,
        );
    }
  });

  // The gateway receipts.
  const receipts = Array.isArray(p['receipts']) ? (p['receipts'] as unknown[]) : [];
  if (receipts.length > CLAWSIG_MAX_RECEIPTS)
    fail('SCHEMA_VALIDATION_FAILED', 'payload.receipts', `more than ${CLAWSIG_MAX_RECEIPTS} receipts`);
  if (receipts.length > 0 && opts.gatewayDids.length === 0)
    fail('DEPENDENCY_NOT_CONFIGURED', 'payload.receipts', 'no gateway DID allowlist given');
  interface Span {
    parent?: string;
    phase?: string;
    at: number;
    field: string;
  }
  const spans = new Map<string, Span>();
  const receiptIds = new Map<string, string>();
  receipts.forEach((raw, i) => {
    const field = `payload.receipts[${i}]`;
    if (!isRec(raw)) return fail('SCHEMA_VALIDATION_FAILED', field, 'not an object');
    const shapeProblem = envelopeShapeProblem(raw, 'gateway_receipt');
    if (shapeProblem) return fail('RECEIPT_VERIFICATION_FAILED', field, shapeProblem);
    const r = raw as unknown as ClawsigEnvelope<Rec>;
    const problem = envelopeProblem(r);
    if (problem) fail('RECEIPT_VERIFICATION_FAILED', field, problem);
    if (!opts.gatewayDids.includes(r.signer_did))
      fail(
        'RECEIPT_VERIFICATION_FAILED',
        `${field}.signer_did`,
        `${r.signer_did} is not an allowed gateway DID`,
      );
    if (r.signer_did === env.signer_did)
      fail(
        'RECEIPT_VERIFICATION_FAILED',
        `${field}.signer_did`,
        'a gateway receipt is signed by the agent key',
      );
    const rp = r.payload;
    const id = String(rp['receipt_id']);
    const bytes = JSON.stringify(rp);
    if (receiptIds.has(id) && receiptIds.get(id) !== bytes)
      fail('CAUSAL_RECEIPT_REPLAY_DETECTED', `${field}.payload.receipt_id`, `receipt_id ${id} reused`);
    receiptIds.set(id, bytes);
    for (const key of ['tokens_input', 'tokens_output'] as const) {
      const n = rp[key];
      if (typeof n !== 'number' || !Number.isInteger(n) || n < 0 || n > 1e7)
        fail('SCHEMA_VALIDATION_FAILED', `${field}.payload.${key}`, 'an integer 0..1e7');
    }
    const latency = rp['latency_ms'];
    if (typeof latency !== 'number' || !Number.isInteger(latency) || latency < 0 || latency > 3.6e6)
      fail('SCHEMA_VALIDATION_FAILED', `${field}.payload.latency_ms`, 'an integer 0..3.6e6');
    for (const key of ['request_hash_b64u', 'response_hash_b64u'] as const)
      if (!isB64u(rp[key])) fail('SCHEMA_VALIDATION_FAILED', `${field}.payload.${key}`, 'not base64url');
    const b = isRec(rp['binding']) ? rp['binding'] : null;
    if (!b || b['run_id'] !== runId)
      fail(
        'RECEIPT_BINDING_MISMATCH',
        `${field}.payload.binding.run_id`,
        'not bound to the run of the event chain',
      );
    if (!b || typeof b['event_hash_b64u'] !== 'string' || !eventHashes.has(b['event_hash_b64u']))
      fail(
        'RECEIPT_BINDING_MISMATCH',
        `${field}.payload.binding.event_hash_b64u`,
        'bound to no event of the chain',
      );
    if (b && typeof b['span_id'] === 'string') {
      const at = Date.parse(String(rp['timestamp']));
      if (at > Date.parse(r.issued_at))
        fail('CAUSAL_CLOCK_CONTRADICTION', `${field}.payload.timestamp`, 'later than the envelope issued_at');
      if (b['phase'] !== undefined && !(typeof b['phase'] === 'string' && b['phase'] in PHASES))
        fail('CAUSAL_PHASE_INVALID', `${field}.payload.binding.phase`, 'not a phase');
      spans.set(b['span_id'], {
        ...(typeof b['parent_span_id'] === 'string' ? { parent: b['parent_span_id'] } : {}),
        ...(typeof b['phase'] === 'string' ? { phase: b['phase'] } : {}),
        at,
        field: `${field}.payload.binding`,
      });
    }
  });
  // The spans: parents known, not later than their children, phases forward, one tree.
  let roots = 0;
  for (const [id, span] of spans) {
    if (span.parent === undefined) {
      roots++;
      continue;
    }
    const parent = spans.get(span.parent);
    if (!parent) {
      fail('CAUSAL_REFERENCE_DANGLING', `${span.field}.parent_span_id`, `unknown span ${span.parent}`);
      continue;
    }
    if (span.at < parent.at)
      fail('CAUSAL_CLOCK_CONTRADICTION', span.field, `span ${id} starts before its parent`);
    if (span.phase && parent.phase && !(PHASES[parent.phase] ?? []).includes(span.phase))
      fail('CAUSAL_PHASE_TRANSITION_INVALID', `${span.field}.phase`, `${parent.phase} -> ${span.phase}`);
  }
  if (spans.size > 0 && roots !== 1)
    fail('CAUSAL_GRAPH_DISCONNECTED', 'payload.receipts', `the receipts' spans have ${roots} roots, not one`);
  for (const [id] of spans) {
    const seen = new Set<string>();
    let at: string | undefined = id;
    while (at !== undefined && !seen.has(at)) {
      seen.add(at);
      at = spans.get(at)?.parent;
    }
    if (at !== undefined) fail('CAUSAL_CYCLE_DETECTED', 'payload.receipts', `span ${id} is on a cycle`);
  }

  // Approvals: anchored to a receipt's span; the agent's own.
  const approvals = Array.isArray(p['human_approval_receipts'])
    ? (p['human_approval_receipts'] as unknown[])
    : [];
  approvals.forEach((raw, i) => {
    const field = `payload.human_approval_receipts[${i}]`;
    if (!isRec(raw)) return fail('SCHEMA_VALIDATION_FAILED', field, 'not an object');
    if (raw['agent_did'] !== agentDid)
      fail('SCHEMA_VALIDATION_FAILED', `${field}.agent_did`, 'not the bundle agent_did');
    const b = isRec(raw['binding']) ? raw['binding'] : {};
    const anchor = b['tool_span_id'] ?? b['parent_span_id'] ?? b['span_id'];
    if (typeof anchor !== 'string' || !spans.has(anchor))
      fail('CAUSAL_HUMAN_APPROVAL_ORPHANED', `${field}.binding`, 'not anchored to a gateway receipt span');
    if (typeof b['event_hash_b64u'] === 'string' && !eventHashes.has(b['event_hash_b64u']))
      fail('RECEIPT_BINDING_MISMATCH', `${field}.binding.event_hash_b64u`, 'bound to no event of the chain');
    // Against the clawgate bundle: the decision's entry says who decided, and what.
    if (opts.bundle) {
      const entry = entryOfEvent.get(String(b['event_hash_b64u']));
      const body = isRec(entry?.body) ? entry.body : {};
      const decided =
        entry?.type === 'approval_attempt' || entry?.type === 'call_decision'
          ? body['accepted'] === true &&
            body['sender'] === raw['approver_subject'] &&
            (body['decision'] === 'deny') === (raw['approval_type'] === 'explicit_deny')
          : (entry?.type === 'card_outcome' && body['state'] === 'expired') ||
            (entry?.type === 'outcome' && body['status'] === 'timed_out');
      const timeout = raw['approval_type'] === 'timeout_deny';
      if (!entry || !decided || timeout !== (entry.type === 'card_outcome' || entry.type === 'outcome'))
        fail('APPROVAL_ENTRY_MISMATCH', field, 'the bundle entry of its event records no such decision');
    }
  });
  // Tool receipts: bound to the run and an event.
  const tools = Array.isArray(p['tool_receipts']) ? (p['tool_receipts'] as unknown[]) : [];
  tools.forEach((raw, i) => {
    const field = `payload.tool_receipts[${i}]`;
    if (!isRec(raw)) return fail('SCHEMA_VALIDATION_FAILED', field, 'not an object');
    const b = isRec(raw['binding']) ? raw['binding'] : {};
    if (typeof b['run_id'] === 'string' && b['run_id'] !== runId)
      fail('RECEIPT_BINDING_MISMATCH', `${field}.binding.run_id`, 'not the run of the event chain');
    if (
      b['event_hash_b64u'] !== undefined &&
      !(typeof b['event_hash_b64u'] === 'string' && eventHashes.has(b['event_hash_b64u']))
    )
      fail('RECEIPT_BINDING_MISMATCH', `${field}.binding.event_hash_b64u`, 'bound to no event of the chain');
  });
  return done(receipts.length > 0 ? 'gateway' : 'self', agentDid);
}
