// The proxy's Clawsig receipts, end to end over HTTP: the real proxy server and receipt store,
// the local demo upstream, real capability tokens and real keyrings. A job's sealer (a bundle
// key) asks POST /v1/clawsig/receipts for the job's receipts as Clawsig gateway receipts, bound
// to its event chain; with `clawsigReceipts` on, GET /v1/receipts also gives each receipt in that
// form, bound to what the call's X-Run-Id, X-Event-Hash and X-Idempotency-Key headers said.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { readdirSync, readFileSync, mkdtempSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { Ajv2020, type ValidateFunction } from 'ajv/dist/2020.js';
import addFormats from 'ajv-formats';
import {
  CLAWSIG_BINDING_JWS_TYPE,
  envelopeProblem,
  hexToB64u,
  sha256B64u,
  type ClawsigEnvelope,
  type GatewayReceiptPayload,
} from '../../src/evidence/clawsig.ts';
import { didKeyFromJwkX } from '../../src/evidence/did.ts';
import { canonicalBytes, signCompactJws, type Ed25519Signer, type Jwks } from '../../src/evidence/jws.ts';
import {
  generateKeyring,
  loadSigner,
  publicJwks,
  rotateKeyring,
  type Signer,
} from '../../src/keys/keyring.ts';
import { FilePolicyRegistry, signWpc } from '../../src/policy/registry.ts';
import { parseWpc } from '../../src/policy/wpc.ts';
import { RECEIPT_JWS_TYPE, verifyReceipt, type SignedReceipt } from '../../src/proxy/receipts.ts';
import { PROXY_ERRORS, type VerifyCallToken } from '../../src/proxy/server.ts';
import { cstVerifier, registryPolicySource } from '../../src/proxy/token-check.ts';
import { mintCapabilityToken } from '../../src/tokens/cst.ts';
import { FileRevocationStore } from '../../src/tokens/revocations.ts';
import { startProxyUnderTest, type ProxyUnderTest } from './proxy-harness.ts';

type Envelope = ClawsigEnvelope<GatewayReceiptPayload>;
type Binding = GatewayReceiptPayload['binding'] & Record<string, unknown>;

// ---------------------------------------------------------------------------------------------
// Keys, policy and tokens: the real keyrings, registry and CST code.

let keysDir: string;
let bundleSigner: Signer;
let tokenSigner: Signer;
let bundleJwks: Jwks;
let verifyToken: VerifyCallToken;
let policyHash: string;

async function setUpKeysAndPolicy(): Promise<void> {
  const state = mkdtempSync(join(tmpdir(), 'clawgate-clawsig-'));
  keysDir = join(state, 'keys');
  for (const purpose of ['token', 'policy', 'bundle'] as const) await generateKeyring(keysDir, purpose);
  tokenSigner = loadSigner(keysDir, 'token');
  bundleSigner = loadSigner(keysDir, 'bundle');
  bundleJwks = publicJwks(keysDir, ['bundle']);
  const example = JSON.parse(
    readFileSync(new URL('../../examples/policy.json', import.meta.url), 'utf8'),
  ) as Record<string, any>;
  example['model_access'].allowed_models = ['demo-echo'];
  const registry = new FilePolicyRegistry(join(state, 'registry'));
  const { hash } = await registry.register(
    signWpc(parseWpc(example), loadSigner(keysDir, 'policy')),
    publicJwks(keysDir, ['policy']),
  );
  registry.activate('matrix', hash);
  policyHash = hash;
  verifyToken = cstVerifier({
    jwks: publicJwks(keysDir, ['token']),
    revocations: new FileRevocationStore(join(state, 'revocations.log')),
    policies: registryPolicySource(registry, 'matrix'),
  });
}

/** A real capability token of a job (its run id `run-<workflow id>` unless named). */
async function mint(
  workflowId: string,
  runId = `run-${workflowId}`,
): Promise<{ token: string; jti: string }> {
  const { token, claims } = await mintCapabilityToken(
    {
      purpose: 'planning',
      job: { workflowId, runId },
      roomId: '!ops:localhost',
      scope: { tools: [], models: ['demo-echo'] },
      wpcHash: policyHash,
    },
    tokenSigner,
  );
  return { token, jti: claims.jti };
}

// ---------------------------------------------------------------------------------------------
// The public Clawsig v1 schema of a gateway receipt envelope (test/fixtures/clawsig).

