// Capability scoped tokens (CST): JWTs minted only after a valid approval (or, for planning,
// at job start with models and no tools), bound to one job, its plan, its scope, and
// optionally the WPC hash. Explicit type (RFC 8725), EdDSA only, short expiry, unique jti.
//
// Verification is explicit and complete: algorithm allowlist, type, known key, signature,
// issuer, audience, expiry and not-before with a tolerance and an injectable clock, the claim
// shape, revocation (of the token or of its whole job), the expected job, and the pinned
// policy hash against the active one. Signing and verifying use node:crypto's synchronous
// Ed25519 (verification on cached keys): jose's SignJWT and jwtVerify go through WebCrypto's
// async API and ran at a fifth of the raw sign rate and half the raw verify rate here
// (bench/tokens.bench.ts). The tests check that jose accepts what this code mints.
import {
  createPublicKey,
  randomUUID,
  sign as signBytes,
  verify as verifySignature,
  type KeyObject,
} from 'node:crypto';
import { decodeProtectedHeader, type JWK } from 'jose';
import { z } from 'zod';
import { ClawgateError, ERROR_CODES, formatPath, type ErrorCode } from '../errors.ts';
import { MAX_TOKEN_TTL_SECONDS, type Signer } from '../keys/keyring.ts';
import { PLANNING_TOOLS } from '../tools/kinds.ts';

export const CST_TYPE = 'clawgate-cst+jwt';
export const CST_ISSUER = 'clawgate';
export const CST_AUDIENCE = 'clawgate';
export const DEFAULT_CST_TTL_SECONDS = 15 * 60;
export const MIN_CST_TTL_SECONDS = 30;
export const DEFAULT_CLOCK_TOLERANCE_SECONDS = 5;
export const MAX_CLOCK_TOLERANCE_SECONDS = 300;
export { MAX_TOKEN_TTL_SECONDS };

const sha256 = z.string().regex(/^[0-9a-f]{64}$/);

export const cstClaimsSchema = z
  .object({
    iss: z.string(),
    aud: z.union([z.string(), z.array(z.string())]),
    sub: z.string().min(1),
    jti: z.string().min(1),
    iat: z.number().int(),
    nbf: z.number().int(),
    exp: z.number().int(),
    /** planning, execution (the approved plan), or call: one approved call with side effects. */
    purpose: z.enum(['planning', 'execution', 'call']),
    job: z.object({ workflow_id: z.string().min(1), run_id: z.string().min(1) }).strict(),
    room_id: z.string().min(1),
    scope: z.object({ tools: z.array(z.string()), models: z.array(z.string()) }).strict(),
    plan_hash: sha256.optional(),
    approval: z
      .object({ approvers: z.array(z.string()).min(1), event_ids: z.array(z.string()).min(1) })
      .strict()
      .optional(),
    wpc_hash: sha256.optional(),
    /**
     * The most model calls the job may have made upstream when this token is used, counted by
     * the proxy over every receipt of the job (all its tokens), so a worker that loops cannot
     * exceed the policy's budget.
     */
    budget: z
      .object({ model_calls: z.number().int().min(1).max(100_000) })
      .strict()
      .optional(),
    /** A call token: the approval card it was approved on and the exact arguments it may run with. */
    call: z
      .object({ card_id: z.string().min(1), call_id: z.string().min(1), args_sha256: sha256 })
      .strict()
      .optional(),
  })
  .strict()
  .superRefine((claims, ctx) => {
    if (claims.exp <= claims.iat || claims.exp - claims.iat > MAX_TOKEN_TTL_SECONDS) {
      ctx.addIssue({
        code: 'custom',
        path: ['exp'],
        message: `a token lives more than 0 and at most ${MAX_TOKEN_TTL_SECONDS} seconds after iat`,
      });
    }
    if (claims.nbf < claims.iat || claims.nbf >= claims.exp) {
      ctx.addIssue({ code: 'custom', path: ['nbf'], message: 'nbf lies between iat and exp' });
    }
    if (claims.sub !== claims.job.workflow_id)
      ctx.addIssue({ code: 'custom', path: ['sub'], message: 'sub must be the job' });
    if (claims.purpose === 'call' && (!claims.call || claims.scope.tools.length !== 1)) {
      ctx.addIssue({
        code: 'custom',
        path: ['call'],
        message: 'a call token names its card, call and argument hash, and exactly one tool',
      });
    }
    if (claims.purpose !== 'call' && claims.call) {
      ctx.addIssue({ code: 'custom', path: ['call'], message: 'only a call token names a call' });
    }
    if (claims.purpose !== 'planning' && (!claims.plan_hash || !claims.approval)) {
      ctx.addIssue({
        code: 'custom',
        path: ['plan_hash'],
        message: 'an execution token needs plan_hash and approval',
      });
    }
    const writing = claims.scope.tools.filter((t) => !PLANNING_TOOLS.includes(t));
    if (claims.purpose === 'planning' && writing.length > 0) {
      ctx.addIssue({
        code: 'custom',
        path: ['scope', 'tools'],
        message: `a planning token carries only the read-only tools (${PLANNING_TOOLS.join(', ')}), not ${writing.join(', ')}`,
      });
    }
  });
