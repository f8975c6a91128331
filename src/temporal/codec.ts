// The payload codec every Temporal client and worker of clawgate uses: AES-256-GCM with the
// active key of the payload keyring (src/keys/payload-keyring.ts). The whole original payload,
// its metadata too (which names the encoding and so says what kind of value it is), is
// protobuf-encoded and encrypted, as Temporal's encryption sample does, under a random 12-byte
// IV of its own; the encrypted payload says `encoding: binary/encrypted` and names the key id.
// Search attributes are not payloads a codec sees: they stay readable, and searchable, in
// Temporal's visibility. Payloads that are not encrypted pass through decoding unchanged, so
// histories written before encryption was turned on still read and replay. A failure's message
// and stack trace are in a payload too (src/temporal/failure-converter.ts), so the codec
// encrypts them as well.
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import type { DataConverter, Payload, PayloadCodec } from '@temporalio/common';
import proto from '@temporalio/proto';
import { ClawgateError, ERROR_CODES } from '../errors.ts';
import { payloadKeySource, type PayloadKeys } from '../keys/payload-keyring.ts';

export const ENCRYPTED_ENCODING = 'binary/encrypted';
export const KEY_ID_METADATA = 'encryption-key-id';
// A CommonJS module whose exports Node.js cannot list for a named import.
const { temporal } = proto;
const IV_BYTES = 12;
const TAG_BYTES = 16;

const utf8 = new TextEncoder();
const fromUtf8 = new TextDecoder();

function metadataText(payload: Payload, key: string): string | undefined {
  const value = payload.metadata?.[key];
  return value ? fromUtf8.decode(value) : undefined;
}

export class AesGcmPayloadCodec implements PayloadCodec {
  private readonly keys: () => PayloadKeys;
  /** Where the keys come from, for error messages. */
  private readonly source: string;

  constructor(keys: () => PayloadKeys, source: string) {
    this.keys = keys;
    this.source = source;
  }

  encode(payloads: Payload[]): Promise<Payload[]> {
    return Promise.resolve().then(() => {
      const { active } = this.keys();
      return payloads.map((payload) => {
        const plaintext = temporal.api.common.v1.Payload.encode(payload).finish();
        const iv = randomBytes(IV_BYTES);
        const cipher = createCipheriv('aes-256-gcm', active.key, iv);
        const ciphertext = Buffer.concat([cipher.update(plaintext), cipher.final(), cipher.getAuthTag()]);
        return {
          metadata: {
            encoding: utf8.encode(ENCRYPTED_ENCODING),
            [KEY_ID_METADATA]: utf8.encode(active.kid),
          },
          data: Buffer.concat([iv, ciphertext]),
        };
      });
    });
  }

  decode(payloads: Payload[]): Promise<Payload[]> {
    return Promise.resolve().then(() => payloads.map((payload) => this.decodeOne(payload)));
  }

