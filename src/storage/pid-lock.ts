// One owner at a time for a piece of state: a lock file holding the owner's process id. A lock
// of a process that no longer runs is stale and taken over; a live one is refused, with the
// message the caller words for its state.
import { existsSync, readFileSync } from 'node:fs';
import { ClawgateError, ERROR_CODES } from '../errors.ts';
import { writeFileAtomic } from './files.ts';

/** Whether a process with this id runs (one of another user counts). */
export function processRuns(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Takes the lock at `lockPath` for this process, or throws STATE_LOCKED with `refusal(pid)`
 * when another live process holds it.
 */
export function takePidLock(lockPath: string, refusal: (pid: number) => string): void {
  if (existsSync(lockPath)) {
    const pid = Number.parseInt(readFileSync(lockPath, 'utf8').trim(), 10);
    if (Number.isInteger(pid) && pid > 0 && pid !== process.pid && processRuns(pid)) {
      throw new ClawgateError(ERROR_CODES.stateLocked, refusal(pid));
    }
  }
  writeFileAtomic(lockPath, `${process.pid}\n`);
}