let envelopeValidator: ValidateFunction | undefined;
function envelopeSchemaErrors(envelope: unknown): string[] {
  if (!envelopeValidator) {
    const dir = new URL('../fixtures/clawsig/', import.meta.url);
    const ajv = new Ajv2020({ strict: false, allErrors: true });
    (addFormats as unknown as (a: Ajv2020) => void)(ajv);
    const wanted = ['gateway_receipt_envelope.v1.json', 'gateway_receipt.v1.json', 'receipt_binding.v1.json'];
    const schemas = readdirSync(dir)
      .filter((f) => wanted.includes(f))
      .map((f) => JSON.parse(readFileSync(new URL(f, dir), 'utf8')) as { $id: string });
    assert.equal(schemas.length, wanted.length, 'the Clawsig schemas are in test/fixtures/clawsig');
    const ids = new Set(schemas.map((s) => s.$id));
    const refs = new Set<string>();
    const walk = (v: unknown): void => {
      if (Array.isArray(v)) v.forEach(walk);
      else if (v && typeof v === 'object') {
        for (const [k, x] of Object.entries(v)) {
          if (k === '$ref' && typeof x === 'string') refs.add(x);
          else walk(x);
        }
      }
    };
    schemas.forEach(walk);
    for (const s of schemas) ajv.addSchema(s);
    // Parts a receipt of this proxy never holds (model identity, log proofs): matched by nothing.
    for (const ref of refs) if (!ids.has(ref)) ajv.addSchema({ $id: ref, not: {} });
    envelopeValidator = ajv.getSchema(
      'https://schemas.clawbureau.org/claw.poh.gateway_receipt_envelope.v1.json',
    );
    assert.ok(envelopeValidator);
  }
  if (envelopeValidator(envelope)) return [];
  return (envelopeValidator.errors ?? []).map((e) => `${e.instancePath}: ${e.message ?? ''}`);
}

// ---------------------------------------------------------------------------------------------
// Calls.

const chatBody = (text: string, stream = false): string =>
  JSON.stringify({
    model: 'demo-echo',
    messages: [{ role: 'user', content: text }],
    ...(stream ? { stream: true } : {}),
  });

interface Call {
  status: number;
  bytes: Buffer;
  receiptId: string;
}

/** A model call through a proxy under test, read whole; its receipt id from the response. */
async function call(
  via: ProxyUnderTest,
  token: string | undefined,
  text: string,
  opts: { stream?: boolean; headers?: HeadersInit } = {},
): Promise<Call> {
  const headers = new Headers(opts.headers);
  headers.set('content-type', 'application/json');
  if (token) headers.set('authorization', `Bearer ${token}`);
  const response = await fetch(`${via.proxy.url}/v1/chat/completions`, {
    method: 'POST',
    headers,
    body: chatBody(text, opts.stream),
  });
  const bytes = Buffer.from(await response.arrayBuffer());
  const receiptId = response.headers.get('x-clawgate-receipt-id');
  assert.ok(receiptId, `the call has a receipt (${response.status} ${bytes.toString().slice(0, 200)})`);
  return { status: response.status, bytes, receiptId };
}

/** A receipt as the proxy stored it, its signature checked with the proxy's public key. */
async function stored(via: ProxyUnderTest, receiptId: string): Promise<SignedReceipt> {
  const found = via.proxy.store.get(receiptId);
  assert.ok(found, `receipt ${receiptId} is in the store`);
  return await verifyReceipt(found.jws, via.jwks);
}

interface BindingItem {
  receipt_id: string;
  event_hash_b64u: string;
  span_id: string;
  parent_span_id: string | null;
  phase: 'planning' | 'execution';
}

const nowSeconds = (): number => Math.floor(Date.now() / 1000);

/** A binding request's payload for a job's receipts. */
function bindingPayload(
  job: { workflow_id: string; run_id: string },
  receipts: BindingItem[],
  opts: { run_id?: string; iat?: number } = {},
): Record<string, unknown> {
  return { job, run_id: opts.run_id ?? job.run_id, iat: opts.iat ?? nowSeconds(), receipts };
}

/** A binding request: the payload's canonical JSON as a compact JWS (by the bundle key unless named). */
function signBinding(
  payload: unknown,
  signer: Ed25519Signer = bundleSigner,
  typ: string = CLAWSIG_BINDING_JWS_TYPE,
): string {
  return signCompactJws(canonicalBytes(payload), signer, typ);
}

interface Answer {
  status: number;
  text: string;
  json: { receipts?: Envelope[]; error?: { code: string; message: string } };
}

async function postBinding(via: ProxyUnderTest, body: string): Promise<Answer> {
  const response = await fetch(`${via.proxy.url}/v1/clawsig/receipts`, {
    method: 'POST',
    headers: { 'content-type': 'application/jose' },
    body,
  });
  const text = await response.text();
  return { status: response.status, text, json: JSON.parse(text) as Answer['json'] };
}

function assertRefused(answer: Answer, status: number, code: string): void {
  assert.equal(answer.status, status, answer.text);
  assert.equal(answer.json.error?.code, code, answer.text);
  assert.ok((answer.json.error?.message.length ?? 0) > 10, 'the refusal says why');
  assert.equal(answer.json.receipts, undefined, 'no receipt is signed');
}

/** GET /v1/receipts of the token's job. */
async function listReceipts(
  via: ProxyUnderTest,
  token: string,
): Promise<Array<{ receipt_id: string; job_id: string; jws: string; clawsig?: Envelope }>> {
  const response = await fetch(`${via.proxy.url}/v1/receipts`, {
    headers: { authorization: `Bearer ${token}` },
  });
  assert.equal(response.status, 200);
  return (
    (await response.json()) as {
      receipts: Array<{ receipt_id: string; job_id: string; jws: string; clawsig?: Envelope }>;
    }
  ).receipts;
}

