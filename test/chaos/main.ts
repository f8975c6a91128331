// `npm run chaos`: one chaos run (test/chaos/run.ts), 100 jobs by default, on a seed of its own
// or the one given; prints the seed and the schedule first, the table at the end, and exits 1
// when anything was lost, done twice or left stuck. Flags: --jobs N, --seed S, --concurrency C
// (or CHAOS_JOBS, CHAOS_SEED, CHAOS_CONCURRENCY). Its state and logs stay in
// test-output/chaos-<time>-seed<S>/ (the last five runs are kept).
import { randomInt } from 'node:crypto';
import { mkdirSync, readdirSync, rmSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { failed, renderReplay, renderReport } from './report.ts';
import { chaosDefaults, runChaos } from './run.ts';

const OUTPUT_DIR = resolve(import.meta.dirname, '../../test-output');
const RUNS_KEPT = 5;
/** The whole run, whatever happens: the machine's budget for it. */
const HARD_LIMIT_MS = 30 * 60_000;

const { values } = parseArgs({
  options: {
    jobs: { type: 'string' },
    seed: { type: 'string' },
    concurrency: { type: 'string' },
  },
});
const number = (flag: string | undefined, env: string, fallback: number): number => {
  const raw = flag ?? process.env[env];
  if (raw === undefined || raw === '') return fallback;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 0) throw new Error(`${env.toLowerCase()}: an integer, not ${raw}`);
  return n;
};
const jobs = number(values.jobs, 'CHAOS_JOBS', 100);
const seed = number(values.seed, 'CHAOS_SEED', randomInt(1, 2 ** 31 - 1));
const defaults = chaosDefaults(jobs);
const concurrency = number(values.concurrency, 'CHAOS_CONCURRENCY', defaults.concurrency);

mkdirSync(OUTPUT_DIR, { recursive: true });
const old = readdirSync(OUTPUT_DIR)
  .filter((n) => n.startsWith('chaos-'))
  .sort();
for (const name of old.slice(0, Math.max(0, old.length - (RUNS_KEPT - 1)))) {
  rmSync(join(OUTPUT_DIR, name), { recursive: true, force: true });
}
const outDir = join(OUTPUT_DIR, `chaos-${new Date().toISOString().replace(/[:.]/g, '-')}-seed${seed}`);

// Past the budget the run ends here; every child it started is killed as this process exits.
setTimeout(() => {
  console.error(`chaos: the run took longer than ${HARD_LIMIT_MS / 60_000} minutes; stopping (seed ${seed})`);
  process.exit(2);
}, HARD_LIMIT_MS).unref();

try {
  const report = await runChaos({ ...defaults, concurrency, seed, jobs, outDir });
  console.log(`\n${renderReport(report)}`);
  if (failed(report)) {
    console.log(`\n${renderReplay(report)}`);
    process.exitCode = 1;
  }
} catch (error) {
  console.error(`chaos: the run failed (seed ${seed}, output in ${outDir}):`, error);
  process.exitCode = 1;
}
setTimeout(() => process.exit(), 1000).unref();