  private decodeOne(payload: Payload): Payload {
    if (metadataText(payload, 'encoding') !== ENCRYPTED_ENCODING) return payload;
    const kid = metadataText(payload, KEY_ID_METADATA);
    if (!kid) {
      throw new ClawgateError(
        ERROR_CODES.payloadUndecryptable,
        `an encrypted Temporal payload has no ${KEY_ID_METADATA} metadata: it cannot be decrypted`,
      );
    }
    const key = this.keys().keys.get(kid);
    if (!key) {
      throw new ClawgateError(
        ERROR_CODES.payloadKeyUnknown,
        `a Temporal payload is encrypted with payload key ${kid}, which the payload keyring in ${this.source} does not hold; ` +
          'copy the payload keyring of the machine that encrypted it (every process on one Temporal needs the same keyring)',
      );
    }
    const data = payload.data ?? new Uint8Array();
    if (data.length < IV_BYTES + TAG_BYTES) {
      throw new ClawgateError(
        ERROR_CODES.payloadUndecryptable,
        `a Temporal payload encrypted with payload key ${kid} is ${data.length} bytes long, shorter than its IV and tag (${IV_BYTES + TAG_BYTES} bytes)`,
      );
    }
    const bytes = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
    let plaintext: Buffer;
    try {
      const decipher = createDecipheriv('aes-256-gcm', key, bytes.subarray(0, IV_BYTES));
      decipher.setAuthTag(bytes.subarray(bytes.length - TAG_BYTES));
      plaintext = Buffer.concat([
        decipher.update(bytes.subarray(IV_BYTES, bytes.length - TAG_BYTES)),
        decipher.final(),
      ]);
    } catch (error) {
      throw new ClawgateError(
        ERROR_CODES.payloadUndecryptable,
        `a Temporal payload encrypted with payload key ${kid} fails its authentication check: its bytes were altered (or its key file was replaced)`,
        { cause: error },
      );
    }
    try {
      return temporal.api.common.v1.Payload.decode(plaintext);
    } catch (error) {
      throw new ClawgateError(
        ERROR_CODES.payloadUndecryptable,
        `a Temporal payload encrypted with payload key ${kid} decrypts, but not to a Temporal payload`,
        { cause: error },
      );
    }
  }
}

/** The codec of the payload keyring in `keysDir` (`<keysDir>/payload/`), read when first needed. */
export function payloadCodecFor(keysDir: string): AesGcmPayloadCodec {
  return new AesGcmPayloadCodec(payloadKeySource(keysDir), keysDir);
}

/**
 * The module of clawgate's failure converter (src/temporal/failure-converter.ts): a data
 * converter names it by path, and a workflow bundle is made with it
 * (`bundleWorkflowCode({ failureConverterPath })`), so failures a workflow raises are encoded too.
 */
export const FAILURE_CONVERTER_PATH = fileURLToPath(new URL('./failure-converter.ts', import.meta.url));

/**
 * What `new Client({ dataConverter })` and `Worker.create({ dataConverter })` take: the payload
 * codec, and the failure converter that puts a failure's message and stack trace in a payload
 * for the codec to encrypt.
 */
export function dataConverterFor(keysDir: string): DataConverter {
  return { payloadCodecs: [payloadCodecFor(keysDir)], failureConverterPath: FAILURE_CONVERTER_PATH };
}

function isPayload(value: unknown): value is Payload {
  if (typeof value !== 'object' || value === null) return false;
  const metadata = (value as { metadata?: unknown }).metadata;
  return (
    typeof metadata === 'object' &&
    metadata !== null &&
    (metadata as Record<string, unknown>)['encoding'] instanceof Uint8Array
  );
}

/**
 * Decodes, in place, every payload of a history as fetched from Temporal (`fetchHistory` gives
 * them as stored: encrypted). What it returns reads as a history of a Temporal without a codec
 * would: `clawgate replay` compares its entries with the bundle, and it can be saved as JSON.
 */
export async function decodeHistory<T extends object>(
  history: T,
  codecs: PayloadCodec | readonly PayloadCodec[],
): Promise<T> {
  const found: Array<{ holder: Record<string, unknown>; key: string; payload: Payload }> = [];
  const walk = (node: unknown): void => {
    if (typeof node !== 'object' || node === null || node instanceof Uint8Array) return;
    for (const [key, value] of Object.entries(node)) {
      if (isPayload(value)) found.push({ holder: node as Record<string, unknown>, key, payload: value });
      else walk(value);
    }
  };
  walk(history);
  // Codecs decode in the reverse of their encoding order, as Temporal's own data converter does.
  let decoded = found.map((f) => f.payload);
  const list: readonly PayloadCodec[] = 'decode' in codecs ? [codecs] : codecs;
  for (const codec of [...list].reverse()) decoded = await codec.decode(decoded);
  found.forEach((f, i) => {
    f.holder[f.key] = decoded[i];
  });
  return history;
}
