// A workflow for the foundation smoke test: it calls one activity and returns what it said,
// which proves a real Temporal server scheduled the activity on a real worker.
import { proxyActivities, upsertSearchAttributes } from '@temporalio/workflow';
import { JOB_STATUS } from '../../src/temporal/search-attributes.ts';
import type * as activities from './smoke-activities.ts';

const { greet } = proxyActivities<typeof activities>({ startToCloseTimeout: '10 seconds' });

export async function smokeWorkflow(name: string): Promise<string> {
  const greeting = await greet(name);
  upsertSearchAttributes([{ key: JOB_STATUS, value: 'completed' }]);
  return greeting;
}
