// A proxy under test: the real proxy server, its real receipt store in a temporary folder, a
// receipt key, and the local demo upstream standing in for the paid provider.
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { generateKeyPairSync } from 'node:crypto';
import { calculateJwkThumbprint, exportJWK, type JWK } from 'jose';
import type { Jwks } from '../../src/evidence/jws.ts';
import { parseProxyConfig, type ProxyConfigInput } from '../../src/proxy/config.ts';
import {
  startDemoUpstream,
  type DemoUpstream,
  type DemoUpstreamOptions,
} from '../../src/proxy/demo-upstream.ts';
import { ReceiptStore } from '../../src/proxy/receipt-store.ts';
import type { ReceiptSigningKey } from '../../src/proxy/receipts.ts';
import { startProxy, type RunningProxy, type VerifyCallToken } from '../../src/proxy/server.ts';

export async function receiptKeyPair(): Promise<{ signer: ReceiptSigningKey; jwks: { keys: JWK[] } }> {
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  const jwk = await exportJWK(publicKey);
  const kid = await calculateJwkThumbprint(jwk);
  return { signer: { kid, key: privateKey }, jwks: { keys: [{ ...jwk, kid, alg: 'EdDSA', use: 'sig' }] } };
}

export interface ProxyUnderTest {
  proxy: RunningProxy;
  upstream: DemoUpstream;
  jwks: { keys: JWK[] };
  /** The proxy's receipt signing key (its public half is `jwks`). */
  receiptKey: ReceiptSigningKey;
  dir: string;
  restart(): Promise<void>;
  close(): Promise<void>;
}

export async function startProxyUnderTest(opts: {
  verifyToken: VerifyCallToken;
  upstream?: DemoUpstreamOptions;
  config?: Partial<ProxyConfigInput>;
  refusing?: () => string | null;
  /** The bundle keys a Clawsig binding request must be signed by (POST /v1/clawsig/receipts). */
  bindingJwks?: () => Jwks;
  /** More settings of the demo upstream's entry in the proxy's config (`caFile`, say). */
  upstreamConfig?: { caFile?: string };
}): Promise<ProxyUnderTest> {
  const upstream = await startDemoUpstream({ apiKey: 'upstream-secret-key', ...opts.upstream });
  const dir = mkdtempSync(join(tmpdir(), 'clawgate-proxy-'));
  const { signer, jwks } = await receiptKeyPair();
  const config = parseProxyConfig({
    listen: { host: '127.0.0.1', port: 0 },
    upstreams: [
      {
        name: 'demo',
        baseUrl: `${upstream.url}/v1`,
        apiKey: 'upstream-secret-key',
        models: ['demo-echo', 'demo-echo-large'],
        ...opts.upstreamConfig,
      },
    ],
    receiptsPath: join(dir, 'receipts.log'),
    ...opts.config,
  });
  const start = async (): Promise<RunningProxy> =>
    startProxy({
      config,
      verifyToken: opts.verifyToken,
      ...(opts.refusing ? { refusing: opts.refusing } : {}),
      ...(opts.bindingJwks ? { bindingJwks: opts.bindingJwks } : {}),
      receiptKey: signer,
      store: await ReceiptStore.open(config.receiptsPath),
    });
  const handle: ProxyUnderTest = {
    proxy: await start(),
    upstream,
    jwks,
    receiptKey: signer,
    dir,
    async restart() {
      await handle.proxy.close();
      handle.proxy = await start();
    },
    async close() {
      await handle.proxy.close();
      await upstream.close();
    },
  };
  return handle;
}
