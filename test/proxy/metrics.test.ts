// The proxy's GET /metrics, over HTTP against the real proxy server, its real receipt store (and
// fdatasync), the local demo upstream and real capability tokens: each kind of call moves its
// series, and the answer is the Prometheus text format.
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { generateKeyring, loadSigner, publicJwks } from '../../src/keys/keyring.ts';
import { FilePolicyRegistry, signWpc } from '../../src/policy/registry.ts';
import { parseWpc } from '../../src/policy/wpc.ts';
import type { VerifyCallToken } from '../../src/proxy/server.ts';
import { cstVerifier, registryPolicySource } from '../../src/proxy/token-check.ts';
import { mintCapabilityToken } from '../../src/tokens/cst.ts';
import { FileRevocationStore } from '../../src/tokens/revocations.ts';
import { metricValue, scrape, type Sample } from '../harness/metrics.ts';
import { startProxyUnderTest, type ProxyUnderTest } from './proxy-harness.ts';

let p: ProxyUnderTest;
let verifyToken: VerifyCallToken;
const tokens: Record<string, string> = {};

before(async () => {
  const state = mkdtempSync(join(tmpdir(), 'clawgate-proxy-metrics-'));
  const keys = join(state, 'keys');
  await generateKeyring(keys, 'token');
  await generateKeyring(keys, 'policy');
  const example = JSON.parse(
    readFileSync(new URL('../../examples/policy.json', import.meta.url), 'utf8'),
  ) as Record<string, any>;
  example['model_access'].allowed_models = ['demo-echo'];
  const registry = new FilePolicyRegistry(join(state, 'registry'));
  const { hash } = await registry.register(
    signWpc(parseWpc(example), loadSigner(keys, 'policy')),
    publicJwks(keys, ['policy']),
  );
  registry.activate('matrix', hash);
  const revocations = new FileRevocationStore(join(state, 'revocations.log'));
  verifyToken = cstVerifier({
    jwks: publicJwks(keys, ['token']),
    revocations,
    policies: registryPolicySource(registry, 'matrix'),
  });
  const mint = async (workflowId: string) =>
    mintCapabilityToken(
      {
        purpose: 'planning',
        job: { workflowId, runId: `run-${workflowId}` },
        roomId: '!ops:localhost',
        scope: { tools: [], models: ['demo-echo'] },
        wpcHash: hash,
      },
      loadSigner(keys, 'token'),
    );
  tokens['good'] = (await mint('job-metrics')).token;
  const revoked = await mint('job-revoked');
  revocations.revokeToken(revoked.claims.jti, 'test');
  tokens['revoked'] = revoked.token;
  p = await startProxyUnderTest({ verifyToken });
});

after(async () => {
  await p?.close();
});

const body = (text: string, stream = false) =>
  JSON.stringify({
    model: 'demo-echo',
    messages: [{ role: 'user', content: text }],
    ...(stream ? { stream } : {}),
  });

async function call(token: string | undefined, text: string, stream = false): Promise<number> {
  const response = await fetch(`${p.proxy.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...(token ? { authorization: `Bearer ${token}` } : {}) },
    body: body(text, stream),
  });
  await response.arrayBuffer();
  return response.status;
}

const metrics = async (): Promise<Sample[]> => {
  const { contentType, samples } = await scrape(`${p.proxy.url}/metrics`);
  assert.equal(contentType, 'text/plain; version=0.0.4; charset=utf-8');
  return samples;
};

test('answered calls, refusals by token code, receipts and their fsyncs move the metrics', async () => {
  const before = await metrics();
  assert.ok(metricValue(before, 'process_resident_memory_bytes', { part: 'proxy' }) > 0, 'process metrics');

  assert.equal(await call(tokens['good'], 'a JSON call'), 200);
  assert.equal(await call(tokens['good'], 'a stream', true), 200);
  assert.equal(await call(undefined, 'no token'), 401);
  assert.equal(await call(tokens['revoked'], 'a revoked token'), 403);
  assert.equal(await call('not.a.token', 'garbage'), 401);
  // A model list with no token is a token refusal too, without a receipt.
  assert.equal((await fetch(`${p.proxy.url}/v1/models`)).status, 401);

  const after = await metrics();
  const moved = (name: string, labels: Record<string, string> = {}) =>
    metricValue(after, name, labels) - metricValue(before, name, labels);
  assert.equal(moved('clawgate_proxy_calls_total', { status: 'ok', receipt: 'written' }), 2);
  assert.equal(moved('clawgate_proxy_calls_total', { status: 'refused', receipt: 'written' }), 3);
  assert.equal(moved('clawgate_proxy_receipts_written_total'), 5);
  assert.equal(moved('clawgate_proxy_call_duration_seconds_count', { status: 'ok' }), 2);
  assert.ok(moved('clawgate_proxy_call_duration_seconds_sum', { status: 'ok' }) > 0);
  // Lone calls are flushed one by one: an fdatasync each, each timed.
  assert.ok(moved('clawgate_proxy_receipt_fsync_seconds_count') >= 5);
  assert.equal(moved('clawgate_proxy_token_refusals_total', { code: 'TOKEN_MISSING' }), 2);
  assert.equal(moved('clawgate_proxy_token_refusals_total', { code: 'TOKEN_REVOKED' }), 1);
  const invalid = after
    .filter((s) => s.name === 'clawgate_proxy_token_refusals_total')
    .filter((s) => !['TOKEN_MISSING', 'TOKEN_REVOKED'].includes(s.labels['code'] ?? ''));
  assert.equal(
    invalid.reduce((n, s) => n + s.value, 0),
    1,
    `one refusal of the malformed token, under its own code: ${JSON.stringify(invalid)}`,
  );
  assert.ok(
    invalid.every((s) => /^[A-Z_]+$/.test(s.labels['code'] ?? '')),
    'codes, never the token',
  );
});

test("a receipt that cannot be written counts as the call's failure, not as a receipt", async () => {
  const failing = await startProxyUnderTest({ verifyToken });
  try {
    failing.proxy.store.append = () => Promise.reject(new Error('ENOSPC: no space left on device'));
    const response = await fetch(`${failing.proxy.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${tokens['good']}` },
      body: body('keep this answer back'),
    });
    assert.equal(response.status, 500);
    await response.arrayBuffer();
    const { samples } = await scrape(`${failing.proxy.url}/metrics`);
    assert.equal(metricValue(samples, 'clawgate_proxy_calls_total', { status: 'ok', receipt: 'failed' }), 1);
    assert.equal(metricValue(samples, 'clawgate_proxy_receipt_write_failures_total'), 1);
    assert.equal(metricValue(samples, 'clawgate_proxy_receipts_written_total'), 0);
  } finally {
    await failing.close();
  }
});
