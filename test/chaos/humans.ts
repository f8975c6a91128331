// The people of a chaos run, on the run's own Synapse, through the Matrix client-server API as
// any client speaks it: they post requests and approvals, react to cards, and one of them keeps
// a sync going that sees every event of the rooms. Plain HTTP rather than the test harness's
// MatrixTestUser (a matrix-js-sdk client bound to the test run's shared homeserver): Synapse is
// restarted under these users many times, and each send is retried with its own transaction id
// until the homeserver takes it, so a message is posted once however many times it is sent.
import { registerWithSharedSecret } from '../../src/devstack/synapse.ts';
import { threadRelation } from '../../src/ingress/matrix-io.ts';

export interface RawEvent {
  event_id: string;
  type: string;
  sender: string;
  origin_server_ts: number;
  content: Record<string, unknown>;
  state_key?: string;
  room_id?: string;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export class Human {
  readonly baseUrl: string;
  readonly userId: string;
  readonly accessToken: string;

  private constructor(baseUrl: string, userId: string, accessToken: string) {
    this.baseUrl = baseUrl;
    this.userId = userId;
    this.accessToken = accessToken;
  }

  static async register(baseUrl: string, secret: string, localpart: string): Promise<Human> {
    const user = await registerWithSharedSecret(baseUrl, secret, localpart);
    return new Human(baseUrl, user.userId, user.accessToken);
  }

  /** A client-server API call, tried again while the homeserver is away (until the deadline). */
  async call<T>(method: string, path: string, body?: unknown, deadlineMs = 300_000): Promise<T> {
    const deadline = Date.now() + deadlineMs;
    for (let attempt = 0; ; attempt++) {
      let status = 0;
      let text: string;
      try {
        const res = await fetch(`${this.baseUrl}/_matrix/client/v3${path}`, {
          method,
          headers: { authorization: `Bearer ${this.accessToken}`, 'content-type': 'application/json' },
          ...(body === undefined ? {} : { body: JSON.stringify(body) }),
          signal: AbortSignal.timeout(45_000),
        });
        status = res.status;
        text = await res.text();
        if (res.ok) return JSON.parse(text) as T;
      } catch (error) {
        text = (error as Error).message;
      }
      // 4xx other than rate limiting is an answer, not an outage.
      if (status >= 400 && status < 500 && status !== 429) {
        throw new Error(`${this.userId}: ${method} ${path}: ${status} ${text.slice(0, 300)}`);
      }
      if (Date.now() > deadline) {
        throw new Error(`${this.userId}: ${method} ${path} failed until the deadline: ${status} ${text}`);
      }
      await sleep(Math.min(2_000, 100 * 2 ** Math.min(attempt, 5)));
    }
  }

  async createRoom(name: string, invite: string[]): Promise<string> {
    const { room_id } = await this.call<{ room_id: string }>('POST', '/createRoom', {
      name,
      invite,
      preset: 'private_chat',
    });
    return room_id;
  }

  async join(roomId: string): Promise<void> {
    await this.call('POST', `/join/${encodeURIComponent(roomId)}`, {});
  }

  /** Sends an event once: `txnId` names it, so a retry after a lost answer is the same event. */
  async send(roomId: string, type: string, content: Record<string, unknown>, txnId: string): Promise<string> {
    const { event_id } = await this.call<{ event_id: string }>(
      'PUT',
      `/rooms/${encodeURIComponent(roomId)}/send/${encodeURIComponent(type)}/${encodeURIComponent(txnId)}`,
      content,
    );
    return event_id;
  }

  async say(roomId: string, body: string, txnId: string, thread?: string): Promise<string> {
    return await this.send(
      roomId,
      'm.room.message',
      { msgtype: 'm.text', body, ...(thread ? { 'm.relates_to': threadRelation(thread) } : {}) },
      txnId,
    );
  }

  async react(roomId: string, target: string, key: string, txnId: string): Promise<string> {
    return await this.send(
      roomId,
      'm.reaction',
      { 'm.relates_to': { rel_type: 'm.annotation', event_id: target, key } },
      txnId,
    );
  }
}

/**
 * Every event of the watched rooms as this user's sync sees them, in order, gaps in a limited
 * timeline read back; a sync that fails (the homeserver is down) is tried again where it was.
 */
export class RoomWatch {
  readonly events: RawEvent[] = [];
  private readonly seen = new Set<string>();
  private readonly waiters = new Set<() => void>();
  private since: string | null = null;
  private running = true;
  private loop: Promise<void> = Promise.resolve();
  /** When each event was first seen here (ms), by event id. */
  readonly seenAt = new Map<string, number>();
  onEvent: ((event: RawEvent, roomId: string) => void) | null = null;

  private readonly viewer: Human;
  private readonly rooms: string[];

