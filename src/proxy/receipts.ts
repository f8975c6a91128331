// Model-call receipts: what the proxy signs for every call that reached a decision. A receipt
// is a compact JWS (EdDSA, `kid` = the receipt key's JWK thumbprint, `typ` of its own) whose
// payload is the RFC 8785 canonical JSON of the statement below. Receipts of one job form a
// chain: each carries the SHA-256 of the previous receipt's payload.
import { createHash, sign, type KeyObject } from 'node:crypto';
import canonicalize from 'canonicalize';
import { compactVerify, decodeProtectedHeader, importJWK, type JWK } from 'jose';
import { z } from 'zod';

export const RECEIPT_JWS_TYPE = 'clawgate-model-receipt+jws';
export const RECEIPT_VERSION = 1;

export const RECEIPT_STATUSES = [
  /** The upstream answered 2xx and the whole answer reached the caller. */
  'ok',
  /** The proxy refused the call (token, scope, policy, malformed request); nothing went upstream. */
  'refused',
  /** The upstream answered with an error status. */
  'upstream_error',
  /** The upstream could not be reached or its connection broke mid-answer. */
  'upstream_failed',
  /** The upstream did not answer within the proxy's upstream timeout. */
  'timeout',
  /** The caller went away before the answer was complete; the upstream call was aborted. */
  'aborted',
] as const;
export type ReceiptStatus = (typeof RECEIPT_STATUSES)[number];

const sha256Hex = z.string().regex(/^[0-9a-f]{64}$/, 'a SHA-256 digest in lowercase hex');

export const receiptPayloadSchema = z
  .object({
    v: z.literal(RECEIPT_VERSION),
    receipt_id: z.string().min(1),
    proxy_id: z.string().min(1),
    job: z.object({ workflow_id: z.string(), run_id: z.string() }).strict().nullable(),
    token_id: z.string().nullable(),
    policy_hash: z.string().nullable(),
    model: z.string().nullable(),
    upstream: z.object({ name: z.string(), url: z.string() }).strict().nullable(),
    stream: z.boolean(),
    status: z.enum(RECEIPT_STATUSES),
    http_status: z.number().int(),
    refusal: z.object({ code: z.string(), reason: z.string() }).strict().nullable(),
    error: z.string().nullable(),
    /** SHA-256 of the exact bytes sent upstream (null when nothing was sent). */
    request_sha256: sha256Hex.nullable(),
    /** SHA-256 of the exact bytes the upstream returned (the whole event stream when streaming). */
    response_sha256: sha256Hex.nullable(),
    request_bytes: z.number().int().nonnegative(),
    response_bytes: z.number().int().nonnegative(),
    usage: z
      .object({
        prompt_tokens: z.number().int().nonnegative(),
        completion_tokens: z.number().int().nonnegative(),
        total_tokens: z.number().int().nonnegative(),
      })
      .strict()
      .nullable(),
    started_at: z.iso.datetime(),
    ended_at: z.iso.datetime(),
    /** SHA-256 of the canonical payload of this job's previous receipt; null for its first. */
    prev_receipt_sha256: sha256Hex.nullable(),
  })
  .strict();
export type ReceiptPayload = z.infer<typeof receiptPayloadSchema>;

export interface SignedReceipt {
  receiptId: string;
  /** workflow id of the job, or null for a call refused before a job was known. */
  jobId: string | null;
  /** SHA-256 of the canonical payload: what the job's next receipt links to. */
  payloadSha256: string;
  jws: string;
  payload: ReceiptPayload;
}

export interface ReceiptSigningKey {
  /** RFC 7638 thumbprint of the public JWK. */
  kid: string;
  /** An Ed25519 private key. */
  key: KeyObject;
}

export function canonicalBytes(value: unknown): Buffer {
  const text = canonicalize(value);
  if (text === undefined) throw new Error('value has no canonical JSON form');
  return Buffer.from(text, 'utf8');
}

export function sha256(bytes: Uint8Array | string): string {
  return createHash('sha256').update(bytes).digest('hex');
}

/**
 * Signs a receipt as a compact JWS (RFC 7515). Serialised here with node:crypto's synchronous
 * Ed25519 rather than jose's CompactSign, which goes through WebCrypto's async API and took five
 * times as long per receipt on the proxy's hot path (bench/proxy.bench.ts); receipts are
 * verified with jose (`verifyReceipt`), so any disagreement would fail the tests.
 */
