// A small sealed bundle of a fixed-step job for the page and server tests: a request whose text
// tries to inject markup, a refused approval (its reason holds markup too), the approver's
// approval, one step that ran and one that was refused, and the outcome. Sealed with a key of
// its own, so it verifies against `jwks` and fails against any other.
import { generateKeyPairSync } from 'node:crypto';
import { calculateJwkThumbprint, exportJWK, type JWK } from 'jose';
import {
  bundleDigest,
  canonicalHash,
  sealBundle,
  type BundleEntry,
  type ProofBundle,
} from '../../../src/evidence/bundle.ts';

export const HOSTILE_TEXT = '!claw tidy <script>alert(1)</script><img src=x onerror="alert(2)"> please';
export const APPROVER = '@approver:localhost';
export const MALLORY = '@mallory:localhost';
export const MALLORY_REASON = `${MALLORY} is not on the approver allowlist <b>sic</b>`;
export const DENIAL_REASON = 'tool exec is on the policy\'s deny list (<i>"exec"</i>)';

const job = { workflow_id: 'job:!room:localhost:$request', run_id: 'run-1' };
const policy = {
  wpc_version: '1',
  channel: 'matrix',
  description: 'Docs room <script>x</script>',
  matrix: {
    rooms_allowlist: ['!room:localhost'],
    requesters_allowlist: ['@alice:localhost'],
    approval: { required: true, approver_user_ids_allowlist: [APPROVER], requester_may_approve: false },
  },
  execution: { tools: { allow: ['read', 'search'], deny: ['exec'] } },
};
const plan = {
  summary: 'Read the readme',
  steps: [
    { tool: 'read', args: { path: 'README.md' } },
    { tool: 'search', args: { query: 'TODO' } },
  ],
};

export function fixtureEntries(): BundleEntry[] {
  const record = (step: number, denial: { code: string; reason: string } | null) => ({
    type: 'tool_record' as const,
    body: {
      step,
      tool: plan.steps[step]?.tool ?? '?',
      args_sha256: canonicalHash(plan.steps[step]?.args),
      started_at: `2026-12-01T12:00:0${step + 5}.000Z`,
      output_sha256: denial ? null : 'a'.repeat(64),
      exit_status: denial ? null : 0,
      denial,
    },
  });
  return [
    { type: 'job', body: job },
    {
      type: 'request',
      body: {
        room_id: '!room:localhost',
        sender: '@alice:localhost',
        event_id: '$request',
        text: HOSTILE_TEXT,
      },
    },
    { type: 'policy', body: { document: policy, hash: canonicalHash(policy) } },
    { type: 'plan', body: plan },
    {
      type: 'approval_attempt',
      body: {
        eventId: '$m',
        sender: MALLORY,
        roomId: '!room:localhost',
        decision: 'approve',
        originServerTs: Date.parse('2026-12-01T12:00:01Z'),
        accepted: false,
        code: 'APPROVAL_NOT_APPROVER',
        reason: MALLORY_REASON,
      },
    },
    {
      type: 'approval_attempt',
      body: {
        eventId: '$a',
        sender: APPROVER,
        roomId: '!room:localhost',
        decision: 'approve',
        originServerTs: Date.parse('2026-12-01T12:00:02Z'),
        accepted: true,
        code: null,
        reason: `approval 1 of 1 from ${APPROVER}`,
      },
    },
    record(0, null),
    record(1, { code: 'TOOL_DENIED_BY_POLICY', reason: DENIAL_REASON }),
    { type: 'outcome', body: { status: 'succeeded', reason: '2 step(s) done.' } },
  ];
}

export interface Fixture {
  bundle: ProofBundle;
  digest: string;
  jwks: { keys: JWK[] };
  /** Seals other entries with the same key. */
  seal(entries: BundleEntry[]): ProofBundle;
}

export async function sealedFixture(): Promise<Fixture> {
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  const jwk = await exportJWK(publicKey);
  const kid = await calculateJwkThumbprint(jwk);
  const signer = { kid, key: privateKey };
  const seal = (entries: BundleEntry[]) => sealBundle(job, entries, signer, new Date('2026-12-01T12:00:09Z'));
  const bundle = seal(fixtureEntries());
  return {
    bundle,
    digest: bundleDigest(bundle),
    jwks: { keys: [{ ...jwk, kid, alg: 'EdDSA', use: 'sig', purpose: 'bundle' } as JWK] },
    seal,
  };
}
