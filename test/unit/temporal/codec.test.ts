// The payload codec and its keyring: AES-256-GCM round trips, a fresh IV per payload, rotation
// in which the new key encrypts and the old ones still decrypt (in a process that was running
// when the rotation happened too), plain payloads passed through, and clear errors for an
// unknown key id and for altered bytes.
import assert from 'node:assert/strict';
import { chmodSync, mkdtempSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { defaultPayloadConverter, type Payload } from '@temporalio/common';
import { ERROR_CODES } from '../../../src/errors.ts';
import {
  ensurePayloadKeyring,
  generatePayloadKeyring,
  loadPayloadKeys,
  rotatePayloadKeyring,
} from '../../../src/keys/payload-keyring.ts';
import {
  decodeHistory,
  ENCRYPTED_ENCODING,
  KEY_ID_METADATA,
  payloadCodecFor,
} from '../../../src/temporal/codec.ts';

const fresh = (): string => mkdtempSync(join(tmpdir(), 'clawgate-payload-keys-'));
const text = (bytes: Uint8Array | null | undefined): string => Buffer.from(bytes ?? []).toString('utf8');
const REQUEST = 'summarise the secret quarterly numbers';

function jsonPayload(value: unknown): Payload {
  return defaultPayloadConverter.toPayload(value);
}

test('the keyring: a 0700 folder, 0600 key files of 32 bytes, a keyring.json naming the active key', () => {
  const dir = fresh();
  const kid = ensurePayloadKeyring(dir);
  assert.match(kid ?? '', /^[0-9a-f]{16}$/);
  assert.equal(ensurePayloadKeyring(dir), null, 'an existing keyring is left as it is');
  assert.throws(() => generatePayloadKeyring(dir), /already exists.*keys rotate --purpose payload/);
  const folder = join(dir, 'payload');
  assert.equal(statSync(folder).mode & 0o777, 0o700);
  for (const file of readdirSync(folder))
    assert.equal(statSync(join(folder, file)).mode & 0o777, 0o600, file);
  assert.deepEqual(readdirSync(folder).sort(), [`${kid}.key`, 'keyring.json']);
  const keyring = JSON.parse(readFileSync(join(folder, 'keyring.json'), 'utf8')) as { active: string };
  assert.equal(keyring.active, kid);
  assert.equal(loadPayloadKeys(dir).active.key.length, 32);
});

test('a payload round-trips, encrypted: binary/encrypted, the key id, and no plaintext in the bytes', async () => {
  const dir = fresh();
  const kid = ensurePayloadKeyring(dir);
  const codec = payloadCodecFor(dir);
  const original = jsonPayload({ request: REQUEST });
  const [encrypted] = await codec.encode([original]);
  assert.ok(encrypted);
  assert.equal(text(encrypted.metadata?.['encoding']), ENCRYPTED_ENCODING);
  assert.equal(text(encrypted.metadata?.[KEY_ID_METADATA]), kid);
  assert.ok(!Buffer.from(encrypted.data ?? []).includes(Buffer.from('secret')), 'the data is ciphertext');
  assert.ok(!Buffer.from(encrypted.data ?? []).includes(Buffer.from('json/plain')), 'the encoding is inside');
  const [decoded] = await codec.decode([encrypted]);
  assert.ok(decoded);
  assert.deepEqual(defaultPayloadConverter.fromPayload(decoded), { request: REQUEST });
  assert.equal(text(decoded.metadata?.['encoding']), 'json/plain');
  // A fresh IV for each payload: the same value encrypts to different bytes.
  const [again] = await codec.encode([original]);
  assert.notDeepEqual(Buffer.from(again?.data ?? []), Buffer.from(encrypted.data ?? []));
  assert.deepEqual(await codec.decode([]), []);
});

test('a payload that is not encrypted passes through decoding unchanged (histories from before)', async () => {
  const dir = fresh();
  ensurePayloadKeyring(dir);
  const plain = [
    jsonPayload({ request: REQUEST }),
    jsonPayload(null),
    { metadata: {}, data: new Uint8Array() },
  ];
  assert.deepEqual(await payloadCodecFor(dir).decode(plain), plain);
});

test('after rotation the new key encrypts and the old one still decrypts, in a process running all along', async () => {
  const dir = fresh();
  const first = ensurePayloadKeyring(dir);
  const running = payloadCodecFor(dir);
  const [old] = await running.encode([jsonPayload(REQUEST)]);
  const { kid, retired } = rotatePayloadKeyring(dir);
  assert.equal(retired, first);
  assert.notEqual(kid, first);
  const [fresher] = await running.encode([jsonPayload(REQUEST)]);
  assert.equal(text(fresher?.metadata?.[KEY_ID_METADATA]), kid, 'the running codec took up the new key');
  for (const codec of [running, payloadCodecFor(dir)]) {
    const decoded = await codec.decode([old as Payload, fresher as Payload]);
    assert.deepEqual(
      decoded.map((p) => defaultPayloadConverter.fromPayload(p)),
      [REQUEST, REQUEST],
    );
  }
  const keyring = JSON.parse(readFileSync(join(dir, 'payload', 'keyring.json'), 'utf8')) as {
    active: string;
    keys: Array<{ kid: string; retired_at: string | null }>;
  };
  assert.equal(keyring.active, kid);
  assert.deepEqual(
    keyring.keys.map((k) => [k.kid, k.retired_at === null]),
    [
      [first, false],
      [kid, true],
    ],
  );
});

test('a payload of a key the keyring does not hold fails with an error naming the key id', async () => {
  const [encrypted] = await payloadCodecFor(((d) => (ensurePayloadKeyring(d), d))(fresh())).encode([
    jsonPayload(REQUEST),
  ]);
  const kid = text(encrypted?.metadata?.[KEY_ID_METADATA]);
  const other = fresh();
  ensurePayloadKeyring(other);
  await assert.rejects(
    payloadCodecFor(other).decode([encrypted as Payload]),
    (error: Error & { code?: string }) => {
      assert.equal(error.code, ERROR_CODES.payloadKeyUnknown);
      assert.match(
        error.message,
        new RegExp(`payload key ${kid}, which the payload keyring in ${other} does not hold`),
      );
      return true;
    },
  );
});

test('altered ciphertext, IV or tag, or a truncated payload, fails with a clear error', async () => {
  const dir = fresh();
  ensurePayloadKeyring(dir);
  const codec = payloadCodecFor(dir);
  const [encrypted] = await codec.encode([jsonPayload({ request: REQUEST })]);
  const data = Buffer.from(encrypted?.data ?? []);
  for (const at of [0, 12, Math.floor(data.length / 2), data.length - 1]) {
    const altered = Buffer.from(data);
    altered[at] = (altered[at] as number) ^ 0x01;
    await assert.rejects(
      codec.decode([{ ...encrypted, data: altered }]),
      (error: Error & { code?: string }) => {
        assert.equal(error.code, ERROR_CODES.payloadUndecryptable);
        assert.match(error.message, /fails its authentication check: its bytes were altered/);
        return true;
      },
      `byte ${at}`,
    );
  }
  await assert.rejects(
    codec.decode([{ ...encrypted, data: data.subarray(0, 20) }]),
    /shorter than its IV and tag/,
  );
  const noKid = { metadata: { encoding: Buffer.from(ENCRYPTED_ENCODING) }, data };
  await assert.rejects(codec.decode([noKid]), /has no encryption-key-id metadata/);
});

test('a key file others can read, or one of the wrong length, is refused', async () => {
  const dir = fresh();
  const kid = ensurePayloadKeyring(dir) as string;
  chmodSync(join(dir, 'payload', `${kid}.key`), 0o644);
  await assert.rejects(
    payloadCodecFor(dir).encode([jsonPayload(1)]),
    /has mode 644; a payload key must be readable by its owner only/,
  );
  chmodSync(join(dir, 'payload', `${kid}.key`), 0o600);
  writeFileSync(join(dir, 'payload', `${kid}.key`), `${Buffer.alloc(16).toString('base64url')}\n`);
  await assert.rejects(
    payloadCodecFor(dir).encode([jsonPayload(1)]),
    /does not hold a 32-byte key \(base64url\); it holds 16 bytes/,
  );
  assert.throws(
    () => rotatePayloadKeyring(fresh()),
    /no payload keyring in .*clawgate keys generate --purpose payload/,
  );
});

test('decodeHistory decrypts every payload of a history in place, wherever it sits', async () => {
  const dir = fresh();
  ensurePayloadKeyring(dir);
  const codec = payloadCodecFor(dir);
  const enc = async (value: unknown) => (await codec.encode([jsonPayload(value)]))[0] as Payload;
  const history = {
    events: [
      {
        workflowExecutionStartedEventAttributes: {
          input: { payloads: [await enc({ request: REQUEST }), await enc(2)] },
          header: { fields: { trace: await enc('t') } },
          searchAttributes: { indexedFields: { ClawgateJobId: jsonPayload('j1') } },
        },
      },
      { activityTaskCompletedEventAttributes: { result: { payloads: [jsonPayload('already plain')] } } },
    ],
  };
  await decodeHistory(history, codec);
  const started = history.events[0]?.workflowExecutionStartedEventAttributes;
  assert.deepEqual(
    started?.input.payloads.map((p) => defaultPayloadConverter.fromPayload(p)),
    [{ request: REQUEST }, 2],
  );
  assert.equal(defaultPayloadConverter.fromPayload(started?.header.fields.trace), 't');
  assert.equal(
    defaultPayloadConverter.fromPayload(started?.searchAttributes.indexedFields.ClawgateJobId),
    'j1',
  );
  assert.equal(
    defaultPayloadConverter.fromPayload(
      history.events[1]?.activityTaskCompletedEventAttributes?.result.payloads[0] as Payload,
    ),
    'already plain',
  );
});
