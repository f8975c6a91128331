// The jobs of a chaos run: a mix that covers the whole life of a job, each driven by people in a
// room as a real one would be. A request; its plan approved with !approve, denied with !deny,
// withdrawn with !cancel, or left to time out; after approval the scripted model reads a file
// (its text is untrusted, so the job is tainted) and then asks for a call with side effects:
// write_pr (a branch pushed to the remote) or an http POST (a marker on the counting server). That
// call waits on an approval card in the thread, answered with ✅ / ❌ or !approve / !deny <card>,
// or the job is cancelled while the card waits.
import type { DemoScript } from '../../src/proxy/demo-model.ts';
import { CALL_CARD_FIELD, type JobStatus } from '../../src/temporal/job-contract.ts';
import { jobWorkflowId } from '../../src/ingress/job-ids.ts';
import { bodyOf, relationOf, type Human, type RawEvent, type RoomWatch } from './humans.ts';
import type { Random } from './schedule.ts';
import { jobTag } from './world.ts';

export const JOB_KINDS = [
  /** Plan approved; the model reads the README and answers. */
  'read',
  /** Plan approved; a read, then write_pr, approved on its card; the branch lands once. */
  'pr',
  /** Plan approved; a read, then an http POST, approved on its card; the marker arrives once. */
  'post',
  /** Plan approved; the side-effecting call's card is denied; the call never runs. */
  'card-deny',
  /** The plan is denied. */
  'deny',
  /** The requester withdraws the job while its plan waits. */
  'cancel',
  /** An approver cancels the job while its card waits; the call never runs. */
  'cancel-card',
  /** Nobody answers; the plan expires (the run's policy has a short approval expiry). */
  'timeout',
] as const;
export type JobKind = (typeof JOB_KINDS)[number];

export const EXPECTED_STATUS: Record<JobKind, JobStatus> = {
  read: 'succeeded',
  pr: 'succeeded',
  post: 'succeeded',
  'card-deny': 'succeeded',
  deny: 'denied',
  cancel: 'cancelled',
  'cancel-card': 'cancelled',
  timeout: 'timed_out',
};

const SHARE: Record<JobKind, number> = {
  read: 14,
  pr: 20,
  post: 20,
  'card-deny': 10,
  deny: 9,
  cancel: 8,
  'cancel-card': 9,
  timeout: 10,
};

/** What a person sent that a job must count exactly once. */
export interface SentDecision {
  job: number;
  eventId: string;
  /** What it was: the plan's approval or denial, a card's, or a cancel. */
  what: 'plan-approve' | 'plan-deny' | 'card-approve' | 'card-deny' | 'cancel';
  via: 'command' | 'reaction';
  sentAt: number;
}

export interface ChaosJob {
  index: number;
  kind: JobKind;
  /** The side effect the job's model asks for, if any. */
  effect: 'write_pr' | 'http' | null;
  /** How a card is answered. */
  cardVia: 'command' | 'reaction';
  requester: number;
  approver: number;
  /** Which of the run's two rooms (each with a bot account of its own) it is asked in. */
  room: 0 | 1;
  requestEventId: string | null;
  workflowId: string | null;
  shortId: string | null;
  startedAt: number | null;
  /** When the room was told how the job ended, and what it said. */
  reportedAt: number | null;
  reported: string | null;
  /** The step a driver gave up waiting at, if it did. */
  stuckAt: string | null;
  decisions: SentDecision[];
}

/** The branch a write_pr job pushes, and the marker a POST job sends. */
export const branchOf = (index: number): string => `chaos-${index}`;
export const markerOf = (index: number): string => `job-${index}`;

