// A small disk for the receipt log that a test can fill and free: a tmpfs of its own when this
// process may mount one (root, a kernel that allows it), else a fault hook in node:fs that makes
// writes to the log's file fail as a full disk does (ENOSPC, after a short write). Which of the
// two ran is printed, and is `kind`.
import { execFileSync } from 'node:child_process';
import fs, {
  closeSync,
  fstatSync,
  mkdtempSync,
  openSync,
  rmSync,
  statSync,
  truncateSync,
  writeSync,
} from 'node:fs';
import { syncBuiltinESMExports } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface SmallDisk {
  /** `tmpfs`: a real file system of `bytes`; `fault-hook`: node:fs writes to the log fail on demand. */
  readonly kind: 'tmpfs' | 'fault-hook';
  readonly dir: string;
  /** Takes every free byte of the disk (the hook: writes to `file` fail from now on). */
  fill(): void;
  /** Gives about `bytes` of the space back (whole pages on a tmpfs); the disk stays nearly full. */
  leave(bytes: number): void;
  /** Gives the space back. */
  free(): void;
  /** Whether the disk is full now. */
  readonly full: boolean;
  /** Unmounts (or removes the hook) and removes the folder. */
  release(): void;
}

function noSpace(syscall: string): NodeJS.ErrnoException {
  const error: NodeJS.ErrnoException = new Error(`ENOSPC: no space left on device, ${syscall}`);
  error.code = 'ENOSPC';
  error.errno = -28;
  error.syscall = syscall;
  return error;
}

function mount(dir: string, bytes: number): boolean {
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${bytes},mode=0700`, 'tmpfs', dir], { stdio: 'pipe' });
    return true;
  } catch {
    return false;
  }
}

/** Whether this process may mount a tmpfs: tried once, on a folder of its own. */
function mayMount(): boolean {
  if (process.env['CLAWGATE_TEST_NO_MOUNT'] === '1') return false;
  const probe = mkdtempSync(join(tmpdir(), 'clawgate-mount-probe-'));
  try {
    if (!mount(probe, 4096)) return false;
    execFileSync('umount', [probe], { stdio: 'pipe' });
    return true;
  } finally {
    rmSync(probe, { recursive: true, force: true });
  }
}

const MOUNTABLE = mayMount();

// The fault hook, installed when no tmpfs can be had, before the proxy's modules load (import
// this file first): node:fs's write functions, and the ESM bindings of them that the receipt
// store takes at load, see a full disk for one file, by its inode, while `hook.full` is set. A
// write that starts as the disk fills is short by what did not fit, as a real one is.
const hook = { target: null as string | null, full: false, room: 0 };
if (!MOUNTABLE) {
  const real = { writeSync: fs.writeSync, write: fs.write };
  const isTarget = (fd: number): boolean => {
    try {
      return hook.target !== null && fstatSync(fd).ino === statSync(hook.target).ino;
    } catch {
      return false;
    }
  };
  /** How much of a write of `length` bytes to fd goes through; throws when nothing does. */
  const allowed = (fd: number, length: number): number => {
    if (!hook.full || !isTarget(fd)) return length;
    if (hook.room === 0) throw noSpace('write');
    const n = Math.min(hook.room, length);
    hook.room -= n;
    return n;
  };
  const patched = {
    writeSync(fd: number, buffer: unknown, offset?: unknown, length?: unknown, position?: unknown): number {
      if (!ArrayBuffer.isView(buffer) || typeof offset !== 'number') {
        return (real.writeSync as (...a: unknown[]) => number)(fd, buffer, offset, length, position);
      }
      const n = allowed(fd, typeof length === 'number' ? length : buffer.byteLength - offset);
      return real.writeSync(
        fd,
        buffer as NodeJS.ArrayBufferView,
        offset,
        n,
        position as number | null | undefined,
      );
    },
    write(fd: number, buffer: unknown, ...rest: unknown[]): void {
      const cb = rest.at(-1) as (...a: unknown[]) => void;
      const [offset, length, position] = rest as [unknown, unknown, unknown];
      if (!ArrayBuffer.isView(buffer) || typeof offset !== 'number' || typeof length !== 'number') {
        (real.write as (...a: unknown[]) => void)(fd, buffer, ...rest);
        return;
      }
      let n: number;
      try {
        n = allowed(fd, length);
      } catch (error) {
        process.nextTick(() => cb(error, 0, buffer));
        return;
      }
      real.write(fd, buffer as NodeJS.ArrayBufferView, offset, n, position as number | null, cb as never);
    },
  };
  Object.assign(fs, patched);
  syncBuiltinESMExports();
}

/**
 * A disk of `bytes` for files in its `dir`. On the fault hook, `file` (a name in `dir`) is the
 * one file whose writes fail while the disk is full.
 */
export function smallDisk(bytes: number, file: string): SmallDisk {
  const dir = mkdtempSync(join(tmpdir(), 'clawgate-small-disk-'));
  if (MOUNTABLE && mount(dir, bytes)) {
    const filler = join(dir, 'filler');
    let full = false;
    console.log(`receipt log disk: a tmpfs of ${bytes} bytes mounted at ${dir}`);
    return {
      kind: 'tmpfs',
      dir,
      get full() {
        return full;
      },
      fill() {
        // Writes until the file system refuses, in smaller and smaller pieces: not a byte is left.
        const fd = openSync(filler, 'a');
        try {
          for (let size = 1 << 16; size >= 1; size = Math.floor(size / 2)) {
            const piece = Buffer.alloc(size, 0x2e);
            for (;;) {
              try {
                writeSync(fd, piece);
              } catch (error) {
                if ((error as NodeJS.ErrnoException).code === 'ENOSPC') break;
                throw error;
              }
            }
          }
        } finally {
          closeSync(fd);
        }
        full = true;
      },
      leave(bytes) {
        truncateSync(filler, Math.max(0, statSync(filler).size - bytes));
      },
      free() {
        rmSync(filler, { force: true });
        full = false;
      },
      release() {
        try {
          execFileSync('umount', [dir], { stdio: 'pipe' });
        } catch {
          // Still open somewhere (a test that failed half-way): detached now, gone once closed.
          execFileSync('umount', ['-l', dir], { stdio: 'pipe' });
        }
        rmSync(dir, { recursive: true, force: true });
      },
    };
  }
  if (MOUNTABLE) throw new Error(`could not mount a tmpfs at ${dir}`);
  hook.target = join(dir, file);
  console.log(
    `receipt log disk: mounting a tmpfs is not permitted here; a fault hook in node:fs makes writes to ${file} fail with ENOSPC`,
  );
  return {
    kind: 'fault-hook',
    dir,
    get full() {
      return hook.full;
    },
    fill() {
      hook.full = true;
      hook.room = 100;
    },
    leave(bytes) {
      hook.room = bytes;
    },
    free() {
      hook.full = false;
    },
    release() {
      hook.full = false;
      hook.target = null;
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