export function signReceipt(payload: ReceiptPayload, signer: ReceiptSigningKey): SignedReceipt {
  const bytes = canonicalBytes(payload);
  const header = Buffer.from(
    JSON.stringify({ alg: 'EdDSA', kid: signer.kid, typ: RECEIPT_JWS_TYPE }),
  ).toString('base64url');
  const signingInput = `${header}.${bytes.toString('base64url')}`;
  const signature = sign(null, Buffer.from(signingInput), signer.key).toString('base64url');
  const jws = `${signingInput}.${signature}`;
  return {
    receiptId: payload.receipt_id,
    jobId: payload.job?.workflow_id ?? null,
    payloadSha256: sha256(bytes),
    jws,
    payload,
  };
}

export const RECEIPT_ERRORS = {
  malformed: 'RECEIPT_MALFORMED',
  unknownKey: 'RECEIPT_UNKNOWN_KEY',
  badSignature: 'RECEIPT_BAD_SIGNATURE',
  badPayload: 'RECEIPT_BAD_PAYLOAD',
} as const;

export class ReceiptVerificationError extends Error {
  readonly code: (typeof RECEIPT_ERRORS)[keyof typeof RECEIPT_ERRORS];
  constructor(code: ReceiptVerificationError['code'], message: string) {
    super(message);
    this.code = code;
    this.name = 'ReceiptVerificationError';
  }
}

/** Verifies a receipt JWS against a public JWKS (offline): signature, type, and payload schema. */
export async function verifyReceipt(jws: string, jwks: { keys: JWK[] }): Promise<SignedReceipt> {
  let header;
  try {
    header = decodeProtectedHeader(jws);
  } catch {
    throw new ReceiptVerificationError(RECEIPT_ERRORS.malformed, 'not a compact JWS');
  }
  if (header.alg !== 'EdDSA' || header.typ !== RECEIPT_JWS_TYPE) {
    throw new ReceiptVerificationError(
      RECEIPT_ERRORS.malformed,
      `header must be alg EdDSA and typ ${RECEIPT_JWS_TYPE}, got alg ${String(header.alg)} typ ${String(header.typ)}`,
    );
  }
  // One encoding per JWS: base64url has spare bits in its last character, and a receipt whose
  // text can change without its signature failing is not evidence of its exact bytes.
  const segments = jws.split('.');
  if (
    segments.length !== 3 ||
    segments.some((part) => Buffer.from(part, 'base64url').toString('base64url') !== part)
  ) {
    throw new ReceiptVerificationError(RECEIPT_ERRORS.malformed, 'the JWS is not in canonical base64url');
  }
  const jwk = jwks.keys.find((k) => k.kid === header.kid);
  if (!jwk)
    throw new ReceiptVerificationError(RECEIPT_ERRORS.unknownKey, `no key ${String(header.kid)} in the JWKS`);
  let payloadBytes: Uint8Array;
  try {
    const key = await importJWK({ ...jwk, alg: 'EdDSA' }, 'EdDSA');
    ({ payload: payloadBytes } = await compactVerify(jws, key, { algorithms: ['EdDSA'] }));
  } catch {
    throw new ReceiptVerificationError(RECEIPT_ERRORS.badSignature, 'the signature does not verify');
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(Buffer.from(payloadBytes).toString('utf8'));
  } catch {
    throw new ReceiptVerificationError(RECEIPT_ERRORS.badPayload, 'the payload is not JSON');
  }
  const result = receiptPayloadSchema.safeParse(parsed);
  if (!result.success) {
    const issue = result.error.issues[0];
    throw new ReceiptVerificationError(
      RECEIPT_ERRORS.badPayload,
      `payload ${issue?.path.join('.') ?? ''}: ${issue?.message ?? 'invalid'}`,
    );
  }
  const canonical = canonicalBytes(result.data);
  if (!canonical.equals(Buffer.from(payloadBytes))) {
    throw new ReceiptVerificationError(RECEIPT_ERRORS.badPayload, 'the payload is not in canonical form');
  }
  return {
    receiptId: result.data.receipt_id,
    jobId: result.data.job?.workflow_id ?? null,
    payloadSha256: sha256(canonical),
    jws,
    payload: result.data,
  };
}
