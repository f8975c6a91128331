// The workflows the job benchmark runs: clawgate's own, and a bare baseline.
import { proxyActivities } from '@temporalio/workflow';

export { jobWorkflow } from '../src/workflows/job.ts';

const { noop } = proxyActivities<{ noop(): Promise<void> }>({ startToCloseTimeout: '1 minute' });

/** The baseline: the same number of activities as a job, doing nothing. */
export async function bareWorkflow(activities: number): Promise<void> {
  for (let i = 0; i < activities; i++) await noop();
}
