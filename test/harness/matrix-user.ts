// A human on the test homeserver: a real matrix-js-sdk client that syncs, creates and joins
// rooms, sends messages, and waits for events with typed filters and a deadline.
import {
  ClientEvent,
  createClient,
  EventType,
  MsgType,
  RoomEvent,
  SyncState,
  type MatrixClient,
  type MatrixEvent,
  type Room,
} from 'matrix-js-sdk';
import { logger as sdkGlobalLogger, type Logger } from 'matrix-js-sdk/lib/logger.js';
import type { RegisteredUser } from '../../src/devstack/synapse.ts';
import { processIndexedDb } from '../../src/ingress/crypto-store.ts';
import { quietMatrixSdkLogging } from '../../src/ingress/sdk-logging.ts';
import { registerTestUser, testServers } from './servers.ts';

// matrix-js-sdk logs every sync at debug level, and warns of routine things (default push
// rules); tests keep its errors only, unless CLAWGATE_TEST_MATRIX_LOG=1 asks for everything.
const verbose = process.env['CLAWGATE_TEST_MATRIX_LOG'] === '1';
if (verbose) (sdkGlobalLogger as unknown as { setLevel(level: string): void }).setLevel('debug');
else quietMatrixSdkLogging(['error']);

function quietLogger(prefix: string): Logger {
  const drop = (): void => {};
  const print = (...msg: unknown[]): void => console.error(prefix, ...msg);
  return {
    trace: verbose ? print : drop,
    debug: verbose ? print : drop,
    info: verbose ? print : drop,
    warn: verbose ? print : drop,
    error: (...msg: unknown[]) => console.error(prefix, ...msg),
    getChild: (namespace: string) => quietLogger(`${prefix}${namespace}`),
  };
}

export interface WaitForRoomEventOptions {
  roomId: string;
  /** The event wanted; events already in the room's timeline count too. */
  filter: (event: MatrixEvent) => boolean;
  timeoutMs?: number;
  /** Says what was awaited, for the error when it does not come. */
  message: string;
}

export class MatrixTestUser {
  readonly client: MatrixClient;
  readonly account: RegisteredUser;

  private constructor(client: MatrixClient, account: RegisteredUser) {
    this.client = client;
    this.account = account;
  }

  get userId(): string {
    return this.account.userId;
  }

  /**
   * Registers a new user (unique localpart from `name`) and starts its client, synced; with
   * `encryption`, the client runs matrix-js-sdk's Rust crypto (its store in this process's
   * in-memory IndexedDB, apart by user).
   */
  static async create(name: string, opts: { encryption?: boolean } = {}): Promise<MatrixTestUser> {
    const account = await registerTestUser(name);
    const client = createClient({
      baseUrl: testServers().synapse.baseUrl,
      userId: account.userId,
      accessToken: account.accessToken,
      deviceId: account.deviceId,
      logger: quietLogger(`[matrix ${account.userId}] `),
    });
    if (opts.encryption) {
      processIndexedDb();
      await client.initRustCrypto({ cryptoDatabasePrefix: `test-${account.userId}` });
    }
    const user = new MatrixTestUser(client, account);
    await user.start();
    return user;
  }

  private async start(): Promise<void> {
    const prepared = new Promise<void>((resolve, reject) => {
      const onSync = (state: SyncState, _prev: SyncState | null, data?: { error?: Error }): void => {
        if (state === SyncState.Prepared || state === SyncState.Syncing) {
          this.client.off(ClientEvent.Sync, onSync);
          resolve();
        } else if (state === SyncState.Error) {
          this.client.off(ClientEvent.Sync, onSync);
          reject(new Error(`${this.userId}: first sync failed: ${data?.error?.message ?? 'unknown error'}`));
        }
      };
      this.client.on(ClientEvent.Sync, onSync);
    });
    await this.client.startClient({ initialSyncLimit: 20 });
    await prepared;
  }

  async createRoom(opts: { name?: string; invite?: string[]; encrypted?: boolean } = {}): Promise<string> {
    const { room_id: roomId } = await this.client.createRoom({
      name: opts.name,
      invite: opts.invite,
      preset: 'private_chat' as never,
      initial_state: opts.encrypted
        ? [{ type: EventType.RoomEncryption, state_key: '', content: { algorithm: 'm.megolm.v1.aes-sha2' } }]
        : [],
    });
    return roomId;
  }

