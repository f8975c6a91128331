// `clawgate say --follow`: the messages of a request's thread, decrypted by the demo user's own
// device, printed as they come (the bot's plan, its cards, the status line's edits, the answer,
// the reactions), until the job the thread belongs to has ended. What an approver sees in a
// Matrix client, at a terminal.
import { WorkflowNotFoundError } from '@temporalio/client';
import { MatrixEventEvent, RoomEvent, type MatrixClient, type MatrixEvent, type Room } from 'matrix-js-sdk';
import { jobWorkflowIds } from '../ingress/job-ids.ts';
import { JOB_ID, JOB_STATUS } from '../temporal/search-attributes.ts';
import type { connectTemporal } from '../stack/components.ts';

/**
 * Text a model or a requester wrote, made safe for a terminal: control characters (escape
 * sequences among them) and bidirectional overrides are shown as escapes, not obeyed.
 */
export function printable(text: string): string {
  // eslint-disable-next-line no-control-regex
  return text.replace(/[\u0000-\u001f\u007f-\u009f\u200e\u200f\u202a-\u202e\u2066-\u2069]/g, (c) =>
    c === '\t' ? ' ' : `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`,
  );
}

/** How long a message that does not decrypt yet is given for its room key to arrive. */
const KEY_WAIT_MS = 10_000;
/** How often the job's state is asked for, and how long after its end late messages are awaited. */
const POLL_MS = 1_000;
/** How long one question about the job may take before it is asked again. */
const ASK_TIMEOUT_MS = 5_000;
const AFTER_END_MS = 2_500;

type Temporal = Awaited<ReturnType<typeof connectTemporal>>;

/** The relation of an event, from its wire content (an encrypted event shows it in clear). */
function relationOf(event: MatrixEvent): { relType?: string; eventId?: string; key?: string } {
  const relation = event.getWireContent()['m.relates_to'] as Record<string, unknown> | undefined;
  const text = (value: unknown): string | undefined => (typeof value === 'string' ? value : undefined);
  return {
    relType: text(relation?.['rel_type']),
    eventId: text(relation?.['event_id']),
    key: text(relation?.['key']),
  };
}

/** The text a message shows: an edit's new text, else its body. */
function textOf(content: Record<string, unknown>): string | undefined {
  const edited = content['m.new_content'] as { body?: unknown } | undefined;
  const body: unknown = edited?.body ?? content['body'];
  return typeof body === 'string' ? body.replace(/\r\n?/g, '\n') : undefined;
}

/** Waits for an encrypted event's clear text, giving its room key some time to arrive. */
async function decrypted(client: MatrixClient, event: MatrixEvent): Promise<void> {
  await client.decryptEventIfNeeded(event);
  if (!event.isDecryptionFailure()) return;
  await new Promise<void>((resolve) => {
    const timer = setTimeout(done, KEY_WAIT_MS);
    function done(): void {
      clearTimeout(timer);
      event.off(MatrixEventEvent.Decrypted, onDecrypted);
      resolve();
    }
    function onDecrypted(): void {
      if (!event.isDecryptionFailure()) done();
    }
    event.on(MatrixEventEvent.Decrypted, onDecrypted);
  });
}

/**
 * The lines a thread event is shown as: its sender, then its text, indented. An edit (the
 * plan's status line) shows the lines it changed only, against `before`, the text it replaces.
 */
export function eventLines(event: MatrixEvent, before?: string): string[] {
  const sender = event.getSender() ?? '?';
  if (event.isDecryptionFailure() || event.getType() === 'm.room.encrypted') {
    return [`${sender}: [unable to decrypt: ${event.decryptionFailureReason ?? 'no room key'}]`];
  }
  const content = event.getContent();
  if (event.getType() === 'm.reaction') {
    return [`${sender} reacted ${printable(relationOf(event).key ?? '')}`];
  }
  const edited = content['m.new_content'] !== undefined;
  const text = textOf(content) ?? `(${event.getType()})`;
  let lines = text.replace(/\s+$/, '').split('\n');
  if (edited && before !== undefined) {
    const old = new Set(before.split('\n'));
    lines = lines.filter((line) => !old.has(line));
  }
  const [first = '', ...rest] = lines;
  return [
    `${sender}${edited ? ' (edited)' : ''}: ${printable(first)}`,
    ...rest.map((line) => (line === '' ? '' : `    ${printable(line)}`)),
  ];
}

