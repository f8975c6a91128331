// kill -9 of any part at any moment, under load, and nothing is lost or done twice: a CI-sized
// chaos run (test/chaos/run.ts) with a fixed seed, and one with a seed of this run's own, which
// it prints (give it to `npm run chaos -- --seed <seed> --jobs 12` to replay it). Each starts its
// own Temporal dev server and Synapse (the test run's shared ones are never killed), runs 12
// jobs through the real proxy, worker and gateway processes while they, Temporal and Synapse are
// killed and restarted, and asserts what the run counted from outside: every count is zero.
import assert from 'node:assert/strict';
import { randomInt } from 'node:crypto';
import { join, resolve } from 'node:path';
import { test } from 'node:test';
import { planJobs, JOB_KINDS } from './jobs.ts';
import { renderProblems, renderReplay, renderReport } from './report.ts';
import { chaosDefaults, runChaos, type Outcomes } from './run.ts';
import { killSchedule, PARTS, random } from './schedule.ts';
import { ENV } from '../harness/servers.ts';

const JOBS = 12;
const FIXED_SEED = 20_261_201;

const NOTHING: Outcomes = {
  jobsLost: 0,
  unexpectedOutcomes: 0,
  approvalsLost: 0,
  approvalsCountedTwice: 0,
  approvalsRefused: 0,
  sideEffectsDuplicated: 0,
  sideEffectsUnapproved: 0,
  sideEffectsLost: 0,
  receiptsMissing: 0,
  bundlesFailing: 0,
  unplannedExits: 0,
  logErrors: 0,
};

/** This test run's output folder when there is one (npm test), else test-output. */
function outputDir(seed: number): string {
  const base = process.env[ENV.runDir] ?? resolve(import.meta.dirname, '../../test-output');
  return join(base, `chaos-seed${seed}-${Date.now()}`);
}

async function chaosRun(seed: number): Promise<void> {
  const report = await runChaos({
    ...chaosDefaults(JOBS),
    // Sized for a test file's five minutes: the killing lasts at most 150 s, plans left alone
    // expire after 60 s, and the jobs still open then get 45 s more.
    chaosMs: 150_000,
    graceMs: 45_000,
    expirySeconds: 60,
    seed,
    jobs: JOBS,
    outDir: outputDir(seed),
    progress: false,
  });
  console.log(renderReport(report));
  assert.deepEqual(
    report.outcomes,
    NOTHING,
    `${renderProblems(report).join('\n')}\n${renderReplay(report)}\n(the run's logs: ${report.outDir})`,
  );
  assert.equal(report.verdicts.length, JOBS);
  assert.ok(
    Object.values(report.kills).reduce((a, b) => a + b, 0) >= JOBS,
    'the parts were killed at least once per job',
  );
}

test('a seed gives the same jobs and the same kill schedule every time (a run can be replayed)', () => {
  const made = (seed: number) => ({
    jobs: planJobs(JOBS, random(seed)).map((j) => [j.kind, j.effect, j.cardVia, j.room]),
    kills: killSchedule({ seed, jobs: JOBS, horizonMs: 150_000, meanGapMs: 7_000, maxPauseMs: 6_000 }),
  });
  assert.deepEqual(made(FIXED_SEED), made(FIXED_SEED));
  assert.notDeepEqual(made(FIXED_SEED), made(FIXED_SEED + 1));
  const { jobs, kills } = made(FIXED_SEED);
  assert.deepEqual(
    new Set(jobs.map(([kind]) => kind)),
    new Set(JOB_KINDS),
    'every kind of job is in the mix',
  );
  for (const part of PARTS)
    assert.ok(
      kills.some((k) => k.part === part),
      `${part} is killed`,
    );
  assert.ok(kills.some((k) => k.kind === 'aimed') && kills.some((k) => k.kind === 'timed'));
});

test(
  `a chaos run of ${JOBS} jobs with seed ${FIXED_SEED}: nothing lost, nothing done twice, nothing stuck`,
  { timeout: 295_000 },
  async () => {
    await chaosRun(FIXED_SEED);
  },
);

const randomSeed = randomInt(1, 2 ** 31 - 1);
test(
  `a chaos run of ${JOBS} jobs with this run's seed ${randomSeed}: nothing lost, nothing done twice, nothing stuck`,
  { timeout: 295_000 },
  async () => {
    await chaosRun(randomSeed);
  },
);
