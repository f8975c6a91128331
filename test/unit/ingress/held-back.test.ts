// The read-ahead while the sync is held back for Temporal, with a fake homeserver: the commands
// it finds in the rooms' history are told once each, an encrypted one decrypted first (one that
// cannot be decrypted is left to the sync, untold), a ✅ on a card told in the card's thread as
// a reply to the card, and nothing told twice however often the rooms are read.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { IRoomEvent, MatrixClient } from 'matrix-js-sdk';
import pino from 'pino';
import { DEFAULT_COMMAND_WORDS } from '../../../src/ingress/commands.ts';
import {
  HELD_BACK_NOTICE,
  HeldBackNotices,
  type ClearEvent,
  type HeldCommand,
} from '../../../src/ingress/held-back.ts';
import { CALL_CARD_FIELD } from '../../../src/temporal/job-contract.ts';

const BOT = '@clawgate:example.org';
const ALICE = '@alice:example.org';
const ROOM = '!room:example.org';

const event = (eventId: string, type: string, content: Record<string, unknown>, sender = ALICE) =>
  ({ event_id: eventId, type, content, sender, origin_server_ts: 1, room_id: ROOM }) as IRoomEvent;

/** An encrypted event as the homeserver has it; `clear` is what decrypting it gives (null: it cannot be). */
const encrypted = (eventId: string, wire: Record<string, unknown> = {}, sender = ALICE) =>
  event(eventId, 'm.room.encrypted', { algorithm: 'm.megolm.v1.aes-sha2', ciphertext: 'x', ...wire }, sender);

const annotation = (target: string, key = '\u2705') => ({
  'm.relates_to': { rel_type: 'm.annotation', event_id: target, key },
});

interface Fake {
  sent: Array<{ command: HeldCommand; body: string }>;
  pages: number;
  decrypted: string[];
  notices: HeldBackNotices;
}

/** A HeldBackNotices over a room whose history is `chunk` (the same page at every read). */
function fake(
  chunk: IRoomEvent[],
  opts: {
    clear?: Record<string, ClearEvent | null | Error>;
    events?: Record<string, IRoomEvent>;
    /** The page is given once; later reads (from after it) find nothing new. */
    once?: boolean;
  } = {},
): Fake {
  const state: Omit<Fake, 'notices'> = { sent: [], pages: 0, decrypted: [] };
  const matrix = {
    http: {
      authedRequest: async (_method: string, path: string, query: Record<string, string>) => {
        await Promise.resolve();
        assert.equal(path, `/rooms/${encodeURIComponent(ROOM)}/messages`);
        assert.equal(query['dir'], 'f');
        state.pages += 1;
        if (opts.once && query['from'] === 'after') return { chunk: [], end: 'after' };
        return { chunk, end: 'after' };
      },
    },
    fetchRoomEvent: async (_roomId: string, eventId: string) => {
      await Promise.resolve();
      const found = opts.events?.[eventId];
      if (!found) throw new Error(`no event ${eventId}`);
      return found;
    },
  } as unknown as MatrixClient;
  const notices = new HeldBackNotices({
    userId: BOT,
    rooms: new Set([ROOM]),
    matrix: () => matrix,
    words: () => DEFAULT_COMMAND_WORDS,
    decrypt: async (_roomId, raw) => {
      await Promise.resolve();
      state.decrypted.push(String(raw.event_id));
      const clear = opts.clear?.[String(raw.event_id)];
      if (clear instanceof Error) throw clear;
      return clear ?? null;
    },
    send: async (command, body) => {
      await Promise.resolve();
      state.sent.push({ command, body });
    },
    log: pino({ level: 'silent' }),
    readAheadEveryMs: 5,
  });
  return Object.assign(state, { notices });
}

/** Reads the room ahead `passes` times, then lets the sync go on. */
async function readAhead(f: Fake, passes: number): Promise<void> {
  let held = true;
  f.notices.readAhead('s0', () => held);
  // Page `passes + 1` asked for: pass `passes` is done (its page's commands told).
  for (let i = 0; f.pages <= passes; i++) {
    assert.ok(i < 2_000, `only ${f.pages} page(s) read`);
    await new Promise((r) => setTimeout(r, 2));
  }
  held = false;
  await new Promise((r) => setTimeout(r, 20));
}

const noticeBody = `${ALICE}: ${HELD_BACK_NOTICE}`;

test('an encrypted request read ahead is decrypted and told once, in its own thread', async () => {
  const f = fake([encrypted('$req')], {
    clear: { $req: { type: 'm.room.message', content: { msgtype: 'm.text', body: '!claw summarise it' } } },
  });
  await readAhead(f, 1);
  assert.deepEqual(f.decrypted, ['$req']);
  assert.deepEqual(f.sent, [
    { command: { roomId: ROOM, eventId: '$req', sender: ALICE, threadRoot: '$req' }, body: noticeBody },
  ]);
});

