// A job's evidence store: content-addressed files (named by the SHA-256 of their bytes) for what
// is too large for the workflow's history (tool outputs, the messages of the conversation), and
// the claim and result files that make each tool call run at most once, whichever worker holds
// it. One folder per job; workers that share jobs share the store's root.
import { openSync, closeSync, existsSync, readFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { sha256Hex } from '../policy/canonical.ts';
import { writeFileAtomic, PRIVATE_DIR_MODE } from '../storage/files.ts';
import { ClawgateError, ERROR_CODES } from '../errors.ts';

const HASH = /^[0-9a-f]{64}$/;
const KEY = /^[A-Za-z0-9._-]{1,200}$/;

export class EvidenceStore {
  readonly root: string;
  constructor(root: string) {
    this.root = root;
  }

  /** The job's folder: named by the hash of its workflow id (ids hold characters paths should not). */
  dirOf(workflowId: string): string {
    return join(this.root, sha256Hex(workflowId).slice(0, 32));
  }

  private ensure(workflowId: string, sub: string): string {
    const dir = join(this.dirOf(workflowId), sub);
    mkdirSync(dir, { recursive: true, mode: PRIVATE_DIR_MODE });
    return dir;
  }

  /** Stores bytes under their SHA-256 (once) and returns it. */
  put(workflowId: string, data: string | Uint8Array): string {
    const bytes = typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
    const hash = sha256Hex(bytes);
    const path = join(this.ensure(workflowId, 'objects'), hash);
    if (!existsSync(path)) writeFileAtomic(path, bytes);
    return hash;
  }

  /** The bytes stored under a hash, checked against it. */
  get(workflowId: string, hash: string): Buffer {
    if (!HASH.test(hash)) throw storeError(`${JSON.stringify(hash.slice(0, 80))} is not a SHA-256`);
    const path = join(this.dirOf(workflowId), 'objects', hash);
    let bytes: Buffer;
    try {
      bytes = readFileSync(path);
    } catch {
      throw storeError(`object ${hash.slice(0, 12)} of job ${workflowId} is not in the evidence store`);
    }
    if (sha256Hex(bytes) !== hash) throw storeError(`object ${hash.slice(0, 12)} does not match its hash`);
    return bytes;
  }

  putJson(workflowId: string, value: unknown): string {
    return this.put(workflowId, JSON.stringify(value));
  }

  getJson<T>(workflowId: string, hash: string): T {
    return JSON.parse(this.get(workflowId, hash).toString('utf8')) as T;
  }

  /**
   * Claims a key for the first caller only (an exclusive create, durable before it returns):
   * true for that caller, false for anyone after, on any worker sharing the store.
   */
  claim(workflowId: string, key: string): boolean {
    const path = join(this.ensure(workflowId, 'claims'), checkedKey(key));
    try {
      const fd = openSync(path, 'wx', 0o600);
      closeSync(fd);
      return true;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'EEXIST') return false;
      throw error;
    }
  }

  /** The result recorded under a key, or undefined. */
  result<T>(workflowId: string, key: string): T | undefined {
    const path = join(this.dirOf(workflowId), 'results', checkedKey(key));
    if (!existsSync(path)) return undefined;
    return JSON.parse(readFileSync(path, 'utf8')) as T;
  }

  setResult(workflowId: string, key: string, value: unknown): void {
    writeFileAtomic(join(this.ensure(workflowId, 'results'), checkedKey(key)), JSON.stringify(value));
  }
}

function checkedKey(key: string): string {
  if (!KEY.test(key)) throw storeError(`${JSON.stringify(key.slice(0, 80))} is not a store key`);
  return key;
}

function storeError(message: string): ClawgateError {
  return new ClawgateError(ERROR_CODES.stateCorrupt, `evidence store: ${message}`);
}
