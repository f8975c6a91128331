// Ed25519 signing keys, one keyring per purpose: the token minter, the receipt signer (proxy),
// the policy signer, and the bundle sealer (orchestrator). A keyring is a folder (mode 0700) of
// private JWK files (mode 0600, refused when readable by others) named by their RFC 7638
// thumbprint, which is also their `kid`, and a keyring.json naming the active key. Rotation
// makes a new key active; the old one still verifies: token keys until every token they signed
// has expired, evidence keys (receipts, bundles, policies) for ever, since evidence is checked
// offline long after it was made.
import { createPrivateKey, generateKeyPairSync, type KeyObject } from 'node:crypto';
import {
  chmodSync,
  existsSync,
  mkdirSync,
  readFileSync,
  renameSync,
  statSync,
  writeFileSync,
  openSync,
  fsyncSync,
  closeSync,
} from 'node:fs';
import { join } from 'node:path';
import { calculateJwkThumbprint, type JWK } from 'jose';
import { z } from 'zod';
import { ClawgateError, ERROR_CODES } from '../errors.ts';

export const KEY_PURPOSES = ['token', 'receipt', 'policy', 'bundle'] as const;
export type KeyPurpose = (typeof KEY_PURPOSES)[number];

/** The longest a CST may live (tokens.cst.ttl_seconds max); a retired token key verifies this long. */
export const MAX_TOKEN_TTL_SECONDS = 3600;

const keyringSchema = z
  .object({
    purpose: z.enum(KEY_PURPOSES),
    active: z.string(),
    keys: z.array(
      z
        .object({
          kid: z.string(),
          created_at: z.iso.datetime(),
          retired_at: z.iso.datetime().nullable(),
          /** After this instant the key no longer verifies; null: for ever. */
          verify_until: z.iso.datetime().nullable(),
        })
        .strict(),
    ),
  })
  .strict();
type KeyringFile = z.infer<typeof keyringSchema>;

export interface Signer {
  kid: string;
  key: KeyObject;
}

/** Writes a file atomically with the given mode: temp file, fsync, rename. */
export function writeFileAtomic(path: string, data: string, mode: number): void {
  const tmp = `${path}.tmp-${process.pid}`;
  writeFileSync(tmp, data, { mode });
  chmodSync(tmp, mode);
  const fd = openSync(tmp, 'r');
  fsyncSync(fd);
  closeSync(fd);
  renameSync(tmp, path);
}

function keyringDir(dir: string, purpose: KeyPurpose): string {
  return join(dir, purpose);
}

function readKeyring(dir: string, purpose: KeyPurpose): KeyringFile {
  const path = join(keyringDir(dir, purpose), 'keyring.json');
  if (!existsSync(path)) {
    throw new ClawgateError(
      ERROR_CODES.keyNotFound,
      `no ${purpose} keyring in ${dir}: run \`clawgate keys generate --purpose ${purpose}\``,
    );
  }
  const parsed = keyringSchema.safeParse(JSON.parse(readFileSync(path, 'utf8')));
  if (!parsed.success) throw new ClawgateError(ERROR_CODES.keyInvalid, `${path} is not a valid keyring`);
  return parsed.data;
}

async function newKey(dir: string, purpose: KeyPurpose): Promise<string> {
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  const kid = await calculateJwkThumbprint(publicKey.export({ format: 'jwk' }));
  const jwk = { ...(privateKey.export({ format: 'jwk' }) as JWK), kid, alg: 'EdDSA', use: 'sig' };
  writeFileAtomic(
    join(keyringDir(dir, purpose), `${kid}.jwk.json`),
    `${JSON.stringify(jwk, null, 2)}\n`,
    0o600,
  );
  return kid;
}

function saveKeyring(dir: string, keyring: KeyringFile): void {
  writeFileAtomic(
    join(keyringDir(dir, keyring.purpose), 'keyring.json'),
    `${JSON.stringify(keyring, null, 2)}\n`,
    0o600,
  );
}

