// Proves the Temporal side is real: a workflow runs an activity to completion on the dev
// server the harness started, and clawgate's search attributes are registered and searchable.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { JOB_STATUS } from '../../src/temporal/search-attributes.ts';
import { bundleWorkflows, connectTemporal, type TemporalTestContext } from '../harness/temporal.ts';
import { uniqueId } from '../harness/servers.ts';
import * as activities from './smoke-activities.ts';
import { smokeWorkflow } from './smoke-workflows.ts';

let temporal: TemporalTestContext;
let workflowBundle: Awaited<ReturnType<typeof bundleWorkflows>>;

before(async () => {
  temporal = await connectTemporal();
  workflowBundle = await bundleWorkflows(fileURLToPath(new URL('./smoke-workflows.ts', import.meta.url)));
});
after(async () => {
  await temporal.close();
});

test('a workflow runs an activity to completion on the real Temporal dev server', async () => {
  const { worker, taskQueue } = await temporal.createWorker({ workflowBundle, activities });
  const workflowId = uniqueId('smoke');
  const result = await worker.runUntil(
    temporal.client.workflow.execute(smokeWorkflow, { taskQueue, workflowId, args: ['clawgate'] }),
  );
  assert.equal(result, 'hello clawgate from activity greet');

  // The server's own history shows the activity was scheduled and completed.
  const history = await temporal.client.workflow.getHandle(workflowId).fetchHistory();
  const completed = (history.events ?? []).filter((e) => e.activityTaskCompletedEventAttributes);
  assert.equal(completed.length, 1, 'the history has one ActivityTaskCompleted event');
});

test("clawgate's search attributes are registered: a job is found by ClawgateStatus", async () => {
  const { worker, taskQueue } = await temporal.createWorker({ workflowBundle, activities });
  const workflowId = uniqueId('smoke-search');
  await worker.runUntil(
    temporal.client.workflow.execute(smokeWorkflow, { taskQueue, workflowId, args: ['search'] }),
  );
  const description = await temporal.client.workflow.getHandle(workflowId).describe();
  assert.equal(description.typedSearchAttributes.get(JOB_STATUS), 'completed');

  // Visibility is eventually consistent: poll the list query for a few seconds.
  const query = `WorkflowId = '${workflowId}' AND ${JOB_STATUS.name} = 'completed'`;
  let found: string[] = [];
  for (let attempt = 0; attempt < 50 && found.length === 0; attempt++) {
    found = [];
    for await (const execution of temporal.client.workflow.list({ query })) found.push(execution.workflowId);
    if (found.length === 0) await new Promise((r) => setTimeout(r, 100));
  }
  assert.deepEqual(found, [workflowId]);
});
