// The chaos run's randomness, all of it from one number: a small PRNG (mulberry32) seeded with
// it makes the mix of jobs and the whole kill schedule, so a run is replayed by giving its seed
// again. The schedule has two kinds of kill: at a time (seconds after the chaos starts), and at
// a moment the harness can see happen (the n-th approval it sends, the n-th side-effecting tool
// call reaching the counting server, the n-th model call reaching the upstream, the n-th seal
// asking the proxy for the job's Clawsig receipts, and the n-th model answer leaving the
// upstream, while the proxy signs, writes and fsyncs its receipt). Timings differ from run to run; which part
// is killed when, and for how long, does not.

/** A small, fast, well-mixed 32-bit PRNG; the same seed gives the same sequence everywhere. */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export interface Random {
  /** A float in [0, 1). */
  next(): number;
  /** An integer in [min, max]. */
  int(min: number, max: number): number;
  /** A float in [min, max). */
  between(min: number, max: number): number;
  pick<T>(items: readonly T[]): T;
  /** One of the keys, each as likely as its weight. */
  weighted<K extends string>(weights: Readonly<Record<K, number>>): K;
  shuffle<T>(items: readonly T[]): T[];
}

export function random(seed: number): Random {
  const next = mulberry32(seed);
  const self: Random = {
    next,
    int: (min, max) => min + Math.floor(next() * (max - min + 1)),
    between: (min, max) => min + next() * (max - min),
    pick: (items) => items[Math.floor(next() * items.length)] as (typeof items)[number],
    weighted: (weights) => {
      const entries = Object.entries(weights) as Array<[keyof typeof weights, number]>;
      const total = entries.reduce((sum, [, w]) => sum + w, 0);
      let roll = next() * total;
      for (const [key, w] of entries) {
        roll -= w;
        if (roll < 0) return key;
      }
      return (entries.at(-1) as [keyof typeof weights, number])[0];
    },
    shuffle: (items) => {
      const out = [...items];
      for (let i = out.length - 1; i > 0; i--) {
        const j = Math.floor(next() * (i + 1));
        [out[i], out[j]] = [out[j] as (typeof out)[number], out[i] as (typeof out)[number]];
      }
      return out;
    },
  };
  return self;
}

export const PARTS = ['temporal', 'synapse', 'proxy', 'worker', 'gateway'] as const;
export type PartName = (typeof PARTS)[number];

/** What the harness can see happen, to aim a kill at. */
export const MOMENTS = ['approval-sent', 'tool-call', 'model-call', 'seal', 'receipt-write'] as const;
export type Moment = (typeof MOMENTS)[number];

export interface KillBase {
  part: PartName;
  /** SIGKILL (a crash), or SIGTERM (a clean stop; Synapse only). */
  signal: 'SIGKILL' | 'SIGTERM';
  /** How long the part stays down before it is started again. */
  pauseMs: number;
}
export interface TimedKill extends KillBase {
  kind: 'timed';
  /** Milliseconds after the chaos starts. */
  atMs: number;
}
export interface AimedKill extends KillBase {
  kind: 'aimed';
  moment: Moment;
  /** At the n-th time the moment is seen (from 1). */
  nth: number;
}
export type Kill = TimedKill | AimedKill;

/** Which parts an aimed kill may hit at each moment: the ones that hold that moment's work. */
const AIMED_AT: Record<Moment, readonly PartName[]> = {
  'approval-sent': ['gateway', 'worker', 'temporal'],
  'tool-call': ['worker', 'worker', 'temporal'],
  'model-call': ['proxy', 'worker'],
  seal: ['worker', 'proxy'],
  // The upstream's answer has left: the proxy is signing, writing and syncing its receipt.
  'receipt-write': ['proxy'],
};

export interface ScheduleOptions {
  seed: number;
  jobs: number;
  /** How long the timed kills go on (the run stops killing earlier once every job has ended). */
  horizonMs: number;
  /** Mean time between two timed kills. */
  meanGapMs: number;
  /** Longest pause before a restart. */
  maxPauseMs: number;
}

/** How likely a timed kill hits each part: the worker and the gateway hold the most in flight. */
const PART_WEIGHTS: Record<PartName, number> = { worker: 3, gateway: 3, proxy: 2, temporal: 2, synapse: 1 };

export function killSchedule(opts: ScheduleOptions): Kill[] {
  // Its own stream, apart from the job mix: changing the number of jobs moves no timed kill.
  const rng = random(opts.seed ^ 0x5eed_c4a0);
  const kills: Kill[] = [];
  const pause = (part: PartName): number =>
    Math.round(rng.between(300, part === 'synapse' ? opts.maxPauseMs / 2 : opts.maxPauseMs));
  // Every part is killed early on, each once in an order of the seed's; then as the weights say.
  const first = rng.shuffle(PARTS);
  for (let at = rng.between(2_000, opts.meanGapMs); at < opts.horizonMs;) {
    const part = first.shift() ?? rng.weighted(PART_WEIGHTS);
    const signal = part === 'synapse' && rng.next() < 0.5 ? 'SIGTERM' : 'SIGKILL';
    kills.push({ kind: 'timed', atMs: Math.round(at), part, signal, pauseMs: pause(part) });
    at += rng.between(opts.meanGapMs * 0.4, opts.meanGapMs * 1.6);
  }
  // Aimed kills: a few per moment, spread over the run's expected count of that moment.
  const expected: Record<Moment, number> = {
    'approval-sent': Math.ceil(opts.jobs * 1.3),
    'tool-call': Math.ceil(opts.jobs * 0.4),
    'model-call': Math.ceil(opts.jobs * 2.5),
    seal: opts.jobs,
    'receipt-write': Math.ceil(opts.jobs * 2.5),
  };
  for (const moment of MOMENTS) {
    const count = Math.max(2, Math.round(opts.jobs / 10));
    const picked = new Set<number>();
    for (let i = 0; i < count; i++) picked.add(rng.int(1, Math.max(1, expected[moment])));
    for (const nth of [...picked].sort((a, b) => a - b)) {
      const part = rng.pick(AIMED_AT[moment]);
      kills.push({ kind: 'aimed', moment, nth, part, signal: 'SIGKILL', pauseMs: pause(part) });
    }
  }
  return kills;
}

/** One line per kill, for the start of a run and its failure report. */
export function describeKill(kill: Kill): string {
  const when =
    kill.kind === 'timed' ? `+${(kill.atMs / 1000).toFixed(1)}s` : `at ${kill.moment} #${kill.nth}`;
  return `${when.padEnd(22)} ${kill.signal === 'SIGKILL' ? 'kill -9' : 'stop   '} ${kill.part.padEnd(8)} restart after ${(kill.pauseMs / 1000).toFixed(1)}s`;
}
