// Model-call receipts: what the proxy signs for every call that reached a decision. A receipt
// is a compact JWS (EdDSA, `kid` = the receipt key's JWK thumbprint, `typ` of its own) whose
// payload is the RFC 8785 canonical JSON of the statement below. Receipts of one job form a
// chain: each carries the SHA-256 of the previous receipt's payload.
import { createHash } from 'node:crypto';
import { z } from 'zod';
import {
  canonicalBytes,
  signCompactJws,
  verifyCompactJws,
  JwsVerificationError,
  type Ed25519Signer,
  type Jwks,
} from '../evidence/jws.ts';

export { canonicalBytes };

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
    /**
     * With Clawsig receipts on: the run and event the caller said this call belongs to
     * (X-Run-Id, X-Event-Hash, X-Idempotency-Key), which its Clawsig form is bound to.
     */
    clawsig: z
      .object({
        run_id: z.string().min(1).max(200).optional(),
        event_hash_b64u: z
          .string()
          .regex(/^[A-Za-z0-9_-]{8,128}$/)
          .optional(),
        nonce: z.string().min(1).max(200).optional(),
      })
      .strict()
      .optional(),
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

export type ReceiptSigningKey = Ed25519Signer;

export function sha256(bytes: Uint8Array | string): string {
  return createHash('sha256').update(bytes).digest('hex');
}

/** Signs a receipt: a compact JWS of type clawgate-model-receipt+jws over its canonical payload. */
export function signReceipt(payload: ReceiptPayload, signer: ReceiptSigningKey): SignedReceipt {
  const bytes = canonicalBytes(payload);
  const jws = signCompactJws(bytes, signer, RECEIPT_JWS_TYPE);
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
export async function verifyReceipt(jws: string, jwks: Jwks): Promise<SignedReceipt> {
  let payloadBytes: Buffer;
  try {
    payloadBytes = await verifyCompactJws(jws, jwks, RECEIPT_JWS_TYPE);
  } catch (error) {
    if (!(error instanceof JwsVerificationError)) throw error;
    const code =
      error.failure === 'unknown_key'
        ? RECEIPT_ERRORS.unknownKey
        : error.failure === 'bad_signature'
          ? RECEIPT_ERRORS.badSignature
          : RECEIPT_ERRORS.malformed;
    throw new ReceiptVerificationError(code, error.message);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(payloadBytes.toString('utf8'));
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
  if (!canonical.equals(payloadBytes)) {
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
