// Answers to approval cards as the gateway reads them: `!approve <card> [job]` and
// `!deny <card> [reason]` apart from job approvals, a precise error for each malformed form, the
// display-mismatch rules as for job approvals, and the ✅ / ❌ reactions on a card message.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import {
  jobRootInRoom,
  parseCommand,
  readCard,
  readCommand,
  readReaction,
  renderHelp,
  type CommandReading,
} from '../../../src/ingress/commands.ts';
import { canonicalHash } from '../../../src/policy/canonical.ts';
import { CALL_CARD_FIELD, legacyJobWorkflowId } from '../../../src/temporal/job-contract.ts';
import { jobWorkflowId } from '../../../src/ingress/job-ids.ts';

const bot = { userId: '@clawgate:example.org' };
const JOB = 'j4k2m7q3xa';
const html = (body: string, formatted: string, extra: Record<string, unknown> = {}) => ({
  msgtype: 'm.text',
  body,
  format: 'org.matrix.custom.html',
  formatted_body: formatted,
  ...extra,
});

function errorOf(text: string): string {
  const result = parseCommand(text);
  assert.ok(result && !result.ok, `${text} should be refused: ${JSON.stringify(result)}`);
  assert.ok(!result.error.includes('\n'), 'one line');
  return result.error;
}

function mismatchOf(reading: CommandReading): string | undefined {
  assert.equal(reading.kind, 'command', JSON.stringify(reading));
  return reading.kind === 'command' ? reading.mismatch : undefined;
}

test('a card id first after approve or deny makes a card decision, not a job approval', () => {
  assert.deepEqual(parseCommand('!approve c3.1'), {
    ok: true,
    command: { kind: 'call-approve', cardId: 'c3.1', scope: 'call' },
  });
  assert.deepEqual(parseCommand('!approve c12.34 job'), {
    ok: true,
    command: { kind: 'call-approve', cardId: 'c12.34', scope: 'job' },
  });
  // The card and the scope are read whatever their case; the card id is kept as the card shows it.
  assert.deepEqual(parseCommand('!APPROVE C1.1 JOB'), {
    ok: true,
    command: { kind: 'call-approve', cardId: 'c1.1', scope: 'job' },
  });
  assert.deepEqual(parseCommand('!deny c3.1 writes to main'), {
    ok: true,
    command: { kind: 'call-deny', cardId: 'c3.1', reason: 'writes to main' },
  });
  assert.deepEqual(parseCommand('!deny c3.1'), {
    ok: true,
    command: { kind: 'call-deny', cardId: 'c3.1', reason: '' },
  });
  assert.deepEqual(parseCommand('  !deny   c9999.99   not\n now  '), {
    ok: true,
    command: { kind: 'call-deny', cardId: 'c9999.99', reason: 'not now' },
  });
  // Job approvals are as before.
  assert.deepEqual(parseCommand('!approve'), { ok: true, command: { kind: 'approve' } });
  assert.deepEqual(parseCommand(`!approve ${JOB}`), { ok: true, command: { kind: 'approve', job: JOB } });
  assert.deepEqual(parseCommand('!approve abcdef12'), {
    ok: true,
    command: { kind: 'approve', planHash: 'abcdef12' },
  });
  assert.deepEqual(parseCommand(`!deny ${JOB} too risky`), {
    ok: true,
    command: { kind: 'deny', job: JOB, reason: 'too risky' },
  });
  // A reason that merely starts with c and a digit is a job denial's reason.
  assert.deepEqual(parseCommand('!deny c3po is in the way'), {
    ok: true,
    command: { kind: 'deny', reason: 'c3po is in the way' },
  });
  // The policy's words.
  const words = { request: '!claw', approve: '!ok', deny: '!no' };
  assert.deepEqual(parseCommand('!ok c2.1 job', words), {
    ok: true,
    command: { kind: 'call-approve', cardId: 'c2.1', scope: 'job' },
  });
  assert.deepEqual(parseCommand('!no c2.1', words), {
    ok: true,
    command: { kind: 'call-deny', cardId: 'c2.1', reason: '' },
  });
  assert.equal(parseCommand('!approve c2.1', words), null);
});

