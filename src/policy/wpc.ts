// The work policy contract (WPC): what agents in a set of Matrix rooms may do, who may ask,
// who must approve, and how tokens and model calls are bound. Version 1 covers the seed's
// sketch plus what a deployment needs and the sketch lacks (requesters kept apart from
// approvers, self-approval, approval expiry, several approvers, allowed models, token
// lifetime, egress allowlist, rate limits). Every object is strict: an unknown key is an error,
// because a misspelt restriction that is silently ignored is no restriction.
import { z } from 'zod';
import { ClawgateError, ERROR_CODES, formatPath } from '../errors.ts';
import { canonicalHash, parseStrict } from './canonical.ts';
import type { PreApprovalRules } from '../temporal/job-contract.ts';

// Room version 12 ids have no server part (`!<hash of the create event>`); older ones do.
const roomId = z.string().regex(/^![^:\s]+(:\S+)?$/, 'a Matrix room id such as !abc:example.com or !abc');
const userId = z.string().regex(/^@[^:\s]+:\S+$/, 'a Matrix user id such as @alice:example.com');
const toolName = z
  .string()
  .regex(/^[a-z][a-z0-9_]{0,63}$/, 'a tool name: lowercase letters, digits, underscore');
const command = z.string().regex(/^![a-z][a-z0-9_-]{0,31}$/, 'a command such as !approve');
const host = z
  .string()
  .regex(
    /^(\*\.)?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*(:\d{1,5})?$/,
    'a lowercase host name, optionally *.-prefixed and with :port',
  );

function unique<T extends z.ZodType<string>>(item: T, what: string) {
  return z.array(item).superRefine((list, ctx) => {
    list.forEach((value, i) => {
      if (list.indexOf(value) !== i)
        ctx.addIssue({ code: 'custom', path: [i], message: `${value} is listed twice in ${what}` });
    });
  });
}

export const WPC_VERSION = '1';

