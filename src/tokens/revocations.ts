// Token revocations: of one token (by jti) or of every token of a job. Durable across restarts
// and shared between processes: an append-only log (src/storage/append-log.ts), each record
// fsync'ed before `revoke*` returns, read back on open, and re-read by every lookup when another
// process (`clawgate revoke`) has appended since. A damaged log makes every lookup fail, which
// refuses every token: fail closed. Behind an interface so the control workflow (shared control
// state) can hold the same thing.
import { z } from 'zod';
import { ClawgateError, ERROR_CODES } from '../errors.ts';
import { AppendLog } from '../storage/append-log.ts';

export interface RevocationStore {
  /** True when the token, or any token of its job, is revoked. Throws (fail closed) when unsure. */
  isRevoked(jti: string, workflowId: string): boolean;
  revokeToken(jti: string, reason: string, by?: string): void;
  revokeJob(workflowId: string, reason: string, by?: string): void;
  list(): RevocationRecord[];
}

const idSchema = z.string().min(1).max(512);

export const revocationRecordSchema = z
  .object({
    kind: z.enum(['token', 'job']),
    id: idSchema,
    reason: z.string().min(1).max(2000),
    at: z.iso.datetime(),
    by: z.string().min(1).max(500).optional(),
  })
  .strict();
export type RevocationRecord = z.infer<typeof revocationRecordSchema>;

export class FileRevocationStore implements RevocationStore {
  private readonly tokens = new Set<string>();
  private readonly jobs = new Set<string>();
  private readonly log: AppendLog<RevocationRecord>;
  private readonly now: () => Date;
  private indexed = 0;

  constructor(path: string, now: () => Date = () => new Date()) {
    this.now = now;
    this.log = new AppendLog(path, {
      what: 'revocation log',
      schema: revocationRecordSchema,
      corruptCode: ERROR_CODES.revocationsCorrupt,
    });
    this.sync();
  }

  get path(): string {
    return this.log.path;
  }

  /** Indexes what this or another process appended since the last look. */
  private sync(): void {
    const all = this.log.records();
    for (; this.indexed < all.length; this.indexed++) {
      const record = all[this.indexed] as RevocationRecord;
      (record.kind === 'token' ? this.tokens : this.jobs).add(record.id);
    }
  }

  isRevoked(jti: string, workflowId: string): boolean {
    this.sync();
    return this.tokens.has(jti) || this.jobs.has(workflowId);
  }

  private revoke(kind: 'token' | 'job', id: string, reason: string, by?: string): void {
    const record = revocationRecordSchema.safeParse({
      kind,
      id,
      reason,
      at: this.now().toISOString(),
      ...(by === undefined ? {} : { by }),
    });
    if (!record.success) {
      const issue = record.error.issues[0];
      const field = issue?.path[0] === 'id' ? `${kind} id` : String(issue?.path[0] ?? 'revocation');
      throw new ClawgateError(
        ERROR_CODES.revocationInvalid,
        `cannot revoke: ${field}: ${issue?.message ?? 'invalid'}`,
      );
    }
    this.log.append(record.data);
    this.sync();
  }

  revokeToken(jti: string, reason: string, by?: string): void {
    this.revoke('token', jti, reason, by);
  }

  revokeJob(workflowId: string, reason: string, by?: string): void {
    this.revoke('job', workflowId, reason, by);
  }

  list(): RevocationRecord[] {
    return [...this.log.records()];
  }
}

/**
 * A revocation check that refuses while `stale` gives a reason (a mirror of the control state
 * shared between machines that has not been read for too long: src/control/mirror.ts), then
 * asks the store. For token checks; revoking goes to the store directly.
 */
export function freshRevocationCheck(
  revocations: Pick<RevocationStore, 'isRevoked'>,
  stale: (() => string | null) | undefined,
): (jti: string, workflowId: string) => boolean {
  return (jti, workflowId) => {
    const reason = stale?.();
    if (reason) throw new Error(reason);
    return revocations.isRevoked(jti, workflowId);
  };
}