export async function generateKeyring(dir: string, purpose: KeyPurpose, now = new Date()): Promise<string> {
  if (existsSync(join(keyringDir(dir, purpose), 'keyring.json'))) {
    throw new ClawgateError(
      ERROR_CODES.keyInvalid,
      `a ${purpose} keyring already exists in ${dir}; use \`clawgate keys rotate --purpose ${purpose}\` to replace its key`,
    );
  }
  mkdirSync(keyringDir(dir, purpose), { recursive: true, mode: 0o700 });
  chmodSync(dir, 0o700);
  chmodSync(keyringDir(dir, purpose), 0o700);
  const kid = await newKey(dir, purpose);
  saveKeyring(dir, {
    purpose,
    active: kid,
    keys: [{ kid, created_at: now.toISOString(), retired_at: null, verify_until: null }],
  });
  return kid;
}

export async function rotateKeyring(
  dir: string,
  purpose: KeyPurpose,
  now = new Date(),
): Promise<{ kid: string; retired: string }> {
  const keyring = readKeyring(dir, purpose);
  const kid = await newKey(dir, purpose);
  const retired = keyring.active;
  const verifyUntil =
    purpose === 'token' ? new Date(now.getTime() + MAX_TOKEN_TTL_SECONDS * 1000).toISOString() : null;
  saveKeyring(dir, {
    purpose,
    active: kid,
    keys: [
      ...keyring.keys.map((k) =>
        k.kid === retired ? { ...k, retired_at: now.toISOString(), verify_until: verifyUntil } : k,
      ),
      { kid, created_at: now.toISOString(), retired_at: null, verify_until: null },
    ],
  });
  return { kid, retired };
}

/** The active signing key of a purpose. Refuses a key file others can read. */
export function loadSigner(dir: string, purpose: KeyPurpose): Signer {
  const keyring = readKeyring(dir, purpose);
  const path = join(keyringDir(dir, purpose), `${keyring.active}.jwk.json`);
  if (!existsSync(path)) throw new ClawgateError(ERROR_CODES.keyNotFound, `key file ${path} is missing`);
  const mode = statSync(path).mode & 0o777;
  if ((mode & 0o077) !== 0) {
    throw new ClawgateError(
      ERROR_CODES.keyFileMode,
      `${path} has mode ${mode.toString(8)}; a private key must be 600 (chmod 600, or \`clawgate security audit --fix\`)`,
    );
  }
  try {
    const jwk = JSON.parse(readFileSync(path, 'utf8')) as JWK;
    return { kid: keyring.active, key: createPrivateKey({ key: jwk, format: 'jwk' }) };
  } catch (error) {
    throw new ClawgateError(ERROR_CODES.keyInvalid, `${path} is not an Ed25519 private JWK`, {
      cause: error,
    });
  }
}

/** Keys of a JWKS usable for a purpose: those marked with it, or unmarked ones. */
export function keysFor(jwks: { keys: JWK[] }, purpose: KeyPurpose): { keys: JWK[] } {
  return {
    keys: jwks.keys.filter(
      (k) =>
        (k as { purpose?: unknown }).purpose === undefined ||
        (k as { purpose?: unknown }).purpose === purpose,
    ),
  };
}

/** The public keys that still verify, of the given purposes, as a JWKS. */
export function publicJwks(
  dir: string,
  purposes: readonly KeyPurpose[] = KEY_PURPOSES,
  now = new Date(),
): { keys: JWK[] } {
  const keys: JWK[] = [];
  for (const purpose of purposes) {
    if (!existsSync(join(keyringDir(dir, purpose), 'keyring.json'))) continue;
    const keyring = readKeyring(dir, purpose);
    for (const entry of keyring.keys) {
      if (entry.verify_until !== null && new Date(entry.verify_until) < now) continue;
      const jwk = JSON.parse(
        readFileSync(join(keyringDir(dir, purpose), `${entry.kid}.jwk.json`), 'utf8'),
      ) as JWK;
      // `purpose` (a private JWK member) lets a verifier given one combined JWKS accept each
      // key only for what it signs: a receipt key must never verify a token.
      keys.push({
        kty: jwk.kty,
        crv: jwk.crv,
        x: jwk.x,
        kid: entry.kid,
        alg: 'EdDSA',
        use: 'sig',
        purpose,
      } as JWK);
    }
  }
  return { keys };
}
