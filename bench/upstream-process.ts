// The demo upstream in a process of its own for the benchmark, as a real provider is: so the
// direct path crosses a process boundary too, and the proxies' added latency is their own.
// Its argument (JSON) sets the models it serves and its delays, as a paced model would have.
import { startDemoUpstream, type DemoUpstreamOptions } from '../src/proxy/demo-upstream.ts';

const options = JSON.parse(process.argv[2] ?? '{}') as Pick<
  DemoUpstreamOptions,
  'models' | 'firstByteDelayMs' | 'firstByteJitterMs' | 'chunkDelayMs'
>;
const upstream = await startDemoUpstream({ apiKey: 'bench-key', ...options });
process.send?.({ url: upstream.url });
