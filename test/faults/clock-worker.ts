// A job worker in a process of its own whose wall clock a test can step (see fake-clock.ts): the
// parent sends `{ offsetMs }` and gets it back once this process's clock reads that far ahead.
// argv[2]: JSON { address, namespace, taskQueue, state, proxyUrl, bwrap, source }.
import { setClockOffset } from './fake-clock.ts';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { NativeConnection, Runtime, Worker } from '@temporalio/worker';
import { createJobActivities } from '../../src/activities/job-activities.ts';
import { FilePolicyRegistry } from '../../src/policy/registry.ts';
import { bubblewrapSandbox } from '../../src/sandbox/bubblewrap.ts';
import { FileRevocationStore } from '../../src/tokens/revocations.ts';
import { jobWorkspacePath } from '../../src/workspace/workspaces.ts';
import { testDataConverter } from '../harness/temporal.ts';

const cfg = JSON.parse(process.argv[2] ?? '{}') as {
  address: string;
  namespace: string;
  taskQueue: string;
  state: string;
  proxyUrl: string;
  bwrap: string;
  source: { repo: string; ref: string };
};
process.on('message', (message: { offsetMs?: unknown }) => {
  if (typeof message.offsetMs !== 'number') return;
  setClockOffset(message.offsetMs);
  process.send?.({ offsetMs: message.offsetMs, now: Date.now() });
});
Runtime.install({
  logger: {
    log: () => {},
    trace: () => {},
    debug: () => {},
    info: () => {},
    warn: () => {},
    error: (m) => console.error(m),
  },
});
const workspaces = join(cfg.state, 'job-workspaces');
const connection = await NativeConnection.connect({ address: cfg.address });
const worker = await Worker.create({
  connection,
  namespace: cfg.namespace,
  taskQueue: cfg.taskQueue,
  // The run's payload keyring, as every client and worker of the tests (test/harness/temporal.ts).
  dataConverter: testDataConverter(),
  workflowsPath: fileURLToPath(new URL('../../src/workflows/index.ts', import.meta.url)),
  activities: createJobActivities({
    registry: new FilePolicyRegistry(join(cfg.state, 'registry')),
    keysDir: join(cfg.state, 'keys'),
    revocations: new FileRevocationStore(join(cfg.state, 'revocations.log')),
    proxyUrl: cfg.proxyUrl,
    planningModel: 'demo-echo',
    sandbox: bubblewrapSandbox(cfg.bwrap),
    workspaces: { root: workspaces, source: () => Promise.resolve(cfg.source) },
    workspaceFor: (job) => jobWorkspacePath(workspaces, job.workflowId),
    bundleDir: join(cfg.state, 'bundles'),
  }),
});
process.send?.({ ready: true });
process.on('disconnect', () => worker.shutdown());
await worker.run();
