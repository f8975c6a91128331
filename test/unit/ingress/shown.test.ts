// A command counts only as the room shows it: a formatted body that says otherwise, hides or
// strikes out text, an emote, a file name, bidirectional controls or an extensible-event text
// that differs are not read as the plain body's command; formatting that says the same is.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { readCommand, type CommandReading } from '../../../src/ingress/commands.ts';
import { sameWords, shownHtml } from '../../../src/ingress/displayed.ts';
import { canonicalHash } from '../../../src/policy/canonical.ts';

const bot = { userId: '@clawgate:example.org' };
const JOB = 'j4k2m7q3xa';
const html = (body: string, formatted: string, extra: Record<string, unknown> = {}) => ({
  msgtype: 'm.text',
  body,
  format: 'org.matrix.custom.html',
  formatted_body: formatted,
  ...extra,
});

function mismatchOf(reading: CommandReading): string | undefined {
  assert.equal(reading.kind, 'command', JSON.stringify(reading));
  return reading.kind === 'command' ? reading.mismatch : undefined;
}

test('an approval whose formatted text says the opposite is not read as an approval', () => {
  const content = html(`!approve ${JOB}`, 'I do <b>NOT</b> approve this. Do not run it.');
  const reading = readCommand(content, bot);
  assert.equal(reading.kind, 'command');
  assert.equal(reading.kind === 'command' && reading.command.kind, 'approve');
  assert.match(
    mismatchOf(reading) ?? '',
    /^what the room shows is not this command: the formatted text says "I do NOT approve this\. Do not run it\.", not the command of its plain body/,
  );
  // The evidence: the exact content's canonical hash and the text the room showed.
  assert.deepEqual(reading.kind === 'command' && reading.evidence, {
    contentSha256: canonicalHash(content),
    shown: 'I do NOT approve this. Do not run it.',
  });
});

test('markup that hides, strikes out, folds or quotes the command is refused, each named', () => {
  const cases: Array<[string, RegExp]> = [
    [`<del>!approve ${JOB}</del>`, /struck-out text \(<del>\)/],
    [`<s>!approve ${JOB}</s>`, /struck-out text \(<s>\)/],
    [`<strike>!approve ${JOB}</strike>`, /struck-out text \(<strike>\)/],
    [`<span data-mx-spoiler>!approve ${JOB}</span>`, /a spoiler \(hidden text\)/],
    [`<font color="#ffffff">!approve ${JOB}</font>`, /coloured text/],
    [`<span data-mx-color="#fff" data-mx-bg-color="#fff">!approve ${JOB}</span>`, /coloured text/],
    [`<span style="display:none">!approve ${JOB}</span>`, /styled text/],
    [`<details><summary>ok</summary>!approve ${JOB}</details>`, /a folded section/],
    [`<blockquote>!approve ${JOB}</blockquote>`, /a quotation \(<blockquote>\)/],
    [`!approve ${JOB}<img src="mxc://x/y" alt="not really">`, /an image/],
    [`!approve ${JOB}<script>x</script>`, /markup clients do not show \(<script>\)/],
    [`<marquee>!approve ${JOB}</marquee>`, /markup clients do not show as written \(<marquee>\)/],
  ];
  for (const [formatted, pattern] of cases) {
    const reading = readCommand(html(`!approve ${JOB}`, formatted), bot);
    assert.match(mismatchOf(reading) ?? 'no mismatch', pattern, formatted);
  }
});

test('a denial and an approval swapped between body and formatted text, or a reason changed, are refused', () => {
  assert.match(
    mismatchOf(readCommand(html(`!deny ${JOB}`, `!approve ${JOB}`), bot)) ?? '',
    /the formatted text says "!approve j4k2m7q3xa"/,
  );
  assert.ok(mismatchOf(readCommand(html(`!approve ${JOB}`, `!deny ${JOB}`), bot)));
  assert.ok(mismatchOf(readCommand(html(`!approve ${JOB}`, '!approve jzzzzzzzzz'), bot)));
  assert.ok(mismatchOf(readCommand(html('!approve abcdef12', '!approve abcdef13'), bot)));
  assert.ok(mismatchOf(readCommand(html('!deny too risky', '!deny looks fine'), bot)));
  assert.ok(mismatchOf(readCommand(html('!claw list the files', '!claw delete the files'), bot)));
  assert.ok(mismatchOf(readCommand(html('!cancel', '!status'), bot)));
});

