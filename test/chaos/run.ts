// One chaos run: the real stack as separate processes (stack.ts), people in two rooms driving a
// seeded mix of jobs (jobs.ts), and a seeded schedule (schedule.ts) that kills and restarts the
// parts while the jobs run. When every job has ended, or the run's time for killing is up, the
// killing stops, every part is brought back, the jobs still open get a grace period with
// everything up, and what happened is checked from outside (checks.ts). Everything started here
// is stopped before the run returns, whatever happened.
import { appendFileSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Client, Connection } from '@temporalio/client';
import { dataConverterFor } from '../../src/temporal/codec.ts';
import { checkJobs, logErrors, strayEffects, type JobVerdict } from './checks.ts';
import { RoomWatch } from './humans.ts';
import { driveJob, planJobs, scriptOf, type ChaosJob, type DriveContext } from './jobs.ts';
import { ClawgatePart, healthReport, type LogLine, type Part, type Recovery } from './parts.ts';
import {
  describeKill,
  killSchedule,
  MOMENTS,
  PARTS,
  random,
  type AimedKill,
  type Kill,
  type Moment,
  type PartName,
} from './schedule.ts';
import { startChaosStack, type ChaosStack } from './stack.ts';

export interface ChaosOptions {
  seed: number;
  jobs: number;
  /** Jobs in flight at once. */
  concurrency: number;
  /** The folder the run's state and logs go to (kept). */
  outDir: string;
  /** How long the parts are killed for, at most (less when every job has ended before). */
  chaosMs: number;
  /** After the killing stops: how long the jobs still open may take to end, everything up. */
  graceMs: number;
  /** Mean time between two timed kills. */
  meanGapMs: number;
  /** Longest pause before a killed part is started again. */
  maxPauseMs: number;
  /** How long a plan waits for its approval: the jobs left alone time out after it. */
  expirySeconds: number;
  /** Where the seed, the schedule and (unless `progress` is false) progress lines go. */
  print?: (line: string) => void;
  /** Whether progress lines are printed too (they always go to chaos.log in the output folder). */
  progress?: boolean;
}

export interface RecoveryStats {
  part: PartName;
  kills: number;
  /** Kill to healthy again, restart to healthy, healthy to the next job progress (ms). */
  downMs: number[];
  startMs: number[];
  progressMs: number[];
}

/** The counts the run is judged by: every one of them must be zero. */
export interface Outcomes {
  jobsLost: number;
  unexpectedOutcomes: number;
  approvalsLost: number;
  approvalsCountedTwice: number;
  approvalsRefused: number;
  sideEffectsDuplicated: number;
  sideEffectsUnapproved: number;
  sideEffectsLost: number;
  receiptsMissing: number;
  bundlesFailing: number;
  unplannedExits: number;
  logErrors: number;
}

export interface ChaosReport {
  seed: number;
  jobs: number;
  outDir: string;
  schedule: Kill[];
  fired: Array<{ at: number; kill: string }>;
  /** Kills not made because their part was down already. */
  skipped: number;
  wallMs: number;
  kills: Record<PartName, number>;
  starts: Record<PartName, number>;
  unplannedExits: Array<{ part: PartName; code: number | null; signal: string | null; stderr: string }>;
  recovery: RecoveryStats[];
  /** The mean of, for each job, the kills that happened while it was open. */
  killsPerJob: number;
  verdicts: JobVerdict[];
  strays: string[];
  logErrors: LogLine[];
  outcomes: Outcomes;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export function percentile(values: number[], p: number): number | null {
  if (values.length === 0) return null;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] as number;
}

/**
 * Time limits that fit a run of `jobs` jobs on a small machine: the killing lasts about 13 s per
 * job (at least three minutes, at most 22), a kill every 7 s on average, back within 6 s.
 */
export function chaosDefaults(jobs: number): Omit<ChaosOptions, 'seed' | 'jobs' | 'outDir'> {
  return {
    concurrency: Math.min(jobs, jobs <= 20 ? 12 : 16),
    chaosMs: Math.max(180_000, Math.min(22 * 60_000, jobs * 13_000)),
    graceMs: jobs <= 20 ? 60_000 : 150_000,
    meanGapMs: 7_000,
    maxPauseMs: 6_000,
    expirySeconds: 120,
  };
}

