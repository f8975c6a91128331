// One bot account's state folder (0700): its credentials (the access token and device id a
// password login gave, so a restart keeps the device and with it the homeserver's transaction
// id deduplication), its sync position, and a lock so that one process at a time owns it.
// Every file is 0600 and replaced atomically.
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { z } from 'zod';
import { ClawgateError, ERROR_CODES } from '../errors.ts';
import { takePidLock } from '../storage/pid-lock.ts';
import { ensurePrivateDir, writeFileAtomic } from '../storage/files.ts';

const credentialsSchema = z
  .object({
    homeserverUrl: z.string().min(1),
    userId: z.string().min(1),
    deviceId: z.string().min(1),
    accessToken: z.string().min(1),
  })
  .strict();
export type Credentials = z.infer<typeof credentialsSchema>;

const syncSchema = z
  .object({
    /** The sync token after the last batch whose every event was handled. */
    nextBatch: z.string().min(1),
    savedAt: z.string(),
  })
  .strict();

export class AccountState {
  readonly dir: string;
  private readonly accountId: string;
  private locked = false;

  constructor(stateDir: string, accountId: string) {
    this.accountId = accountId;
    this.dir = join(stateDir, 'accounts', accountId);
    ensurePrivateDir(this.dir);
  }

  private get lockPath(): string {
    return join(this.dir, 'lock');
  }

  /**
   * Takes the folder for this process. A lock left by a process that no longer runs (after a
   * kill -9) is taken over; one held by a live process is refused with a message.
   */
  lock(): void {
    takePidLock(
      this.lockPath,
      (pid) =>
        `account ${this.accountId}: its state folder ${this.dir} is in use by process ${pid}; ` +
        `stop that process first (if it is not a clawgate gateway, remove ${this.lockPath})`,
    );
    this.locked = true;
  }

  unlock(): void {
    if (!this.locked) return;
    this.locked = false;
    rmSync(this.lockPath, { force: true });
  }

  private read<T>(name: string, schema: z.ZodType<T>): T | null {
    const path = join(this.dir, name);
    if (!existsSync(path)) return null;
    let parsed: unknown;
    try {
      parsed = JSON.parse(readFileSync(path, 'utf8'));
    } catch (error) {
      throw new ClawgateError(
        ERROR_CODES.stateCorrupt,
        `account ${this.accountId}: ${path} is not valid JSON (${(error as Error).message}); ` +
          `remove it to start that part of the state afresh`,
      );
    }
    const result = schema.safeParse(parsed);
    if (!result.success) {
      throw new ClawgateError(
        ERROR_CODES.stateCorrupt,
        `account ${this.accountId}: ${path} is not what clawgate wrote ` +
          `(${result.error.issues[0]?.message ?? 'invalid'}); remove it to start that part of the state afresh`,
      );
    }
    return result.data;
  }

  credentials(): Credentials | null {
    return this.read('credentials.json', credentialsSchema);
  }

  saveCredentials(credentials: Credentials): void {
    writeFileAtomic(join(this.dir, 'credentials.json'), `${JSON.stringify(credentials, null, 2)}\n`);
  }

  syncToken(): string | null {
    return this.read('sync.json', syncSchema)?.nextBatch ?? null;
  }

  saveSyncToken(nextBatch: string): void {
    const record = { nextBatch, savedAt: new Date().toISOString() };
    writeFileAtomic(join(this.dir, 'sync.json'), `${JSON.stringify(record)}\n`);
  }
}
