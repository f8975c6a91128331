// How the proxy verifies a bearer capability token: the CST code of src/tokens (signature,
// claims, expiry, revocation, the pinned policy hash against the active one), then the job's
// policy, whose allowed models narrow the token's scope.
import { ClawgateError, ERROR_CODES, type ErrorCode } from '../errors.ts';
import type { FilePolicyRegistry } from '../policy/registry.ts';
import type { Wpc } from '../policy/wpc.ts';
import { verifyCapabilityToken, type VerifyOptions } from '../tokens/cst.ts';
import { freshRevocationCheck, type RevocationStore } from '../tokens/revocations.ts';
import type { TokenCheck, VerifyCallToken } from './server.ts';

/** Where the proxy reads policies: the active hash of its channel and documents by hash. */
export interface PolicySource {
  activeHash(): string | null;
  policy(hash: string): Wpc;
}

/** Reads registered policies by hash (the registry parses each once and checks its hash). */
export function registryPolicyReader(registry: FilePolicyRegistry): (hash: string) => Wpc {
  return (hash) => registry.policy(hash);
}

/** A policy source over the registry: the channel's active hash and documents by hash. */
export function registryPolicySource(registry: FilePolicyRegistry, channel: string): PolicySource {
  return { activeHash: () => registry.activeHash(channel), policy: registryPolicyReader(registry) };
}

const FORBIDDEN: ReadonlySet<ErrorCode> = new Set([
  ERROR_CODES.policyHashMismatch,
  ERROR_CODES.tokenJobMismatch,
  ERROR_CODES.tokenRevoked,
]);

export function cstVerifier(deps: {
  jwks: VerifyOptions['jwks'];
  revocations: RevocationStore;
  policies: PolicySource;
  now?: () => Date;
  /** Why revocations cannot be trusted now (a stale mirror of the shared state), or null. */
  stale?: () => string | null;
}): VerifyCallToken {
  const isRevoked = freshRevocationCheck(deps.revocations, deps.stale);
  return async (token, use = 'call') => {
    try {
      // The active policy is read once per call: the pin check and the model list agree on it.
      let active: string | null | undefined;
      const activeHash = (): string | null =>
        active === undefined ? (active = deps.policies.activeHash()) : active;
      const claims = await verifyCapabilityToken(token, {
        jwks: deps.jwks,
        ...(deps.now ? { now: deps.now } : {}),
        ...(use === 'read' ? { checkLifetime: false } : {}),
        isRevoked,
        activePolicyHash: activeHash,
      });
      // The job's policy: the pinned one, else the active one of the channel.
      const hash = claims.wpc_hash ?? activeHash();
      if (!hash) {
        return {
          ok: false,
          code: ERROR_CODES.policyHashMismatch,
          reason: 'no active policy: nothing may run',
          status: 403,
        };
      }
      const allowed = deps.policies.policy(hash).model_access.allowed_models;
      const check: TokenCheck = {
        ok: true,
        grant: {
          workflowId: claims.job.workflow_id,
          runId: claims.job.run_id,
          tokenId: claims.jti,
          policyHash: claims.wpc_hash ?? null,
          models: claims.scope.models.filter((m) => allowed.includes(m)),
          ...(claims.budget ? { modelCallBudget: claims.budget.model_calls } : {}),
        },
      };
      return check;
    } catch (error) {
      if (error instanceof ClawgateError) {
        return {
          ok: false,
          code: error.code,
          reason: error.message,
          // A revocation check that could not be made (the shared control state unread too
          // long) is no verdict on the token: 503, try again (the caller waits and asks again).
          status: FORBIDDEN.has(error.code)
            ? 403
            : error.code === ERROR_CODES.revocationCheckFailed
              ? 503
              : 401,
        };
      }
      throw error;
    }
  };
}