/** The jobs of a run, from the seed: at least one of each kind, the rest by share, shuffled. */
export function planJobs(count: number, rng: Random): ChaosJob[] {
  const kinds: JobKind[] = [...JOB_KINDS].slice(0, Math.min(count, JOB_KINDS.length));
  while (kinds.length < count) kinds.push(rng.weighted(SHARE));
  return rng.shuffle(kinds).map((kind, index) => ({
    index,
    kind,
    effect:
      kind === 'pr'
        ? 'write_pr'
        : kind === 'post'
          ? 'http'
          : kind === 'card-deny' || kind === 'cancel-card'
            ? rng.pick(['write_pr', 'http'] as const)
            : null,
    cardVia: rng.pick(['command', 'reaction'] as const),
    requester: rng.int(0, 1),
    approver: rng.int(0, 1),
    room: rng.int(0, 1) as 0 | 1,
    requestEventId: null,
    workflowId: null,
    shortId: null,
    startedAt: null,
    reportedAt: null,
    reported: null,
    stuckAt: null,
    decisions: [],
  }));
}

/** The model of a job: its plan, then what it does once the plan is approved. */
export function scriptOf(job: ChaosJob, countUrl: string): DemoScript {
  const tools = job.effect === null ? ['read'] : ['read', job.effect];
  const plan = {
    goal: `Chaos job ${job.index}: ${job.effect === 'write_pr' ? 'note the run in a branch' : job.effect === 'http' ? 'report to the tracker' : 'summarise the readme'}`,
    steps: ['Read what the workspace says', ...(job.effect ? [`Use ${job.effect} once`] : []), 'Answer'],
    tools,
  };
  const write =
    job.effect === 'write_pr'
      ? {
          name: 'write_pr',
          arguments: {
            branch: branchOf(job.index),
            message: `Chaos job ${job.index}`,
            files: [
              { path: `notes/chaos-${job.index}.md`, content: `Written once by chaos job ${job.index}.\n` },
            ],
          },
        }
      : {
          name: 'http',
          arguments: {
            method: 'POST',
            url: `${countUrl}/mark/${markerOf(job.index)}`,
            body: `job ${job.index}`,
          },
        };
  return {
    planning: [{ answer: JSON.stringify(plan) }],
    execution:
      job.effect === null
        ? [
            { call: { name: 'read', arguments: { path: 'README.md' } } },
            { answer: 'The readme: {{summary}}' },
          ]
        : [
            { call: { name: 'read', arguments: { path: 'docs/operations.md' } } },
            { call: write },
            { answer: 'Done: {{summary}}' },
          ],
  };
}

export interface DriveContext {
  rooms: [string, string];
  requesters: Human[];
  approvers: Human[];
  bots: [string, string];
  watch: RoomWatch;
  /** Temporal's word on a workflow that has ended (COMPLETED, FAILED, ...), or null while it runs. */
  closed: (workflowId: string) => Promise<string | null>;
  /**
   * Until when a driver waits for the next thing its job should show: the end of the run's grace
   * period. However long the kills hold a job up, it is stuck only if it has not ended by then.
   */
  deadline: number;
  /** A transaction id unique to this run. */
  txn: (job: number, what: string) => string;
  /** Called right after each decision is sent (a moment to aim a kill at). */
  sent: (decision: SentDecision) => void;
}

/** The bot's message in the job's thread whose body matches. */
function botInThread(bot: string, root: string, pattern: RegExp): (e: RawEvent) => boolean {
  return (e) => {
    if (e.sender !== bot || e.type !== 'm.room.message') return false;
    const rel = relationOf(e);
    return (
      (rel.eventId === root || rel.inReplyTo === root) &&
      rel.relType !== 'm.replace' &&
      pattern.test(bodyOf(e))
    );
  };
}

const RESULT = /^Job j[a-z2-7]+: ([a-z_]+)\./;

/**
 * Drives one job through its life. Each step waits for what the job should show next, or for its
 * result if the job ends first (the checks judge an end that came too soon); a driver gives up,
 * noting where, only at the run's deadline.
 */