/** The job's id and status once it has ended; null while it runs, or before it has started. */
async function endedJob(temporal: Temporal, roomId: string, root: string): Promise<string | null> {
  const { workflowId, legacy } = jobWorkflowIds(roomId, root);
  for (const id of [workflowId, legacy]) {
    try {
      const description = await temporal.client.workflow.getHandle(id).describe();
      if (description.status.name === 'RUNNING') return null;
      const sa = description.typedSearchAttributes;
      return `job ${sa.get(JOB_ID) ?? id} ended: ${sa.get(JOB_STATUS) ?? description.status.name.toLowerCase()}`;
    } catch (error) {
      if (!(error instanceof WorkflowNotFoundError)) throw error;
    }
  }
  return null;
}

/**
 * Prints the thread rooted at `root` as it grows (with what it already holds), until the job it
 * belongs to has ended or `stopped` resolves. Returns the line that says how it ended.
 */
export async function followThread(opts: {
  client: MatrixClient;
  temporal: Temporal;
  roomId: string;
  root: string;
  print: (line: string) => void;
  stopped: Promise<void>;
}): Promise<string> {
  const { client, roomId, root, print } = opts;
  const me = client.getUserId();
  const inThread = new Set<string>([root]);
  const seen = new Set<string>();
  /** The text each message of the thread shows now (edits replace it), by event id. */
  const texts = new Map<string, string>();
  let queue: Promise<void> = Promise.resolve();
  const consider = (event: MatrixEvent): void => {
    const id = event.getId();
    if (!id || id.startsWith('~') || seen.has(id)) return;
    const { relType, eventId } = relationOf(event);
    const belongs =
      (relType === 'm.thread' && eventId === root) ||
      ((relType === 'm.replace' || relType === 'm.annotation') && inThread.has(eventId ?? ''));
    if (!belongs) return;
    seen.add(id);
    if (relType === 'm.thread') inThread.add(id);
    if (event.getSender() === me) return;
    queue = queue.then(async () => {
      await decrypted(client, event);
      const target = relType === 'm.replace' ? (eventId as string) : id;
      for (const line of eventLines(event, texts.get(target))) print(line);
      const text = textOf(event.getContent());
      if (text !== undefined) texts.set(target, text);
    });
  };
  const onTimeline = (event: MatrixEvent, room: Room | undefined, toStart: boolean | undefined): void => {
    if (room?.roomId === roomId && !toStart) consider(event);
  };
  client.on(RoomEvent.Timeline, onTimeline);
  try {
    for (const event of client.getRoom(roomId)?.getLiveTimeline().getEvents() ?? []) consider(event);
    let stop = false;
    void opts.stopped.then(() => (stop = true));
    let ended: string | null = null;
    let endedAt = 0;
    while (!stop) {
      if (ended === null) {
        // A stack restarting is not the end of the job: its state is asked again. A Temporal
        // that hangs holds neither the thread nor Ctrl-C: the question is asked again later.
        ended = await Promise.race([
          endedJob(opts.temporal, roomId, root).catch(() => null),
          new Promise<null>((r) => setTimeout(() => r(null), ASK_TIMEOUT_MS).unref()),
          opts.stopped.then(() => null),
        ]);
        if (ended !== null) endedAt = Date.now();
      } else if (Date.now() - endedAt >= AFTER_END_MS) break;
      await Promise.race([new Promise((r) => setTimeout(r, POLL_MS)), opts.stopped]);
    }
    await queue;
    return ended ?? 'stopped following';
  } finally {
    client.off(RoomEvent.Timeline, onTimeline);
  }
}
