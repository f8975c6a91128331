// Validates a Clawsig export against the public Clawsig v1 JSON Schemas (test/fixtures/clawsig),
// with ajv: the proof bundle envelope and payload, the event chain, each gateway receipt (its
// envelope, payload and binding), each human approval receipt (the strict standalone schema,
// and wrapped in its envelope form), each tool receipt (payload, and its envelope form).
import { readdirSync, readFileSync } from 'node:fs';
import { Ajv2020, type ValidateFunction } from 'ajv/dist/2020.js';
import draft7 from 'ajv/dist/refs/json-schema-draft-07.json' with { type: 'json' };
import addFormats from 'ajv-formats';

const DIR = new URL('../fixtures/clawsig/', import.meta.url);
const BASE = 'https://schemas.clawbureau.';

function load(): Ajv2020 {
  const ajv = new Ajv2020({ strict: false, allErrors: true });
  ajv.addMetaSchema(draft7);
  (addFormats as unknown as (a: Ajv2020) => void)(ajv);
  const schemas = readdirSync(DIR)
    .filter((f) => f.endsWith('.json'))
    .map((f) => JSON.parse(readFileSync(new URL(f, DIR), 'utf8')) as { $id: string });
  const ids = new Set(schemas.map((s) => s.$id));
  const refs = new Set<string>();
  const walk = (v: unknown): void => {
    if (Array.isArray(v)) v.forEach(walk);
    else if (v && typeof v === 'object') {
      for (const [k, x] of Object.entries(v)) {
        if (k === '$ref' && typeof x === 'string' && x.startsWith(BASE)) refs.add(x);
        else walk(x);
      }
    }
  };
  schemas.forEach(walk);
  for (const s of schemas) ajv.addSchema(s);
  // Referenced but not published beside these: parts an export never holds, matched by nothing.
  for (const ref of refs) if (!ids.has(ref)) ajv.addSchema({ $id: ref, not: {} });
  return ajv;
}

let ajv: Ajv2020 | undefined;
function validator(name: string): ValidateFunction {
  ajv ??= load();
  const v = ajv.getSchema(`${BASE}${name}`);
  if (!v) throw new Error(`no schema ${name}`);
  return v;
}

const SCHEMA = {
  proofBundleEnvelope: 'org/claw.poh.proof_bundle_envelope.v1.json',
  proofBundle: 'org/claw.poh.proof_bundle.v1.json',
  eventChain: 'org/claw.poh.event_chain.v1.json',
  gatewayReceiptEnvelope: 'org/claw.poh.gateway_receipt_envelope.v1.json',
  gatewayReceipt: 'org/claw.poh.gateway_receipt.v1.json',
  receiptBinding: 'org/claw.poh.receipt_binding.v1.json',
  humanApproval: 'com/poh/human_approval_receipt.v1.json',
  humanApprovalEnvelope: 'com/poh/human_approval_receipt_envelope.v1.json',
  toolReceipt: 'com/poh/tool_receipt.v1.json',
  toolReceiptEnvelope: 'com/poh/tool_receipt_envelope.v1.json',
} as const;

/** The schemas the export is checked against (the others: a CST's claims, their own WPC). */
export const SCHEMAS_APPLIED = Object.values(SCHEMA);

type Rec = Record<string, unknown>;

/** Every schema error of an export, as `<schema> <path>: <message>`; empty when it is valid. */
export function clawsigSchemaErrors(envelope: unknown): string[] {
  const errors: string[] = [];
  const check = (name: keyof typeof SCHEMA, value: unknown, where: string): void => {
    const v = validator(SCHEMA[name]);
    if (!v(value)) {
      for (const e of v.errors ?? []) errors.push(`${name} ${where}${e.instancePath}: ${e.message ?? ''}`);
    }
  };
  check('proofBundleEnvelope', envelope, '');
  const payload = (envelope as Rec).payload as Rec;
  check('proofBundle', payload, 'payload');
  const events = payload['event_chain'] as Rec[];
  check(
    'eventChain',
    { chain_version: '1', chain_id: payload['bundle_id'], run_id: events[0]?.['run_id'], events },
    'payload.event_chain',
  );
  const wrap = (type: string, p: unknown) => ({
    envelope_version: '1',
    envelope_type: type,
    payload: p,
    payload_hash_b64u: 'AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA',
    hash_algorithm: 'SHA-256',
    signature_b64u: 'AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA',
    algorithm: 'Ed25519',
    signer_did: (envelope as Rec).signer_did,
    issued_at: (envelope as Rec).issued_at,
  });
  ((payload['receipts'] as Rec[] | undefined) ?? []).forEach((r, i) => {
    check('gatewayReceiptEnvelope', r, `payload.receipts[${i}]`);
    check('gatewayReceipt', r['payload'], `payload.receipts[${i}].payload`);
    check('receiptBinding', (r['payload'] as Rec)['binding'], `payload.receipts[${i}].payload.binding`);
  });
  ((payload['human_approval_receipts'] as Rec[] | undefined) ?? []).forEach((a, i) => {
    check('humanApproval', a, `payload.human_approval_receipts[${i}]`);
    check(
      'humanApprovalEnvelope',
      wrap('human_approval_receipt', a),
      `(enveloped) human_approval_receipts[${i}]`,
    );
  });
  ((payload['tool_receipts'] as Rec[] | undefined) ?? []).forEach((t, i) => {
    check('toolReceipt', t, `payload.tool_receipts[${i}]`);
    check('toolReceiptEnvelope', wrap('tool_receipt', t), `(enveloped) tool_receipts[${i}]`);
  });
  return errors;
}
