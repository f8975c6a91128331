// `clawgate schedule create`'s options and checks: a bad spec, overlap or window is refused
// with an error naming the option; the schedule is checked against the active policy as a
// request would be; and a pre-approval only where the policy's schedules rule allows it.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { ClawgateError } from '../../../src/errors.ts';
import { parseWpc, wpcHash, type Wpc } from '../../../src/policy/wpc.ts';
import {
  parseCron,
  parseDuration,
  parseOverlap,
  parseScheduleName,
  parseScheduleSpec,
} from '../../../src/cli/schedule-options.ts';
import { checkSchedule, scheduleOptions, type ScheduleCreateOptions } from '../../../src/cli/schedules.ts';

const example = JSON.parse(
  readFileSync(new URL('../../../examples/policy.json', import.meta.url), 'utf8'),
) as Record<string, any>;

const refused = (fn: () => unknown, message: RegExp) =>
  assert.throws(fn, (error: unknown) => error instanceof ClawgateError && message.test(error.message));

test('durations: units s, m, h, d and their sums', () => {
  assert.equal(parseDuration('90s', '--every'), 90_000);
  assert.equal(parseDuration('10m', '--every'), 600_000);
  assert.equal(parseDuration('1h30m', '--every'), 5_400_000);
  assert.equal(parseDuration('2d', '--every'), 172_800_000);
  refused(() => parseDuration('1 hour', '--every'), /^--every "1 hour": a duration such as 30s/);
  refused(() => parseDuration('10', '--catchup-window'), /^--catchup-window "10": a duration/);
  refused(() => parseDuration('0m', '--every'), /^--every 0m: must be longer than zero/);
});

test('a spec is exactly one of --every and --cron', () => {
  assert.deepEqual(parseScheduleSpec({ every: '1h' }), { kind: 'every', everyMs: 3_600_000, text: '1h' });
  assert.deepEqual(parseScheduleSpec({ cron: '0 9 * * 1-5' }), { kind: 'cron', cron: '0 9 * * 1-5' });
  refused(() => parseScheduleSpec({}), /^give exactly one of --every <duration>/);
  refused(() => parseScheduleSpec({ every: '1h', cron: '0 9 * * *' }), /^give exactly one of --every/);
  refused(() => parseScheduleSpec({ every: 'hourly' }), /^--every "hourly": a duration/);
});

test('a cron expression: five fields, each checked with its range', () => {
  assert.equal(parseCron('*/15  8-18 * * mon-fri'), '*/15 8-18 * * mon-fri');
  assert.equal(parseCron('0 9 1,15 * *'), '0 9 1,15 * *');
  refused(() => parseCron('0 9 * *'), /^--cron "0 9 \* \*": five fields .*, not 4$/);
  refused(() => parseCron('0 25 * * *'), /the hour field "25" is not \*, a number from 0 to 23/);
  refused(() => parseCron('61 * * * *'), /the minute field "61" is not/);
  refused(() => parseCron('0 9 * * 1-5;'), /the day of week field "1-5;" is not/);
});

test('overlap: the four policies, anything else named', () => {
  for (const o of ['skip', 'buffer-one', 'allow-all', 'cancel-other']) assert.equal(parseOverlap(o), o);
  refused(
    () => parseOverlap('buffer'),
    /^--overlap "buffer": one of skip, buffer-one, allow-all, cancel-other$/,
  );
  refused(() => parseOverlap('SKIP'), /^--overlap "SKIP": one of/);
});

test('a schedule name stays plain', () => {
  assert.equal(parseScheduleName('daily-report_1'), 'daily-report_1');
  refused(() => parseScheduleName('daily report'), /^schedule name "daily report": 1 to 63 letters/);
  refused(() => parseScheduleName('-x'), /^schedule name "-x"/);
});

function registryOf(wpc: Wpc) {
  const hash = wpcHash(wpc);
  return {
    hash,
    registry: {
      activeHash: (channel: string) => (channel === 'matrix' ? hash : null),
      policy: () => wpc,
    },
  };
}

