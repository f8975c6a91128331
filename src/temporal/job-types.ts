// Data the job workflow and its activities exchange. Types only, so workflow code can import
// them; validation happens in the activities.

export interface JobRef {
  workflowId: string;
  runId: string;
}

/**
 * One step of an approved plan: a tool and its exact arguments, or a model call
 * (`tool: "model"`, `args: { model, prompt }`) through the proxy with the execution token.
 */
export interface PlanStep {
  tool: string;
  args: Record<string, unknown>;
}

export interface Plan {
  summary: string;
  steps: PlanStep[];
}

export interface PinnedPolicy {
  hash: string;
  /** The signed policy as registered (compact JWS), for the bundle. */
  jws: string;
  document: unknown;
  rules: {
    roomsAllowlist: string[];
    requestersAllowlist: string[];
    approvers: string[];
    requesterMayApprove: boolean;
    approvalsRequired: number;
    approvalExpirySeconds: number;
    requireVerifiedDevice: boolean;
    pinPolicyHash: boolean;
    tokenTtlSeconds: number;
    /** The sandbox's wall-clock limit for one step. */
    stepWallSeconds?: number;
    allowedModels: string[];
    allowedTools: string[];
    deniedTools: string[];
  };
}

export type PlanDraft =
  | { ok: true; plan: Plan; planHash: string; planningToken: string; receipts: string[] }
  | { ok: false; reason: string; planningToken: string; receipts: string[] };

export interface StepResult {
  record: Record<string, unknown>;
  /** The step's output, shortened for the room (the full output's hash is in the record). */
  excerpt: string;
  ok: boolean;
  /** Receipts of model calls the step made (a `model` step), as the proxy signed them. */
  receipts?: string[];
}

export interface ControlState {
  readOnly: boolean;
  approvalsFrozen: boolean;
}

export interface BundleEntryInput {
  type:
    | 'job'
    | 'request'
    | 'policy'
    | 'plan'
    | 'approval_attempt'
    | 'cancel_request'
    | 'token'
    | 'tool_record'
    | 'model_receipt'
    | 'outcome';
  body: unknown;
}

export interface PostedMessage {
  eventId: string;
  originServerTs: number;
}
