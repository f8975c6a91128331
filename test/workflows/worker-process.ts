// A job worker in a process of its own, so a test can kill it with SIGKILL mid-job.
// argv[2]: JSON { address, namespace, taskQueue, state, proxyUrl, bwrap, source?, prRemote?, pushRepo? }.
import { mkdirSync, writeFileSync } from 'node:fs';
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
  /** When set, each job gets its own workspace made from this repository (as the real worker does). */
  source?: { repo: string; ref: string };
  /** Where write_pr pushes, and the worker's own repository it pushes from. */
  prRemote?: string;
  pushRepo?: string;
};
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
    ...(cfg.source
      ? {
          workspaces: {
            root: join(cfg.state, 'job-workspaces'),
            source: () => Promise.resolve(cfg.source as { repo: string; ref: string }),
          },
        }
      : {}),
    workspaceFor: (job) => {
      if (cfg.source) return jobWorkspacePath(join(cfg.state, 'job-workspaces'), job.workflowId);
      const dir = join(cfg.state, 'workspaces', Buffer.from(job.workflowId).toString('base64url'));
      mkdirSync(dir, { recursive: true });
      writeFileSync(join(dir, 'README.md'), '# demo\nTODO: write the docs\n');
      return dir;
    },
    bundleDir: join(cfg.state, 'bundles'),
    ...(cfg.prRemote ? { prRemote: cfg.prRemote } : {}),
    ...(cfg.pushRepo ? { pushRepo: cfg.pushRepo } : {}),
  }),
});
process.send?.('ready');
await worker.run();
