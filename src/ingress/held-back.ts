// While Temporal cannot be reached, a command that arrives is told, once, in its thread, that it
// is received and waits. The sync is held back meanwhile (the command is acted on once Temporal
// answers, as synced), so the commands after the held one are not synced yet: they are read
// ahead from the room's history and told too.
import { MatrixEvent, Method, type IRoomEvent, type MatrixClient } from 'matrix-js-sdk';
import type { Logger } from 'pino';
import {
  annotationOf,
  readCard,
  readCommand,
  readReaction,
  threadOf,
  type CommandWords,
} from './commands.ts';

/** The reply in a command's thread while Temporal cannot be reached (once per event). */
export const HELD_BACK_NOTICE =
  'received; clawgate cannot reach its job service (Temporal) right now; this is acted on when it is back.';

/** Encrypted events kept to be decrypted again, at most. */
const MAX_UNDECRYPTED = 1_000;

/** How often the room is read ahead while the sync is held back. */
const READ_AHEAD_EVERY_MS = 2_000;

/** An encrypted event's clear type and content. */
export interface ClearEvent {
  type: string;
  content: unknown;
}

/**
 * Decrypts an event read ahead of the sync with the account's client: its clear type and
 * content, or null when it cannot be decrypted (no crypto, no room key yet, a broken event).
 */
export async function decryptAhead(client: MatrixClient, raw: IRoomEvent): Promise<ClearEvent | null> {
  // A new event, not the room's: an event read ahead is not in the room's timeline yet.
  const event = new MatrixEvent(raw);
  await client.decryptEventIfNeeded(event);
  if (event.isDecryptionFailure() || event.getType() === 'm.room.encrypted') return null;
  return { type: event.getType(), content: event.getContent() };
}

/** A command held back, as its notice answers it. */
export interface HeldCommand {
  roomId: string;
  eventId: string;
  sender: string;
  /** The thread it was sent in (a card's, for a reaction). */
  threadRoot?: string;
  /** The message the notice replies to, when not the event itself (a reaction's card). */
  replyTo?: string;
}

export interface HeldBackDeps {
  userId: string;
  rooms: ReadonlySet<string>;
  matrix: () => MatrixClient;
  words: () => CommandWords;
  /**
   * The clear type and content of an encrypted event read ahead, or null when it cannot be
   * decrypted now (then it is not told; the sync acts on it, or refuses it, later).
   */
  decrypt: (roomId: string, raw: IRoomEvent) => Promise<ClearEvent | null>;
  /** Sends the notice; its transaction id is derived from the event's, so a restart does not repeat it. */
  send: (command: HeldCommand, body: string) => Promise<void>;
  log: Logger;
  /** How often the rooms are read ahead while held (2 s; tests make it shorter). */
  readAheadEveryMs?: number;
}

export class HeldBackNotices {
  private readonly deps: HeldBackDeps;
  /** Events told in this process (the homeserver deduplicates the notice across restarts). */
  private readonly told = new Set<string>();
  private readingAhead = false;
  /**
   * Encrypted events read ahead before their room key came: tried again at each pass (the
   * gateway's sync goes on while a batch is held back for Temporal, so the key does come).
   */
  private readonly undecrypted = new Map<string, { roomId: string; raw: IRoomEvent }>();

  constructor(deps: HeldBackDeps) {
    this.deps = deps;
  }

  /** Tells the command's thread it waits, once; a notice that cannot be sent is tried again next time. */
  async tell(command: HeldCommand): Promise<void> {
    if (this.told.has(command.eventId)) return;
    try {
      // In the command's thread; a request's is the one its job will answer in.
      await this.deps.send(
        { ...command, threadRoot: command.threadRoot ?? command.eventId },
        `${command.sender}: ${HELD_BACK_NOTICE}`,
      );
      this.told.add(command.eventId);
      if (this.told.size > 10_000) this.told.clear();
      this.deps.log.info(
        { roomId: command.roomId, eventId: command.eventId },
        'told the thread its command waits for Temporal',
      );
    } catch (error) {
      // The homeserver may be away too.
      this.deps.log.debug({ err: error, eventId: command.eventId }, 'the held-back notice could not be sent');
    }
  }

