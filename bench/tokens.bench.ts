// CST mint and verify rates against the raw Ed25519 sign and verify rates of this machine,
// measured in the same run. Verify here is the whole check a tool or model call pays:
// signature, claims, revocation lookup and the pinned-policy comparison; once with in-memory
// lookups, once with the file-backed revocation log and policy registry the worker and the proxy
// use (each lookup looks for appends by other processes). Goal: verify at 50 % or more of raw.
//
// Rates are measured in alternating rounds (raw, then clawgate, several times) and the median
// round is reported, so a burst of load on a shared machine shifts both sides alike.
import { generateKeyPairSync, sign, verify } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { calculateJwkThumbprint, exportJWK } from 'jose';
import { generateKeyring, loadSigner, publicJwks } from '../src/keys/keyring.ts';
import { FilePolicyRegistry, signWpc } from '../src/policy/registry.ts';
import { parseWpc } from '../src/policy/wpc.ts';
import { mintCapabilityToken, verifyCapabilityToken } from '../src/tokens/cst.ts';
import { FileRevocationStore } from '../src/tokens/revocations.ts';
import example from '../examples/policy.json' with { type: 'json' };

const ROUND_MS = Number(process.env['BENCH_ROUND_MS'] ?? 150);
const ROUNDS = Number(process.env['BENCH_ROUNDS'] ?? 5);

const { privateKey, publicKey } = generateKeyPairSync('ed25519');
const jwk = await exportJWK(publicKey);
const kid = await calculateJwkThumbprint(jwk);
const jwks = { keys: [{ ...jwk, kid, alg: 'EdDSA' }] };
const signer = { kid, key: privateKey };

// File-backed state, as a worker or the proxy has it: a registry with an active policy and a
// revocation log holding a few revocations.
const state = mkdtempSync(join(tmpdir(), 'clawgate-bench-tokens-'));
await generateKeyring(join(state, 'keys'), 'policy');
const registry = new FilePolicyRegistry(join(state, 'registry'));
const { hash: policyHash } = await registry.register(
  signWpc(parseWpc(example), loadSigner(join(state, 'keys'), 'policy')),
  publicJwks(join(state, 'keys'), ['policy']),
);
registry.activate('matrix', policyHash);
const revocations = new FileRevocationStore(join(state, 'revocations.log'));
for (let i = 0; i < 100; i++) revocations.revokeToken(`old-token-${i}`, 'bench');

const request = {
  purpose: 'execution' as const,
  job: { workflowId: 'job:!ops:example.com:$abc', runId: 'run-1' },
  roomId: '!ops:example.com',
  scope: { tools: ['read', 'search', 'http'], models: ['demo-echo'] },
  planHash: 'a'.repeat(64),
  approval: { approvers: ['@alice:example.com'], eventIds: ['$approve'] },
  wpcHash: policyHash,
};
const { token } = await mintCapabilityToken(request, signer);
const revoked = new Set<string>();

const signingInput = Buffer.from(token.split('.').slice(0, 2).join('.'));
const signature = Buffer.from(token.split('.')[2] ?? '', 'base64url');

type Op = () => unknown;
const measured: Record<string, Op> = {
  'raw Ed25519 sign (node:crypto)': () => sign(null, signingInput, privateKey),
  'raw Ed25519 verify (node:crypto)': () => verify(null, signingInput, publicKey, signature),
  'CST mint': () => mintCapabilityToken(request, signer),
  'CST verify (in-memory lookups)': () =>
    verifyCapabilityToken(token, {
      jwks,
      isRevoked: (jti, job) => revoked.has(jti) || revoked.has(job),
      activePolicyHash: () => policyHash,
    }),
  'CST verify (file-backed lookups)': () =>
    verifyCapabilityToken(token, {
      jwks,
      isRevoked: (jti, job) => revocations.isRevoked(jti, job),
      activePolicyHash: () => registry.activeHash('matrix'),
    }),
};

async function round(fn: Op): Promise<number> {
  let n = 0;
  const start = performance.now();
  while (performance.now() - start < ROUND_MS) {
    for (let i = 0; i < 50; i++) await fn();
    n += 50;
  }
  return (n / (performance.now() - start)) * 1000;
}

const median = (values: number[]): number => [...values].sort((a, b) => a - b)[values.length >> 1] ?? 0;

for (const fn of Object.values(measured)) for (let i = 0; i < 300; i++) await fn(); // warm-up
const samples: Record<string, number[]> = Object.fromEntries(Object.keys(measured).map((k) => [k, []]));
for (let r = 0; r < ROUNDS; r++) {
  for (const [name, fn] of Object.entries(measured)) samples[name]?.push(await round(fn));
}
const rate: Record<string, number> = {};
for (const [name, values] of Object.entries(samples)) {
  rate[name] = median(values);
  console.log(`${name.padEnd(34)} ${rate[name].toFixed(0).padStart(8)} /s`);
}
const pct = (a: string, b: string): string => `${(((rate[a] ?? 0) / (rate[b] ?? 1)) * 100).toFixed(0)} %`;
console.log(`mint / raw sign                    ${pct('CST mint', 'raw Ed25519 sign (node:crypto)')}`);
console.log(
  `verify / raw verify (in-memory)    ${pct('CST verify (in-memory lookups)', 'raw Ed25519 verify (node:crypto)')}  (goal >= 50 %)`,
);
console.log(
  `verify / raw verify (file-backed)  ${pct('CST verify (file-backed lookups)', 'raw Ed25519 verify (node:crypto)')}  (goal >= 50 %)`,
);
rmSync(state, { recursive: true, force: true });
