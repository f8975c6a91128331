// The options of `clawgate schedule create`, checked before anything talks to Temporal: a spec
// (an interval or a cron expression), an overlap policy and a catch-up window. Each error names
// the option and says what would be accepted.
import { ClawgateError, ERROR_CODES } from '../errors.ts';

export const OVERLAP_POLICIES = ['skip', 'buffer-one', 'allow-all', 'cancel-other'] as const;
export type OverlapName = (typeof OVERLAP_POLICIES)[number];

/** Temporal's names of the overlap policies, as its client takes them. */
export const TEMPORAL_OVERLAP = {
  skip: 'SKIP',
  'buffer-one': 'BUFFER_ONE',
  'allow-all': 'ALLOW_ALL',
  'cancel-other': 'CANCEL_OTHER',
} as const satisfies Record<OverlapName, string>;

const UNIT_MS = { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 } as const;

/**
 * A duration such as `90s`, `10m`, `1h30m` or `2d`, in milliseconds. `what` names the option in
 * the error.
 */
export function parseDuration(text: string, what: string): number {
  const trimmed = text.trim();
  if (!/^(\d+[smhd])+$/.test(trimmed)) {
    throw new ClawgateError(
      ERROR_CODES.usage,
      `${what} ${JSON.stringify(text)}: a duration such as 30s, 10m, 1h or 1h30m (units s, m, h, d)`,
    );
  }
  let ms = 0;
  for (const [, n, unit] of trimmed.matchAll(/(\d+)([smhd])/g)) {
    ms += Number(n) * UNIT_MS[unit as keyof typeof UNIT_MS];
  }
  if (ms === 0) throw new ClawgateError(ERROR_CODES.usage, `${what} ${text}: must be longer than zero`);
  return ms;
}

// Minute, hour, day of month, month, day of week: numbers, ranges, lists, steps and `*`, plus
// the month and weekday names Temporal understands.
const CRON_FIELD = /^(\*|[0-9a-z]+(-[0-9a-z]+)?)(\/[0-9]+)?(,(\*|[0-9a-z]+(-[0-9a-z]+)?)(\/[0-9]+)?)*$/i;
const CRON_RANGES: Array<[string, number, number]> = [
  ['minute', 0, 59],
  ['hour', 0, 23],
  ['day of month', 1, 31],
  ['month', 1, 12],
  ['day of week', 0, 7],
];

/** A five-field cron expression, checked field by field so the error says which field is wrong. */
export function parseCron(text: string): string {
  const fields = text.trim().split(/\s+/);
  if (fields.length !== 5) {
    throw new ClawgateError(
      ERROR_CODES.usage,
      `--cron ${JSON.stringify(text)}: five fields (minute hour day-of-month month day-of-week), not ${fields.length}`,
    );
  }
  fields.forEach((field, i) => {
    const [name, min, max] = CRON_RANGES[i]!;
    const numbers = field.match(/\d+/g) ?? [];
    const steps = [...field.matchAll(/\/(\d+)/g)].map((m) => m[1]);
    const outOfRange = numbers.find((n) => !steps.includes(n) && (Number(n) < min || Number(n) > max));
    if (!CRON_FIELD.test(field) || outOfRange !== undefined) {
      throw new ClawgateError(
        ERROR_CODES.usage,
        `--cron ${JSON.stringify(text)}: the ${name} field ${JSON.stringify(field)} is not ` +
          `*, a number from ${min} to ${max}, a range, a list or a step`,
      );
    }
  });
  return fields.join(' ');
}

export type ScheduleSpecInput =
  { kind: 'every'; everyMs: number; text: string } | { kind: 'cron'; cron: string };

/** Exactly one of `--every` and `--cron`. */
export function parseScheduleSpec(opts: {
  every?: string | undefined;
  cron?: string | undefined;
}): ScheduleSpecInput {
  if ((opts.every === undefined) === (opts.cron === undefined)) {
    throw new ClawgateError(
      ERROR_CODES.usage,
      "give exactly one of --every <duration> (such as 1h) or --cron '<expression>' (such as '0 9 * * 1-5')",
    );
  }
  if (opts.every !== undefined) {
    const everyMs = parseDuration(opts.every, '--every');
    // Temporal fires at whole seconds; a shorter interval would be rounded to nothing.
    if (everyMs < 1000) throw new ClawgateError(ERROR_CODES.usage, `--every ${opts.every}: at least 1s`);
    return { kind: 'every', everyMs, text: opts.every };
  }
  return { kind: 'cron', cron: parseCron(opts.cron!) };
}

export function parseOverlap(text: string): OverlapName {
  if (!(OVERLAP_POLICIES as readonly string[]).includes(text)) {
    throw new ClawgateError(
      ERROR_CODES.usage,
      `--overlap ${JSON.stringify(text)}: one of ${OVERLAP_POLICIES.join(', ')}`,
    );
  }
  return text as OverlapName;
}

/** A schedule's name: it becomes part of workflow ids and of the root message, so it is kept plain. */
export function parseScheduleName(text: string): string {
  if (!/^[a-z0-9][a-z0-9_-]{0,62}$/i.test(text)) {
    throw new ClawgateError(
      ERROR_CODES.usage,
      `schedule name ${JSON.stringify(text)}: 1 to 63 letters, digits, - and _, starting with a letter or digit`,
    );
  }
  return text;
}