test('malformed card decisions get one precise line with the usage', () => {
  assert.equal(
    errorOf('!approve c3.1 now'),
    'only "job" may follow the card (to approve later calls of that tool with arguments of the same shape too), not "now". Usage: !approve <card> [job]',
  );
  assert.equal(
    errorOf('!approve c3.1 job please'),
    'only "job" may follow the card (to approve later calls of that tool with arguments of the same shape too), not "job please". Usage: !approve <card> [job]',
  );
  assert.equal(
    errorOf('!approve c3.1 abcdef12'),
    'only "job" may follow the card (to approve later calls of that tool with arguments of the same shape too), not "abcdef12". Usage: !approve <card> [job]',
  );
  for (const card of ['c0.1', 'c3.0', 'c3.', 'c3.100', 'c12345.1', 'c01.1']) {
    assert.equal(
      errorOf(`!approve ${card}`),
      `"${card}" is not a card id (c<turn>.<n>, such as c3.1, as the card shows it). Usage: !approve <card> [job]`,
    );
    assert.equal(
      errorOf(`!deny ${card} no`),
      `"${card}" is not a card id (c<turn>.<n>, such as c3.1, as the card shows it). Usage: !deny <card> [reason]`,
    );
  }
  assert.equal(
    errorOf(`!approve ${JOB} c3.1`),
    `a card is answered in its job's thread, named first and without the job ("c3.1" after a job id). Usage: !approve <card> [job]`,
  );
  assert.equal(
    errorOf(`!deny ${JOB} c3.1 too risky`),
    `a card is answered in its job's thread, named first and without the job ("c3.1" after a job id). Usage: !deny <card> [reason]`,
  );
  assert.equal(
    errorOf(`!deny c3.1 ${'x'.repeat(501)}`),
    'the reason is 501 characters long, at most 500. Usage: !deny <card> [reason]',
  );
});