  /**
   * Reads the rooms ahead of the sync, from `from` (the last saved sync position) with
   * /messages every 2 s while `held()`, and tells each command found there. One reader at a time.
   */
  readAhead(from: string, held: () => boolean): void {
    if (this.readingAhead) return;
    this.readingAhead = true;
    const positions = new Map([...this.deps.rooms].map((roomId) => [roomId, from]));
    void (async () => {
      while (held()) {
        for (const { roomId, raw } of [...this.undecrypted.values()]) {
          if (!held()) break;
          const command = await this.commandNeedingTemporal(roomId, raw).catch(() => null);
          if (command && held()) await this.tell(command);
        }
        for (const [roomId, position] of positions) {
          if (!held()) break;
          const next = await this.readRoomAhead(roomId, position, held);
          if (next) positions.set(roomId, next);
        }
        await new Promise((r) => setTimeout(r, this.deps.readAheadEveryMs ?? READ_AHEAD_EVERY_MS));
      }
    })().finally(() => {
      this.readingAhead = false;
      this.undecrypted.clear();
    });
  }

  /** One page of a room from `position`: its commands told; the position after it, if read. */
  private async readRoomAhead(roomId: string, position: string, held: () => boolean): Promise<string | null> {
    let page: { chunk?: IRoomEvent[]; end?: string };
    try {
      page = await this.deps
        .matrix()
        .http.authedRequest(Method.Get, `/rooms/${encodeURIComponent(roomId)}/messages`, {
          from: position,
          dir: 'f',
          limit: '100',
        });
    } catch (error) {
      this.deps.log.debug({ err: error, roomId }, 'reading ahead of a held-back event failed');
      return null;
    }
    for (const raw of page.chunk ?? []) {
      const command = await this.commandNeedingTemporal(roomId, raw).catch(() => null);
      if (command && held()) await this.tell(command);
    }
    return page.end ?? null;
  }

  /**
   * An event that is a command needing Temporal (a request, a decision, a card's ✅ or ❌, a
   * cancel or a status), or null. An encrypted one is decrypted and read as its clear type and
   * content, as the sync reads it. The room key of a message sent after the held sync batch
   * may not have come yet (it comes as a to-device message, with a later sync): such a message
   * is tried again at the next passes, and told once it can be read. One whose key never
   * comes is acted on once the sync goes on, only without this early notice.
   */
  private async commandNeedingTemporal(roomId: string, raw: IRoomEvent): Promise<HeldCommand | null> {
    const { event_id: eventId, sender } = raw;
    const { userId } = this.deps;
    if (typeof eventId !== 'string' || typeof sender !== 'string' || sender === userId) return null;
    if (this.told.has(eventId)) return null; // not decrypted, nor its card fetched, again
    const unsigned = raw.unsigned;
    if (unsigned?.['redacted_because'] !== undefined) return null;
    const clear = await this.clearOf(roomId, raw);
    if (!clear) {
      if (this.undecrypted.size < MAX_UNDECRYPTED) this.undecrypted.set(eventId, { roomId, raw });
      return null;
    }
    this.undecrypted.delete(eventId);
    if (clear.type === 'm.room.message') {
      const reading = readCommand(clear.content, { userId }, this.deps.words());
      if (reading.kind !== 'command' || reading.command.kind === 'help') return null;
      if (reading.command.kind === 'request' && reading.threadRoot) return null;
      return { roomId, eventId, sender, ...(reading.threadRoot ? { threadRoot: reading.threadRoot } : {}) };
    }
    const reaction = clear.type === 'm.reaction' ? readReaction(clear.content) : null;
    if (!reaction) return null;
    if (raw.type === 'm.room.encrypted') {
      // The sync refuses an encrypted reaction whose clear relation says otherwise than the
      // one clients show: not told either.
      const wire = annotationOf(raw.content);
      if (wire?.target !== reaction.target || wire.key !== reaction.key) return null;
    }
    const card = (await this.deps.matrix().fetchRoomEvent(roomId, reaction.target)) as IRoomEvent;
    if (card.sender !== userId) return null;
    const clearCard = await this.clearOf(roomId, card);
    if (clearCard?.type !== 'm.room.message' || !readCard(clearCard.content)) return null;
    // An encrypted card keeps its thread relation in clear.
    const thread = threadOf(card.content).threadRoot ?? threadOf(clearCard.content).threadRoot;
    return { roomId, eventId, sender, replyTo: reaction.target, ...(thread ? { threadRoot: thread } : {}) };
  }

  /** The event's clear type and content: as it is, or decrypted; null when it cannot be read. */
  private async clearOf(roomId: string, raw: IRoomEvent): Promise<ClearEvent | null> {
    if (raw.type !== 'm.room.encrypted') return { type: raw.type, content: raw.content };
    const clear = await this.deps.decrypt(roomId, raw).catch((error: unknown) => {
      this.deps.log.debug({ err: error, roomId, eventId: raw.event_id }, 'decrypting ahead failed');
      return null;
    });
    if (!clear) {
      this.deps.log.debug(
        { roomId, eventId: raw.event_id },
        'an encrypted event read ahead cannot be decrypted yet: left to the sync',
      );
    }
    return clear;
  }
}
