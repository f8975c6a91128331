// Ed25519 signing keys, one keyring per purpose: the token minter, the receipt signer (proxy),
// the policy signer, and the bundle sealer (orchestrator). A keyring is a folder (mode 0700) of
// private JWK files (mode 0600, refused when readable by others) named by their RFC 7638
// thumbprint, which is also their `kid`, and a keyring.json naming the active key. Rotation
// makes a new key active; the old one still verifies: token keys until every token they signed
// has expired, evidence keys (receipts, bundles, policies) for ever, since evidence is checked
// offline long after it was made.
import { createHash, createPrivateKey, generateKeyPairSync, type KeyObject } from 'node:crypto';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { calculateJwkThumbprint, type JWK } from 'jose';
import { z } from 'zod';
import { ClawgateError, ERROR_CODES } from '../errors.ts';
import { ensurePrivateDir, writeFileAtomic } from '../storage/files.ts';

export const KEY_PURPOSES = ['token', 'receipt', 'policy', 'bundle'] as const;
export type KeyPurpose = (typeof KEY_PURPOSES)[number];

/** The longest a CST may live (tokens.cst.ttl_seconds max); a retired token key verifies this long. */
export const MAX_TOKEN_TTL_SECONDS = 3600;
/** Extra time a retired token key verifies, beyond the longest token, for the verifiers' clock tolerance. */
export const RETIRED_TOKEN_KEY_GRACE_SECONDS = 60;

/** RFC 7638 thumbprint (SHA-256, base64url) of an Ed25519 public key given by its `x`. */
export function ed25519Thumbprint(x: string): string {
  // Required members only, in lexicographic order, no whitespace (RFC 7638 section 3.2).
  return createHash('sha256')
    .update(JSON.stringify({ crv: 'Ed25519', kty: 'OKP', x }))
    .digest('base64url');
}

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
  let parsed;
  try {
    parsed = keyringSchema.safeParse(JSON.parse(readFileSync(path, 'utf8')));
  } catch (error) {
    throw new ClawgateError(ERROR_CODES.keyInvalid, `${path} cannot be read as JSON`, { cause: error });
  }
  if (!parsed.success || parsed.data.purpose !== purpose) {
    throw new ClawgateError(ERROR_CODES.keyInvalid, `${path} is not a valid ${purpose} keyring`);
  }
  return parsed.data;
}

/**
 * Reads a key file: an Ed25519 private JWK whose thumbprint is its file name. A file edited or
 * swapped by hand is refused rather than signing under a `kid` that is not its own.
 */
function readPrivateJwk(dir: string, purpose: KeyPurpose, kid: string): JWK & { x: string; d: string } {
  const path = join(keyringDir(dir, purpose), `${kid}.jwk.json`);
  if (!existsSync(path)) throw new ClawgateError(ERROR_CODES.keyNotFound, `key file ${path} is missing`);
  let jwk: Partial<JWK>;
  try {
    jwk = JSON.parse(readFileSync(path, 'utf8')) as Partial<JWK>;
  } catch (error) {
    throw new ClawgateError(ERROR_CODES.keyInvalid, `${path} cannot be read as JSON`, { cause: error });
  }
  if (
    typeof jwk !== 'object' ||
    jwk === null ||
    jwk.kty !== 'OKP' ||
    jwk.crv !== 'Ed25519' ||
    typeof jwk.x !== 'string' ||
    typeof jwk.d !== 'string'
  ) {
    throw new ClawgateError(ERROR_CODES.keyInvalid, `${path} is not an Ed25519 private JWK`);
  }
  if (ed25519Thumbprint(jwk.x) !== kid) {
    throw new ClawgateError(ERROR_CODES.keyInvalid, `${path} holds a key whose thumbprint is not ${kid}`);
  }
  return jwk as JWK & { x: string; d: string };
}

async function newKey(dir: string, purpose: KeyPurpose): Promise<string> {
  const { privateKey } = generateKeyPairSync('ed25519');
  const exported = privateKey.export({ format: 'jwk' }) as JWK & { x: string };
  const kid = await calculateJwkThumbprint(exported, 'sha256');
  const jwk = { ...exported, kid, alg: 'EdDSA', use: 'sig' };
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
  ensurePrivateDir(dir);
  ensurePrivateDir(keyringDir(dir, purpose));
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
    purpose === 'token'
      ? new Date(
          now.getTime() + (MAX_TOKEN_TTL_SECONDS + RETIRED_TOKEN_KEY_GRACE_SECONDS) * 1000,
        ).toISOString()
      : null;
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

/**
 * The active signing key of a purpose, or the one of `kid` (a retired evidence key re-signs
 * what it signed, an export of an old bundle). Refuses a key file others can read.
 */
export function loadSigner(dir: string, purpose: KeyPurpose, kid?: string): Signer {
  const keyring = readKeyring(dir, purpose);
  const wanted = kid ?? keyring.active;
  if (!keyring.keys.some((k) => k.kid === wanted)) {
    throw new ClawgateError(ERROR_CODES.keyNotFound, `the ${purpose} keyring in ${dir} has no key ${wanted}`);
  }
  const path = join(keyringDir(dir, purpose), `${wanted}.jwk.json`);
  if (!existsSync(path)) throw new ClawgateError(ERROR_CODES.keyNotFound, `key file ${path} is missing`);
  const mode = statSync(path).mode & 0o777;
  if ((mode & 0o077) !== 0) {
    throw new ClawgateError(
      ERROR_CODES.keyFileMode,
      `${path} has mode ${mode.toString(8)}; a private key must be readable by its owner only (chmod 600 ${path})`,
    );
  }
  const jwk = readPrivateJwk(dir, purpose, wanted);
  try {
    return { kid: wanted, key: createPrivateKey({ key: jwk, format: 'jwk' }) };
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
      const jwk = readPrivateJwk(dir, purpose, entry.kid);
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
