// The checks every real job's Clawsig export gets in the workflow tests: it was written at seal
// time beside the bundle; it is valid against the public schemas; it passes clawgate's check of
// the reference verifier's rules with the gateway DIDs an auditor would allow and the agent DID
// pinned; exporting the bundle again gives the same bytes; and tampering with an event, a
// receipt or an approval (re-signed with the bundle key itself, so only the rules can tell) is
// detected, with the reason code the reference verifier gives.
import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { checkClawsigExport, type ClawsigCheck } from '../../src/evidence/clawsig-check.ts';
import { eventHash, signClawsigEnvelope, type ClawsigEnvelope } from '../../src/evidence/clawsig.ts';
import { didKeyOf } from '../../src/evidence/did.ts';
import { exportSealedBundle, gatewayDids } from '../../src/evidence/seal.ts';
import { KEY_PURPOSES, loadSigner, publicJwks } from '../../src/keys/keyring.ts';
import { clawsigSchemaErrors } from './clawsig-schemas.ts';

type Rec = Record<string, unknown>;

export interface ExportFacts {
  envelope: ClawsigEnvelope<Rec>;
  events: Rec[];
  receipts: Rec[];
  approvals: Rec[];
  tools: Rec[];
}

export async function assertClawsigExport(
  bundleDir: string,
  digest: string,
  keysDir: string,
): Promise<ExportFacts> {
  const text = readFileSync(join(bundleDir, `${digest}.clawsig.json`), 'utf8');
  const envelope = JSON.parse(text) as ClawsigEnvelope<Rec>;
  assert.deepEqual(clawsigSchemaErrors(envelope), [], 'the export is valid against the Clawsig schemas');
  const bundle = JSON.parse(readFileSync(join(bundleDir, `${digest}.json`), 'utf8')) as {
    entries: Array<{ type: string; body: unknown }>;
  };
  const bundleKey = loadSigner(keysDir, 'bundle').key;
  const options = { gatewayDids: gatewayDids(keysDir), agentDid: didKeyOf(bundleKey), bundle };
  const check = (value: unknown): ClawsigCheck => checkClawsigExport(value, options);
  const passed = check(envelope);
  assert.deepEqual(passed.problems, []);
  const payload = envelope.payload;
  const receipts = (payload['receipts'] as Rec[] | undefined) ?? [];
  assert.equal(passed.tier, receipts.length > 0 ? 'gateway' : 'self');
  for (const r of receipts)
    assert.notEqual(r['signer_did'], envelope.signer_did, 'receipts are the gateway key');

  // Reproducible: the same bundle exports to the same bytes, twice.
  const jwks = publicJwks(keysDir, KEY_PURPOSES);
  assert.equal((await exportSealedBundle(bundle, keysDir, jwks)).text, text);
  assert.equal((await exportSealedBundle(bundle, keysDir, jwks)).text, text);

  // Tampered, then signed again with the bundle key: the rules catch what the signature cannot.
  const resigned = (edit: (p: Rec) => void): unknown => {
    const p = JSON.parse(JSON.stringify(payload)) as Rec;
    edit(p);
    return signClawsigEnvelope('proof_bundle', p, bundleKey, envelope.issued_at);
  };
  const codes = (value: unknown): string[] => [...new Set(check(value).problems.map((x) => x.code))].sort();
  const middle = Math.floor((payload['event_chain'] as Rec[]).length / 2);
  const at = (p: Rec, key: string, i: number): Rec => (p[key] as Rec[])[i] as Rec;
  // An event's content changed (its own hash left as it was).
  const retyped = codes(
    resigned((p) => {
      at(p, 'event_chain', middle)['event_type'] = 'tampered';
    }),
  );
  assert.ok(retyped.includes('HASH_MISMATCH'), retyped.join());
  // An event taken out of the chain.
  const removed = codes(
    resigned((p) => {
      (p['event_chain'] as Rec[]).splice(middle, 1);
    }),
  );
  assert.ok(removed.includes('EVENT_CHAIN_INVALID'), removed.join());
  // An event's payload changed and the whole chain hashed again: receipts are bound to the old
  // events, and the event no longer names its entry.
  const rechained = codes(
    resigned((p) => {
      const chain = p['event_chain'] as Rec[];
      at(p, 'event_chain', 1)['payload_hash_b64u'] = 'AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA';
      let prev: string | null = null;
      for (const e of chain) {
        e['prev_hash_b64u'] = prev;
        e['event_hash_b64u'] = eventHash(e as unknown as Parameters<typeof eventHash>[0]);
        prev = e['event_hash_b64u'] as string;
      }
    }),
  );
  assert.ok(rechained.includes('EVENT_ENTRY_MISMATCH'), rechained.join());
  if (receipts.length > 0) assert.ok(rechained.includes('RECEIPT_BINDING_MISMATCH'), rechained.join());
  if (receipts.length > 0) {
    // A receipt's facts changed: the gateway's signature no longer holds.
    const recounted = codes(
      resigned((p) => {
        const facts = at(p, 'receipts', 0)['payload'] as Rec;
        facts['tokens_output'] = Number(facts['tokens_output']) + 1;
      }),
    );
    assert.deepEqual(recounted, ['RECEIPT_VERIFICATION_FAILED']);
    // A receipt dropped: the others' spans now hang from nothing.
    if (receipts.length > 1) {
      const dropped = codes(
        resigned((p) => {
          (p['receipts'] as Rec[]).splice(0, 1);
        }),
      );
      assert.ok(dropped.includes('CAUSAL_REFERENCE_DANGLING'), dropped.join());
    }
  }
  const approvals = (payload['human_approval_receipts'] as Rec[] | undefined) ?? [];
  if (approvals.length > 0) {
    // Who approved, changed: the bundle's entry says otherwise.
    const renamed = codes(
      resigned((p) => {
        at(p, 'human_approval_receipts', 0)['approver_subject'] = '@mallory:evil';
      }),
    );
    assert.deepEqual(renamed, ['APPROVAL_ENTRY_MISMATCH']);
    // A denial turned into an approval.
    const denied = approvals.findIndex((a) => a['approval_type'] === 'explicit_deny');
    if (denied !== -1) {
      const flippedDecision = codes(
        resigned((p) => {
          at(p, 'human_approval_receipts', denied)['approval_type'] = 'explicit_approve';
        }),
      );
      assert.deepEqual(flippedDecision, ['APPROVAL_ENTRY_MISMATCH']);
    }
    // Anchored to no receipt.
    const orphaned = codes(
      resigned((p) => {
        (at(p, 'human_approval_receipts', 0)['binding'] as Rec)['parent_span_id'] = 'nowhere';
      }),
    );
    assert.ok(orphaned.includes('CAUSAL_HUMAN_APPROVAL_ORPHANED'), orphaned.join());
  }
  // Not re-signed: any byte changed breaks the envelope's hash or signature.
  const flipped = JSON.parse(text) as Rec;
  (flipped['payload'] as Rec)['bundle_id'] = 'clawgate-other';
  assert.deepEqual(codes(flipped), ['HASH_MISMATCH']);
  const badSig = JSON.parse(text) as Rec;
  const sig = String(badSig['signature_b64u']);
  badSig['signature_b64u'] = `${sig.startsWith('A') ? 'B' : 'A'}${sig.slice(1)}`;
  assert.deepEqual(codes(badSig), ['SIGNATURE_INVALID']);
  // Signed by someone else's key: it verifies, but not as the agent the auditor pinned.
  const { privateKey } = generateKeyPairSync('ed25519');
  const stranger = signClawsigEnvelope(
    'proof_bundle',
    { ...payload, agent_did: didKeyOf(privateKey) },
    privateKey,
    envelope.issued_at,
  );
  assert.ok(codes(stranger).includes('AGENT_DID_NOT_PINNED'));

  return {
    envelope,
    events: payload['event_chain'] as Rec[],
    receipts,
    approvals,
    tools: (payload['tool_receipts'] as Rec[] | undefined) ?? [],
  };
}