/** The killing: timed kills on a clock, aimed ones when their moment is seen; stopped at will. */
class Chaos {
  readonly fired: ChaosReport['fired'] = [];
  skipped = 0;
  private on = false;
  private startedAt = 0;
  private readonly timers: NodeJS.Timeout[] = [];
  private readonly crashes = new Set<Promise<unknown>>();
  private readonly aimed = new Map<Moment, AimedKill[]>(MOMENTS.map((m) => [m, []]));
  private readonly seen = new Map<Moment, number>(MOMENTS.map((m) => [m, 0]));

  private readonly schedule: Kill[];
  private readonly parts: Record<PartName, Part>;
  private readonly note: (line: string) => void;

  constructor(schedule: Kill[], parts: Record<PartName, Part>, note: (line: string) => void) {
    this.schedule = schedule;
    this.parts = parts;
    this.note = note;
    for (const kill of schedule) if (kill.kind === 'aimed') this.aimed.get(kill.moment)?.push(kill);
  }

  start(): void {
    this.on = true;
    this.startedAt = Date.now();
    for (const kill of this.schedule) {
      if (kill.kind === 'timed') this.timers.push(setTimeout(() => this.fire(kill), kill.atMs));
    }
  }

  /** A moment was seen: the aimed kills at its count fire. */
  saw(moment: Moment): void {
    const n = (this.seen.get(moment) ?? 0) + 1;
    this.seen.set(moment, n);
    for (const kill of this.aimed.get(moment) ?? []) if (kill.nth === n) this.fire(kill);
  }

  private fire(kill: Kill): void {
    if (!this.on) return;
    const target = this.parts[kill.part];
    if (target.state !== 'up') {
      this.skipped += 1;
      return;
    }
    this.fired.push({ at: Date.now() - this.startedAt, kill: describeKill(kill) });
    const why = kill.kind === 'timed' ? 'timed' : `at ${kill.moment} #${kill.nth}`;
    this.note(
      `${kill.signal === 'SIGKILL' ? 'kill -9' : 'stop'} ${kill.part} (${why}), back in ${(kill.pauseMs / 1000).toFixed(1)} s`,
    );
    const crash = target.crash(kill).then((recovery) => {
      if (recovery?.healthyAt) {
        this.note(
          `${kill.part} healthy again, ${((recovery.healthyAt - recovery.killedAt) / 1000).toFixed(1)} s after`,
        );
      }
    });
    this.crashes.add(crash);
    void crash.finally(() => this.crashes.delete(crash));
  }

  /** No more kills; resolves once every part killed has been started again. */
  async stop(): Promise<void> {
    this.on = false;
    for (const timer of this.timers) clearTimeout(timer);
    await Promise.all([...this.crashes]);
  }
}

/** Drives the jobs, `concurrency` at a time, a seeded pause between two of one lane. */
async function driveJobs(
  jobs: ChaosJob[],
  ctx: DriveContext,
  concurrency: number,
  seed: number,
  note: (line: string) => void,
): Promise<void> {
  const queue = [...jobs];
  const pauses = random(seed ^ 0x0ddba11);
  await Promise.all(
    Array.from({ length: Math.min(concurrency, jobs.length) }, async (_, lane) => {
      await sleep(lane * 400);
      for (let job = queue.shift(); job; job = queue.shift()) {
        const current = job;
        try {
          await driveJob(current, ctx);
        } catch (error) {
          current.stuckAt = `the driver failed: ${(error as Error).message}`;
        }
        note(
          `job ${current.index} (${current.kind}): ${current.reported ?? `no result (${current.stuckAt ?? '?'})`}`,
        );
        await sleep(pauses.int(0, 1500));
      }
    }),
  );
}

/** How many of the jobs' workflows are still running. */
async function openJobs(client: Client, jobs: ChaosJob[]): Promise<number> {
  let open = 0;
  for (const job of jobs) {
    if (!job.workflowId) continue;
    try {
      if ((await client.workflow.getHandle(job.workflowId).describe()).status.name === 'RUNNING') open += 1;
    } catch {
      // not started: the check says so
    }
  }
  return open;
}

function recoveryOf(part: PartName, recoveries: Recovery[], progress: number[]): RecoveryStats {
  const done = recoveries.filter((r): r is Recovery & { healthyAt: number } => r.healthyAt !== null);
  return {
    part,
    kills: recoveries.length,
    downMs: done.map((r) => r.healthyAt - r.killedAt),
    startMs: done.map((r) => r.healthyAt - r.startedAt),
    progressMs: done.flatMap((r) => {
      const next = progress.find((t) => t >= r.healthyAt);
      return next === undefined ? [] : [next - r.healthyAt];
    }),
  };
}

