// The demo upstream in a process of its own for the benchmark, as a real provider is: so the
// direct path crosses a process boundary too, and the proxies' added latency is their own.
import { startDemoUpstream } from '../src/proxy/demo-upstream.ts';

const upstream = await startDemoUpstream({ apiKey: 'bench-key' });
process.send?.({ url: upstream.url });