const base: ScheduleCreateOptions = {
  name: 'daily',
  every: '1h',
  room: '!ops:localhost',
  text: 'summarise the open issues',
  channel: 'matrix',
  requester: '@requester:localhost',
  overlap: 'skip',
  catchupWindow: '10m',
  account: 'main',
};
const now = new Date('2026-12-01T09:00:00Z');

test('a schedule is checked against the active policy as a request would be', () => {
  const { hash, registry } = registryOf(parseWpc(example));
  const checked = checkSchedule(base, registry, now);
  assert.equal(checked.policyHash, hash);
  assert.equal(checked.input.preApproval, undefined);
  assert.equal(checked.input.matrixTaskQueue, 'clawgate-matrix-main');
  refused(
    () => checkSchedule({ ...base, account: undefined }, registry, now),
    /^give --account <id>, the gateway account that holds the room/,
  );
  const options = scheduleOptions(checked);
  assert.deepEqual(options.spec, { intervals: [{ every: 3_600_000 }] });
  assert.equal(options.action.workflowId, 'schedule:daily');
  assert.equal(options.policies?.overlap, 'SKIP');
  assert.equal(options.policies?.catchupWindow, 600_000);
  assert.equal(
    scheduleOptions(checkSchedule({ ...base, overlap: 'cancel-other' }, registry, now)).policies?.overlap,
    'CANCEL_OTHER',
  );
  refused(
    () => checkSchedule({ ...base, room: '!elsewhere:localhost' }, registry, now),
    /^room !elsewhere:localhost is not on the room allowlist of policy [0-9a-f]{64} \(channel matrix\)$/,
  );
  refused(
    () => checkSchedule({ ...base, requester: '@mallory:localhost' }, registry, now),
    /^@mallory:localhost may not request work under policy .*: not on its requesters_allowlist$/,
  );
  refused(
    () => checkSchedule({ ...base, channel: 'other' }, registry, now),
    /^no policy is active on channel other/,
  );
  refused(() => checkSchedule({ ...base, overlap: 'never' }, registry, now), /^--overlap "never"/);
});

test('a pre-approval is refused unless the policy allows it, and for whom', () => {
  const { registry } = registryOf(parseWpc(example));
  refused(
    () => checkSchedule({ ...base, preApprovedBy: '@approver:localhost' }, registry, now),
    /^--pre-approved-by @approver:localhost refused under policy [0-9a-f]{64} \(channel matrix\): the policy does not allow pre-approved schedules/,
  );
  const allowing = structuredClone(example);
  allowing['schedules'] = { pre_approval: { allowed: true, approvers: ['@approver:localhost'] } };
  const { hash, registry: allowed } = registryOf(parseWpc(allowing));
  const checked = checkSchedule({ ...base, preApprovedBy: '@approver:localhost' }, allowed, now);
  assert.deepEqual(checked.input.preApproval, {
    approver: '@approver:localhost',
    at: '2026-12-01T09:00:00.000Z',
    policyHash: hash,
  });
  refused(
    () => checkSchedule({ ...base, preApprovedBy: '@requester:localhost' }, allowed, now),
    /: @requester:localhost is not in the policy's schedules.pre_approval.approvers$/,
  );
});

test("the WPC's schedules rule: optional, and its approvers must be plan approvers", () => {
  // A policy without the rule keeps its hash: the rule has no default.
  assert.equal(parseWpc(example).schedules, undefined);
  const p = structuredClone(example);
  p['schedules'] = { pre_approval: { allowed: true, approvers: ['@someone:localhost'] } };
  refused(
    () => parseWpc(p),
    /schedules\.pre_approval\.approvers\[0\]: @someone:localhost is not in matrix\.approval\.approver_user_ids_allowlist/,
  );
  p['schedules'] = { pre_approval: { allowed: true } };
  refused(
    () => parseWpc(p),
    /schedules\.pre_approval\.approvers: pre-approval is allowed but no one may give it/,
  );
  p['schedules'] = { pre_approval: { allowed: false, approvers: [], extra: 1 } };
  refused(() => parseWpc(p), /schedules\.pre_approval: Unrecognized key: "extra"/);
});