test('encrypted !status and !cancel read ahead are told in the thread they were sent in', async () => {
  const inThread = { 'm.relates_to': { rel_type: 'm.thread', event_id: '$job', is_falling_back: true } };
  const f = fake([encrypted('$status', inThread), encrypted('$cancel')], {
    clear: {
      $status: { type: 'm.room.message', content: { msgtype: 'm.text', body: '!status', ...inThread } },
      $cancel: { type: 'm.room.message', content: { msgtype: 'm.text', body: '!cancel jabcdefghi' } },
    },
  });
  await readAhead(f, 1);
  assert.deepEqual(
    f.sent.map((s) => s.command),
    [
      { roomId: ROOM, eventId: '$status', sender: ALICE, threadRoot: '$job' },
      { roomId: ROOM, eventId: '$cancel', sender: ALICE, threadRoot: '$cancel' },
    ],
  );
});

test('an encrypted event that cannot be decrypted (no room key yet, or an error) is not told', async () => {
  const f = fake(
    [encrypted('$nokey'), encrypted('$broken'), event('$chat', 'm.room.message', { body: 'hi' })],
    {
      clear: { $broken: new Error('the crypto store is closed') },
    },
  );
  await readAhead(f, 2);
  assert.ok(f.decrypted.includes('$nokey') && f.decrypted.includes('$broken'));
  assert.deepEqual(f.sent, []);
});

test('an encrypted request whose room key comes later is told once it comes, though the reading has moved past it', async () => {
  const clear: Record<string, ClearEvent | null> = { $late: null };
  const f = fake([encrypted('$late')], { clear, once: true });
  let held = true;
  f.notices.readAhead('s0', () => held);
  const until = async (what: string, ok: () => boolean): Promise<void> => {
    for (let i = 0; !ok(); i++) {
      assert.ok(i < 2_000, what);
      await new Promise((r) => setTimeout(r, 2));
    }
  };
  try {
    await until('two pages read', () => f.pages >= 2);
    assert.equal(f.sent.length, 0, 'not told before its key came');
    // The key comes (with a later sync): the next pass decrypts the event it read before.
    clear['$late'] = { type: 'm.room.message', content: { msgtype: 'm.text', body: '!claw do the thing' } };
    await until('the late request told', () => f.sent.length > 0);
    const pages = f.pages;
    await until('two more passes', () => f.pages >= pages + 2);
  } finally {
    held = false;
    await new Promise((r) => setTimeout(r, 20));
  }
  assert.deepEqual(
    f.sent.map((x) => [x.command.eventId, x.command.threadRoot, x.body]),
    [['$late', '$late', noticeBody]],
  );
  assert.equal(f.decrypted.filter((id) => id === '$late').length >= 3, true, 'tried at each pass until told');
});

test('a ✅ on a card is told in the card’s thread, as a reply to the card; encrypted, or in clear', async () => {
  const card = (eventId: string) =>
    event(
      eventId,
      'm.room.message',
      {
        msgtype: 'm.notice',
        body: 'Tool call c1.1 waits for approval',
        [CALL_CARD_FIELD]: { card_id: 'c1.1', workflow_id: 'clawgate-jabcdefghi' },
        'm.relates_to': { rel_type: 'm.thread', event_id: '$job' },
      },
      BOT,
    );
  const encryptedCard = encrypted(
    '$card2',
    { 'm.relates_to': { rel_type: 'm.thread', event_id: '$job' } },
    BOT,
  );
  const f = fake(
    [
      event('$yes', 'm.reaction', annotation('$card1')),
      // Element X may send its reactions encrypted; the relation stays in clear too.
      encrypted('$yes2', annotation('$card2')),
      // Not a decision, and not on a card: chat.
      event('$smile', 'm.reaction', annotation('$card1', '\u{1f600}')),
      event('$other', 'm.reaction', annotation('$chat')),
      // Its clear relation says otherwise than the one clients show: refused by the sync, untold.
      encrypted('$sly', annotation('$chat')),
    ],
    {
      events: {
        $card1: card('$card1'),
        $card2: encryptedCard,
        $chat: event('$chat', 'm.room.message', { msgtype: 'm.text', body: 'lunch?' }),
      },
      clear: {
        $yes2: { type: 'm.reaction', content: annotation('$card2') },
        $card2: { type: 'm.room.message', content: card('$card2').content },
        $sly: { type: 'm.reaction', content: annotation('$card1') },
      },
    },
  );
  await readAhead(f, 1);
  assert.deepEqual(f.sent, [
    {
      command: { roomId: ROOM, eventId: '$yes', sender: ALICE, replyTo: '$card1', threadRoot: '$job' },
      body: noticeBody,
    },
    {
      command: { roomId: ROOM, eventId: '$yes2', sender: ALICE, replyTo: '$card2', threadRoot: '$job' },
      body: noticeBody,
    },
  ]);
});

test('a command read ahead again on the next pass is not told again', async () => {
  const f = fake([
    event('$req', 'm.room.message', { msgtype: 'm.text', body: '!claw summarise it' }),
    event('$mine', 'm.room.message', { msgtype: 'm.text', body: '!claw mine' }, BOT),
    event('$help', 'm.room.message', { msgtype: 'm.text', body: '!help' }),
  ]);
  await readAhead(f, 3);
  assert.ok(f.pages >= 3);
  assert.deepEqual(
    f.sent.map((s) => s.command.eventId),
    ['$req'],
  );
  // And once the sync handles it, telling it again is a no-op too.
  await f.notices.tell({ roomId: ROOM, eventId: '$req', sender: ALICE });
  assert.equal(f.sent.length, 1);
});
