// did:key for Ed25519 keys (W3C did:key method): `did:key:z` + base58btc(0xed 0x01 ‖ the 32-byte
// public key). It is how the Clawsig protocol names a signer, and the key is read back from the
// DID itself, so a verifier needs nothing but the DID an auditor pinned.
import { createPublicKey, type KeyObject } from 'node:crypto';
import { base58 } from '@scure/base';
import { ClawgateError, ERROR_CODES } from '../errors.ts';

/** The multicodec prefix of an Ed25519 public key (varint 0xed). */
const ED25519_PUB = Uint8Array.of(0xed, 0x01);
const DID_KEY_PREFIX = 'did:key:z';

/** The did:key of an Ed25519 public key given as a JWK's `x` (base64url, 32 bytes). */
export function didKeyFromJwkX(x: string): string {
  const raw = Buffer.from(x, 'base64url');
  if (raw.length !== 32)
    throw new ClawgateError(ERROR_CODES.keyInvalid, 'an Ed25519 public key has 32 bytes');
  return DID_KEY_PREFIX + base58.encode(Uint8Array.from([...ED25519_PUB, ...raw]));
}

/** The did:key of an Ed25519 key object (private or public). */
export function didKeyOf(key: KeyObject): string {
  const jwk = key.export({ format: 'jwk' }) as { crv?: string; x?: string };
  if (jwk.crv !== 'Ed25519' || typeof jwk.x !== 'string') {
    throw new ClawgateError(ERROR_CODES.keyInvalid, 'a did:key is made from an Ed25519 key only');
  }
  return didKeyFromJwkX(jwk.x);
}

/** The public key a did:key names, or why it names none (another method, another key type). */
export function publicKeyOfDid(did: string): KeyObject {
  if (!did.startsWith(DID_KEY_PREFIX)) {
    throw new ClawgateError(ERROR_CODES.keyInvalid, `${did.slice(0, 40)} is not a did:key (base58btc)`);
  }
  let bytes: Uint8Array;
  try {
    bytes = base58.decode(did.slice(DID_KEY_PREFIX.length));
  } catch {
    throw new ClawgateError(ERROR_CODES.keyInvalid, `${did.slice(0, 40)} is not valid base58btc`);
  }
  if (bytes.length !== 34 || bytes[0] !== ED25519_PUB[0] || bytes[1] !== ED25519_PUB[1]) {
    throw new ClawgateError(ERROR_CODES.keyInvalid, `${did.slice(0, 40)} does not name an Ed25519 key`);
  }
  return createPublicKey({
    key: { kty: 'OKP', crv: 'Ed25519', x: Buffer.from(bytes.slice(2)).toString('base64url') },
    format: 'jwk',
  });
}
