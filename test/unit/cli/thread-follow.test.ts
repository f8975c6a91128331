// How `clawgate say --follow` shows a thread's messages at a terminal: the sender and the text,
// later lines indented; an edit (the plan's status line) by the lines it changed only; a
// reaction by its key; a message that cannot be decrypted said so, not hidden; a model's or a
// requester's control characters shown as escapes.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { MatrixEvent } from 'matrix-js-sdk';
import { eventLines } from '../../../src/cli/thread-follow.ts';

const BOT = '@clawgate:hs';
const message = (content: Record<string, unknown>, type = 'm.room.message') =>
  new MatrixEvent({ type, sender: BOT, event_id: '$e', room_id: '!r:hs', content });

test('a message: the sender, its first line, the rest indented', () => {
  const plan = message({
    msgtype: 'm.notice',
    body: 'Plan for job jabc: read\n  1. Read README.md\n\nStatus: waiting',
  });
  assert.deepEqual(eventLines(plan), [
    `${BOT}: Plan for job jabc: read`,
    '      1. Read README.md',
    '',
    '    Status: waiting',
  ]);
});

test('an edit: the lines it changed, against the text it replaces', () => {
  const before = 'Plan for job jabc: read\nStatus: waiting for approval';
  const edit = message({
    msgtype: 'm.notice',
    body: '* Plan for job jabc: read\nStatus: approved; running',
    'm.new_content': { msgtype: 'm.notice', body: 'Plan for job jabc: read\nStatus: approved; running' },
    'm.relates_to': { rel_type: 'm.replace', event_id: '$plan' },
  });
  assert.deepEqual(eventLines(edit, before), [`${BOT} (edited): Status: approved; running`]);
  // Without the text it replaces (not seen): the whole new text.
  assert.equal(eventLines(edit).length, 2);
});

test('a reaction by its key; an undecryptable message said so; escapes not obeyed', () => {
  const reaction = message(
    { 'm.relates_to': { rel_type: 'm.annotation', event_id: '$x', key: '✅' } },
    'm.reaction',
  );
  assert.deepEqual(eventLines(reaction), [`${BOT} reacted ✅`]);
  const encrypted = message({ algorithm: 'm.megolm.v1.aes-sha2', ciphertext: 'AwgA' }, 'm.room.encrypted');
  assert.match(eventLines(encrypted)[0] ?? '', /^@clawgate:hs: \[unable to decrypt: /);
  const sly = message({ msgtype: 'm.text', body: 'hi\u001b[2Jthere\u202e' });
  assert.deepEqual(eventLines(sly), [`${BOT}: hi\\u001b[2Jthere\\u202e`]);
});
