// Compact JWS (RFC 7515) with Ed25519 for clawgate's evidence: model receipts and sealed proof
// bundles. The payload is always RFC 8785 canonical JSON, and the header carries the signing
// key's RFC 7638 thumbprint as `kid` and a `typ` of its own, so a receipt cannot pass as a
// bundle or as a token. Signing uses node:crypto's synchronous Ed25519 (a receipt is signed on
// the proxy's hot path; jose's CompactSign goes through WebCrypto's async API and took five
// times as long here); verification uses jose, so the two implementations check each other.
import { sign, type KeyObject } from 'node:crypto';
import canonicalize from 'canonicalize';
import { compactVerify, decodeProtectedHeader, importJWK, type JWK } from 'jose';

export interface Ed25519Signer {
  /** RFC 7638 thumbprint of the public JWK. */
  kid: string;
  /** An Ed25519 private key. */
  key: KeyObject;
}

export interface Jwks {
  keys: JWK[];
}

export function canonicalBytes(value: unknown): Buffer {
  const text = canonicalize(value);
  if (text === undefined) throw new Error('value has no canonical JSON form');
  return Buffer.from(text, 'utf8');
}

export function signCompactJws(payload: Buffer, signer: Ed25519Signer, typ: string): string {
  const header = Buffer.from(JSON.stringify({ alg: 'EdDSA', kid: signer.kid, typ })).toString('base64url');
  const signingInput = `${header}.${payload.toString('base64url')}`;
  return `${signingInput}.${sign(null, Buffer.from(signingInput), signer.key).toString('base64url')}`;
}

export type JwsFailure = 'malformed' | 'unknown_key' | 'bad_signature';

export class JwsVerificationError extends Error {
  readonly failure: JwsFailure;
  constructor(failure: JwsFailure, message: string) {
    super(message);
    this.failure = failure;
    this.name = 'JwsVerificationError';
  }
}

/**
 * Verifies a compact JWS of type `typ` against a JWKS, offline, and returns its payload bytes.
 * Refuses non-canonical base64url: its spare bits would let the text change while the signature
 * still verifies, and evidence must be exact bytes.
 */
export async function verifyCompactJws(jws: string, jwks: Jwks, typ: string): Promise<Buffer> {
  const segments = jws.split('.');
  if (
    segments.length !== 3 ||
    segments.some((part) => Buffer.from(part, 'base64url').toString('base64url') !== part)
  ) {
    throw new JwsVerificationError('malformed', 'not a compact JWS in canonical base64url');
  }
  let header;
  try {
    header = decodeProtectedHeader(jws);
  } catch {
    throw new JwsVerificationError('malformed', 'the JWS header is not JSON');
  }
  if (header.alg !== 'EdDSA' || header.typ !== typ) {
    throw new JwsVerificationError(
      'malformed',
      `header must be alg EdDSA and typ ${typ}, got alg ${String(header.alg)} typ ${String(header.typ)}`,
    );
  }
  const jwk = jwks.keys.find((k) => k.kid === header.kid);
  if (!jwk) throw new JwsVerificationError('unknown_key', `no key ${String(header.kid)} in the JWKS`);
  try {
    const key = await importJWK({ ...jwk, alg: 'EdDSA' }, 'EdDSA');
    const { payload } = await compactVerify(jws, key, { algorithms: ['EdDSA'] });
    return Buffer.from(payload);
  } catch {
    throw new JwsVerificationError('bad_signature', 'the signature does not verify');
  }
}