const receiptDid = (via: ProxyUnderTest): string => {
  const x = via.jwks.keys[0]?.x;
  assert.ok(x);
  return didKeyFromJwkX(x);
};
const bundleDid = (): string => {
  const x = bundleJwks.keys[0]?.x;
  assert.ok(x);
  return didKeyFromJwkX(x);
};

/** An envelope's facts are those of the proxy's own stored receipt, and it verifies. */
function assertFactsOf(via: ProxyUnderTest, envelope: Envelope, receipt: SignedReceipt): void {
  assert.equal(envelopeProblem(envelope), null, 'the envelope verifies with its did:key');
  assert.deepEqual(envelopeSchemaErrors(envelope), [], 'the envelope is a valid Clawsig gateway receipt');
  assert.equal(envelope.envelope_type, 'gateway_receipt');
  assert.equal(envelope.signer_did, receiptDid(via), "signed by the proxy's receipt key");
  assert.notEqual(envelope.signer_did, bundleDid(), 'not by the bundle key that asked');
  const r = receipt.payload;
  const p = envelope.payload;
  assert.equal(p.receipt_id, r.receipt_id);
  assert.equal(p.gateway_id, r.proxy_id);
  assert.equal(p.model, r.model ?? 'none');
  assert.equal(p.provider, r.upstream?.name ?? 'none');
  assert.equal(p.tokens_input, r.usage?.prompt_tokens ?? 0);
  assert.equal(p.tokens_output, r.usage?.completion_tokens ?? 0);
  assert.equal(p.request_hash_b64u, r.request_sha256 ? hexToB64u(r.request_sha256) : sha256B64u(''));
  assert.equal(p.response_hash_b64u, r.response_sha256 ? hexToB64u(r.response_sha256) : sha256B64u(''));
  assert.equal(p.latency_ms, Date.parse(r.ended_at) - Date.parse(r.started_at));
  assert.equal(p.timestamp, r.started_at);
  assert.equal(envelope.issued_at, r.ended_at);
  assert.deepEqual(p.metadata.clawgate, {
    status: r.status,
    http_status: r.http_status,
    receipt_sha256: receipt.payloadSha256,
    prev_receipt_sha256: r.prev_receipt_sha256,
    token_id: r.token_id,
  });
}

// ---------------------------------------------------------------------------------------------
// The proxies: `sealing` checks binding requests with the bundle keys (Clawsig receipts off, the
// default); `headers` has Clawsig receipts on.

let sealing: ProxyUnderTest;
let headers: ProxyUnderTest;
/** A job whose one receipt shows a proxy still binds and serves after a refusal. */
let alive: { token: string; receiptId: string };

before(async () => {
  await setUpKeysAndPolicy();
  sealing = await startProxyUnderTest({ verifyToken, bindingJwks: () => bundleJwks });
  headers = await startProxyUnderTest({
    verifyToken,
    bindingJwks: () => bundleJwks,
    config: { clawsigReceipts: true },
  });
  const { token } = await mint('job-alive');
  alive = { token, receiptId: (await call(sealing, token, 'still here')).receiptId };
});
after(async () => {
  await sealing?.close();
  await headers?.close();
});

/** The proxy still binds receipts and answers model calls. */
async function assertStillServes(via: ProxyUnderTest = sealing): Promise<void> {
  const answer = await postBinding(
    sealing,
    signBinding(
      bindingPayload({ workflow_id: 'job-alive', run_id: 'run-job-alive' }, [
        {
          receipt_id: alive.receiptId,
          event_hash_b64u: sha256B64u('alive'),
          span_id: alive.receiptId,
          parent_span_id: null,
          phase: 'planning',
        },
      ]),
    ),
  );
  assert.equal(answer.status, 200, answer.text);
  assert.equal(answer.json.receipts?.length, 1);
  assert.equal(envelopeProblem(answer.json.receipts?.[0] as Envelope), null);
  const again = await call(via, alive.token, 'and still serving');
  assert.equal(again.status, 200);
}

// ---------------------------------------------------------------------------------------------

