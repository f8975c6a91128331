// The proof bundle: the sealed evidence of one job. Entries are canonical JSON (RFC 8785); the
// bundle carries the RFC 9162 Merkle root over them and a seal, a compact JWS by the
// orchestrator key over the job, the entry count, every leaf hash and the root. Stored
// content-addressed by the SHA-256 of the whole bundle's canonical bytes.
//
// `verifyBundle` needs nothing but the bundle and a JWKS: every signature (seal, tokens,
// receipts), every hash, the root, the token's binding to the job and the plan, each receipt's
// binding to the job and a token of it and their chain, and each executed step's presence in
// the approved plan. A failure names the entry and what is wrong with it.
import { createHash } from 'node:crypto';
import { importJWK, jwtVerify, decodeProtectedHeader, type JWK } from 'jose';
import { z } from 'zod';
import { keysFor } from '../keys/keyring.ts';
import { verifyReceipt } from '../proxy/receipts.ts';
import { canonicalBytes, signCompactJws, verifyCompactJws, type Ed25519Signer, type Jwks } from './jws.ts';
import { leafHash, merkleRoot } from './merkle.ts';

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
  'cancel_request',
  'token',
  'tool_record',
  'model_receipt',
  'model_turn',
  'budget',
  'answer',
  'workspace',
  'outcome',
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
const tokenBody = z.looseObject({ purpose: z.enum(['planning', 'execution']), jwt: z.string().min(1) });
const receiptBody = z.looseObject({ jws: z.string().min(1) });
const toolRecordBody = z.looseObject({
  step: z.number().int().nonnegative(),
  tool: z.string(),
  args_sha256: sha256HexString,
});
const outcomeBody = z.looseObject({ status: z.string().min(1) });

export function sha256Hex(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

/** SHA-256 of the canonical JSON of a value: how plans, policies and tool arguments are named. */
export function canonicalHash(value: unknown): string {
  return sha256Hex(canonicalBytes(value));
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
  let planHash: string | undefined;
  const planIndex = indexes('plan')[0];
  if (planIndex !== undefined) {
    const body = planBody.safeParse(entries[planIndex]?.body);
    if (!body.success) fail(planIndex, `is not a plan: ${body.error.issues[0]?.message ?? ''}`);
    else {
      plan = body.data;
      planHash = canonicalHash(body.data);
    }
  }

  const tokenIds = new Set<string>();
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
      if (body.data.purpose === 'execution') {
        if (claims['plan_hash'] !== planHash)
          fail(i, 'token is not bound to the approved plan (plan_hash differs)');
        if (claims['wpc_hash'] !== undefined && claims['wpc_hash'] !== policyHash) {
          fail(i, 'token is pinned to another policy than the one in the bundle');
        }
      }
    } catch (error) {
      fail(i, `token does not verify: ${error instanceof Error ? error.message : String(error)}`);
    }
  }

  let previous: string | null = null;
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
    } catch (error) {
      fail(i, `receipt does not verify: ${error instanceof Error ? error.message : String(error)}`);
    }
  }

  for (const i of indexes('tool_record')) {
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

  const outcomeIndex = indexes('outcome')[0];
  if (outcomeIndex !== undefined && !outcomeBody.safeParse(entries[outcomeIndex]?.body).success) {
    fail(outcomeIndex, 'needs a status');
  }

  return { ok: problems.length === 0, problems, digest: bundleDigest(bundle) };
}
