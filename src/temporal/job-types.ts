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

/** The agent loop's limits per job (the policy's execution.agent), as the plan shows them. */
export interface AgentBudget {
  model_turns: number;
  tool_calls: number;
  model_tokens: number;
  wall_seconds: number;
}

/**
 * What the approver approves in agent mode: a goal, the intended steps in words, the tools the
 * agent may use (no more than the policy offers), and the budget.
 */
export interface AgentPlan {
  mode: 'agent';
  goal: string;
  steps: string[];
  tools: string[];
  budget: AgentBudget;
}

/** A tool call a model turn asked for, as the workflow keeps it (its arguments stay in the store). */
export interface ToolCallRef {
  id: string;
  name: string;
  argsSha256: string;
  /** The arguments as JSON, cut short, for the room and `clawgate jobs show`. */
  argsShort: string;
  /** From the pinned policy (agent mode): side effects or not, and when it needs an approval. */
  effect?: 'read' | 'write';
  gate?: 'never' | 'when_tainted' | 'always';
  /** SHA-256 of the arguments' shape (their structure, leaves by type): "allow for this job". */
  shapeSha256?: string;
  /** The arguments as the model sent them, up to 4,000 characters: what an approval card shows. */
  argsPreview?: string;
}

export interface ModelTurnResult {
  /** The proxy answered 200 with a usable completion. */
  ok: boolean;
  httpStatus: number;
  /** The proxy's or upstream's error code and message when not ok. */
  error: { code: string; message: string } | null;
  /** Receipts of the job the workflow did not have yet, in chain order (this turn's among them). */
  receipts: Array<{ id: string; jws: string }>;
  /** The `model_turn` bundle entry's body. */
  entry: Record<string, unknown>;
  /** The assistant message in the evidence store, for the next turn's conversation. */
  assistantRef: string | null;
  toolCalls: ToolCallRef[];
  /** The final answer when the turn asked for no tools. */
  answer: { text: string; sha256: string; bytes: number; truncated: boolean } | null;
  usage: { prompt_tokens: number; completion_tokens: number; total_tokens: number } | null;
  /** When the turn ended (ms since the epoch): the workflow's clock for its time budget. */
  at: number;
  /** What the model said beside its tool calls (its stated reason), cut to 1,000 characters. */
  said?: string | null;
}

export interface ToolCallResult {
  /** The `tool_record` bundle entry's body (with phase, turn and call id). */
  record: Record<string, unknown>;
  /** The tool message in the evidence store, for the next turn's conversation. */
  messageRef: string;
  /** One line for the room: what happened. */
  outcome: string;
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
    /** `agent` or `plan` (fixed steps); absent in jobs pinned before the agent loop (plan). */
    mode?: 'agent' | 'plan';
    /** The policy's schedules.pre_approval; absent when it has no schedules rule. */
    preApproval?: { allowed: boolean; approvers: string[] };
    /** The agent loop's budget and tool-result cap (agent mode). */
    agent?: AgentBudget & {
      planning_turns: number;
      tool_result_bytes: number;
      call_approval_seconds?: number;
    };
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
    | 'pre_approval'
    | 'cancel_request'
    | 'token'
    | 'tool_record'
    | 'model_receipt'
    | 'model_turn'
    | 'taint'
    | 'call_card'
    | 'call_decision'
    | 'card_outcome'
    | 'budget'
    | 'answer'
    | 'workspace'
    | 'outcome';
  body: unknown;
}

export interface PostedMessage {
  eventId: string;
  originServerTs: number;
}

/**
 * A job's decision on an approval attempt, handed to the reaction that answers it (for the
 * gateway's metrics): a plan approval or a card's answer, accepted or refused with its code.
 */
export interface ApprovalVerdict {
  subject: 'plan' | 'call';
  accepted: boolean;
  code: string | null;
}