describe('POST /v1/clawsig/receipts: a sealer binds its job’s receipts', () => {
  test('two calls of a job come back as two gateway receipts signed by the receipt key, facts from the proxy’s own receipts, bound as asked; asking again gives the same bytes', async () => {
    const { token, jti } = await mint('job-seal', 'run-seal-1');
    const first = await call(sealing, token, 'plan the work');
    const second = await call(sealing, token, 'do the work now, step by step', { stream: true });
    assert.equal(first.status, 200);
    assert.equal(second.status, 200);
    const r1 = await stored(sealing, first.receiptId);
    const r2 = await stored(sealing, second.receiptId);
    assert.ok(r1.payload.usage && r2.payload.usage, 'the upstream reported usage');
    assert.equal(r2.payload.prev_receipt_sha256, r1.payloadSha256, 'one chain');

    const asked: BindingItem[] = [
      {
        receipt_id: first.receiptId,
        event_hash_b64u: sha256B64u('event of the first call'),
        span_id: first.receiptId,
        parent_span_id: null,
        phase: 'planning',
      },
      {
        receipt_id: second.receiptId,
        event_hash_b64u: sha256B64u('event of the second call'),
        span_id: `span-${second.receiptId}`,
        parent_span_id: first.receiptId,
        phase: 'execution',
      },
    ];
    const job = { workflow_id: 'job-seal', run_id: 'run-seal-1' };
    const answer = await postBinding(
      sealing,
      signBinding(bindingPayload(job, asked, { run_id: 'clawsig-run-7' })),
    );
    assert.equal(answer.status, 200, answer.text);
    const envelopes = answer.json.receipts ?? [];
    assert.equal(envelopes.length, 2);

    for (const [i, receipt] of [r1, r2].entries()) {
      const envelope = envelopes[i] as Envelope;
      const want = asked[i] as BindingItem;
      assertFactsOf(sealing, envelope, receipt);
      assert.equal(envelope.payload.model, 'demo-echo');
      assert.equal(envelope.payload.provider, 'demo');
      assert.equal(envelope.payload.tokens_input, receipt.payload.usage?.prompt_tokens);
      assert.equal(envelope.payload.tokens_output, receipt.payload.usage?.completion_tokens);
      assert.equal(envelope.payload.request_hash_b64u, hexToB64u(receipt.payload.request_sha256 ?? ''));
      assert.equal(envelope.payload.response_hash_b64u, hexToB64u(receipt.payload.response_sha256 ?? ''));
      assert.equal(envelope.payload.metadata.clawgate.token_id, jti);
      const binding = envelope.payload.binding as Binding;
      assert.equal(binding.run_id, 'clawsig-run-7', 'the run id asked');
      assert.equal(binding.event_hash_b64u, want.event_hash_b64u);
      assert.equal(binding.span_id, want.span_id);
      assert.equal(binding.phase, want.phase);
      assert.equal(binding.policy_hash, policyHash, "the job's policy");
      assert.equal(binding.nonce, receipt.payload.receipt_id, 'the receipt id is the nonce');
    }
    assert.equal(
      'parent_span_id' in (envelopes[0]?.payload.binding ?? {}),
      false,
      'the first span has no parent',
    );
    assert.equal((envelopes[1]?.payload.binding as Binding).parent_span_id, first.receiptId);
    // The first is the planning call's JSON answer, the second a stream: both sets of tokens counted.
    assert.ok((envelopes[1]?.payload.tokens_output ?? 0) >= 5);

    // Each envelope verifies only as it is: a changed fact or a changed signer fails.
    const envelope = envelopes[0] as Envelope;
    const forged = {
      ...envelope,
      payload: { ...envelope.payload, tokens_output: envelope.payload.tokens_output + 1 },
    };
    assert.match(envelopeProblem(forged) ?? '', /payload_hash_b64u/);
    assert.match(envelopeProblem({ ...envelope, signer_did: bundleDid() }) ?? '', /signature/);

    // Asked again (another request, a second later): the same bytes.
    const again = await postBinding(
      sealing,
      signBinding(bindingPayload(job, asked, { run_id: 'clawsig-run-7', iat: nowSeconds() - 1 })),
    );
    assert.equal(again.status, 200, again.text);
    assert.equal(again.text, answer.text, 'byte-identical envelopes');
    for (const [i, e] of envelopes.entries()) {
      assert.equal(JSON.stringify(again.json.receipts?.[i]), JSON.stringify(e));
    }

    // In another order, the same envelopes in that order; one alone, the same envelope.
    const reversed = await postBinding(
      sealing,
      signBinding(bindingPayload(job, [...asked].reverse(), { run_id: 'clawsig-run-7' })),
    );
    assert.deepEqual(reversed.json.receipts, [...envelopes].reverse());
    const alone = await postBinding(
      sealing,
      signBinding(bindingPayload(job, [asked[1] as BindingItem], { run_id: 'clawsig-run-7' })),
    );
    assert.deepEqual(alone.json.receipts, [envelopes[1]]);
  });

  test('a request with no receipts is answered with none; one made 250 s ago or ahead is still fresh', async () => {
    const job = { workflow_id: 'job-seal', run_id: 'run-seal-1' };
    const empty = await postBinding(sealing, signBinding(bindingPayload(job, [])));
    assert.equal(empty.status, 200, empty.text);
    assert.deepEqual(empty.json, { receipts: [] });
    for (const iat of [nowSeconds() - 250, nowSeconds() + 250]) {
      const answer = await postBinding(sealing, signBinding(bindingPayload(job, [], { iat })));
      assert.equal(answer.status, 200, answer.text);
    }
  });

  test('a bundle key rotated in signs binding requests at once; the retired one still does', async () => {
    const old = bundleSigner;
    await rotateKeyring(keysDir, 'bundle');
    bundleSigner = loadSigner(keysDir, 'bundle');
    bundleJwks = publicJwks(keysDir, ['bundle']);
    try {
      assert.notEqual(bundleSigner.kid, old.kid);
      await assertStillServes();
      const job = { workflow_id: 'job-seal', run_id: 'run-seal-1' };
      const byOld = await postBinding(sealing, signBinding(bindingPayload(job, []), old));
      assert.equal(byOld.status, 200, byOld.text);
    } finally {
      // The rest of the file signs with the first key, the one bundleDid() names.
      bundleSigner = old;
      bundleJwks = { keys: publicJwks(keysDir, ['bundle']).keys.filter((k) => k.kid === old.kid) };
    }
  });
});

