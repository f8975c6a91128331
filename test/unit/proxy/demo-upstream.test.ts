// The demo upstream's varying answer time, which the proxy benchmark relies on: a call waits
// its base delay plus a share of the jitter drawn from its last user message, so the same
// message waits the same on every path and different messages spread over the range.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { jitterShare, startDemoUpstream } from '../../../src/proxy/demo-upstream.ts';

test('the jitter share is fixed by the message and spreads over [0, 1)', () => {
  assert.equal(jitterShare('call 1'), jitterShare('call 1'));
  const shares = Array.from({ length: 1000 }, (_, i) => jitterShare(`call ${i}`));
  assert.ok(shares.every((s) => s >= 0 && s < 1));
  // Uniform enough that callers that start together fall out of step: every tenth is used.
  for (let decile = 0; decile < 10; decile++) {
    const inDecile = shares.filter((s) => Math.floor(s * 10) === decile).length;
    assert.ok(inDecile > 50 && inDecile < 150, `decile ${decile} holds ${inDecile} of 1000`);
  }
});

test('a call waits at least its base delay plus its share of the jitter', async () => {
  const upstream = await startDemoUpstream({ firstByteDelayMs: 20, firstByteJitterMs: 200 });
  try {
    // A message whose share is large, so that the jitter is what the wait shows.
    const content = Array.from({ length: 100 }, (_, i) => `call ${i}`).find((c) => jitterShare(c) > 0.5);
    assert.ok(content);
    const started = performance.now();
    const res = await fetch(`${upstream.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'demo-echo', messages: [{ role: 'user', content }] }),
    });
    assert.equal(res.status, 200);
    await res.json();
    const waited = performance.now() - started;
    // Timers may fire up to a millisecond early; the bound leaves two.
    assert.ok(waited >= 20 + 200 * jitterShare(content) - 2, `waited ${waited.toFixed(1)} ms`);
  } finally {
    await upstream.close();
  }
});