function countProblems(
  verdicts: JobVerdict[],
  field: 'decisionProblems' | 'sideEffectProblems',
  match: (p: string) => boolean,
): number {
  return verdicts.reduce((n, v) => n + v[field].filter(match).length, 0);
}

function outcomesOf(verdicts: JobVerdict[], strays: string[], unplanned: number, errors: number): Outcomes {
  return {
    jobsLost: verdicts.filter((v) => v.lost !== null).length,
    unexpectedOutcomes: verdicts.filter((v) => v.lost === null && v.status !== v.expected).length,
    approvalsLost: countProblems(verdicts, 'decisionProblems', (p) => p.endsWith(': lost')),
    approvalsCountedTwice: countProblems(verdicts, 'decisionProblems', (p) => / counted \d+ times$/.test(p)),
    approvalsRefused: countProblems(verdicts, 'decisionProblems', (p) => p.includes(': refused (')),
    sideEffectsDuplicated: countProblems(verdicts, 'sideEffectProblems', (p) => / done \d+ times$/.test(p)),
    sideEffectsUnapproved:
      countProblems(verdicts, 'sideEffectProblems', (p) => p.endsWith('without an approval')) + strays.length,
    sideEffectsLost: countProblems(
      verdicts,
      'sideEffectProblems',
      (p) => p.includes('never done') || p.includes('its record says'),
    ),
    receiptsMissing: verdicts.reduce((n, v) => n + v.receiptProblems.length, 0),
    bundlesFailing: verdicts.filter((v) => v.bundleProblems.length > 0 || v.clawsigProblems.length > 0)
      .length,
    unplannedExits: unplanned,
    logErrors: errors,
  };
}