describe('POST /v1/clawsig/receipts: refusals, each with its status and code; the proxy serves on', () => {
  let sealedJob: { workflow_id: string; run_id: string };
  let ownReceipt: string;
  /** A receipt to bind, some of its fields replaced (wrong ones, for the malformed cases). */
  const item = (receiptId: string, extra: Record<string, unknown> = {}): BindingItem => ({
    receipt_id: receiptId,
    event_hash_b64u: sha256B64u(`event ${receiptId}`),
    span_id: receiptId,
    parent_span_id: null,
    phase: 'planning',
    ...extra,
  });
  before(async () => {
    const { token } = await mint('job-refusals');
    ownReceipt = (await call(sealing, token, 'a call of the job')).receiptId;
    sealedJob = { workflow_id: 'job-refusals', run_id: 'run-job-refusals' };
  });

  test('a proxy without bundle keys refuses every binding request: 404 CLAWSIG_BINDING_NOT_CONFIGURED', async () => {
    const plain = await startProxyUnderTest({ verifyToken });
    try {
      const { token } = await mint('job-plain');
      const { receiptId } = await call(plain, token, 'a call');
      const signed = signBinding(
        bindingPayload({ workflow_id: 'job-plain', run_id: 'run-job-plain' }, [item(receiptId)]),
      );
      assertRefused(await postBinding(plain, signed), 404, PROXY_ERRORS.bindingOff);
      assertRefused(await postBinding(plain, 'x'.repeat(4096)), 404, PROXY_ERRORS.bindingOff);
      assert.equal((await call(plain, token, 'still serving')).status, 200);
    } finally {
      await plain.close();
    }
  });

  const unsigned: Array<[string, () => string]> = [
    ['garbage', () => 'this is not a JWS at all'],
    ['an empty body', () => ''],
    [
      'a JWS signed by the receipt key',
      () => signBinding(bindingPayload(sealedJob, [item(ownReceipt)]), sealing.receiptKey),
    ],
    [
      'a JWS signed by the token key',
      () => signBinding(bindingPayload(sealedJob, [item(ownReceipt)]), tokenSigner),
    ],
    [
      'a bundle-key JWS of another type (a receipt’s)',
      () => signBinding(bindingPayload(sealedJob, [item(ownReceipt)]), bundleSigner, RECEIPT_JWS_TYPE),
    ],
    [
      'a bundle-key JWS whose payload was changed',
      () => {
        const [h, , s] = signBinding(bindingPayload(sealedJob, [item(ownReceipt)])).split('.');
        const other = canonicalBytes(
          bindingPayload({ workflow_id: 'job-alive', run_id: 'run-job-alive' }, [item(alive.receiptId)]),
        );
        return `${h}.${other.toString('base64url')}.${s}`;
      },
    ],
    [
      'a JWS by another key under the bundle key’s kid',
      () => {
        const impostor = loadSigner(keysDir, 'token');
        return signBinding(bindingPayload(sealedJob, [item(ownReceipt)]), {
          kid: bundleSigner.kid,
          key: impostor.key,
        });
      },
    ],
    [
      'a bundle-key JWS with non-canonical base64url',
      () => {
        const jws = signBinding(bindingPayload(sealedJob, [item(ownReceipt)]));
        return `${jws}=`;
      },
    ],
  ];
  for (const [what, body] of unsigned) {
    test(`${what} is refused: 401 BINDING_REQUEST_UNSIGNED`, async () => {
      assertRefused(await postBinding(sealing, body()), 401, PROXY_ERRORS.bindingUnsigned);
      await assertStillServes();
    });
  }

  for (const [what, offset] of [
    ['made 302 s ago', -302],
    ['made an hour ago', -3600],
    ['dated 302 s ahead', 302],
  ] as const) {
    test(`a request ${what} is refused: 401 BINDING_REQUEST_STALE`, async () => {
      const body = signBinding(bindingPayload(sealedJob, [item(ownReceipt)], { iat: nowSeconds() + offset }));
      assertRefused(await postBinding(sealing, body), 401, PROXY_ERRORS.bindingStale);
      await assertStillServes();
    });
  }

  const malformed: Array<[string, () => unknown]> = [
    ['no job', () => ({ run_id: 'r', iat: nowSeconds(), receipts: [] })],
    ['a job without its run id', () => bindingPayload({ workflow_id: 'job-refusals' } as never, [])],
    ['a job with another field', () => bindingPayload({ ...sealedJob, extra: 1 } as never, [])],
    ['no run id', () => ({ job: sealedJob, iat: nowSeconds(), receipts: [] })],
    ['a run id of 201 characters', () => bindingPayload(sealedJob, [], { run_id: 'r'.repeat(201) })],
    ['an iat that is a string', () => ({ ...bindingPayload(sealedJob, []), iat: String(nowSeconds()) })],
    ['an iat that is not an integer', () => bindingPayload(sealedJob, [], { iat: nowSeconds() + 0.5 })],
    ['no receipts', () => ({ job: sealedJob, run_id: 'r', iat: nowSeconds() })],
    ['receipts that are not a list', () => ({ ...bindingPayload(sealedJob, []), receipts: {} })],
    ['a field the schema does not know', () => ({ ...bindingPayload(sealedJob, []), nonce: 'n' })],
    [
      'a receipt with a nonce of its own',
      () => bindingPayload(sealedJob, [item(ownReceipt, { nonce: 'n' })]),
    ],
    [
      'a receipt of an unknown phase',
      () => bindingPayload(sealedJob, [item(ownReceipt, { phase: 'review' })]),
    ],
    [
      'a receipt without parent_span_id',
      () => bindingPayload(sealedJob, [item(ownReceipt, { parent_span_id: undefined })]),
    ],
    ['a receipt with an empty span id', () => bindingPayload(sealedJob, [item(ownReceipt, { span_id: '' })])],
    [
      'an event hash too short',
      () => bindingPayload(sealedJob, [item(ownReceipt, { event_hash_b64u: 'abc' })]),
    ],
    [
      'an event hash with padding',
      () => bindingPayload(sealedJob, [item(ownReceipt, { event_hash_b64u: `${sha256B64u('x')}=` })]),
    ],
    [
      'an event hash in base64, not base64url',
      () => bindingPayload(sealedJob, [item(ownReceipt, { event_hash_b64u: 'ab+/cdefghijk' })]),
    ],
    [
      '1001 receipts',
      () =>
        bindingPayload(
          sealedJob,
          Array.from({ length: 1001 }, () => item(ownReceipt)),
        ),
    ],
    ['a payload that is a list', () => [bindingPayload(sealedJob, [])]],
  ];
  for (const [what, payload] of malformed) {
    test(`a signed request with ${what} is refused: 400 REQUEST_MALFORMED`, async () => {
      const answer = await postBinding(
        sealing,
        signBinding(JSON.parse(JSON.stringify(payload())) as unknown),
      );
      assertRefused(answer, 400, PROXY_ERRORS.malformed);
      assert.match(answer.json.error?.message ?? '', /^binding request /);
      await assertStillServes();
    });
  }

  test('an unknown receipt id is refused: 404 RECEIPT_NOT_FOUND, and none of the others is signed', async () => {
    for (const receipts of [[item(randomUUID())], [item(ownReceipt), item(randomUUID())]]) {
      const answer = await postBinding(sealing, signBinding(bindingPayload(sealedJob, receipts)));
      assertRefused(answer, 404, PROXY_ERRORS.receiptNotFound);
    }
    // A receipt of the other proxy is not one of this one's.
    const { token } = await mint('job-refusals');
    const elsewhere = await call(headers, token, 'at the other proxy');
    assertRefused(
      await postBinding(sealing, signBinding(bindingPayload(sealedJob, [item(elsewhere.receiptId)]))),
      404,
      PROXY_ERRORS.receiptNotFound,
    );
    await assertStillServes();
  });

  test('a receipt of another job, another run of the same job, or of no job is refused: 403 RECEIPT_OF_OTHER_JOB', async () => {
    const other = await mint('job-other');
    const otherReceipt = (await call(sealing, other.token, 'another job')).receiptId;
    const run1 = await mint('job-runs', 'run-1');
    const run2 = await mint('job-runs', 'run-2');
    const ofRun1 = (await call(sealing, run1.token, 'first run')).receiptId;
    const ofRun2 = (await call(sealing, run2.token, 'second run')).receiptId;
    const noJob = await call(sealing, undefined, 'no token');
    assert.equal(noJob.status, 401);

    const cases: Array<[{ workflow_id: string; run_id: string }, string]> = [
      [sealedJob, otherReceipt],
      [{ workflow_id: 'job-other', run_id: 'run-job-refusals' }, ownReceipt],
      [{ workflow_id: 'job-runs', run_id: 'run-1' }, ofRun2],
      [{ workflow_id: 'job-runs', run_id: 'run-2' }, ofRun1],
      [sealedJob, noJob.receiptId],
    ];
    for (const [job, receiptId] of cases) {
      const answer = await postBinding(sealing, signBinding(bindingPayload(job, [item(receiptId)])));
      assertRefused(answer, 403, PROXY_ERRORS.receiptOtherJob);
    }
    // One receipt of another job among the job's own: nothing is signed.
    assertRefused(
      await postBinding(
        sealing,
        signBinding(bindingPayload(sealedJob, [item(ownReceipt), item(otherReceipt)])),
      ),
      403,
      PROXY_ERRORS.receiptOtherJob,
    );
    // Each run binds its own.
    for (const [runId, receiptId] of [
      ['run-1', ofRun1],
      ['run-2', ofRun2],
    ] as const) {
      const answer = await postBinding(
        sealing,
        signBinding(bindingPayload({ workflow_id: 'job-runs', run_id: runId }, [item(receiptId)])),
      );
      assert.equal(answer.status, 200, answer.text);
      assert.equal(answer.json.receipts?.[0]?.payload.receipt_id, receiptId);
    }
    await assertStillServes();
  });

  test('a body over the size limit is refused: 413, its length declared or not', async () => {
    const big = 'x'.repeat(1024 * 1024 + 10);
    assertRefused(await postBinding(sealing, big), 413, PROXY_ERRORS.bodyTooLarge);
    // Chunked, no length declared: the proxy finds out while reading.
    const answer = await new Promise<{ status: number; text: string }>((resolve, reject) => {
      const req = request(`${sealing.proxy.url}/v1/clawsig/receipts`, { method: 'POST' });
      req.on('response', (res) => {
        let text = '';
        res.on('data', (chunk: Buffer) => (text += chunk.toString()));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, text }));
      });
      req.on('error', reject);
      const piece = 'y'.repeat(64 * 1024);
      let sent = 0;
      const more = (): void => {
        while (sent < 1024 * 1024 + 64 * 1024) {
          sent += piece.length;
          if (!req.write(piece)) {
            req.once('drain', more);
            return;
          }
        }
        req.end();
      };
      more();
    });
    assert.equal(answer.status, 413, answer.text);
    assert.equal(
      (JSON.parse(answer.text) as { error: { code: string } }).error.code,
      PROXY_ERRORS.bodyTooLarge,
    );
    await assertStillServes();
  });
});