test('a formatted body without the HTML format, or not text, is refused: clients may show either', () => {
  for (const content of [
    { msgtype: 'm.text', body: `!approve ${JOB}`, formatted_body: 'I do NOT approve' },
    { msgtype: 'm.text', body: `!approve ${JOB}`, format: 'text/markdown', formatted_body: 'no' },
    { msgtype: 'm.text', body: `!approve ${JOB}`, format: 'org.matrix.custom.html', formatted_body: 42 },
    { msgtype: 'm.text', body: `!approve ${JOB}`, format: 'org.matrix.custom.html' },
  ]) {
    assert.match(
      mismatchOf(readCommand(content, bot)) ?? '',
      /its formatted body is not org\.matrix\.custom\.html text/,
    );
  }
});

test('extensible-event text that differs from the body, and bidirectional controls, are refused', () => {
  assert.match(
    mismatchOf(
      readCommand(
        { msgtype: 'm.text', body: `!approve ${JOB}`, 'm.text': [{ body: 'I do not approve' }] },
        bot,
      ),
    ) ?? '',
    /m\.text says "I do not approve"/,
  );
  assert.ok(
    mismatchOf(
      readCommand(
        {
          msgtype: 'm.text',
          body: `!approve ${JOB}`,
          'org.matrix.msc1767.text': 'no',
        },
        bot,
      ),
    ),
  );
  assert.match(
    mismatchOf(readCommand({ msgtype: 'm.text', body: '!claw delete \u202eelif terces' }, bot)) ?? '',
    /bidirectional control characters/,
  );
  assert.match(
    mismatchOf(
      readCommand(html('!claw delete the secret file', '!claw delete \u202eelif terces eht'), bot),
    ) ?? '',
    /bidirectional control characters/,
  );
  // The same text there is fine.
  assert.equal(
    mismatchOf(
      readCommand(
        { msgtype: 'm.text', body: `!approve ${JOB}`, 'm.text': [{ body: `!approve ${JOB}` }] },
        bot,
      ),
    ),
    undefined,
  );
});

test('a formatted body that shows a command the plain body does not hold is answered, not acted on', () => {
  const reading = readCommand(html('looks good to me', `!approve ${JOB}`), bot);
  assert.equal(reading.kind, 'not-counted');
  assert.match(
    reading.kind === 'not-counted' ? reading.reason : '',
    /^this message is not acted on: the formatted text shows a command \("!approve j4k2m7q3xa"\) that the plain body does not hold/,
  );
  // Plain chat with formatting is nothing to clawgate.
  assert.equal(readCommand(html('**nice**', '<strong>nice</strong>'), bot).kind, 'none');
  assert.equal(readCommand(html('nice', '<del>nice</del>'), bot).kind, 'none');
});

test('formatting that says the same command is read as it: markdown, code, links, pills, replies', () => {
  const same: Array<[string, string]> = [
    [`!approve ${JOB}`, `<p>!approve <code>${JOB}</code></p>`],
    [`!approve ${JOB} abcdef12`, `!approve <strong>${JOB}</strong> <em>abcdef12</em>`],
    ['!deny too &risky', '!deny too &amp;risky'],
    [
      '!claw summarise `README.md` and **fix** [the docs](https://example.org/d)',
      '!claw summarise <code>README.md</code> and <strong>fix</strong> <a href="https://example.org/d">the docs</a>',
    ],
    [
      '!claw read https://example.org/x',
      '!claw read <a href="https://example.org/x">https://example.org/x</a>',
    ],
    [
      'clawgate: fix the build',
      '<a href="https://matrix.to/#/@clawgate:example.org">clawgate</a>: fix the build',
    ],
    [
      `> <@alice:example.org> is this fine?\n\n!approve ${JOB}`,
      `<mx-reply><blockquote><a href="https://matrix.to/#/@alice:example.org">Alice</a> is <del>this</del> fine?</blockquote></mx-reply>!approve ${JOB}`,
    ],
    ['!claw fix\nthe build', '<p>!claw fix<br>the build</p>'],
  ];
  for (const [body, formatted] of same) {
    const reading = readCommand(html(body, formatted), bot);
    assert.equal(reading.kind, 'command', `${formatted}: ${JSON.stringify(reading)}`);
    assert.equal(mismatchOf(reading), undefined, formatted);
  }
  // A reply that only quotes a command is the quote case, whatever the HTML.
  const quoting = readCommand(
    html(
      `> <@alice:example.org> !approve ${JOB}\n\nagreed`,
      `<mx-reply><blockquote>!approve ${JOB}</blockquote></mx-reply>agreed`,
    ),
    bot,
  );
  assert.deepEqual(quoting, {
    kind: 'not-counted',
    reason: 'a quoted command is not acted on; send it as a message of its own.',
  });
});