export type CstClaims = z.infer<typeof cstClaimsSchema>;

export interface MintRequest {
  purpose: 'planning' | 'execution' | 'call';
  job: { workflowId: string; runId: string };
  roomId: string;
  scope: { tools: string[]; models: string[] };
  planHash?: string;
  approval?: { approvers: string[]; eventIds: string[] };
  /** Set when the policy pins its hash (tokens.cst.pin_policy_hash). */
  wpcHash?: string;
  /** A call token's card, call and argument hash. */
  call?: { cardId: string; callId: string; argsSha256: string };
  /** The job's model-call budget (see the claim). */
  budget?: { modelCalls: number };
  /** From the policy (tokens.cst.ttl_seconds); default 15 minutes. */
  ttlSeconds?: number;
  now?: Date;
}

const mintRequestSchema = z.object({
  ttlSeconds: z.number().int().min(MIN_CST_TTL_SECONDS).max(MAX_TOKEN_TTL_SECONDS).optional(),
  now: z
    .date()
    .refine((d) => Number.isFinite(d.getTime()), 'a valid date')
    .optional(),
});

const base64url = (value: unknown): string => Buffer.from(JSON.stringify(value)).toString('base64url');

/**
 * Mints a CST. Called only after the decision it carries was taken (the approval, checked
 * against the pinned policy, for an execution token); refuses a request that would make a
 * token the verifier refuses.
 */
export function mintCapabilityToken(
  request: MintRequest,
  signer: Signer,
): Promise<{ token: string; claims: CstClaims }> {
  try {
    return Promise.resolve(mintSync(request, signer));
  } catch (error) {
    return Promise.reject(error instanceof Error ? error : new Error(String(error)));
  }
}

