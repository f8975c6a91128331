// The gateway's part of the configuration: where Temporal and the policy registry are, where
// its state lives, its health endpoint, and its bot accounts (each with its own homeserver
// login, rooms and state). The one configuration file (src/config) fills it in.
import { resolve } from 'node:path';
import { z } from 'zod';
import { ClawgateError, ERROR_CODES, formatPath } from '../errors.ts';
import { JOB_TASK_QUEUE, MATRIX_TASK_QUEUE } from '../temporal/job-contract.ts';

const roomId = z.string().regex(/^![^:\s]+(:\S+)?$/, 'a Matrix room id such as !abc:example.com or !abc');
const userId = z.string().regex(/^@[^:\s]+:\S+$/, 'a Matrix user id such as @clawgate:example.com');

export const accountSchema = z
  .object({
    /** Names the account's state folder and its Matrix I/O task queue. */
    id: z.string().regex(/^[a-z][a-z0-9_-]{0,31}$/, 'lowercase letters, digits, dash, underscore'),
    homeserverUrl: z.url({ protocol: /^https?$/ }),
    userId,
    /** An access token, or a password to log in with once (the token it gives is kept). */
    accessToken: z.string().min(1).optional(),
    password: z.string().min(1).optional(),
    /** The rooms this account acts in; invites to others are not accepted. */
    rooms: z.array(roomId).min(1, 'at least one room'),
    /** Policy channel of these rooms' jobs (default: policy.channel). */
    channel: z.string().min(1).optional(),
    /**
     * End-to-end encryption (Rust crypto, loaded at runtime; its store is kept encrypted in the
     * account's state folder), on unless set to false: Matrix clients make private rooms
     * encrypted by default. Off: encrypted rooms are not read, and nothing is posted in them.
     */
    encryption: z.boolean().default(true),
    /**
     * Recovery key (as Element shows it) of the server-side key backup: with it a new device
     * of the bot restores its room keys. Keep it out of the file: CLAWGATE_ACCOUNT_<ID>_RECOVERY_KEY.
     */
    recoveryKey: z.string().min(1).optional(),
    /** Task queue of this account's Matrix I/O activities (default clawgate-matrix-<id>). */
    matrixTaskQueue: z.string().min(1).optional(),
  })
  .strict()
  .superRefine((account, ctx) => {
    if (!account.accessToken && !account.password) {
      ctx.addIssue({
        code: 'custom',
        path: ['accessToken'],
        message: 'an accessToken or a password is required',
      });
    }
  });

export const gatewayConfigSchema = z
  .object({
    /** The gateway's state folder: one sub-folder per account. */
    stateDir: z.string().min(1),
    temporal: z
      .object({
        address: z.string().min(1).default('127.0.0.1:7233'),
        namespace: z.string().min(1).default('default'),
        /** Where job workflows run (the worker's queue). */
        jobTaskQueue: z.string().min(1).default(JOB_TASK_QUEUE),
      })
      .strict()
      .prefault({}),
    policy: z
      .object({
        /** The policy registry folder the worker uses too. */
        registryDir: z.string().min(1),
        channel: z.string().min(1).default('matrix'),
      })
      .strict(),
    health: z
      .object({
        host: z.string().min(1).default('127.0.0.1'),
        port: z.number().int().min(0).max(65_535).default(8790),
      })
      .strict()
      .prefault({}),
    accounts: z.array(accountSchema).min(1, 'at least one account'),
  })
  .strict()
  .superRefine((config, ctx) => {
    const ids = new Set<string>();
    const rooms = new Map<string, string>();
    config.accounts.forEach((account, i) => {
      if (ids.has(account.id)) {
        ctx.addIssue({
          code: 'custom',
          path: ['accounts', i, 'id'],
          message: `account id ${account.id} is used twice`,
        });
      }
      ids.add(account.id);
      account.rooms.forEach((room, j) => {
        const other = rooms.get(room);
        if (other !== undefined && other !== account.id) {
          ctx.addIssue({
            code: 'custom',
            path: ['accounts', i, 'rooms', j],
            message: `room ${room} is already served by account ${other}; one account per room`,
          });
        }
        rooms.set(room, account.id);
      });
    });
  });

export type GatewayConfig = z.infer<typeof gatewayConfigSchema>;
export type GatewayConfigInput = z.input<typeof gatewayConfigSchema>;
export type AccountConfig = z.infer<typeof accountSchema>;
export type AccountConfigInput = z.input<typeof accountSchema>;

export function matrixTaskQueueOf(account: AccountConfig): string {
  return account.matrixTaskQueue ?? `${MATRIX_TASK_QUEUE}-${account.id}`;
}

/** Validates a parsed config; relative folders are resolved against `baseDir`. */
export function parseGatewayConfig(input: unknown, baseDir = process.cwd()): GatewayConfig {
  const result = gatewayConfigSchema.safeParse(input);
  if (!result.success) {
    const lines = result.error.issues.map(
      (issue) => `${formatPath(issue.path) || '(root)'}: ${issue.message}`,
    );
    throw new ClawgateError(ERROR_CODES.configInvalid, `invalid gateway config:\n  ${lines.join('\n  ')}`);
  }
  const config = result.data;
  config.stateDir = resolve(baseDir, config.stateDir);
  config.policy.registryDir = resolve(baseDir, config.policy.registryDir);
  return config;
}
