// clawgate's own errors. Each has a stable `code` that callers, tests and refusal evidence
// switch on, and a message a person can act on. Anything else thrown out of clawgate's
// parsing and verification code is a bug.

export const ERROR_CODES = {
  // Command line and files
  usage: 'USAGE',
  fileUnreadable: 'FILE_UNREADABLE',
  // Input documents
  jsonInvalid: 'JSON_INVALID',
  jsonDuplicateKey: 'JSON_DUPLICATE_KEY',
  jsonNotCanonicalizable: 'JSON_NOT_CANONICALIZABLE',
  policyInvalid: 'POLICY_INVALID',
  // Policy signing and registry
  policySignatureInvalid: 'POLICY_SIGNATURE_INVALID',
  policySignerNotAllowed: 'POLICY_SIGNER_NOT_ALLOWED',
  policyNotRegistered: 'POLICY_NOT_REGISTERED',
  policyNoActive: 'POLICY_NO_ACTIVE',
  policyChannelMismatch: 'POLICY_CHANNEL_MISMATCH',
  registryCorrupt: 'REGISTRY_CORRUPT',
  policyHashInvalid: 'POLICY_HASH_INVALID',
  // Keys
  keyInvalid: 'KEY_INVALID',
  keyNotFound: 'KEY_NOT_FOUND',
  keyFileMode: 'KEY_FILE_MODE',
  // Temporal payload encryption
  payloadKeyUnknown: 'PAYLOAD_KEY_UNKNOWN',
  payloadUndecryptable: 'PAYLOAD_UNDECRYPTABLE',
  // Tokens
  tokenRequestInvalid: 'TOKEN_REQUEST_INVALID',
  tokenMissing: 'TOKEN_MISSING',
  tokenMalformed: 'TOKEN_MALFORMED',
  tokenAlgorithmNotAllowed: 'TOKEN_ALGORITHM_NOT_ALLOWED',
  tokenTypeInvalid: 'TOKEN_TYPE_INVALID',
  tokenUnknownKey: 'TOKEN_UNKNOWN_KEY',
  tokenSignatureInvalid: 'TOKEN_SIGNATURE_INVALID',
  tokenExpired: 'TOKEN_EXPIRED',
  tokenNotYetValid: 'TOKEN_NOT_YET_VALID',
  tokenAudienceInvalid: 'TOKEN_AUDIENCE_INVALID',
  tokenIssuerInvalid: 'TOKEN_ISSUER_INVALID',
  tokenClaimsInvalid: 'TOKEN_CLAIMS_INVALID',
  tokenRevoked: 'TOKEN_REVOKED',
  tokenJobMismatch: 'TOKEN_JOB_MISMATCH',
  tokenRoomNotAllowed: 'TOKEN_ROOM_NOT_ALLOWED',
  tokenNotPinned: 'TOKEN_NOT_PINNED',
  policyHashMismatch: 'POLICY_HASH_MISMATCH',
  // Revocations
  revocationInvalid: 'REVOCATION_INVALID',
  revocationsCorrupt: 'REVOCATIONS_CORRUPT',
  revocationCheckFailed: 'REVOCATION_CHECK_FAILED',
  // Authorization
  toolDeniedByPolicy: 'TOOL_DENIED_BY_POLICY',
  toolNotAllowedByPolicy: 'TOOL_NOT_ALLOWED_BY_POLICY',
  toolNotInTokenScope: 'TOOL_NOT_IN_TOKEN_SCOPE',
  modelNotAllowedByPolicy: 'MODEL_NOT_ALLOWED_BY_POLICY',
  modelNotInTokenScope: 'MODEL_NOT_IN_TOKEN_SCOPE',
  planningTokenForTool: 'PLANNING_TOKEN_CANNOT_RUN_TOOLS',
  // Sandbox and tools
  sandboxLimitsUnavailable: 'SANDBOX_LIMITS_UNAVAILABLE',
  toolArgumentsInvalid: 'TOOL_ARGUMENTS_INVALID',
  toolUnknown: 'TOOL_UNKNOWN',
  egressDenied: 'EGRESS_DENIED',
  // Job workspaces
  workspaceSourceInvalid: 'WORKSPACE_SOURCE_INVALID',
  workspaceRefNotFound: 'WORKSPACE_REF_NOT_FOUND',
  workspaceCloneFailed: 'WORKSPACE_CLONE_FAILED',
  // The agent loop
  toolNotOffered: 'TOOL_NOT_OFFERED',
  toolCallInterrupted: 'TOOL_CALL_INTERRUPTED',
  toolCallBudgetExhausted: 'TOOL_CALL_BUDGET_EXHAUSTED',
  callApprovalRequired: 'CALL_APPROVAL_REQUIRED',
  callDenied: 'CALL_DENIED',
  callExpired: 'CALL_APPROVAL_EXPIRED',
  // Gateway
  configInvalid: 'CONFIG_INVALID',
  portInUse: 'PORT_IN_USE',
  stateLocked: 'STATE_LOCKED',
  stateCorrupt: 'STATE_CORRUPT',
  auditFailed: 'AUDIT_FAILED',
  // The stack `clawgate start` supervises
  partFailed: 'PART_FAILED',
  partDown: 'PART_DOWN',
  // Evidence
  receiptNotFound: 'RECEIPT_NOT_FOUND',
  bundleInvalid: 'BUNDLE_INVALID',
} as const;

export type ErrorCode = (typeof ERROR_CODES)[keyof typeof ERROR_CODES];

export class ClawgateError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = 'ClawgateError';
  }
}

/** `execution.tools.allow[2]`: how clawgate names a place in a document. */
export function formatPath(path: ReadonlyArray<PropertyKey>): string {
  return path.reduce<string>((out, part) => {
    if (typeof part === 'number') return `${out}[${part}]`;
    return out === '' ? String(part) : `${out}.${String(part)}`;
  }, '');
}