describe('clawsigReceipts on: each receipt also in the Clawsig form, bound to the call’s headers', () => {
  test('X-Run-Id, X-Event-Hash and X-Idempotency-Key are recorded in the receipt and bind its Clawsig form', async () => {
    const { token } = await mint('job-headers', 'run-h');
    const eventHash = sha256B64u('the event of this call');
    const bound = await call(headers, token, 'bound by headers', {
      headers: { 'X-Run-Id': 'harness-run-42', 'X-Event-Hash': eventHash, 'X-Idempotency-Key': 'nonce-1' },
    });
    assert.equal(bound.status, 200);
    const receipt = await stored(headers, bound.receiptId);
    assert.deepEqual(receipt.payload.clawsig, {
      run_id: 'harness-run-42',
      event_hash_b64u: eventHash,
      nonce: 'nonce-1',
    });
    // Only the event hash: the run is the job's, the nonce the receipt id.
    const hashOnly = await call(headers, token, 'an event hash only', {
      headers: { 'X-Event-Hash': eventHash },
    });
    assert.deepEqual((await stored(headers, hashOnly.receiptId)).payload.clawsig, {
      event_hash_b64u: eventHash,
    });
    // No headers: nothing recorded.
    const plain = await call(headers, token, 'no headers', { stream: true });
    assert.equal('clawsig' in (await stored(headers, plain.receiptId)).payload, false);

    const listed = await listReceipts(headers, token);
    assert.deepEqual(
      listed.map((r) => r.receipt_id),
      [bound.receiptId, hashOnly.receiptId, plain.receiptId],
    );
    const want: Array<Record<string, unknown>> = [
      { run_id: 'harness-run-42', event_hash_b64u: eventHash, nonce: 'nonce-1', span_id: bound.receiptId },
      { run_id: 'run-h', event_hash_b64u: eventHash, nonce: hashOnly.receiptId, span_id: hashOnly.receiptId },
      { run_id: 'run-h', nonce: plain.receiptId, span_id: plain.receiptId },
    ];
    for (const [i, entry] of listed.entries()) {
      const envelope = entry.clawsig;
      assert.ok(envelope, 'each receipt has its Clawsig form');
      assertFactsOf(headers, envelope, await verifyReceipt(entry.jws, headers.jwks));
      assert.deepEqual(envelope.payload.binding, { ...want[i], policy_hash: policyHash });
    }
    // The same each time it is read.
    const again = await listReceipts(headers, token);
    assert.equal(JSON.stringify(again), JSON.stringify(listed));
    // One receipt by id, too.
    const one = await fetch(`${headers.proxy.url}/v1/receipts/${bound.receiptId}`, {
      headers: { authorization: `Bearer ${token}` },
    });
    const byId = ((await one.json()) as { receipts: Array<{ clawsig?: Envelope }> }).receipts;
    assert.deepEqual(
      byId.map((r) => r.clawsig),
      [listed[0]?.clawsig],
    );

    // The sealer's binding, later, is as it asks (the event and span of the job's chain).
    const sealed = await postBinding(
      headers,
      signBinding(
        bindingPayload({ workflow_id: 'job-headers', run_id: 'run-h' }, [
          {
            receipt_id: bound.receiptId,
            event_hash_b64u: sha256B64u('the sealed event'),
            span_id: bound.receiptId,
            parent_span_id: null,
            phase: 'planning',
          },
        ]),
      ),
    );
    assert.equal(sealed.status, 200, sealed.text);
    const envelope = sealed.json.receipts?.[0] as Envelope;
    assertFactsOf(headers, envelope, receipt);
    assert.equal(envelope.payload.binding.run_id, 'run-h');
    assert.equal(envelope.payload.binding.event_hash_b64u, sha256B64u('the sealed event'));
  });

  const bad: Array<[string, string, string | string[]]> = [
    ['an X-Event-Hash too short', 'x-event-hash', 'abc'],
    ['an X-Event-Hash of 129 characters', 'x-event-hash', 'a'.repeat(129)],
    ['an X-Event-Hash with padding', 'x-event-hash', `${sha256B64u('x')}=`],
    ['an X-Event-Hash in base64, not base64url', 'x-event-hash', 'ab+/cdefghijk'],
    ['an X-Event-Hash sent twice', 'x-event-hash', [sha256B64u('a'), sha256B64u('b')]],
    ['an empty X-Run-Id', 'x-run-id', ''],
    ['an X-Run-Id of 201 characters', 'x-run-id', 'r'.repeat(201)],
    ['an empty X-Idempotency-Key', 'x-idempotency-key', ''],
    ['an X-Idempotency-Key of 201 characters', 'x-idempotency-key', 'k'.repeat(201)],
  ];
  for (const [what, header, value] of bad) {
    test(`${what} is refused: 400 REQUEST_MALFORMED naming it, with a refusal receipt, nothing sent upstream`, async () => {
      const { token } = await mint(`job-bad-${header}`);
      const sent = headers.upstream.received.length;
      const h = new Headers();
      for (const v of Array.isArray(value) ? value : [value]) h.append(header, v);
      const refused = await call(headers, token, 'a call with a bad header', { headers: h });
      assert.equal(refused.status, 400, refused.bytes.toString());
      const error = (JSON.parse(refused.bytes.toString()) as { error: { code: string; message: string } })
        .error;
      assert.equal(error.code, PROXY_ERRORS.malformed);
      assert.ok(error.message.startsWith(`${header}:`), `the refusal names ${header}: ${error.message}`);
      assert.equal(headers.upstream.received.length, sent, 'nothing went upstream');
      const receipt = await stored(headers, refused.receiptId);
      assert.equal(receipt.payload.status, 'refused');
      assert.equal(receipt.payload.http_status, 400);
      assert.equal(receipt.payload.refusal?.code, PROXY_ERRORS.malformed);
      assert.equal(receipt.payload.request_sha256, null);
      // Its Clawsig form verifies too: nothing sent, the hash of no bytes.
      const [entry] = (await listReceipts(headers, token)).filter((r) => r.receipt_id === refused.receiptId);
      assert.ok(entry?.clawsig);
      assertFactsOf(headers, entry.clawsig, receipt);
      assert.equal(entry.clawsig.payload.request_hash_b64u, sha256B64u(''));
      // The proxy serves the job on, with good headers.
      const good = await call(headers, token, 'now with a good header', {
        headers: { 'X-Event-Hash': sha256B64u('ok') },
      });
      assert.equal(good.status, 200);
    });
  }
});

describe('clawsigReceipts off (the default): the binding headers are ignored', () => {
  test('a call with the headers, even malformed ones, is answered; its receipt records none, and no receipt has a Clawsig form', async () => {
    const { token } = await mint('job-off');
    const withHeaders = await call(sealing, token, 'headers ignored', {
      headers: { 'X-Run-Id': 'harness-run', 'X-Event-Hash': sha256B64u('e'), 'X-Idempotency-Key': 'n-1' },
    });
    const malformed = await call(sealing, token, 'malformed headers ignored', {
      headers: { 'X-Run-Id': '', 'X-Event-Hash': 'abc', 'X-Idempotency-Key': 'k'.repeat(500) },
    });
    for (const c of [withHeaders, malformed]) {
      assert.equal(c.status, 200, c.bytes.toString());
      const receipt = await stored(sealing, c.receiptId);
      assert.equal(receipt.payload.status, 'ok');
      assert.equal('clawsig' in receipt.payload, false);
    }
    const listed = await listReceipts(sealing, token);
    assert.equal(listed.length, 2);
    for (const entry of listed) assert.deepEqual(Object.keys(entry).sort(), ['job_id', 'jws', 'receipt_id']);
  });
});
