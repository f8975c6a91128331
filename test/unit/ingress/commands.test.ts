// How the gateway reads what people type: the command table, job ids, quotes, edits, mentions,
// and a clear one-line error for every malformed command.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import {
  COMMANDS,
  MAX_REQUEST_CHARS,
  parseCommand,
  readMessage,
  renderHelp,
  stripQuote,
} from '../../../src/ingress/commands.ts';
import {
  isJobRef,
  isJobWorkflowId,
  jobWorkflowId,
  jobWorkflowIds,
  shortJobId,
  SHORT_JOB_ID,
} from '../../../src/ingress/job-ids.ts';
import { legacyJobWorkflowId } from '../../../src/temporal/job-contract.ts';

const bot = { userId: '@clawgate:example.org' };
const JOB = 'j4k2m7q3xa';

test('short job ids: j and nine base32 characters, stable, and different for different jobs', () => {
  const a = shortJobId('job:!ops:example.org:$abc');
  assert.match(a, SHORT_JOB_ID);
  assert.equal(shortJobId('job:!ops:example.org:$abc'), a);
  assert.notEqual(shortJobId('job:!ops:example.org:$abd'), a);
  fc.assert(fc.property(fc.string(), (id) => SHORT_JOB_ID.test(shortJobId(id))));
  assert.ok(isJobRef(a) && isJobRef('$event:example.org') && isJobRef('job:!r:$e'));
  assert.ok(!isJobRef('abc123') && !isJobRef('J4K2M7Q3XA') && !isJobRef('j4k2m7q3x'));
});

test('a job workflow id: short and readable, one per room and request event, and the same job id', () => {
  const room = '!ops:example.org';
  const id = jobWorkflowId(room, '$abc');
  assert.match(id, /^clawgate-j[a-z2-7]{9}$/);
  assert.equal(jobWorkflowId(room, '$abc'), id, 'a redelivered event maps to the same id');
  assert.notEqual(jobWorkflowId(room, '$abd'), id);
  assert.notEqual(jobWorkflowId('!infra:example.org', '$abc'), id, 'event ids are unique per room only');
  // The job id people see for a request is the one the old form gave, and the id carries it.
  assert.equal(shortJobId(id), shortJobId('job:!ops:example.org:$abc'));
  assert.equal(id, `clawgate-${shortJobId(id)}`);
  assert.deepEqual(jobWorkflowIds(room, '$abc'), { workflowId: id, legacy: 'job:!ops:example.org:$abc' });
  assert.ok(isJobWorkflowId(id) && isJobWorkflowId(legacyJobWorkflowId(room, '$abc')) && isJobRef(id));
  assert.ok(!isJobWorkflowId('clawgate-j4k2') && !isJobWorkflowId('clawgate-J4K2M7Q3XA'));
  fc.assert(
    fc.property(fc.string(), fc.string(), (r, e) => {
      const made = jobWorkflowId(r, e);
      return made.length === 19 && shortJobId(made) === shortJobId(legacyJobWorkflowId(r, e));
    }),
  );
  // Different requests get different ids (45 bits: no collision among these).
  const seen = new Set<string>();
  for (let i = 0; i < 10_000; i++) seen.add(jobWorkflowId(room, `$event${i}`));
  assert.equal(seen.size, 10_000);
});

test('every command of the table parses, with and without a job', () => {
  assert.deepEqual(parseCommand('!claw summarise the readme'), {
    ok: true,
    command: { kind: 'request', text: 'summarise the readme' },
  });
  assert.deepEqual(parseCommand('!approve'), { ok: true, command: { kind: 'approve' } });
  assert.deepEqual(parseCommand(`!approve ${JOB}`), { ok: true, command: { kind: 'approve', job: JOB } });
  assert.deepEqual(parseCommand(`!approve ${JOB} ABCDEF12`), {
    ok: true,
    command: { kind: 'approve', job: JOB, planHash: 'abcdef12' },
  });
  assert.deepEqual(parseCommand('!approve abcdef12'), {
    ok: true,
    command: { kind: 'approve', planHash: 'abcdef12' },
  });
  assert.deepEqual(parseCommand(`!deny ${JOB} too risky today`), {
    ok: true,
    command: { kind: 'deny', job: JOB, reason: 'too risky today' },
  });
  assert.deepEqual(parseCommand('!deny not now'), { ok: true, command: { kind: 'deny', reason: 'not now' } });
  assert.deepEqual(parseCommand(`!status ${JOB}`), { ok: true, command: { kind: 'status', job: JOB } });
  assert.deepEqual(parseCommand('!cancel'), { ok: true, command: { kind: 'cancel' } });
  assert.deepEqual(parseCommand('!HELP'), { ok: true, command: { kind: 'help' } });
});

