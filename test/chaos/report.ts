// The table a chaos run prints: what was done to the stack, and what it lost or did twice.
import { describeKill } from './schedule.ts';
import { percentile, type ChaosReport, type Outcomes } from './run.ts';

const seconds = (ms: number | null): string => (ms === null ? '-' : `${(ms / 1000).toFixed(1)}s`);

const OUTCOME_ROWS: Array<[keyof Outcomes, string]> = [
  ['jobsLost', 'jobs lost (no end, or no bundle)'],
  ['unexpectedOutcomes', 'jobs that ended otherwise than asked'],
  ['approvalsLost', 'approvals lost'],
  ['approvalsCountedTwice', 'approvals counted twice'],
  ['approvalsRefused', 'approvals refused'],
  ['sideEffectsDuplicated', 'side effects duplicated'],
  ['sideEffectsUnapproved', 'side effects without approval'],
  ['sideEffectsLost', 'approved side effects lost'],
  ['receiptsMissing', 'receipts missing'],
  ['bundlesFailing', 'bundles failing verification'],
  ['unplannedExits', 'parts that exited by themselves'],
  ['logErrors', "errors in the parts' logs"],
];

export function failed(report: ChaosReport): boolean {
  return Object.values(report.outcomes).some((n) => n > 0);
}

export function renderReport(report: ChaosReport): string {
  const kinds = new Map<string, number>();
  for (const v of report.verdicts) kinds.set(v.kind, (kinds.get(v.kind) ?? 0) + 1);
  const kills = Object.entries(report.kills).map(([p, n]) => `${p} ${n}`);
  const restarts = Object.entries(report.starts).map(([p, n]) => `${p} ${Math.max(0, n - 1)}`);
  const total = Object.values(report.kills).reduce((a, b) => a + b, 0);
  const redelivered = report.verdicts.reduce((n, v) => n + v.redelivered, 0);
  const interrupted = report.verdicts.filter((v) => v.interrupted).length;
  const unreceipted = report.verdicts.reduce((n, v) => n + v.unreceiptedCalls, 0);
  const row = (label: string, value: string | number) => `  ${label.padEnd(38)} ${value}`;
  const lines = [
    `chaos run: seed ${report.seed}, ${report.jobs} jobs, ${seconds(report.wallMs)} (output: ${report.outDir})`,
    row('jobs', `${report.jobs} (${[...kinds].map(([k, n]) => `${k} ${n}`).join(', ')})`),
    row(
      'kills',
      `${total}: ${kills.join(', ')} (${report.killsPerJob.toFixed(1)} per job while it was open)`,
    ),
    row('restarts', restarts.join(', ')),
    ...OUTCOME_ROWS.map(([key, label]) => row(label, report.outcomes[key])),
    row('(not counted) redeliveries recorded once', redelivered),
    row('(not counted) tool calls cut by a kill', interrupted),
    row('(not counted) model calls with no receipt', `${unreceipted} (the proxy killed before it wrote one)`),
    '',
    `  ${'time to recover'.padEnd(16)} ${'kills'.padStart(5)}   ${'kill -> healthy'.padEnd(17)} ${'restart -> healthy'.padEnd(19)} healthy -> next progress`,
    `  ${''.padEnd(16)} ${''.padStart(5)}   ${'p50 / max'.padEnd(17)} ${'p50 / max'.padEnd(19)} p50 / max`,
    ...report.recovery.map(
      (r) =>
        `  ${r.part.padEnd(16)} ${String(r.kills).padStart(5)}   ${`${seconds(percentile(r.downMs, 50))} / ${seconds(percentile(r.downMs, 100))}`.padEnd(17)} ${`${seconds(percentile(r.startMs, 50))} / ${seconds(percentile(r.startMs, 100))}`.padEnd(19)} ${seconds(percentile(r.progressMs, 50))} / ${seconds(percentile(r.progressMs, 100))}`,
    ),
  ];
  const problems = renderProblems(report);
  if (problems.length > 0) lines.push('', 'what went wrong:', ...problems);
  return lines.join('\n');
}

export function renderProblems(report: ChaosReport): string[] {
  const out: string[] = [];
  for (const v of report.verdicts) {
    const all = [
      ...(v.lost ? [`lost: ${v.lost}`] : []),
      ...(v.lost === null && v.status !== v.expected ? [`ended ${v.status}, expected ${v.expected}`] : []),
      ...v.bundleProblems,
      ...v.clawsigProblems.map((p) => `clawsig: ${p}`),
      ...v.decisionProblems,
      ...v.sideEffectProblems,
      ...v.receiptProblems,
    ];
    for (const p of all) out.push(`  job ${v.index} (${v.kind}): ${p}`);
  }
  for (const s of report.strays) out.push(`  ${s}`);
  for (const e of report.unplannedExits) {
    out.push(
      `  ${e.part} exited by itself (code ${e.code}, signal ${e.signal}): ${e.stderr.trim().split('\n').slice(-3).join(' | ')}`,
    );
  }
  for (const l of report.logErrors.slice(0, 40))
    out.push(`  ${l.part} log (start ${l.start}): ${l.text.slice(0, 400)}`);
  if (report.logErrors.length > 40) out.push(`  ... and ${report.logErrors.length - 40} more log errors`);
  return out;
}

/** The seed and the whole schedule, for a failure's report: enough to run it again. */
export function renderReplay(report: ChaosReport): string {
  return [
    `replay: npm run chaos -- --seed ${report.seed} --jobs ${report.jobs}`,
    'kill schedule:',
    ...report.schedule.map((k) => `  ${describeKill(k)}`),
    'kills as they happened:',
    ...report.fired.map((f) => `  +${(f.at / 1000).toFixed(1)}s ${f.kill}`),
  ].join('\n');
}
