// Canonical JSON (RFC 8785, JCS) and the strict parsing in front of it. A policy is addressed
// by the SHA-256 of its canonical bytes, so two parties that read the same document must get
// the same bytes: duplicate keys (which JSON.parse silently resolves to the last one), NaN and
// Infinity, and lone surrogates are refused rather than normalised.
import { createHash } from 'node:crypto';
import canonicalize from 'canonicalize';
import { parseDocument } from 'yaml';
import { ClawgateError, ERROR_CODES } from '../errors.ts';

/** RFC 8785 canonical JSON text of a value; refuses what JCS cannot represent. */
export function canonicalJson(value: unknown): string {
  let text: string | undefined;
  try {
    text = canonicalize(value);
  } catch (error) {
    throw new ClawgateError(
      ERROR_CODES.jsonNotCanonicalizable,
      `not representable as canonical JSON: ${error instanceof Error ? error.message : String(error)}`,
    );
  }
  if (text === undefined) {
    throw new ClawgateError(
      ERROR_CODES.jsonNotCanonicalizable,
      'not representable as canonical JSON: no value',
    );
  }
  return text;
}

export function canonicalBytes(value: unknown): Buffer {
  return Buffer.from(canonicalJson(value), 'utf8');
}

export function sha256Hex(bytes: Uint8Array | string): string {
  return createHash('sha256').update(bytes).digest('hex');
}

/** SHA-256 (hex) of the canonical bytes of a value: how clawgate names policies and plans. */
export function canonicalHash(value: unknown): string {
  return sha256Hex(canonicalBytes(value));
}

/** Refuses numbers JSON cannot carry (1e400 parses to Infinity), naming where they are. */
function assertFinite(value: unknown, path: string, what: string): void {
  if (typeof value === 'number' && !Number.isFinite(value)) {
    throw new ClawgateError(
      ERROR_CODES.jsonNotCanonicalizable,
      `${what}: ${path || '(root)'} is not a finite number`,
    );
  }
  if (Array.isArray(value)) value.forEach((v, i) => assertFinite(v, `${path}[${i}]`, what));
  else if (typeof value === 'object' && value !== null) {
    for (const [k, v] of Object.entries(value)) assertFinite(v, path ? `${path}.${k}` : k, what);
  }
}

/**
 * Parses a JSON (or YAML) document strictly. JSON (text starting with `{` or `[`) must be valid
 * JSON; YAML is accepted because operators write policies by hand. In both, a duplicate key is
 * an error, not a silent overwrite, and numbers must be finite. The canonical form is JSON either
 * way.
 */
export function parseStrict(text: string, what: string): unknown {
  const isJson = /^\s*[[{]/.test(text);
  let jsonValue: unknown;
  if (isJson) {
    try {
      jsonValue = JSON.parse(text);
    } catch (error) {
      throw new ClawgateError(
        ERROR_CODES.jsonInvalid,
        `${what} is not valid JSON: ${error instanceof Error ? error.message : String(error)}`,
      );
    }
  }
  const doc = parseDocument(text, { uniqueKeys: true, strict: true, prettyErrors: true, version: '1.2' });
  const first = doc.errors[0];
  if (first) {
    const where = first.linePos?.[0]
      ? ` at line ${first.linePos[0].line}, column ${first.linePos[0].col}`
      : '';
    const duplicate = first.code === 'DUPLICATE_KEY';
    throw new ClawgateError(
      duplicate ? ERROR_CODES.jsonDuplicateKey : ERROR_CODES.jsonInvalid,
      `${what}${where}: ${duplicate ? 'a key appears twice in the same object' : (first.message.split('\n')[0] ?? '')}`,
    );
  }
  let value: unknown = jsonValue;
  if (!isJson) {
    try {
      value = doc.toJS({ maxAliasCount: 0 });
    } catch (error) {
      // YAML aliases (&a / *a) are refused: a policy says each thing once, where it applies.
      throw new ClawgateError(
        ERROR_CODES.jsonInvalid,
        `${what}: ${error instanceof Error ? error.message : String(error)} (YAML aliases are not allowed)`,
      );
    }
  }
  assertFinite(value, '', what);
  return value;
}