export async function driveJob(job: ChaosJob, ctx: DriveContext): Promise<void> {
  const roomId = ctx.rooms[job.room];
  const bot = ctx.bots[job.room];
  const requester = ctx.requesters[job.requester] as Human;
  const approver = ctx.approvers[job.approver] as Human;
  const decide = async (
    what: SentDecision['what'],
    via: SentDecision['via'],
    send: () => Promise<string>,
  ): Promise<void> => {
    const eventId = await send();
    const decision: SentDecision = { job: job.index, eventId, what, via, sentAt: Date.now() };
    job.decisions.push(decision);
    ctx.sent(decision);
  };

  job.startedAt = Date.now();
  const text = `${jobTag(job.index)} ${job.effect === null ? 'summarise the readme' : `use ${job.effect} once`}`;
  const root = await requester.say(roomId, `!claw ${text}`, ctx.txn(job.index, 'request'));
  job.requestEventId = root;
  job.workflowId = jobWorkflowId(roomId, root);
  const isResult = botInThread(bot, root, RESULT);
  const ended = (result: RawEvent): void => {
    job.reportedAt = Date.now();
    job.reported = RESULT.exec(bodyOf(result))?.[1] ?? null;
  };
  /** The next thing the job shows, or null when it ended (or the deadline passed) instead. */
  const next = async (what: string, match: (e: RawEvent) => boolean): Promise<RawEvent | null> => {
    const wanted = (e: RawEvent): boolean => match(e) || isResult(e);
    let seen: RawEvent | null = null;
    while (!seen && Date.now() < ctx.deadline) {
      seen = await ctx.watch.waitFor(wanted, Math.min(15_000, ctx.deadline - Date.now()));
      // A workflow that ended without a word to the room (it failed) has nothing more to show.
      const status = seen ? null : await ctx.closed(job.workflowId as string);
      if (status !== null) {
        seen = await ctx.watch.waitFor(wanted, 5_000);
        if (!seen) {
          job.stuckAt = `waiting for ${what}: the workflow is ${status} and the room was not told`;
          return null;
        }
      }
    }
    if (!seen) job.stuckAt = `waiting for ${what}`;
    else if (isResult(seen)) ended(seen);
    return seen && !isResult(seen) ? seen : null;
  };

  const plan = await next('the plan', botInThread(bot, root, /^Plan for job j[a-z2-7]+/));
  if (!plan) return;
  job.shortId = /^Plan for job (j[a-z2-7]+)/.exec(bodyOf(plan))?.[1] ?? null;
  const inThread = (who: Human, body: string, what: string) => () =>
    who.say(roomId, body, ctx.txn(job.index, what), root);

  switch (job.kind) {
    case 'deny':
      await decide('plan-deny', 'command', inThread(approver, '!deny not this one', 'deny'));
      break;
    case 'cancel':
      await decide('cancel', 'command', inThread(requester, '!cancel', 'cancel'));
      break;
    case 'timeout':
      break;
    default: {
      await decide('plan-approve', 'command', inThread(approver, '!approve', 'approve'));
      if (job.effect === null) break;
      const card = await next(
        'the approval card',
        (e) => botInThread(bot, root, /^Approval needed for job/)(e) && CALL_CARD_FIELD in e.content,
      );
      if (!card) return;
      const cardId = (card.content[CALL_CARD_FIELD] as { card_id: string }).card_id;
      if (job.kind === 'cancel-card') {
        await decide('cancel', 'command', inThread(approver, '!cancel', 'cancel'));
      } else {
        const approve = job.kind !== 'card-deny';
        const what = approve ? 'card-approve' : 'card-deny';
        const send =
          job.cardVia === 'reaction'
            ? () => approver.react(roomId, card.event_id, approve ? '✅' : '❌', ctx.txn(job.index, what))
            : inThread(approver, approve ? `!approve ${cardId}` : `!deny ${cardId} not now`, what);
        await decide(what, job.cardVia, send);
      }
    }
  }
  await next('the result', () => false);
}