function mintSync(request: MintRequest, signer: Signer): { token: string; claims: CstClaims } {
  const options = mintRequestSchema.safeParse({ ttlSeconds: request.ttlSeconds, now: request.now });
  if (!options.success) {
    const issue = options.error.issues[0];
    throw new ClawgateError(
      ERROR_CODES.tokenRequestInvalid,
      `cannot mint a token: ${formatPath(issue?.path ?? [])}: ${issue?.message ?? 'invalid'}`,
    );
  }
  const iat = Math.floor((request.now ?? new Date()).getTime() / 1000);
  const parsed = cstClaimsSchema.safeParse({
    iss: CST_ISSUER,
    aud: CST_AUDIENCE,
    sub: request.job?.workflowId,
    jti: randomUUID(),
    iat,
    nbf: iat,
    exp: iat + (request.ttlSeconds ?? DEFAULT_CST_TTL_SECONDS),
    purpose: request.purpose,
    job: { workflow_id: request.job?.workflowId, run_id: request.job?.runId },
    room_id: request.roomId,
    scope: {
      tools: Array.isArray(request.scope?.tools) ? [...new Set(request.scope.tools)].sort() : undefined,
      models: Array.isArray(request.scope?.models) ? [...new Set(request.scope.models)].sort() : undefined,
    },
    ...(request.planHash !== undefined ? { plan_hash: request.planHash } : {}),
    ...(request.approval !== undefined
      ? { approval: { approvers: request.approval.approvers, event_ids: request.approval.eventIds } }
      : {}),
    ...(request.wpcHash !== undefined ? { wpc_hash: request.wpcHash } : {}),
    ...(request.budget !== undefined ? { budget: { model_calls: request.budget.modelCalls } } : {}),
    ...(request.call !== undefined
      ? {
          call: {
            card_id: request.call.cardId,
            call_id: request.call.callId,
            args_sha256: request.call.argsSha256,
          },
        }
      : {}),
  });
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new ClawgateError(
      ERROR_CODES.tokenRequestInvalid,
      `cannot mint a token: ${formatPath(issue?.path ?? []) || 'claims'}: ${issue?.message ?? 'invalid'}`,
    );
  }
  const claims = parsed.data;
  const signingInput = `${base64url({ alg: 'EdDSA', kid: signer.kid, typ: CST_TYPE })}.${base64url(claims)}`;
  const signature = signBytes(null, Buffer.from(signingInput), signer.key).toString('base64url');
  return { token: `${signingInput}.${signature}`, claims };
}

export interface VerifyOptions {
  /** Public token-signing keys (current and retired-but-valid). */
  jwks: { keys: JWK[] };
  now?: () => Date;
  clockToleranceSeconds?: number;
  audience?: string;
  /** Revocation lookup: a revoked token id, or any token of a revoked job. */
  isRevoked?: (jti: string, workflowId: string) => boolean | Promise<boolean>;
  /** The currently active WPC hash of the token's channel; a pinned token must match it. */
  activePolicyHash?: () => string | null | Promise<string | null>;
  /** When the caller knows which job the call is for. */
  expectedJob?: { workflowId: string; runId?: string };
  /**
   * false: the token's lifetime (exp, nbf, iat) is not checked, only whose it is. For reading
   * what a job's calls already left (its receipts), never for a call that does something: the
   * receipt of a turn that ended after its token expired, or under a worker whose clock is off,
   * still belongs in the job's evidence.
   */
  checkLifetime?: boolean;
}

function fail(code: ErrorCode, message: string): never {
  throw new ClawgateError(code, message);
}

/** Runs a lookup the verdict depends on; when it fails, the token is refused (fail closed). */
async function lookup<T>(code: ErrorCode, what: string, fn: () => T | Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (error) {
    if (error instanceof ClawgateError) throw error;
    throw new ClawgateError(code, `${what}: ${error instanceof Error ? error.message : String(error)}`, {
      cause: error,
    });
  }
}

const keyCache = new WeakMap<JWK, KeyObject>();
function publicKeyOf(jwk: JWK): KeyObject {
  let key = keyCache.get(jwk);
  if (!key) {
    if (jwk.kty !== 'OKP' || jwk.crv !== 'Ed25519' || typeof jwk.x !== 'string') {
      fail(ERROR_CODES.tokenUnknownKey, `key ${String(jwk.kid)} is not an Ed25519 public key`);
    }
    try {
      key = createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: jwk.x }, format: 'jwk' });
    } catch {
      fail(ERROR_CODES.tokenUnknownKey, `key ${String(jwk.kid)} is not a usable Ed25519 public key`);
    }
    keyCache.set(jwk, key);
  }
  return key;
}

/**
 * The JWKS entry that may verify a token with this `kid`: a signing key for EdDSA, and not one
 * marked for another purpose (a receipt or policy key in a combined JWKS never verifies a token).
 */
function tokenKey(jwks: { keys: JWK[] }, kid: unknown): JWK | undefined {
  if (typeof kid !== 'string' || !Array.isArray(jwks?.keys)) return undefined;
  return jwks.keys.find(
    (k) =>
      k.kid === kid &&
      (k.alg === undefined || k.alg === 'EdDSA' || k.alg === 'Ed25519') &&
      (k.use === undefined || k.use === 'sig') &&
      ((k as { purpose?: unknown }).purpose === undefined ||
        (k as { purpose?: unknown }).purpose === 'token'),
  );
}