export async function runChaos(opts: ChaosOptions): Promise<ChaosReport> {
  const print = opts.print ?? ((line: string) => console.log(line));
  const began = Date.now();
  let clockFrom = began;
  mkdirSync(opts.outDir, { recursive: true });
  const journal = join(opts.outDir, 'chaos.log');
  const note = (line: string): void => {
    const text = `[chaos +${((Date.now() - clockFrom) / 1000).toFixed(1)}s] ${line}`;
    appendFileSync(journal, `${text}\n`);
    if (opts.progress !== false) print(text);
  };

  const jobs = planJobs(opts.jobs, random(opts.seed));
  const schedule = killSchedule({
    seed: opts.seed,
    jobs: opts.jobs,
    horizonMs: opts.chaosMs,
    meanGapMs: opts.meanGapMs,
    maxPauseMs: opts.maxPauseMs,
  });
  print(
    `chaos: seed ${opts.seed}, ${opts.jobs} jobs (${opts.concurrency} at a time), output in ${opts.outDir}`,
  );
  print(`chaos: replay with  npm run chaos -- --seed ${opts.seed} --jobs ${opts.jobs}`);
  print(`chaos: jobs: ${jobs.map((j) => `${j.index}:${j.kind}${j.effect ? `/${j.effect}` : ''}`).join(' ')}`);
  print(`chaos: kill schedule (${schedule.length} kills):`);
  for (const kill of schedule) print(`  ${describeKill(kill)}`);
  writeFileSync(
    join(opts.outDir, 'schedule.json'),
    JSON.stringify({ seed: opts.seed, jobs, schedule }, null, 2),
  );

  const stack: ChaosStack = await startChaosStack({
    outDir: opts.outDir,
    seed: opts.seed,
    expirySeconds: opts.expirySeconds,
    note,
  });
  const { parts, world } = stack;
  const chaos = new Chaos(schedule, parts, note);
  const watch = new RoomWatch(stack.approvers[0], stack.rooms);
  let connection: Connection | null = null;
  try {
    // Progress, for the time to recover: each message the bots post.
    const progress: number[] = [];
    const bots = new Set(stack.bots.map((b) => b.userId));
    watch.onEvent = (event) => {
      if (bots.has(event.sender)) progress.push(Date.now());
    };
    watch.start();
    connection = await Connection.connect({ address: stack.temporal.address });
    const client = new Client({
      connection,
      namespace: 'default',
      dataConverter: dataConverterFor(stack.keysDir),
    });
    for (const moment of ['tool-call', 'model-call', 'seal', 'receipt-write'] as const)
      world.moments.on(moment, () => chaos.saw(moment));
    for (const job of jobs) world.scripts.set(job.index, scriptOf(job, world.countUrl));

    clockFrom = Date.now();
    note(`the stack is up after ${((clockFrom - began) / 1000).toFixed(1)} s; the jobs and the kills begin`);
    const chaosEnds = clockFrom + opts.chaosMs;
    const deadline = chaosEnds + opts.graceMs;
    let txn = 0;
    const ctx: DriveContext = {
      rooms: stack.rooms,
      requesters: stack.requesters,
      approvers: stack.approvers,
      bots: [stack.bots[0].userId, stack.bots[1].userId],
      watch,
      closed: async (workflowId) => {
        try {
          const { status } = await client.workflow.getHandle(workflowId).describe();
          return status.name === 'RUNNING' ? null : status.name;
        } catch {
          return null; // not started yet, or Temporal is down: the next look tells
        }
      },
      deadline,
      txn: (job, what) => `chaos-${opts.seed}-${job}-${what}-${++txn}`,
      sent: () => chaos.saw('approval-sent'),
    };
    chaos.start();
    const driven = driveJobs(jobs, ctx, opts.concurrency, opts.seed, note);
    const how = await Promise.race([
      driven.then(() => 'every job has been driven' as const),
      sleep(opts.chaosMs).then(() => 'the time for killing is up' as const),
    ]);
    note(`${how}; the killing stops`);
    await chaos.stop();
    await Promise.all(Object.values(parts).map((p) => p.up().catch(() => undefined)));
    note(`every part is up again: ${await healthReport(Object.values(parts))}`);
    // The jobs still open get what is left of the grace period, with everything up.
    for (
      let open = await openJobs(client, jobs);
      open > 0 && Date.now() < deadline;
      open = await openJobs(client, jobs)
    ) {
      note(`${open} job(s) still open; waiting up to ${Math.round((deadline - Date.now()) / 1000)} s more`);
      await sleep(5_000);
    }
    await Promise.race([driven, sleep(Math.max(0, deadline - Date.now()))]);

    note('checking every job from outside');
    const verdicts = await checkJobs({
      jobs,
      client,
      keysDir: stack.keysDir,
      bundleDir: stack.bundleDir,
      receiptsLog: stack.receiptsLog,
      markers: world.markers,
      branches: world.branchUpdates(),
      modelCalls: world.modelCalls(),
    });
    const end = Date.now();
    const all = Object.values(parts);
    const errors = logErrors(all.flatMap((p) => (p instanceof ClawgatePart ? p.lines : [])));
    const killTimes = all.flatMap((p) => p.recoveries.map((r) => r.killedAt));
    const killsPerJob =
      jobs.reduce((sum, job) => {
        const from = job.startedAt ?? end;
        const to = job.reportedAt ?? end;
        return sum + killTimes.filter((t) => t >= from && t <= to).length;
      }, 0) / Math.max(1, jobs.length);
    const unplanned = all.flatMap((p) => p.unplannedExits);
    const strays = strayEffects(jobs, world.markers, world.branchUpdates());
    const report: ChaosReport = {
      seed: opts.seed,
      jobs: jobs.length,
      outDir: opts.outDir,
      schedule,
      fired: chaos.fired,
      skipped: chaos.skipped,
      wallMs: end - began,
      kills: Object.fromEntries(PARTS.map((p) => [p, parts[p].kills])) as Record<PartName, number>,
      starts: Object.fromEntries(PARTS.map((p) => [p, parts[p].starts])) as Record<PartName, number>,
      unplannedExits: unplanned.map(({ part, code, signal, stderr }) => ({ part, code, signal, stderr })),
      recovery: PARTS.map((name) => recoveryOf(name, parts[name].recoveries, progress)),
      killsPerJob,
      verdicts,
      strays,
      logErrors: errors,
      outcomes: outcomesOf(verdicts, strays, unplanned.length, errors.length),
    };
    writeFileSync(join(opts.outDir, 'report.json'), JSON.stringify(report, null, 2));
    return report;
  } finally {
    await Promise.race([chaos.stop(), sleep(30_000)]);
    await watch.stop();
    await connection?.close().catch(() => undefined);
    await stack.stop();
  }
}
