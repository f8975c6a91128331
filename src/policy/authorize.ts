// The one function that decides whether a tool call or a model call may happen: the policy
// and the (already verified) token must both allow it. Deny wins over allow; no token, no call.
import { ERROR_CODES, type ErrorCode } from '../errors.ts';
import type { CstClaims } from '../tokens/cst.ts';
import type { Wpc } from './wpc.ts';

export type Call =
  { kind: 'tool'; tool: string; workflowId: string } | { kind: 'model'; model: string; workflowId: string };

export type Authorization = { allow: true } | { allow: false; code: ErrorCode; reason: string };

const deny = (code: ErrorCode, reason: string): Authorization => ({ allow: false, code, reason });

/**
 * `token` must come from verifyCapabilityToken (signature, expiry, revocation and pinning are
 * checked there); `policy` is the job's pinned WPC.
 */
export function authorize(call: Call, policy: Wpc, token: CstClaims | null | undefined): Authorization {
  if (!token) return deny(ERROR_CODES.tokenMissing, 'no capability token: nothing runs without one');
  if (token.job.workflow_id !== call.workflowId) {
    return deny(
      ERROR_CODES.tokenJobMismatch,
      `the token is for job ${token.job.workflow_id}, not ${call.workflowId}`,
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
    if (token.purpose !== 'execution') {
      return deny(
        ERROR_CODES.planningTokenForTool,
        'a planning token cannot run tools; the plan must be approved first',
      );
    }
    if (!token.scope.tools.includes(call.tool)) {
      return deny(
        ERROR_CODES.toolNotInTokenScope,
        `tool ${call.tool} is not in this token's scope (the approved plan)`,
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
