// Token revocations: of one token (by jti) or of every token of a job. Durable across
// restarts: an append-only log, each line fsync'ed before `revoke` returns, read back on open.
// Behind an interface so the control workflow (shared control state) can hold the same thing.
import { appendFileSync, closeSync, existsSync, fsyncSync, mkdirSync, openSync, readFileSync } from 'node:fs';
import { dirname } from 'node:path';

export interface RevocationStore {
  isRevoked(jti: string, workflowId: string): boolean;
  revokeToken(jti: string, reason: string): void;
  revokeJob(workflowId: string, reason: string): void;
  list(): RevocationRecord[];
}

export interface RevocationRecord {
  kind: 'token' | 'job';
  id: string;
  reason: string;
  at: string;
}

export class FileRevocationStore implements RevocationStore {
  private readonly tokens = new Set<string>();
  private readonly jobs = new Set<string>();
  private readonly records: RevocationRecord[] = [];
  private readonly path: string;
  private readonly now: () => Date;

  constructor(path: string, now: () => Date = () => new Date()) {
    this.path = path;
    this.now = now;
    mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
    if (existsSync(path)) {
      for (const line of readFileSync(path, 'utf8').split('\n')) {
        if (line.trim() === '') continue;
        try {
          this.index(JSON.parse(line) as RevocationRecord);
        } catch {
          // A torn last line from a crash mid-append: its revoke() never returned.
        }
      }
    }
  }

  private index(record: RevocationRecord): void {
    (record.kind === 'token' ? this.tokens : this.jobs).add(record.id);
    this.records.push(record);
  }

  private append(record: RevocationRecord): void {
    appendFileSync(this.path, `${JSON.stringify(record)}\n`, { mode: 0o600 });
    const fd = openSync(this.path, 'r');
    fsyncSync(fd);
    closeSync(fd);
    this.index(record);
  }

  isRevoked(jti: string, workflowId: string): boolean {
    return this.tokens.has(jti) || this.jobs.has(workflowId);
  }

  revokeToken(jti: string, reason: string): void {
    this.append({ kind: 'token', id: jti, reason, at: this.now().toISOString() });
  }

  revokeJob(workflowId: string, reason: string): void {
    this.append({ kind: 'job', id: workflowId, reason, at: this.now().toISOString() });
  }

  list(): RevocationRecord[] {
    return [...this.records];
  }
}