export const wpcSchema = z
  .object({
    wpc_version: z.literal(WPC_VERSION),
    channel: z.literal('matrix'),
    /** A name for people; not used for enforcement. */
    description: z.string().max(500).optional(),
    matrix: z
      .object({
        rooms_allowlist: unique(roomId, 'rooms_allowlist').min(1, 'at least one room'),
        /** Who may request work. Kept apart from approvers. */
        requesters_allowlist: unique(userId, 'requesters_allowlist').min(1, 'at least one requester'),
        approval: z
          .object({
            required: z.literal(true, 'approval cannot be switched off: required must be true'),
            approver_user_ids_allowlist: unique(userId, 'approver_user_ids_allowlist').min(
              1,
              'at least one approver',
            ),
            approval_command: command.default('!approve'),
            deny_command: command.default('!deny'),
            requester_may_approve: z.boolean().default(false),
            approvals_required: z.number().int().min(1).max(10).default(1),
            /** How long a plan waits for approval before the job ends as timed out. */
            expires_after_seconds: z
              .number()
              .int()
              .min(10)
              .max(30 * 86_400)
              .default(3 * 86_400),
            /** In encrypted rooms, count approvals only from devices verified by cross-signing. */
            require_verified_device: z.boolean().default(false),
          })
          .strict(),
        limits: z
          .object({
            requests_per_requester_per_hour: z.number().int().min(1).max(1000).default(20),
            open_jobs_per_room: z.number().int().min(1).max(1000).default(20),
          })
          .strict()
          .prefault({}),
      })
      .strict(),
    execution: z
      .object({
        sandbox: z
          .object({
            /** Every tool runs in the sandbox; there is no mode without it. */
            mode: z.literal('all', 'the sandbox cannot be switched off: mode must be "all"'),
            backend: z.enum(['bubblewrap', 'docker']).default('bubblewrap'),
            workspace_access: z.enum(['none', 'ro', 'rw']),
            limits: z
              .object({
                cpu_seconds: z.number().int().min(1).max(3600).default(30),
                memory_mb: z.number().int().min(16).max(65_536).default(512),
                processes: z.number().int().min(1).max(4096).default(64),
                output_bytes: z
                  .number()
                  .int()
                  .min(1024)
                  .max(64 * 1024 * 1024)
                  .default(1024 * 1024),
                wall_seconds: z.number().int().min(1).max(3600).default(60),
              })
              .strict()
              .prefault({}),
          })
          .strict(),
        tools: z
          .object({
            allow: unique(toolName, 'tools.allow'),
            deny: unique(toolName, 'tools.deny').default([]),
            /**
             * Agent mode: when a call of a tool needs a person's approval of that exact call.
             * Absent: never for tools that only read, when_tainted for those with side effects.
             */
            approval: z.record(toolName, z.enum(['never', 'when_tainted', 'always'])).optional(),
            /** The policy's own effect class of a tool (read: no side effects; write: side effects). */
            effects: z.record(toolName, z.enum(['read', 'write'])).optional(),
            /** The effect class of an http method (default: GET and HEAD read, the others write). */
            http_effects: z
              .record(
                z.string().regex(/^[A-Z]{1,16}$/, 'an HTTP method in capitals'),
                z.enum(['read', 'write']),
              )
              .optional(),
          })
          .strict(),
        /** Hosts the http tool may reach. Private, loopback and link-local addresses need an explicit entry. */
        egress_allowlist: unique(host, 'egress_allowlist').default([]),
        /**
         * How a job works once its plan is approved: `agent`, a loop in which each tool result goes
         * back to the model, or `plan`, fixed steps with fixed arguments. Absent means `plan`: a
         * policy signed before the loop existed keeps the meaning it was signed with.
         */
        mode: z.enum(['agent', 'plan']).optional(),
        /** The agent loop's budget per job, and what the model is shown. */
        agent: z
          .object({
            /** Model turns during planning (looking with read-only tools, then the plan). */
            planning_turns: z.number().int().min(1).max(20).default(4),
            /** Model turns after approval. The proxy enforces it too, from the job's receipts. */
            // At most 400: a turn's evidence (receipt, turn, tool record, about 3 KB) is carried in the
            // history until the bundle is sealed, and a payload may be 2 MB.
            model_turns: z.number().int().min(1).max(400).default(20),
            tool_calls: z.number().int().min(0).max(2000).default(40),
            /** Total tokens over the job's model calls, from the receipts' usage. */
            model_tokens: z.number().int().min(1000).max(100_000_000).default(200_000),
            wall_seconds: z
              .number()
              .int()
              .min(10)
              .max(7 * 86_400)
              .default(1800),
            /** The most of one tool result the model is sent (the whole output is kept as evidence). */
            tool_result_bytes: z
              .number()
              .int()
              .min(256)
              .max(1024 * 1024)
              .default(16 * 1024),
            /** How long an approval card waits before the call counts as denied (default 3600 s). */
            call_approval_seconds: z
              .number()
              .int()
              .min(10)
              .max(7 * 86_400)
              .optional(),
          })
          .strict()
          .optional(),
      })
      .strict(),
    tokens: z
      .object({
        cst: z
          .object({
            job_scoped: z.literal(true, 'tokens are always job scoped: job_scoped must be true'),
            pin_policy_hash: z.boolean().default(true),
            ttl_seconds: z.number().int().min(30).max(3600).default(900),
          })
          .strict(),
      })
      .strict(),
    /**
     * Scheduled jobs (`clawgate schedule`). Absent means what it meant before schedules existed:
     * a scheduled job's plan waits for an approval in the room like any other. Kept optional with
     * no default, so a policy signed before this rule keeps its hash.
     */
    schedules: z
      .object({
        /**
         * Whether a schedule's plans may be approved in advance, at the schedule's creation, by one
         * of `approvers` (each of whom must also be a plan approver). Not allowed unless said.
         */
        pre_approval: z
          .object({
            allowed: z.boolean(),
            approvers: unique(userId, 'schedules.pre_approval.approvers').default([]),
          })
          .strict(),
      })
      .strict()
      .optional(),
    model_access: z
      .object({
        route_via: z.enum(['clawgate-proxy', 'clawproxy'], 'model calls go through the receipting proxy'),
        receipts: z.literal('required', 'receipts cannot be switched off: receipts must be "required"'),
        allowed_models: unique(z.string().min(1).max(200), 'allowed_models').min(1, 'at least one model'),
      })
      .strict(),
  })
  .strict()
  .superRefine((wpc, ctx) => {
    const approval = wpc.matrix.approval;
    const possible = approval.approver_user_ids_allowlist.length;
    if (approval.approvals_required > possible) {
      ctx.addIssue({
        code: 'custom',
        path: ['matrix', 'approval', 'approvals_required'],
        message: `${approval.approvals_required} approvals required but only ${possible} approver(s) listed`,
      });
    }
    const pre = wpc.schedules?.pre_approval;
    if (pre?.allowed && pre.approvers.length === 0) {
      ctx.addIssue({
        code: 'custom',
        path: ['schedules', 'pre_approval', 'approvers'],
        message: 'pre-approval is allowed but no one may give it: list at least one approver',
      });
    }
    pre?.approvers.forEach((approver, i) => {
      if (!approval.approver_user_ids_allowlist.includes(approver)) {
        ctx.addIssue({
          code: 'custom',
          path: ['schedules', 'pre_approval', 'approvers', i],
          message: `${approver} is not in matrix.approval.approver_user_ids_allowlist`,
        });
      }
    });
    if (approval.approval_command === approval.deny_command) {
      ctx.addIssue({
        code: 'custom',
        path: ['matrix', 'approval', 'deny_command'],
        message: 'must differ from approval_command',
      });
    }
  });

export type Wpc = z.infer<typeof wpcSchema>;
export type WpcInput = z.input<typeof wpcSchema>;

/** Validates a parsed WPC; the error lists every problem with its exact path. */
export function parseWpc(value: unknown): Wpc {
  const result = wpcSchema.safeParse(value);
  if (!result.success) {
    const lines = result.error.issues.map((issue) => {
      const message =
        issue.message.startsWith('Invalid input: expected') && issue.message.endsWith('received undefined')
          ? `required, ${issue.message.slice('Invalid input: '.length).replace(', received undefined', '')}`
          : issue.message;
      return `${formatPath(issue.path) || '(root)'}: ${message}`;
    });
    throw new ClawgateError(ERROR_CODES.policyInvalid, `invalid policy:\n  ${lines.join('\n  ')}`);
  }
  return result.data;
}

/** Reads, validates and hashes a WPC from text (JSON or YAML). */
export function loadWpc(text: string): { wpc: Wpc; hash: string } {
  const wpc = parseWpc(parseStrict(text, 'policy'));
  return { wpc, hash: wpcHash(wpc) };
}

/**
 * The WPC hash: SHA-256 of the RFC 8785 bytes of the validated policy, defaults filled in, so
 * a document that spells a default out and one that leaves it implicit are the same policy.
 */
export function wpcHash(wpc: Wpc): string {
  return canonicalHash(wpc);
}

/** The part of a WPC a schedule's pre-approval is checked against (see preApprovalRefusal). */
export function preApprovalRules(wpc: Wpc): PreApprovalRules {
  return {
    approvers: wpc.matrix.approval.approver_user_ids_allowlist,
    requesterMayApprove: wpc.matrix.approval.requester_may_approve,
    ...(wpc.schedules ? { preApproval: wpc.schedules.pre_approval } : {}),
  };
}
