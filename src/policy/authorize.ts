// The one function that decides whether a tool call or a model call may happen: the policy
// and the (already verified) token must both allow it. Deny wins over allow; no token, no call.
// Pure: no I/O and no clock, so it runs the same in an activity, the tool layer and the proxy.
// `authorizeWithToken` is the whole check from a bearer token: verification (signature,
// expiry, revocation, pinning), then authorize, every refusal a decision with its code.
import { ClawgateError, ERROR_CODES, type ErrorCode } from '../errors.ts';
import { verifyCapabilityToken, type CstClaims, type VerifyOptions } from '../tokens/cst.ts';
import { PLANNING_TOOLS } from '../tools/kinds.ts';
import { wpcHash, type Wpc } from './wpc.ts';

export type Call =
  { kind: 'tool'; tool: string; workflowId: string } | { kind: 'model'; model: string; workflowId: string };

export type Authorization = { allow: true } | { allow: false; code: ErrorCode; reason: string };

const deny = (code: ErrorCode, reason: string): Authorization => ({ allow: false, code, reason });

// A policy object is judged by its hash many times per job; hash it once.
const hashes = new WeakMap<Wpc, string>();
function hashOf(policy: Wpc): string {
  let hash = hashes.get(policy);
  if (hash === undefined) {
    hash = wpcHash(policy);
    hashes.set(policy, hash);
  }
  return hash;
}

/**
 * `token` must come from verifyCapabilityToken (signature, expiry, revocation and drift of the
 * pinned hash from the active policy are checked there); `policy` is the job's pinned WPC.
 * The checks, in order: a token; the token's job is the call's job; the token is bound to this
 * policy (pinned to its hash, when it is pinned or the policy asks for pinning); the token's
 * room is one of the policy's rooms; then for a tool, the deny list, the allow list, an
 * execution token, the token's scope; for a model, the policy's models, the token's scope.
 */
export function authorize(call: Call, policy: Wpc, token: CstClaims | null | undefined): Authorization {
  if (!token) return deny(ERROR_CODES.tokenMissing, 'no capability token: nothing runs without one');
  if (token.job.workflow_id !== call.workflowId) {
    return deny(
      ERROR_CODES.tokenJobMismatch,
      `the token is for job ${token.job.workflow_id}, not ${call.workflowId}`,
    );
  }
  if (token.wpc_hash !== undefined) {
    const hash = hashOf(policy);
    if (token.wpc_hash !== hash) {
      return deny(
        ERROR_CODES.policyHashMismatch,
        `the token is pinned to policy ${token.wpc_hash.slice(0, 12)}, the call is judged by policy ${hash.slice(0, 12)}`,
      );
    }
  } else if (policy.tokens.cst.pin_policy_hash) {
    return deny(
      ERROR_CODES.tokenNotPinned,
      'the policy requires tokens pinned to its hash (tokens.cst.pin_policy_hash), and this token is not',
    );
  }
  if (!policy.matrix.rooms_allowlist.includes(token.room_id)) {
    return deny(
      ERROR_CODES.tokenRoomNotAllowed,
      `the token is for room ${token.room_id}, which the policy does not list (matrix.rooms_allowlist)`,
    );
  }
  if (call.kind === 'tool') {
    const tools = policy.execution.tools;
    if (tools.deny.includes(call.tool)) {
      return deny(ERROR_CODES.toolDeniedByPolicy, `tool ${call.tool} is on the policy's deny list`);
    }
    if (!tools.allow.includes(call.tool)) {
      return deny(ERROR_CODES.toolNotAllowedByPolicy, `tool ${call.tool} is not on the policy's allow list`);
    }
    if (token.purpose === 'planning' && !PLANNING_TOOLS.includes(call.tool)) {
      return deny(
        ERROR_CODES.planningTokenForTool,
        `a planning token runs only the read-only tools (${PLANNING_TOOLS.join(', ')}); ${call.tool} waits for the plan's approval`,
      );
    }
    if (!token.scope.tools.includes(call.tool)) {
      return deny(
        ERROR_CODES.toolNotInTokenScope,
        token.purpose === 'execution'
          ? `tool ${call.tool} is not in this token's scope (the approved plan)`
          : `tool ${call.tool} is not in this planning token's scope`,
      );
    }
    return { allow: true };
  }
  if (!policy.model_access.allowed_models.includes(call.model)) {
    return deny(ERROR_CODES.modelNotAllowedByPolicy, `model ${call.model} is not allowed by the policy`);
  }
  if (!token.scope.models.includes(call.model)) {
    return deny(ERROR_CODES.modelNotInTokenScope, `model ${call.model} is not in this token's scope`);
  }
  return { allow: true };
}

/**
 * The whole decision from a bearer token: verifies it (with the call's job as the expected
 * job), then authorizes the call against the policy. Never throws for a bad token or a failed
 * lookup: every refusal comes back as a decision with its code (`TOKEN_EXPIRED`,
 * `POLICY_HASH_MISMATCH`, `TOKEN_REVOKED`, ...), ready to be recorded as evidence.
 */
export async function authorizeWithToken(
  call: Call,
  policy: Wpc,
  token: unknown,
  verify: Omit<VerifyOptions, 'expectedJob'> & { expectedRunId?: string },
): Promise<Authorization> {
  let claims: CstClaims;
  try {
    const { expectedRunId, ...options } = verify;
    claims = await verifyCapabilityToken(token, {
      ...options,
      expectedJob: {
        workflowId: call.workflowId,
        ...(expectedRunId === undefined ? {} : { runId: expectedRunId }),
      },
    });
  } catch (error) {
    if (error instanceof ClawgateError) return deny(error.code, error.message);
    return deny(
      ERROR_CODES.tokenMalformed,
      `the token could not be checked: ${error instanceof Error ? error.message : String(error)}`,
    );
  }
  return authorize(call, policy, claims);
}