test('malformed commands get one line saying what was wrong, with the usage', () => {
  const error = (text: string) => {
    const result = parseCommand(text);
    assert.ok(result && !result.ok, `${text} should be refused`);
    assert.ok(!result.error.includes('\n'), 'one line');
    return result.error;
  };
  assert.equal(error('!claw'), 'say what to do. Usage: !claw <what to do>');
  assert.match(
    error('!approve soon please'),
    /"soon" is neither a job id nor a plan hash.*Usage: !approve \[job\]/,
  );
  assert.match(error(`!status ${JOB} ${JOB}`), /one job at most/);
  assert.match(error('!cancel everything'), /"everything" is not a job id/);
  assert.match(error(`!claw ${'x'.repeat(MAX_REQUEST_CHARS + 1)}`), /at most 4000; shorten it/);
  assert.match(error(`!deny ${'x '.repeat(300)}`), /the reason is \d+ characters long, at most 500/);
});

test('text that is not a command is not for clawgate, unless it mentions the bot', () => {
  assert.equal(parseCommand('good morning'), null);
  assert.equal(parseCommand('!unknown thing'), null);
  assert.equal(parseCommand('please !approve'), null);
  assert.deepEqual(parseCommand('tidy the docs', undefined, true), {
    ok: true,
    command: { kind: 'request', text: 'tidy the docs' },
  });
});

test('the approve and deny words follow the policy', () => {
  const words = { request: '!claw', approve: '!ok', deny: '!no' };
  assert.deepEqual(parseCommand('!ok', words), { ok: true, command: { kind: 'approve' } });
  assert.equal(parseCommand('!approve', words), null);
  assert.match(renderHelp(words), /^!ok \[job\] \[plan hash\]: /m);
});

test('!help lists every command of the table', () => {
  const help = renderHelp();
  for (const c of COMMANDS) assert.ok(help.includes(c.help), `${c.kind} in help`);
});

test('reading a message: quotes dropped, edits and notices apart, threads and mentions found', () => {
  assert.deepEqual(stripQuote('> <@a:x> !approve\n> more\n\nme too'), {
    text: 'me too',
    quoted: '> <@a:x> !approve\n> more',
  });
  const reply = readMessage({ msgtype: 'm.text', body: '> <@a:x> !approve\n\nagreed' }, bot);
  assert.equal(reply.kind, 'message');
  assert.equal(
    reply.kind === 'message' && parseCommand(reply.text),
    null,
    'the quoted command does not count',
  );
  assert.deepEqual(
    readMessage(
      {
        msgtype: 'm.text',
        body: '* !approve',
        'm.new_content': { msgtype: 'm.text', body: '!approve' },
        'm.relates_to': { rel_type: 'm.replace', event_id: '$x' },
      },
      bot,
    ),
    { kind: 'edit', newText: '!approve', target: '$x' },
  );
  assert.equal(readMessage({ msgtype: 'm.notice', body: '!approve' }, bot).kind, 'skip');
  assert.equal(readMessage({ msgtype: 'm.image', body: '!approve' }, bot).kind, 'skip');
  assert.equal(readMessage({ msgtype: 'm.text', body: 42 }, bot).kind, 'skip');
  assert.equal(readMessage('not an object', bot).kind, 'skip');
  assert.deepEqual(
    readMessage(
      { msgtype: 'm.text', body: '!approve', 'm.relates_to': { rel_type: 'm.thread', event_id: '$root' } },
      bot,
    ),
    { kind: 'message', text: '!approve', mentioned: false, quoted: '', threadRoot: '$root' },
  );
  assert.deepEqual(readMessage({ msgtype: 'm.text', body: '@clawgate:example.org: fix the build' }, bot), {
    kind: 'message',
    text: 'fix the build',
    mentioned: true,
    quoted: '',
  });
  const pill = readMessage(
    { msgtype: 'm.text', body: 'Claw Bot: fix it', 'm.mentions': { user_ids: [bot.userId] } },
    bot,
  );
  assert.equal(pill.kind === 'message' && pill.mentioned, true);
  // Malformed relations are ignored rather than trusted.
  assert.deepEqual(readMessage({ msgtype: 'm.text', body: 'hi', 'm.relates_to': ['x'] }, bot), {
    kind: 'message',
    text: 'hi',
    mentioned: false,
    quoted: '',
  });
});

test('no text makes the parser throw', () => {
  fc.assert(
    fc.property(fc.string({ maxLength: 300 }), fc.boolean(), (text, mentioned) => {
      const result = parseCommand(text, undefined, mentioned);
      assert.ok(result === null || typeof result.ok === 'boolean');
    }),
  );
  fc.assert(
    fc.property(fc.anything(), (content) => {
      assert.ok(['skip', 'edit', 'message'].includes(readMessage(content, bot).kind));
    }),
  );
});