  async joinRoom(roomId: string): Promise<void> {
    await this.client.joinRoom(roomId);
  }

  /** Sends a plain text message; resolves with its event id. */
  async sendText(roomId: string, body: string): Promise<string> {
    const { event_id: eventId } = await this.client.sendMessage(roomId, { msgtype: MsgType.Text, body });
    return eventId;
  }

  /** Resolves once `userId` has joined the room (a bot accepting its invite), waiting up to `timeoutMs`. */
  async waitForJoin(roomId: string, userId: string, timeoutMs = 30_000): Promise<MatrixEvent> {
    return await this.waitForRoomEvent({
      roomId,
      timeoutMs,
      message: `${userId} joining`,
      filter: (e) =>
        e.getType() === 'm.room.member' &&
        e.getStateKey() === userId &&
        e.getContent()['membership'] === 'join',
    });
  }

  /** Resolves with the first event in the room that matches, waiting for one if none has come yet. */
  async waitForRoomEvent({ roomId, filter, timeoutMs = 15_000, message }: WaitForRoomEventOptions) {
    const seen = this.client
      .getRoom(roomId)
      ?.getLiveTimeline()
      .getEvents()
      .find((event) => filter(event));
    if (seen) return seen;
    return await new Promise<MatrixEvent>((resolve, reject) => {
      const onTimeline = (event: MatrixEvent, room: Room | undefined): void => {
        if (room?.roomId !== roomId || !filter(event)) return;
        cleanup();
        resolve(event);
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(
          new Error(`${this.userId} waited ${timeoutMs} ms in ${roomId} for ${message}; it did not come`),
        );
      }, timeoutMs);
      const cleanup = (): void => {
        clearTimeout(timer);
        this.client.off(RoomEvent.Timeline, onTimeline);
      };
      this.client.on(RoomEvent.Timeline, onTimeline);
    });
  }

  /**
   * Resolves with the first message of `sender` in the room, decrypted by this user's client,
   * whose body matches. Polled: an encrypted event is decrypted after it reaches the timeline.
   */
  async waitForDecrypted(
    roomId: string,
    sender: string,
    pattern: RegExp,
    timeoutMs = 60_000,
  ): Promise<MatrixEvent> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const events = this.client.getRoom(roomId)?.getLiveTimeline().getEvents() ?? [];
      for (const event of events) {
        if (event.getSender() !== sender) continue;
        if (event.isEncrypted()) await this.client.decryptEventIfNeeded(event);
        const body = event.getContent()['body'];
        if (typeof body === 'string' && pattern.test(body)) return event;
      }
      if (Date.now() > deadline) {
        const said = events
          .filter((e) => e.getSender() === sender)
          .map(
            (e) =>
              `${e.getWireType()}/${e.getType()}: ${String(e.getContent()['body'] ?? e.decryptionFailureReason ?? '')}`,
          );
        throw new Error(`${sender} never said ${pattern} in ${roomId}; it said:\n  ${said.join('\n  ')}`);
      }
      await new Promise((r) => setTimeout(r, 250));
    }
  }

  /** Waits until this user's client knows a device of `userId` (so its messages are encrypted to it). */
  async waitForDeviceOf(userId: string, timeoutMs = 30_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const devices = await this.client.getCrypto()?.getUserDeviceInfo([userId], true);
      if ((devices?.get(userId)?.size ?? 0) > 0) return;
      if (Date.now() > deadline) throw new Error(`${userId} never published its device keys`);
      await new Promise((r) => setTimeout(r, 300));
    }
  }

  /** Waits until this user's client sees itself joined to the room (after an invite or a join). */
  async waitForMembership(roomId: string, membership: 'invite' | 'join', timeoutMs = 15_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (this.client.getRoom(roomId)?.getMyMembership() !== membership) {
      if (Date.now() > deadline) {
        throw new Error(
          `${this.userId} was not in membership "${membership}" of ${roomId} after ${timeoutMs} ms`,
        );
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  stop(): void {
    this.client.stopClient();
  }
}