/**
 * Tokens whose signature and claim shape were already checked, by JWKS: a token is presented on
 * every model call of its job, and its bytes verify the same way every time under the same keys.
 * Only what cannot change is cached (signature, header, claim shape, issuer, audience); time,
 * revocation and the pinned policy are checked on every call. Bounded: the oldest go first.
 */
const verifiedTokens = new WeakMap<{ keys: JWK[] }, Map<string, { kid: string; claims: CstClaims }>>();
const VERIFIED_TOKENS_MAX = 4096;

/** The checks that depend on the token's bytes and the keys only; throws like `verifyCapabilityToken`. */
function staticallyVerified(token: unknown, jwks: { keys: JWK[] }, audience: string): CstClaims {
  const cache = typeof jwks === 'object' && jwks !== null ? verifiedTokens.get(jwks) : undefined;
  if (typeof token === 'string' && cache) {
    const hit = cache.get(token);
    // The key must still be in the set (a JWKS object changed in place loses its keys' tokens).
    if (hit && tokenKey(jwks, hit.kid) && audienceOf(hit.claims).includes(audience)) return hit.claims;
  }
  if (typeof token !== 'string' || token === '') fail(ERROR_CODES.tokenMissing, 'no capability token');
  const parts = token.split('.');
  if (parts.length !== 3 || parts.some((p) => !/^[A-Za-z0-9_-]*$/.test(p))) {
    fail(ERROR_CODES.tokenMalformed, 'not a compact JWT (three base64url parts)');
  }
  let header: ReturnType<typeof decodeProtectedHeader>;
  try {
    header = decodeProtectedHeader(token);
  } catch {
    fail(ERROR_CODES.tokenMalformed, 'the token header is not base64url JSON');
  }
  if (header.alg !== 'EdDSA') {
    fail(ERROR_CODES.tokenAlgorithmNotAllowed, `algorithm ${String(header.alg)} is not allowed; only EdDSA`);
  }
  if (header.typ !== CST_TYPE)
    fail(ERROR_CODES.tokenTypeInvalid, `token type ${String(header.typ)} is not ${CST_TYPE}`);
  if (header.crit !== undefined)
    fail(ERROR_CODES.tokenMalformed, 'critical header parameters are not supported');
  const jwk = tokenKey(jwks, header.kid);
  if (!jwk) fail(ERROR_CODES.tokenUnknownKey, `the token is signed by unknown key ${String(header.kid)}`);
  const [h, p, s] = parts as [string, string, string];
  const signature = Buffer.from(s, 'base64url');
  if (
    signature.length !== 64 ||
    signature.toString('base64url') !== s ||
    !verifySignature(null, Buffer.from(`${h}.${p}`), publicKeyOf(jwk), signature)
  ) {
    fail(ERROR_CODES.tokenSignatureInvalid, 'the token signature does not verify');
  }
  let raw: unknown;
  try {
    raw = JSON.parse(Buffer.from(p, 'base64url').toString('utf8'));
  } catch {
    fail(ERROR_CODES.tokenMalformed, 'the token payload is not JSON');
  }
  const parsed = cstClaimsSchema.safeParse(raw);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    fail(
      ERROR_CODES.tokenClaimsInvalid,
      `claim ${formatPath(issue?.path ?? [])}: ${issue?.message ?? 'invalid'}`,
    );
  }
  const claims = parsed.data;
  if (claims.iss !== CST_ISSUER)
    fail(ERROR_CODES.tokenIssuerInvalid, `issuer ${claims.iss} is not ${CST_ISSUER}`);
  const audiences = Array.isArray(claims.aud) ? claims.aud : [claims.aud];
  if (!audiences.includes(audience))
    fail(ERROR_CODES.tokenAudienceInvalid, `the token is not for audience ${audience}`);
  const frozen = deepFreeze(claims);
  if (typeof jwks === 'object' && jwks !== null) {
    let map = verifiedTokens.get(jwks);
    if (!map) {
      map = new Map();
      verifiedTokens.set(jwks, map);
    }
    if (map.size >= VERIFIED_TOKENS_MAX) map.delete(map.keys().next().value as string);
    map.set(token, { kid: header.kid as string, claims: frozen });
  }
  return frozen;
}