test('commands come from m.text only: an emote or a file named like a command is answered with why', () => {
  const emote = readCommand(
    {
      msgtype: 'm.emote',
      body: `!approve ${JOB}`,
      'm.relates_to': { rel_type: 'm.thread', event_id: '$root' },
    },
    bot,
  );
  assert.deepEqual(emote, {
    threadRoot: '$root',
    kind: 'not-counted',
    reason: 'an emote (/me) is not read as a command; send the command as a plain text message.',
  });
  const plainEmote = readCommand({ msgtype: 'm.emote', body: '!approve' }, bot);
  assert.equal(plainEmote.kind, 'not-counted');
  for (const msgtype of ['m.file', 'm.image', 'm.video', 'm.audio', 'org.example.custom']) {
    const reading = readCommand({ msgtype, body: '!deny it' }, bot);
    assert.equal(reading.kind, 'not-counted', msgtype);
    assert.match(reading.kind === 'not-counted' ? reading.reason : '', /is not read as a command/);
  }
  // A notice (what bots post) and chat in another msgtype stay silent.
  assert.deepEqual(readCommand({ msgtype: 'm.notice', body: '!approve' }, bot), { kind: 'none' });
  assert.deepEqual(readCommand({ msgtype: 'm.emote', body: 'waves' }, bot), { kind: 'none' });
  assert.deepEqual(readCommand({ msgtype: 'm.image', body: 'cat.png' }, bot), { kind: 'none' });
  assert.deepEqual(readCommand({ msgtype: 'm.text', body: 42 }, bot), { kind: 'none' });
});

test('edits and bad arguments read as before', () => {
  const edit = (body: string, target: string) => ({
    msgtype: 'm.text',
    body: `* ${body}`,
    'm.new_content': { msgtype: 'm.text', body },
    'm.relates_to': { rel_type: 'm.replace', event_id: target },
  });
  assert.deepEqual(readCommand(edit('!approve', '$x'), bot), {
    kind: 'not-counted',
    reason: 'an edit is not read as a command; send the command as a new message.',
  });
  // An edit with no command in it names the message it edits, whose command may now read otherwise.
  assert.deepEqual(readCommand(edit('I do NOT approve', '$approval'), bot), {
    kind: 'edit',
    target: '$approval',
  });
  const bad = readCommand({ msgtype: 'm.text', body: '!approve what' }, bot);
  assert.equal(bad.kind, 'invalid');
  const plain = readCommand({ msgtype: 'm.text', body: `!approve ${JOB}` }, bot);
  assert.deepEqual(plain, {
    kind: 'command',
    command: { kind: 'approve', job: JOB },
    evidence: {
      contentSha256: canonicalHash({ msgtype: 'm.text', body: `!approve ${JOB}` }),
      shown: `!approve ${JOB}`,
    },
  });
});

test('the shown text of HTML: blocks as lines, entities decoded, the reply fallback dropped', () => {
  assert.deepEqual(shownHtml('<p>a &lt;b&gt;</p><ul><li>one</li><li>two</li></ul>x<br/>y'), {
    text: 'a <b>\none\ntwo\nx\ny',
    concealing: [],
  });
  assert.equal(shownHtml('<mx-reply><blockquote>old</blockquote></mx-reply>new').text, 'new');
  assert.ok(sameWords('**Fix** the `build`', 'fix the build'));
  assert.ok(!sameWords('do not run it', 'do run it'));
});

test('no content makes the reading throw', () => {
  fc.assert(
    fc.property(fc.anything(), fc.string(), fc.string(), (extra, body, formatted) => {
      const contents: unknown[] = [
        extra,
        html(body, formatted),
        { msgtype: 'm.text', body, 'm.text': extra },
      ];
      for (const content of contents) {
        assert.ok(
          ['none', 'not-counted', 'invalid', 'command', 'edit'].includes(readCommand(content, bot).kind),
        );
      }
    }),
  );
});
