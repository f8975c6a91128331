// The clawgate proxy as its own process for the benchmark, so its RSS is its own: the real
// server and receipt store, receipts signed and fsync'ed, and each call's token verified by
// the CST code against the bench's keyring, revocation log and policy registry.
import { join } from 'node:path';
import { loadSigner, publicJwks } from '../src/keys/keyring.ts';
import { FilePolicyRegistry } from '../src/policy/registry.ts';
import { parseProxyConfig } from '../src/proxy/config.ts';
import { ReceiptStore } from '../src/proxy/receipt-store.ts';
import { startProxy } from '../src/proxy/server.ts';
import { cstVerifier, registryPolicySource } from '../src/proxy/token-check.ts';
import { FileRevocationStore } from '../src/tokens/revocations.ts';

const input = JSON.parse(process.argv[2] ?? '{}') as {
  /** Upstream URL by the model it serves. */
  upstreams: Record<string, string>;
  state: string;
};
const config = parseProxyConfig({
  listen: { host: '127.0.0.1', port: 0 },
  upstreams: Object.entries(input.upstreams).map(([model, url]) => ({
    name: model,
    baseUrl: `${url}/v1`,
    apiKey: 'bench-key',
    models: [model],
  })),
  receiptsPath: join(input.state, 'receipts.log'),
});
const keys = join(input.state, 'keys');
const proxy = await startProxy({
  config,
  store: await ReceiptStore.open(config.receiptsPath),
  receiptKey: loadSigner(keys, 'receipt'),
  verifyToken: cstVerifier({
    jwks: publicJwks(keys, ['token']),
    revocations: new FileRevocationStore(join(input.state, 'revocations.log')),
    policies: registryPolicySource(new FilePolicyRegistry(join(input.state, 'registry')), 'matrix'),
  }),
});
process.send?.({ url: proxy.url });