function audienceOf(claims: CstClaims): string[] {
  return Array.isArray(claims.aud) ? claims.aud : [claims.aud];
}

function deepFreeze<T>(value: T): T {
  if (typeof value === 'object' && value !== null && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const inner of Object.values(value)) deepFreeze(inner);
  }
  return value;
}

/** Verifies a CST; returns its claims, or throws a ClawgateError with a stable code. */
export async function verifyCapabilityToken(token: unknown, opts: VerifyOptions): Promise<CstClaims> {
  const audience = opts.audience ?? CST_AUDIENCE;
  const claims = staticallyVerified(token, opts.jwks, audience);
  const now = Math.floor((opts.now?.() ?? new Date()).getTime() / 1000);
  const tolerance = opts.clockToleranceSeconds ?? DEFAULT_CLOCK_TOLERANCE_SECONDS;
  // A verifier without a usable clock cannot tell a live token from an expired one.
  if (!Number.isFinite(now)) fail(ERROR_CODES.tokenExpired, 'the verifier has no valid clock');
  if (!Number.isFinite(tolerance) || tolerance < 0 || tolerance > MAX_CLOCK_TOLERANCE_SECONDS) {
    fail(
      ERROR_CODES.tokenExpired,
      `clock tolerance ${tolerance} s is outside 0 to ${MAX_CLOCK_TOLERANCE_SECONDS} s`,
    );
  }
  const lifetime = opts.checkLifetime ?? true;
  if (lifetime && now >= claims.exp + tolerance)
    fail(ERROR_CODES.tokenExpired, `the token expired at ${new Date(claims.exp * 1000).toISOString()}`);
  if (lifetime && now + tolerance < claims.nbf)
    fail(
      ERROR_CODES.tokenNotYetValid,
      `the token is not valid before ${new Date(claims.nbf * 1000).toISOString()}`,
    );
  if (lifetime && claims.iat > now + tolerance)
    fail(ERROR_CODES.tokenNotYetValid, 'the token was issued in the future');
  if (opts.expectedJob) {
    if (claims.job.workflow_id !== opts.expectedJob.workflowId) {
      fail(
        ERROR_CODES.tokenJobMismatch,
        `the token is for job ${claims.job.workflow_id}, not ${opts.expectedJob.workflowId}`,
      );
    }
    if (opts.expectedJob.runId !== undefined && claims.job.run_id !== opts.expectedJob.runId) {
      fail(
        ERROR_CODES.tokenJobMismatch,
        `the token is for run ${claims.job.run_id} of this job, not ${opts.expectedJob.runId}`,
      );
    }
  }
  if (opts.isRevoked) {
    const isRevoked = opts.isRevoked;
    const revoked = await lookup(ERROR_CODES.revocationCheckFailed, 'the revocation check failed', () =>
      isRevoked(claims.jti, claims.job.workflow_id),
    );
    if (revoked) {
      fail(ERROR_CODES.tokenRevoked, `token ${claims.jti} (job ${claims.job.workflow_id}) is revoked`);
    }
  }
  if (claims.wpc_hash !== undefined) {
    if (!opts.activePolicyHash)
      fail(ERROR_CODES.policyHashMismatch, 'the token is pinned to a policy and no active policy is known');
    const active = await lookup(
      ERROR_CODES.policyHashMismatch,
      'the active policy cannot be read',
      opts.activePolicyHash,
    );
    if (active !== claims.wpc_hash) {
      fail(
        ERROR_CODES.policyHashMismatch,
        `the token is pinned to policy ${claims.wpc_hash.slice(0, 12)}, the active policy is ${active ? active.slice(0, 12) : 'none'}`,
      );
    }
  }
  return claims;
}
