// CST mint and verify rates against the raw Ed25519 sign and verify rates of this machine,
// measured in the same run. Verify here is the whole check a tool or model call pays:
// signature, claims, revocation lookup and the pinned-policy comparison. Goal: verify at 50 %
// or more of raw verify.
import { generateKeyPairSync, sign, verify } from 'node:crypto';
import { calculateJwkThumbprint, exportJWK } from 'jose';
import { mintCapabilityToken, verifyCapabilityToken } from '../src/tokens/cst.ts';

const DURATION_MS = Number(process.env['BENCH_MS'] ?? 2000);
const { privateKey, publicKey } = generateKeyPairSync('ed25519');
const jwk = await exportJWK(publicKey);
const kid = await calculateJwkThumbprint(jwk);
const jwks = { keys: [{ ...jwk, kid, alg: 'EdDSA' }] };
const signer = { kid, key: privateKey };
const request = {
  purpose: 'execution' as const,
  job: { workflowId: 'job:!ops:example.com:$abc', runId: 'run-1' },
  roomId: '!ops:example.com',
  scope: { tools: ['read', 'search', 'http'], models: ['demo-echo'] },
  planHash: 'a'.repeat(64),
  approval: { approvers: ['@alice:example.com'], eventIds: ['$approve'] },
  wpcHash: 'b'.repeat(64),
};
const { token } = await mintCapabilityToken(request, signer);
const revoked = new Set<string>();

async function rate(name: string, fn: () => unknown): Promise<number> {
  for (let i = 0; i < 500; i++) await fn(); // warm-up
  let n = 0;
  const start = performance.now();
  while (performance.now() - start < DURATION_MS) {
    for (let i = 0; i < 100; i++) await fn();
    n += 100;
  }
  const perSecond = (n / (performance.now() - start)) * 1000;
  console.log(`${name.padEnd(34)} ${perSecond.toFixed(0).padStart(8)} /s`);
  return perSecond;
}

const signingInput = Buffer.from(token.split('.').slice(0, 2).join('.'));
const signature = Buffer.from(token.split('.')[2] ?? '', 'base64url');
const rawSign = await rate('raw Ed25519 sign (node:crypto)', () => sign(null, signingInput, privateKey));
const rawVerify = await rate('raw Ed25519 verify (node:crypto)', () =>
  verify(null, signingInput, publicKey, signature),
);
const mint = await rate('CST mint', () => mintCapabilityToken(request, signer));
const check = await rate('CST verify (complete)', () =>
  verifyCapabilityToken(token, {
    jwks,
    isRevoked: (jti, job) => revoked.has(jti) || revoked.has(job),
    activePolicyHash: () => request.wpcHash,
  }),
);
console.log(`mint / raw sign     ${((mint / rawSign) * 100).toFixed(0)} %`);
console.log(`verify / raw verify ${((check / rawVerify) * 100).toFixed(0)} %  (goal >= 50 %)`);
