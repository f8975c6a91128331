// The clawgate proxy as its own process for the benchmark, so its RSS is its own: the real
// server and receipt store, receipts signed and fsync'ed, and each call's token verified as an
// EdDSA JWT with jose (audience, expiry, typ) against the bench's public key.
import { createPublicKey, createPrivateKey } from 'node:crypto';
import { jwtVerify } from 'jose';
import { parseProxyConfig } from '../src/proxy/config.ts';
import { ReceiptStore } from '../src/proxy/receipt-store.ts';
import { startProxy } from '../src/proxy/server.ts';

const input = JSON.parse(process.argv[2] ?? '{}') as {
  upstreamUrl: string;
  receiptsPath: string;
  tokenPublicKeyPem: string;
  receiptPrivateKeyPem: string;
};
const tokenKey = createPublicKey(input.tokenPublicKeyPem);
const config = parseProxyConfig({
  listen: { host: '127.0.0.1', port: 0 },
  upstreams: [
    { name: 'demo', baseUrl: `${input.upstreamUrl}/v1`, apiKey: 'bench-key', models: ['demo-echo'] },
  ],
  receiptsPath: input.receiptsPath,
});
const proxy = await startProxy({
  config,
  store: await ReceiptStore.open(config.receiptsPath),
  receiptKey: { kid: 'bench-receipt-key', key: createPrivateKey(input.receiptPrivateKeyPem) },
  verifyToken: async (token) => {
    try {
      const { payload } = await jwtVerify(token, tokenKey, {
        algorithms: ['EdDSA'],
        audience: 'clawgate-proxy',
        typ: 'cst+jwt',
        requiredClaims: ['jti', 'exp', 'sub'],
      });
      const job = payload['job'] as { workflow_id: string; run_id: string };
      return {
        ok: true,
        grant: {
          workflowId: job.workflow_id,
          runId: job.run_id,
          tokenId: String(payload.jti),
          policyHash: null,
          models: payload['models'] as string[],
        },
      };
    } catch (error) {
      return { ok: false, code: 'TOKEN_INVALID', reason: String(error) };
    }
  },
});
process.send?.({ url: proxy.url });
