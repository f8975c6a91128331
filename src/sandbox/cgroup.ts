// Process-count and memory limits for one sandboxed run, through a cgroup made for it (v2
// unified hierarchy, or v1 pids and memory controllers). RLIMIT_NPROC cannot do this: it does
// not bind root, and it counts every process of the user, not those of one run. The child
// joins the cgroup before it execs the sandbox, so everything the run forks is counted.
import { existsSync, mkdirSync, rmdirSync, writeFileSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

export interface RunCgroup {
  /** cgroup.procs files the child writes its pid into before it execs. */
  procsFiles: string[];
  /** Whether the memory limit was hit during the run (OOM kill). */
  memoryExceeded(): boolean;
  remove(): void;
}

export interface CgroupLimits {
  processes: number;
  memoryBytes: number;
}

const V2_ROOT = '/sys/fs/cgroup';
const V1_PIDS = '/sys/fs/cgroup/pids';
const V1_MEMORY = '/sys/fs/cgroup/memory';

function tryWrite(path: string, value: string): boolean {
  try {
    writeFileSync(path, value);
    return true;
  } catch {
    return false;
  }
}

/** Makes a cgroup with the limits, or returns null when this host does not let us. */
export function createRunCgroup(name: string, limits: CgroupLimits): RunCgroup | null {
  // cgroup v2: one directory with both controllers.
  if (existsSync(join(V2_ROOT, 'cgroup.controllers'))) {
    const dir = join(V2_ROOT, 'clawgate', name);
    try {
      mkdirSync(join(V2_ROOT, 'clawgate'), { recursive: true });
      tryWrite(join(V2_ROOT, 'cgroup.subtree_control'), '+pids +memory');
      tryWrite(join(V2_ROOT, 'clawgate', 'cgroup.subtree_control'), '+pids +memory');
      mkdirSync(dir);
      if (!tryWrite(join(dir, 'pids.max'), String(limits.processes))) throw new Error('pids.max');
      if (!tryWrite(join(dir, 'memory.max'), String(limits.memoryBytes))) throw new Error('memory.max');
      tryWrite(join(dir, 'memory.swap.max'), '0');
      return {
        procsFiles: [join(dir, 'cgroup.procs')],
        memoryExceeded: () => /oom_kill [1-9]/.test(readFileSync(join(dir, 'memory.events'), 'utf8')),
        remove: () => removeWhenEmpty(dir),
      };
    } catch {
      removeWhenEmpty(dir);
      return null;
    }
  }
  // cgroup v1: separate pids and memory hierarchies.
  if (existsSync(V1_PIDS) && existsSync(V1_MEMORY)) {
    const pids = join(V1_PIDS, `clawgate-${name}`);
    const memory = join(V1_MEMORY, `clawgate-${name}`);
    try {
      mkdirSync(pids);
      mkdirSync(memory);
      if (!tryWrite(join(pids, 'pids.max'), String(limits.processes))) throw new Error('pids.max');
      if (!tryWrite(join(memory, 'memory.limit_in_bytes'), String(limits.memoryBytes)))
        throw new Error('memory limit');
      tryWrite(join(memory, 'memory.memsw.limit_in_bytes'), String(limits.memoryBytes));
      return {
        procsFiles: [join(pids, 'cgroup.procs'), join(memory, 'cgroup.procs')],
        memoryExceeded: () => {
          try {
            return Number(readFileSync(join(memory, 'memory.failcnt'), 'utf8')) > 0;
          } catch {
            return false;
          }
        },
        remove: () => {
          removeWhenEmpty(pids);
          removeWhenEmpty(memory);
        },
      };
    } catch {
      removeWhenEmpty(pids);
      removeWhenEmpty(memory);
      return null;
    }
  }
  return null;
}

/** A cgroup can be removed once its last process is gone; the run's processes are killed first. */
function removeWhenEmpty(dir: string): void {
  for (let attempt = 0; attempt < 50; attempt++) {
    try {
      if (!existsSync(dir)) return;
      rmdirSync(dir);
      return;
    } catch {
      const procs = join(dir, 'cgroup.procs');
      try {
        for (const pid of readFileSync(procs, 'utf8').split('\n').filter(Boolean)) {
          try {
            process.kill(Number(pid), 'SIGKILL');
          } catch {
            // already gone
          }
        }
      } catch {
        // no procs file
      }
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 20);
    }
  }
}
