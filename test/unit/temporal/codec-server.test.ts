// The codec server over HTTP: Temporal's remote codec protocol (encode and decode round trip,
// a failure's encrypted message and stack trace),
// CORS for the Web UI's origin only, another origin refused, a caller without the origin let in
// by the state folder's bearer token only, and precise 400s for malformed bodies.
import assert from 'node:assert/strict';
import { mkdtempSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { ApplicationFailure, defaultPayloadConverter, type Payload } from '@temporalio/common';
import { ensurePayloadKeyring } from '../../../src/keys/payload-keyring.ts';
import { ENCRYPTED_ENCODING, payloadCodecFor } from '../../../src/temporal/codec.ts';
import {
  ensureCodecToken,
  startCodecServer,
  type RunningCodecServer,
} from '../../../src/temporal/codec-server.ts';
import { failureConverter } from '../../../src/temporal/failure-converter.ts';

const UI = 'http://127.0.0.1:8233';
const REQUEST = 'rotate the production database password';
let server: RunningCodecServer;
let token: string;
let keysDir: string;

before(async () => {
  const dir = mkdtempSync(join(tmpdir(), 'clawgate-codec-server-'));
  keysDir = join(dir, 'keys');
  ensurePayloadKeyring(keysDir);
  token = ensureCodecToken(join(dir, 'codec-server.token'));
  assert.equal(statSync(join(dir, 'codec-server.token')).mode & 0o777, 0o600);
  assert.equal(ensureCodecToken(join(dir, 'codec-server.token')), token, 'the token is kept');
  server = await startCodecServer({
    host: '127.0.0.1',
    port: 0,
    uiOrigin: UI,
    token,
    codec: payloadCodecFor(keysDir),
    maxBodyBytes: 64 * 1024,
  });
});

after(async () => {
  await server.close();
});

const asJson = (payloads: Payload[]) => ({
  payloads: payloads.map((p) => ({
    metadata: Object.fromEntries(
      Object.entries(p.metadata ?? {}).map(([k, v]) => [k, Buffer.from(v).toString('base64')]),
    ),
    data: Buffer.from(p.data ?? []).toString('base64'),
  })),
});
const fromJson = (body: { payloads: Array<{ metadata: Record<string, string>; data: string }> }): Payload[] =>
  body.payloads.map((p) => ({
    metadata: Object.fromEntries(Object.entries(p.metadata).map(([k, v]) => [k, Buffer.from(v, 'base64')])),
    data: Buffer.from(p.data, 'base64'),
  }));

function post(
  path: string,
  body: string,
  headers: Record<string, string> = { origin: UI },
): Promise<Response> {
  return fetch(`${server.url}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-namespace': 'default', ...headers },
    body,
  });
}

test('decode over HTTP: what the workers encrypted reads as the original payload, for the Web UI', async () => {
  const original = defaultPayloadConverter.toPayload({ request: REQUEST });
  const encrypted = await payloadCodecFor(keysDir).encode([original]);
  const res = await post('/decode', JSON.stringify(asJson(encrypted)));
  assert.equal(res.status, 200);
  assert.equal(res.headers.get('access-control-allow-origin'), UI);
  const decoded = fromJson((await res.json()) as Parameters<typeof fromJson>[0]);
  assert.deepEqual(defaultPayloadConverter.fromPayload(decoded[0] as Payload), { request: REQUEST });
  // And back: /encode gives an encrypted payload that /decode reads again.
  const encodedRes = await post('/encode', JSON.stringify(asJson([original])));
  assert.equal(encodedRes.status, 200);
  const encodedBody = (await encodedRes.json()) as Parameters<typeof fromJson>[0];
  assert.equal(
    Buffer.from(encodedBody.payloads[0]?.metadata['encoding'] ?? '', 'base64').toString(),
    ENCRYPTED_ENCODING,
  );
  assert.ok(!JSON.stringify(encodedBody).includes(Buffer.from(REQUEST).toString('base64').slice(0, 16)));
  const again = await post('/decode', JSON.stringify(encodedBody));
  const roundTrip = fromJson((await again.json()) as Parameters<typeof fromJson>[0]);
  assert.deepEqual(defaultPayloadConverter.fromPayload(roundTrip[0] as Payload), { request: REQUEST });
});

test("a failure as clawgate's workers send it: its message and stack trace only in its encrypted attributes, which /decode reads for the Web UI", async () => {
  const error = ApplicationFailure.nonRetryable(`cannot ${REQUEST}`, 'STEP_FAILED');
  const failure = failureConverter.errorToFailure(error, defaultPayloadConverter);
  assert.equal(failure.message, 'Encoded failure');
  assert.equal(failure.stackTrace, '');
  assert.equal(failure.applicationFailureInfo?.type, 'STEP_FAILED', 'its type stays readable');
  // The SDK encodes the attributes with the data converter's codec, as any payload.
  const encrypted = await payloadCodecFor(keysDir).encode([failure.encodedAttributes as Payload]);
  assert.ok(
    !Buffer.from(encrypted[0]?.data ?? [])
      .toString('latin1')
      .includes(REQUEST),
  );
  const res = await post('/decode', JSON.stringify(asJson(encrypted)));
  assert.equal(res.status, 200);
  const [attributes] = fromJson((await res.json()) as Parameters<typeof fromJson>[0]);
  const { message, stack_trace } = defaultPayloadConverter.fromPayload<Record<string, string>>(
    attributes as Payload,
  );
  assert.equal(message, `cannot ${REQUEST}`);
  assert.match(stack_trace ?? '', /codec-server\.test\.ts/);
  // And the failure, its attributes decoded, is the error again.
  const back = failureConverter.failureToError(
    { ...failure, encodedAttributes: attributes },
    defaultPayloadConverter,
  );
  assert.equal(back.message, `cannot ${REQUEST}`);
});

test("CORS preflight: the Web UI's origin gets its methods and headers; another origin is refused", async () => {
  const preflight = await fetch(`${server.url}/decode`, {
    method: 'OPTIONS',
    headers: {
      origin: UI,
      'access-control-request-method': 'POST',
      'access-control-request-headers': 'content-type,x-namespace,authorization',
    },
  });
  assert.equal(preflight.status, 204);
  assert.equal(preflight.headers.get('access-control-allow-origin'), UI);
  assert.equal(preflight.headers.get('access-control-allow-methods'), 'POST, OPTIONS');
  assert.equal(
    preflight.headers.get('access-control-allow-headers'),
    'content-type, x-namespace, authorization',
  );
  assert.equal(preflight.headers.get('vary'), 'Origin');
  for (const method of ['OPTIONS', 'POST']) {
    const other = await fetch(`${server.url}/decode`, {
      method,
      headers: { origin: 'https://evil.example', 'content-type': 'application/json' },
      ...(method === 'POST' ? { body: JSON.stringify({ payloads: [] }) } : {}),
    });
    assert.equal(other.status, 403, method);
    assert.equal(other.headers.get('access-control-allow-origin'), null, method);
    assert.match(
      ((await other.json()) as { error: string }).error,
      /origin https:\/\/evil\.example is not the Temporal Web UI/,
    );
  }
  // Another port of the same host is another origin.
  const port = await post('/decode', JSON.stringify({ payloads: [] }), { origin: 'http://127.0.0.1:8234' });
  assert.equal(port.status, 403);
});

test('without the Web UI origin, only the bearer token of the state folder is let in', async () => {
  const body = JSON.stringify({ payloads: [] });
  const none = await post('/decode', body, {});
  assert.equal(none.status, 401);
  assert.match(((await none.json()) as { error: string }).error, /no Origin and no bearer token/);
  const wrong = await post('/decode', body, { authorization: `Bearer ${'x'.repeat(token.length)}` });
  assert.equal(wrong.status, 403);
  assert.match(((await wrong.json()) as { error: string }).error, /not the codec server token/);
  const right = await post('/decode', body, { authorization: `Bearer ${token}` });
  assert.equal(right.status, 200);
  assert.deepEqual(await right.json(), { payloads: [] });
  assert.equal(right.headers.get('access-control-allow-origin'), null, 'no CORS for a non-browser caller');
});

test('malformed bodies get 400 with what was wrong; wrong paths, methods and types their own answers', async () => {
  const cases: Array<[string, RegExp]> = [
    ['{', /^the body is not JSON/],
    ['[]', /the body must be a JSON object/],
    ['{"payloads": 3}', /^payloads: must be an array$/],
    ['{"payloads": [7]}', /^payloads\[0\]: must be an object/],
    ['{"payloads": [{"metadata": [], "data": ""}]}', /^payloads\[0\]\.metadata: must be an object/],
    [
      '{"payloads": [{"metadata": {"encoding": "%%%"}, "data": ""}]}',
      /^payloads\[0\]\.metadata\.encoding: not a base64 string$/,
    ],
    ['{"payloads": [{"metadata": {}, "data": 12}]}', /^payloads\[0\]\.data: not a base64 string$/],
  ];
  for (const [body, message] of cases) {
    const res = await post('/decode', body);
    assert.equal(res.status, 400, body);
    assert.equal(res.headers.get('access-control-allow-origin'), UI, 'the Web UI can read why');
    assert.match(((await res.json()) as { error: string }).error, message, body);
  }
  const tampered = await payloadCodecFor(keysDir).encode([defaultPayloadConverter.toPayload(REQUEST)]);
  const data = Buffer.from(tampered[0]?.data ?? []);
  data[20] = (data[20] as number) ^ 1;
  const undecryptable = await post('/decode', JSON.stringify(asJson([{ ...tampered[0], data }])));
  assert.equal(undecryptable.status, 422);
  assert.match(
    ((await undecryptable.json()) as { error: string }).error,
    /^cannot decode the payloads: .*altered/,
  );
  const big = await post('/decode', JSON.stringify({ payloads: [{ data: 'A'.repeat(70 * 1024) }] }));
  assert.equal(big.status, 413);
  assert.equal((await fetch(`${server.url}/other`, { method: 'POST', headers: { origin: UI } })).status, 404);
  assert.equal((await fetch(`${server.url}/decode`, { headers: { origin: UI } })).status, 405);
  const type = await post('/decode', 'payloads', { origin: UI, 'content-type': 'text/plain' });
  assert.equal(type.status, 415);
  // Still answering after all of it.
  assert.equal((await post('/decode', JSON.stringify({ payloads: [] }))).status, 200);
});