test('!help lists the card decisions, in the policy words', () => {
  const help = renderHelp({ request: '!claw', approve: '!ok', deny: '!no' });
  assert.match(help, /^!ok <card> \[job\]: in a job's thread, approve the call of an approval card/m);
  assert.match(help, /^!no <card> \[reason\]: in a job's thread, refuse the call of an approval card/m);
});

test('card decisions pass the display check only when the room shows the same command, card, scope and reason', () => {
  // Formatting that says the same is fine.
  const same = readCommand(html('!approve c3.1 job', '<b>!approve</b> <code>c3.1</code> job'), bot);
  assert.equal(mismatchOf(same), undefined);
  assert.deepEqual(same.kind === 'command' && same.command, {
    kind: 'call-approve',
    cardId: 'c3.1',
    scope: 'job',
  });
  assert.equal(
    mismatchOf(readCommand(html('!deny c3.1 too risky', '!deny c3.1 <i>too risky</i>'), bot)),
    undefined,
  );
  // Another card, scope, decision or reason, or a job approval, is a mismatch.
  const cases: Array<[string, string]> = [
    ['!approve c3.1', '!approve c3.2'],
    ['!approve c3.1', '!approve c3.1 job'],
    ['!approve c3.1 job', '!approve c3.1'],
    ['!approve c3.1', '!deny c3.1'],
    ['!deny c3.1', '!approve c3.1'],
    ['!approve c3.1', '!approve'],
    ['!approve', '!approve c3.1'],
    ['!deny c3.1 too risky', '!deny c3.1 looks fine'],
    ['!deny c3.1', '!deny c3.1 not this one'],
    ['!deny c3.1 no', '!deny no'],
    ['!approve c3.1', 'I do NOT approve c3.1'],
  ];
  for (const [body, formatted] of cases) {
    assert.match(
      mismatchOf(readCommand(html(body, formatted), bot)) ?? 'no mismatch',
      /^what the room shows is not this command: the formatted text says ".*", not the command of its plain body/,
      `${body} shown as ${formatted}`,
    );
  }
  // Hidden, struck-out or reordered text, as for job approvals.
  assert.match(
    mismatchOf(readCommand(html('!approve c3.1', '<del>!approve c3.1</del>'), bot)) ?? '',
    /struck-out text \(<del>\)/,
  );
  assert.match(
    mismatchOf(readCommand(html('!approve c3.1', '<span data-mx-spoiler>!approve c3.1</span>'), bot)) ?? '',
    /a spoiler/,
  );
  assert.match(
    mismatchOf(readCommand({ msgtype: 'm.text', body: '!deny c3.1 \u202eksir oot' }, bot)) ?? '',
    /bidirectional control characters/,
  );
  // The extensible-event text counts too.
  assert.match(
    mismatchOf(
      readCommand(
        { msgtype: 'm.text', body: '!approve c3.1', 'org.matrix.msc1767.text': '!approve c3.2' },
        bot,
      ),
    ) ?? '',
    /org\.matrix\.msc1767\.text says "!approve c3\.2"/,
  );
  // The evidence: the content's canonical hash and the shown text; the thread is kept.
  const content = {
    msgtype: 'm.text',
    body: '!deny c3.1 not today',
    'm.relates_to': { rel_type: 'm.thread', event_id: '$root' },
  };
  assert.deepEqual(readCommand(content, bot), {
    kind: 'command',
    threadRoot: '$root',
    command: { kind: 'call-deny', cardId: 'c3.1', reason: 'not today' },
    evidence: { contentSha256: canonicalHash(content), shown: '!deny c3.1 not today' },
  });
});

test('card decisions are not read from edits, quotes or emotes', () => {
  const edit = readCommand(
    {
      msgtype: 'm.text',
      body: '* !approve c3.1',
      'm.new_content': { msgtype: 'm.text', body: '!approve c3.1' },
      'm.relates_to': { rel_type: 'm.replace', event_id: '$x' },
    },
    bot,
  );
  assert.deepEqual(edit, {
    kind: 'not-counted',
    reason: 'an edit is not read as a command; send the command as a new message.',
  });
  assert.equal(
    readCommand({ msgtype: 'm.text', body: '> <@a:x> !approve c3.1\n\nagreed' }, bot).kind,
    'not-counted',
  );
  assert.equal(readCommand({ msgtype: 'm.emote', body: '!approve c3.1' }, bot).kind, 'not-counted');
  assert.equal(readCommand({ msgtype: 'm.notice', body: '!approve c3.1' }, bot).kind, 'none');
});

test('reactions: ✅ approves and ❌ denies the annotated event; anything else is chat', () => {
  const react = (key: unknown, extra: Record<string, unknown> = {}) => ({
    'm.relates_to': { rel_type: 'm.annotation', event_id: '$card', key, ...extra },
  });
  assert.deepEqual(readReaction(react('✅')), { target: '$card', key: '✅', decision: 'approve' });
  assert.deepEqual(readReaction(react('❌')), { target: '$card', key: '❌', decision: 'deny' });
  assert.deepEqual(readReaction(react('✅\ufe0f')), {
    target: '$card',
    key: '✅\ufe0f',
    decision: 'approve',
  });
  assert.deepEqual(readReaction(react('❌\ufe0f')), { target: '$card', key: '❌\ufe0f', decision: 'deny' });
  for (const key of ['✔️', '✔', '☑️', '👍', '❎', '✅✅', ' ✅', 'approve', '', 1, null]) {
    assert.equal(readReaction(react(key)), null, JSON.stringify(key));
  }
  assert.equal(
    readReaction({ 'm.relates_to': { rel_type: 'm.reference', event_id: '$c', key: '✅' } }),
    null,
  );
  assert.equal(readReaction({ 'm.relates_to': { rel_type: 'm.annotation', key: '✅' } }), null);
  assert.equal(readReaction({ 'm.relates_to': { rel_type: 'm.annotation', event_id: 7, key: '✅' } }), null);
  assert.equal(readReaction(react('toString')), null);
  assert.equal(readReaction(react('__proto__')), null);
  fc.assert(
    fc.property(fc.anything(), (content) => {
      const read = readReaction(content);
      assert.ok(read === null || read.decision === 'approve' || read.decision === 'deny');
    }),
  );
});

test('a card message names its card and job; the job must be one of the room', () => {
  const room = '!ops:example.org';
  const workflowId = jobWorkflowId(room, '$request');
  assert.deepEqual(
    readCard({ body: 'card', [CALL_CARD_FIELD]: { card_id: 'c3.1', workflow_id: workflowId } }),
    {
      cardId: 'c3.1',
      workflowId,
    },
  );
  assert.deepEqual(readCard({ [CALL_CARD_FIELD]: { workflow_id: workflowId } }), {
    cardId: null,
    workflowId,
  });
  for (const content of [
    {},
    { [CALL_CARD_FIELD]: 'c3.1' },
    { [CALL_CARD_FIELD]: { card_id: 'c3.1' } },
    null,
    'x',
  ]) {
    assert.equal(readCard(content), null, JSON.stringify(content));
  }
  // A short workflow id is a hash: the card's thread root gives the request event, and counts
  // only when it hashes to that id in this room.
  assert.equal(jobRootInRoom(workflowId, room, '$request'), '$request');
  assert.equal(jobRootInRoom(workflowId, room), null);
  assert.equal(jobRootInRoom(workflowId, room, '$other'), null);
  assert.equal(jobRootInRoom(workflowId, '!ops:example.org:8448', '$request'), null);
  assert.equal(jobRootInRoom(jobWorkflowId('!infra:example.org', '$request'), room, '$request'), null);
  // An old-form id carries its request event, with or without the thread root.
  const legacy = legacyJobWorkflowId(room, '$request');
  assert.equal(jobRootInRoom(legacy, room), '$request');
  assert.equal(jobRootInRoom(legacy, room, '$request'), '$request');
  assert.equal(jobRootInRoom(legacyJobWorkflowId('!infra:example.org', '$request'), room), null);
  // A room whose id begins as this one's, on a server with a port, is another room.
  assert.equal(jobRootInRoom(legacyJobWorkflowId('!ops:example.org:8448', '$request'), room), null);
  assert.equal(jobRootInRoom(legacy, '!ops:example.org:8448'), null);
  assert.equal(jobRootInRoom(`job:${room}:`, room), null);
  assert.equal(jobRootInRoom(`job:${room}:not-an-event`, room), null);
  assert.equal(jobRootInRoom(`job:${room}:$a b`, room), null);
  assert.equal(jobRootInRoom(`other:${room}:$request`, room), null);
});
