// The payload keyring: AES-256 keys that encrypt what clawgate hands to Temporal (workflow
// inputs, activity inputs and results, signals, queries, memos), so that Temporal's database and
// anyone reading its histories see ciphertext only. It is a folder (mode 0700) next to the
// signing keyrings, `<keys>/payload/`, of key files (mode 0600, refused when readable by
// others) holding 32 random bytes each, named by a random key id, and a keyring.json naming the
// active key. Rotation makes a new key active; every old key is kept, since Temporal keeps the
// histories it encrypted for as long as their retention lasts, and `clawgate replay` reads them
// later still. Every process that talks to the same Temporal needs the same keyring.
import { randomBytes } from 'node:crypto';
import { existsSync, linkSync, readFileSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { z } from 'zod';
import { ClawgateError, ERROR_CODES } from '../errors.ts';
import { ensurePrivateDir, fsyncDir, writeFileAtomic } from '../storage/files.ts';

export const PAYLOAD_PURPOSE = 'payload';
export const PAYLOAD_KEY_BYTES = 32;

const keyringSchema = z
  .object({
    purpose: z.literal(PAYLOAD_PURPOSE),
    active: z.string(),
    keys: z.array(
      z
        .object({
          kid: z.string().regex(/^[0-9a-f]{16}$/),
          created_at: z.iso.datetime(),
          retired_at: z.iso.datetime().nullable(),
        })
        .strict(),
    ),
  })
  .strict();
type PayloadKeyringFile = z.infer<typeof keyringSchema>;

export interface PayloadKeys {
  /** The key new payloads are encrypted with. */
  active: { kid: string; key: Buffer };
  /** Every key of the keyring, the active one too, by key id. */
  keys: Map<string, Buffer>;
}

export function payloadKeyringDir(keysDir: string): string {
  return join(keysDir, PAYLOAD_PURPOSE);
}

function keyringPath(keysDir: string): string {
  return join(payloadKeyringDir(keysDir), 'keyring.json');
}

export function hasPayloadKeyring(keysDir: string): boolean {
  return existsSync(keyringPath(keysDir));
}

function readKeyring(keysDir: string): PayloadKeyringFile {
  const path = keyringPath(keysDir);
  if (!existsSync(path)) {
    throw new ClawgateError(
      ERROR_CODES.keyNotFound,
      `no payload keyring in ${keysDir}: run \`clawgate keys generate --purpose payload\`, or copy the payload keyring of the machines that share this Temporal`,
    );
  }
  let parsed;
  try {
    parsed = keyringSchema.safeParse(JSON.parse(readFileSync(path, 'utf8')));
  } catch (error) {
    throw new ClawgateError(ERROR_CODES.keyInvalid, `${path} cannot be read as JSON`, { cause: error });
  }
  if (!parsed.success)
    throw new ClawgateError(ERROR_CODES.keyInvalid, `${path} is not a valid payload keyring`);
  if (!parsed.data.keys.some((k) => k.kid === parsed.data.active)) {
    throw new ClawgateError(
      ERROR_CODES.keyInvalid,
      `${path} names ${parsed.data.active} active, but lists no such key`,
    );
  }
  return parsed.data;
}

function readKey(keysDir: string, kid: string): Buffer {
  const path = join(payloadKeyringDir(keysDir), `${kid}.key`);
  if (!existsSync(path)) throw new ClawgateError(ERROR_CODES.keyNotFound, `key file ${path} is missing`);
  const mode = statSync(path).mode & 0o777;
  if ((mode & 0o077) !== 0) {
    throw new ClawgateError(
      ERROR_CODES.keyFileMode,
      `${path} has mode ${mode.toString(8)}; a payload key must be readable by its owner only (chmod 600 ${path})`,
    );
  }
  const key = Buffer.from(readFileSync(path, 'utf8').trim(), 'base64url');
  if (key.length !== PAYLOAD_KEY_BYTES) {
    throw new ClawgateError(
      ERROR_CODES.keyInvalid,
      `${path} does not hold a ${PAYLOAD_KEY_BYTES}-byte key (base64url); it holds ${key.length} bytes`,
    );
  }
  return key;
}

function newKey(keysDir: string): string {
  const kid = randomBytes(8).toString('hex');
  writeFileAtomic(
    join(payloadKeyringDir(keysDir), `${kid}.key`),
    `${randomBytes(PAYLOAD_KEY_BYTES).toString('base64url')}\n`,
    0o600,
  );
  return kid;
}

/**
 * Creates the payload keyring when there is none; an existing one is left as it is. Two
 * processes starting at once on one state folder must not each make a key of their own (one of
 * them would encrypt with a key the keyring forgets), so keyring.json is put in place with a
 * hard link, which fails when another process put its own there first: then that one is used.
 * Returns the key id made, or null when the keyring was there.
 */
export function ensurePayloadKeyring(keysDir: string, now = new Date()): string | null {
  if (hasPayloadKeyring(keysDir)) return null;
  ensurePrivateDir(keysDir);
  ensurePrivateDir(payloadKeyringDir(keysDir));
  const kid = newKey(keysDir);
  const keyring: PayloadKeyringFile = {
    purpose: PAYLOAD_PURPOSE,
    active: kid,
    keys: [{ kid, created_at: now.toISOString(), retired_at: null }],
  };
  const staged = `${keyringPath(keysDir)}.new-${kid}`;
  writeFileAtomic(staged, `${JSON.stringify(keyring, null, 2)}\n`, 0o600);
  try {
    linkSync(staged, keyringPath(keysDir));
  } catch (error) {
    rmSync(join(payloadKeyringDir(keysDir), `${kid}.key`), { force: true });
    if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
    return null;
  } finally {
    rmSync(staged, { force: true });
  }
  fsyncDir(payloadKeyringDir(keysDir));
  return kid;
}

/** Creates the payload keyring; refuses when there is one (rotate it instead). */
export function generatePayloadKeyring(keysDir: string, now = new Date()): string {
  if (hasPayloadKeyring(keysDir)) {
    throw new ClawgateError(
      ERROR_CODES.keyInvalid,
      `a payload keyring already exists in ${keysDir}; use \`clawgate keys rotate --purpose payload\` to replace its key`,
    );
  }
  const kid = ensurePayloadKeyring(keysDir, now);
  if (kid === null) {
    throw new ClawgateError(
      ERROR_CODES.keyInvalid,
      `another process created a payload keyring in ${keysDir} meanwhile`,
    );
  }
  return kid;
}

/**
 * Makes a new key active. The retired one is kept for good: it still decrypts what it encrypted.
 * Running processes notice the change at their next payload (they watch keyring.json).
 */
export function rotatePayloadKeyring(keysDir: string, now = new Date()): { kid: string; retired: string } {
  const keyring = readKeyring(keysDir);
  const kid = newKey(keysDir);
  const retired = keyring.active;
  writeFileAtomic(
    keyringPath(keysDir),
    `${JSON.stringify(
      {
        purpose: PAYLOAD_PURPOSE,
        active: kid,
        keys: [
          ...keyring.keys.map((k) => (k.kid === retired ? { ...k, retired_at: now.toISOString() } : k)),
          { kid, created_at: now.toISOString(), retired_at: null },
        ],
      } satisfies PayloadKeyringFile,
      null,
      2,
    )}\n`,
    0o600,
  );
  return { kid, retired };
}

/** Every key of the payload keyring, read from disk now. */
export function loadPayloadKeys(keysDir: string): PayloadKeys {
  const keyring = readKeyring(keysDir);
  const keys = new Map<string, Buffer>();
  for (const entry of keyring.keys) keys.set(entry.kid, readKey(keysDir, entry.kid));
  return { active: { kid: keyring.active, key: keys.get(keyring.active) as Buffer }, keys };
}

/**
 * The payload keys as they are on disk at each call: read again whenever keyring.json has
 * changed (a rotation by `clawgate keys rotate` while the process runs), otherwise from memory.
 */
export function payloadKeySource(keysDir: string): () => PayloadKeys {
  let cached: { stamp: string; keys: PayloadKeys } | undefined;
  return () => {
    let stamp: string;
    try {
      const stat = statSync(keyringPath(keysDir));
      stamp = `${stat.ino}:${stat.mtimeMs}:${stat.size}`;
    } catch {
      stamp = 'missing';
    }
    if (cached?.stamp !== stamp) cached = { stamp, keys: loadPayloadKeys(keysDir) };
    return cached.keys;
  };
}
