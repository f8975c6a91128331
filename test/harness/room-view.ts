// A room as the homeserver has it, read by one of its members: its events, the bot's messages in
// a thread, a message sent into it; and waiting for something to show up there.
import { Direction } from 'matrix-js-sdk';
import { threadRelation } from '../../src/ingress/matrix-io.ts';
import type { MatrixTestUser } from './matrix-user.ts';

export interface RawEvent {
  event_id: string;
  type: string;
  sender: string;
  content: Record<string, any>;
}

/** Probes every 250 ms until it returns something; fails after `timeoutMs`, naming `what`. */
export async function waitFor<T>(
  what: string,
  timeoutMs: number,
  probe: () => Promise<T | undefined>,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const found = await probe();
    if (found !== undefined) return found;
    if (Date.now() > deadline) throw new Error(`waited ${timeoutMs} ms for ${what}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

export class RoomView {
  readonly reader: MatrixTestUser;
  readonly roomId: string;
  readonly botId: string;

  constructor(reader: MatrixTestUser, roomId: string, botId: string) {
    this.reader = reader;
    this.roomId = roomId;
    this.botId = botId;
  }

  /** The room's events as the homeserver has them, oldest first. */
  async events(): Promise<RawEvent[]> {
    const res = await this.reader.client.createMessagesRequest(this.roomId, null, 500, Direction.Backward);
    return (res.chunk as unknown as RawEvent[]).reverse();
  }

  /** The bot's messages in the thread of `root` (edits left out), oldest first. */
  async botThread(root: string): Promise<string[]> {
    return (await this.events())
      .filter(
        (e) =>
          e.sender === this.botId &&
          e.type === 'm.room.message' &&
          e.content['m.relates_to']?.rel_type === 'm.thread' &&
          e.content['m.relates_to']?.event_id === root,
      )
      .map((e) => String(e.content['body']));
  }

  async botSaysInThread(root: string, pattern: RegExp, timeoutMs: number): Promise<string> {
    return await waitFor(`the bot saying ${pattern} in the thread of ${root}`, timeoutMs, async () =>
      (await this.botThread(root)).find((body) => pattern.test(body)),
    );
  }

  /** Sends a text message as `user`, in the thread of `thread` when given; its event id. */
  async send(user: MatrixTestUser, body: string, thread?: string): Promise<string> {
    const content: Record<string, unknown> = { msgtype: 'm.text', body };
    if (thread) content['m.relates_to'] = threadRelation(thread);
    const { event_id: eventId } = await user.client.sendEvent(
      this.roomId,
      'm.room.message' as never,
      content as never,
    );
    return eventId;
  }
}
