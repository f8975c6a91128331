// The worker's metrics: how jobs end, how many wait for an approver, how long approvers take,
// and how sandbox runs go. Counted where the fact is certain (a job's end where its bundle is
// sealed, an approval where its token is minted), once per job in this process however often
// Temporal retries the activity.
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import { JOB_STATUSES } from '../temporal/job-contract.ts';
import type { Sandbox, SandboxResult } from '../sandbox/bubblewrap.ts';
import { bounded, partRegistry, RecentKeys } from './prometheus.ts';

export const SANDBOX_OUTCOMES = [
  'ok',
  'exit_nonzero',
  'timed_out',
  'memory_exceeded',
  'killed',
  'output_truncated',
  'error',
] as const;
export type SandboxOutcome = (typeof SANDBOX_OUTCOMES)[number];

/** What a sandbox run came to, as one label value (the first that applies, worst first). */
export function sandboxOutcome(result: SandboxResult): SandboxOutcome {
  if (result.timedOut) return 'timed_out';
  if (result.memoryExceeded) return 'memory_exceeded';
  if (result.signal !== null) return 'killed';
  if (result.outputTruncated) return 'output_truncated';
  return result.exitCode === 0 ? 'ok' : 'exit_nonzero';
}

/**
 * Time from a plan's posting to its deciding approval: seconds to days (an approver may answer
 * the next morning, or after a weekend).
 */
const APPROVAL_BUCKETS = [5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14_400, 28_800, 86_400, 259_200];

export class WorkerMetrics {
  readonly registry: Registry;
  private readonly jobsEnded: Counter<'outcome'>;
  private readonly awaiting: Gauge;
  private readonly awaitingReadErrors: Counter;
  private readonly planToApproval: Histogram;
  private readonly sandboxRuns: Counter<'backend' | 'outcome'>;
  private readonly sealed = new RecentKeys();
  private readonly approved = new RecentKeys();

  constructor(registry: Registry = partRegistry('worker')) {
    this.registry = registry;
    const registers = [registry];
    this.jobsEnded = new Counter({
      name: 'clawgate_worker_jobs_ended_total',
      help: "Jobs whose bundle this worker sealed, by the job's outcome",
      labelNames: ['outcome'],
      registers,
    });
    this.awaiting = new Gauge({
      name: 'clawgate_worker_jobs_awaiting_approval',
      help: "Running jobs waiting for an approver (ClawgateStatus = 'awaiting_approval'), from Temporal's visibility: the same number on every worker",
      registers,
    });
    this.awaitingReadErrors = new Counter({
      name: 'clawgate_worker_jobs_awaiting_approval_read_errors_total',
      help: "Reads of Temporal's visibility for the jobs waiting for approval that failed (the gauge keeps its last value)",
      registers,
    });
    this.planToApproval = new Histogram({
      name: 'clawgate_worker_plan_to_approval_seconds',
      help: "Seconds from a job's plan being posted to its deciding approval (the homeserver's times of both)",
      buckets: APPROVAL_BUCKETS,
      registers,
    });
    this.sandboxRuns = new Counter({
      name: 'clawgate_worker_sandbox_runs_total',
      help: 'Commands run in the sandbox, by backend and outcome',
      labelNames: ['backend', 'outcome'],
      registers,
    });
  }

  /** A job's bundle was sealed with this outcome (counted once per job). */
  jobSealed(workflowId: string, outcome: string): void {
    if (!this.sealed.add(workflowId)) return;
    this.jobsEnded.inc({ outcome: bounded(outcome, JOB_STATUSES) });
  }

  /** The job's plan was posted at `planPostedAt` and approved at `approvedAt` (ms, once per job). */
  approvalRecorded(workflowId: string, planPostedAt: number, approvedAt: number): void {
    if (!(planPostedAt > 0 && approvedAt >= planPostedAt)) return;
    if (!this.approved.add(workflowId)) return;
    this.planToApproval.observe((approvedAt - planPostedAt) / 1000);
  }

  /** A sandbox that counts its runs here. */
  countingSandbox(sandbox: Sandbox): Sandbox {
    const runs = this.sandboxRuns;
    return {
      backend: sandbox.backend,
      profile: (cmd) => sandbox.profile(cmd),
      async run(cmd) {
        try {
          const result = await sandbox.run(cmd);
          runs.inc({ backend: sandbox.backend, outcome: sandboxOutcome(result) });
          return result;
        } catch (error) {
          runs.inc({ backend: sandbox.backend, outcome: 'error' });
          throw error;
        }
      },
    };
  }

  /**
   * Keeps the awaiting-approval gauge fresh: `count` (a visibility count) now and every
   * `everyMs`. A failed read keeps the last value and is counted.
   */
  watchAwaitingApproval(
    count: () => Promise<number>,
    everyMs = 15_000,
  ): { refresh: () => Promise<void>; stop: () => void } {
    let stopped = false;
    const refresh = async (): Promise<void> => {
      try {
        const n = await count();
        if (!stopped) this.awaiting.set(n);
      } catch {
        this.awaitingReadErrors.inc();
      }
    };
    void refresh();
    const timer = setInterval(() => void refresh(), everyMs);
    timer.unref();
    return {
      refresh,
      stop: () => {
        stopped = true;
        clearInterval(timer);
      },
    };
  }
}

/** The visibility query for the jobs waiting for approval. */
export const AWAITING_APPROVAL_QUERY =
  "WorkflowType = 'jobWorkflow' AND ExecutionStatus = 'Running' AND ClawgateStatus = 'awaiting_approval'";