  constructor(viewer: Human, rooms: string[]) {
    this.viewer = viewer;
    this.rooms = rooms;
  }

  start(): void {
    this.loop = this.run();
  }

  private async run(): Promise<void> {
    const filter = JSON.stringify({
      presence: { not_types: ['*'] },
      account_data: { not_types: ['*'] },
      room: {
        rooms: this.rooms,
        timeline: { limit: 200 },
        state: { lazy_load_members: true },
        ephemeral: { not_types: ['*'] },
        account_data: { not_types: ['*'] },
      },
    });
    while (this.running) {
      const query = new URLSearchParams({
        filter,
        timeout: '5000',
        ...(this.since ? { since: this.since } : {}),
      });
      try {
        const res = await fetch(`${this.viewer.baseUrl}/_matrix/client/v3/sync?${query.toString()}`, {
          headers: { authorization: `Bearer ${this.viewer.accessToken}` },
          signal: AbortSignal.timeout(30_000),
        });
        if (!res.ok) throw new Error(`sync: ${res.status}`);
        const body = (await res.json()) as {
          next_batch: string;
          rooms?: {
            join?: Record<
              string,
              { timeline?: { events?: RawEvent[]; limited?: boolean; prev_batch?: string } }
            >;
          };
        };
        for (const [roomId, room] of Object.entries(body.rooms?.join ?? {})) {
          let events = room.timeline?.events ?? [];
          if (room.timeline?.limited && room.timeline.prev_batch && this.since !== null) {
            events = [...(await this.readBack(roomId, room.timeline.prev_batch)), ...events];
          }
          for (const event of events) this.add(event, roomId);
        }
        this.since = body.next_batch;
        for (const wake of [...this.waiters]) wake();
      } catch {
        if (this.running) await sleep(500);
      }
    }
  }

  /** The events before a limited timeline, back to the first one already seen. */
  private async readBack(roomId: string, from: string): Promise<RawEvent[]> {
    const found: RawEvent[] = [];
    let token = from;
    for (let page = 0; page < 50; page++) {
      const query = new URLSearchParams({ from: token, dir: 'b', limit: '100' });
      const res = await this.viewer.call<{ chunk?: RawEvent[]; end?: string }>(
        'GET',
        `/rooms/${encodeURIComponent(roomId)}/messages?${query.toString()}`,
      );
      const chunk = res.chunk ?? [];
      const known = chunk.findIndex((e) => this.seen.has(e.event_id));
      found.push(...(known >= 0 ? chunk.slice(0, known) : chunk));
      if (known >= 0 || !res.end || chunk.length === 0) break;
      token = res.end;
    }
    return found.reverse();
  }

  private add(event: RawEvent, roomId: string): void {
    if (this.seen.has(event.event_id)) return;
    this.seen.add(event.event_id);
    this.seenAt.set(event.event_id, Date.now());
    event.room_id = roomId;
    this.events.push(event);
    this.onEvent?.(event, roomId);
  }

  /** The first event that matches, waiting for it until the deadline; null if none came. */
  async waitFor(match: (e: RawEvent) => boolean, timeoutMs: number): Promise<RawEvent | null> {
    const deadline = Date.now() + timeoutMs;
    let checked = 0;
    for (;;) {
      for (; checked < this.events.length; checked++) {
        const event = this.events[checked] as RawEvent;
        if (match(event)) return event;
      }
      const left = deadline - Date.now();
      if (left <= 0 || !this.running) return null;
      await new Promise<void>((resolve) => {
        const wake = (): void => {
          clearTimeout(timer);
          this.waiters.delete(wake);
          resolve();
        };
        const timer = setTimeout(wake, Math.min(left, 1_000));
        this.waiters.add(wake);
      });
    }
  }

  async stop(): Promise<void> {
    this.running = false;
    for (const wake of [...this.waiters]) wake();
    await this.loop;
  }
}

/** What an event relates to: a thread root, a reply's target, an annotation's target. */
export function relationOf(e: RawEvent): {
  relType?: string;
  eventId?: string;
  inReplyTo?: string;
  key?: string;
} {
  const rel = (e.content['m.relates_to'] ?? {}) as {
    rel_type?: string;
    event_id?: string;
    key?: string;
    'm.in_reply_to'?: { event_id?: string };
  };
  return {
    ...(rel.rel_type ? { relType: rel.rel_type } : {}),
    ...(rel.event_id ? { eventId: rel.event_id } : {}),
    ...(rel['m.in_reply_to']?.event_id ? { inReplyTo: rel['m.in_reply_to'].event_id } : {}),
    ...(rel.key ? { key: rel.key } : {}),
  };
}

export const bodyOf = (e: RawEvent): string =>
  typeof e.content['body'] === 'string' ? e.content['body'] : '';
