// What people type in a room, read the way clawgate reads it. One table holds every command;
// `!help` is rendered from it and the parser follows it. Only what the sender wrote counts:
// edits (`m.replace`) are not read as commands, the quoted part of a reply is dropped, notices
// (what bots post) are ignored, commands come from `m.text` messages only (not emotes), and a
// command counts only when what the room shows (a formatted body, say) says the same.
// Approval cards are answered with `!approve <card>` / `!deny <card>` in the job's thread, or
// with a ✅ / ❌ reaction on the card message.
import { canonicalHash, sha256Hex } from '../policy/canonical.ts';
import { CALL_CARD_FIELD, CALL_CARD_ID, legacyJobWorkflowId } from '../temporal/job-contract.ts';
import { BIDI_CONTROLS, clip, MATRIX_HTML_FORMAT, sameWords, shownHtml } from './displayed.ts';
import { isJobRef, jobWorkflowIds } from './job-ids.ts';

export type Command =
  | { kind: 'request'; text: string }
  | { kind: 'approve'; job?: string; planHash?: string }
  | { kind: 'deny'; job?: string; reason?: string }
  /** An answer to an approval card (`!approve c3.1 [job]`); `job` scope covers later calls of its kind. */
  | { kind: 'call-approve'; cardId: string; scope: 'call' | 'job' }
  /** A refusal of an approval card (`!deny c3.1 [reason]`); the reason may be empty. */
  | { kind: 'call-deny'; cardId: string; reason: string }
  | { kind: 'status'; job?: string }
  | { kind: 'cancel'; job?: string }
  | { kind: 'help' };

export type CommandKind = Command['kind'];

/** The words that start each command. Approve and deny come from the active policy. */
export interface CommandWords {
  request: string;
  approve: string;
  deny: string;
}

export const DEFAULT_COMMAND_WORDS: CommandWords = { request: '!claw', approve: '!approve', deny: '!deny' };

/** Longest request text, in characters; longer ones are refused with a message. */
export const MAX_REQUEST_CHARS = 4000;
const MAX_REASON_CHARS = 500;

interface CommandSpec {
  kind: CommandKind;
  word: (words: CommandWords) => string;
  args: string;
  help: string;
}

/** The command table: the parser, `!help` and the README follow it. */
export const COMMANDS: readonly CommandSpec[] = [
  {
    kind: 'request',
    word: (w) => w.request,
    args: '<what to do>',
    help: 'ask for work (or mention the bot); the plan comes back in a thread, to be approved',
  },
  {
    kind: 'approve',
    word: (w) => w.approve,
    args: '[job] [plan hash]',
    help: 'approve a job; with a plan hash (or its first 6+ characters), only that plan',
  },
  {
    kind: 'deny',
    word: (w) => w.deny,
    args: '[job] [reason]',
    help: 'deny a job (the requester may withdraw their own)',
  },
  {
    kind: 'call-approve',
    word: (w) => w.approve,
    args: '<card> [job]',
    help: 'in a job\'s thread, approve the call of an approval card (such as c3.1; or react ✅ to the card); with "job", later calls of that tool with arguments of the same shape too',
  },
  {
    kind: 'call-deny',
    word: (w) => w.deny,
    args: '<card> [reason]',
    help: "in a job's thread, refuse the call of an approval card (or react ❌ to the card)",
  },
  { kind: 'status', word: () => '!status', args: '[job]', help: "a job's state, approvals and steps" },
  {
    kind: 'cancel',
    word: () => '!cancel',
    args: '[job]',
    help: 'cancel a job (its requester or an approver); its token is revoked',
  },
  { kind: 'help', word: () => '!help', args: '', help: 'this list' },
];

export function renderHelp(words: CommandWords = DEFAULT_COMMAND_WORDS): string {
  const lines = COMMANDS.map((c) => `${`${c.word(words)} ${c.args}`.trim()}: ${c.help}`);
  return [
    'clawgate commands:',
    ...lines,
    'In a job\'s thread the job may be left out; elsewhere name it (the id in its plan, such as "j4k2m7q3xa").',
  ].join('\n');
}

function specOf(kind: CommandKind): CommandSpec {
  return COMMANDS.find((c) => c.kind === kind) as CommandSpec;
}

function usage(spec: CommandSpec, words: CommandWords): string {
  return `${spec.word(words)} ${spec.args}`.trim();
}

export type ParseResult =
  | { ok: true; command: Command }
  | { ok: false; error: string }
  /** Not addressed to clawgate. */
  | null;

/**
 * Parses the text of one message (quotes already removed). `mentioned` says the message
 * mentions the bot; the mention itself is removed by the caller.
 */
export function parseCommand(
  text: string,
  words: CommandWords = DEFAULT_COMMAND_WORDS,
  mentioned = false,
): ParseResult {
  const trimmed = text.trim();
  const [first = '', ...rest] = trimmed.split(/\s+/);
  const word = first.toLowerCase();
  let spec = COMMANDS.find((c) => c.word(words) === word);
  if (!spec) {
    if (mentioned && trimmed !== '' && !trimmed.startsWith('!')) return request(trimmed);
    return null;
  }
  // The approve and deny words answer a card when a card comes first.
  if (rest[0] !== undefined && looksLikeCard(rest[0])) {
    if (spec.kind === 'approve') spec = specOf('call-approve');
    else if (spec.kind === 'deny') spec = specOf('call-deny');
  }
  const argText = trimmed.slice(first.length).trim();
  const bad = (message: string, of: CommandSpec = spec): ParseResult => ({
    ok: false,
    error: `${message}. Usage: ${usage(of, words)}`,
  });
  switch (spec.kind) {
    case 'request':
      return argText === '' ? bad('say what to do') : request(argText);
    case 'help':
      return { ok: true, command: { kind: 'help' } };
    case 'status':
    case 'cancel': {
      if (rest.length > 1) return bad(`one job at most, not "${rest.join(' ')}"`);
      const [job] = rest;
      if (job !== undefined && !isJobRef(job)) return bad(`"${job}" is not a job id`);
      return { ok: true, command: job === undefined ? { kind: spec.kind } : { kind: spec.kind, job } };
    }
    case 'call-approve':
    case 'call-deny': {
      const [typed = '', ...after] = rest;
      const cardId = typed.toLowerCase();
      if (!CALL_CARD_ID.test(cardId)) {
        return bad(`"${typed}" is not a card id (c<turn>.<n>, such as c3.1, as the card shows it)`);
      }
      if (spec.kind === 'call-deny') {
        const reason = after.join(' ');
        if (reason.length > MAX_REASON_CHARS) {
          return bad(`the reason is ${reason.length} characters long, at most ${MAX_REASON_CHARS}`);
        }
        return { ok: true, command: { kind: 'call-deny', cardId, reason } };
      }
      if (after.length === 0) return { ok: true, command: { kind: 'call-approve', cardId, scope: 'call' } };
      if (after.length === 1 && (after[0] as string).toLowerCase() === 'job') {
        return { ok: true, command: { kind: 'call-approve', cardId, scope: 'job' } };
      }
      return bad(
        `only "job" may follow the card (to approve later calls of that tool with arguments of the same shape too), not "${after.join(' ')}"`,
      );
    }
    case 'approve': {
      const args = [...rest];
      const command: { kind: 'approve'; job?: string; planHash?: string } = { kind: 'approve' };
      if (args[0] !== undefined && isJobRef(args[0])) command.job = args.shift();
      if (command.job !== undefined && args[0] !== undefined && looksLikeCard(args[0])) {
        return bad(cardAfterJob(args[0]), specOf('call-approve'));
      }
      if (args[0] !== undefined && /^[0-9a-f]{6,64}$/i.test(args[0])) {
        command.planHash = (args.shift() as string).toLowerCase();
      }
      if (args.length > 0) {
        return bad(`"${args[0]}" is neither a job id nor a plan hash (6 to 64 hex characters)`);
      }
      return { ok: true, command };
    }
    case 'deny': {
      const args = [...rest];
      const command: { kind: 'deny'; job?: string; reason?: string } = { kind: 'deny' };
      if (args[0] !== undefined && isJobRef(args[0])) command.job = args.shift();
      if (command.job !== undefined && args[0] !== undefined && looksLikeCard(args[0])) {
        return bad(cardAfterJob(args[0]), specOf('call-deny'));
      }
      const reason = args.join(' ');
      if (reason.length > MAX_REASON_CHARS) {
        return bad(`the reason is ${reason.length} characters long, at most ${MAX_REASON_CHARS}`);
      }
      if (reason !== '') command.reason = reason;
      return { ok: true, command };
    }
  }
}

/**
 * A word meant as a card id: `c`, digits and a dot (`c3.1`, or a mistyped `c0.1`, `c3.`). Such a
 * word first after approve or deny is read as a card, never as a job's reason, so a mistyped
 * card is refused rather than taken for a decision on the whole job.
 */
function looksLikeCard(word: string): boolean {
  return /^c[0-9]+\.[0-9]*$/i.test(word);
}

function cardAfterJob(card: string): string {
  return `a card is answered in its job's thread, named first and without the job ("${card}" after a job id)`;
}

function request(text: string): ParseResult {
  if (text.length > MAX_REQUEST_CHARS) {
    return {
      ok: false,
      error: `the request is ${text.length} characters long, at most ${MAX_REQUEST_CHARS}; shorten it`,
    };
  }
  return { ok: true, command: { kind: 'request', text } };
}

/** How clawgate reads the content of one `m.room.message` event. */
export type MessageReading =
  /**
   * Not text a person wrote to clawgate (a notice, an image, a malformed content). `body` is
   * kept for a message of another msgtype (an emote, a file), to explain, if it looks like a
   * command, why it did not count.
   */
  | { kind: 'skip'; why: string; msgtype?: string; body?: string }
  /** An edit; its new text is kept only to explain, if it holds a command, that edits do not count. */
  | { kind: 'edit'; newText: string; target?: string }
  | {
      kind: 'message';
      /** The text without the quoted part of a reply and without a leading mention of the bot. */
      text: string;
      mentioned: boolean;
      /** The root of the thread the message was sent in, if any. */
      threadRoot?: string;
      /** The quoted part of a reply, if there was one. */
      quoted: string;
    };

const isRecord = (v: unknown): v is Record<string, unknown> =>
  typeof v === 'object' && v !== null && !Array.isArray(v);

/** Removes the quoted fallback of a reply: the leading lines that start with `>`. */
export function stripQuote(body: string): { text: string; quoted: string } {
  const lines = body.split('\n');
  let i = 0;
  while (i < lines.length && (lines[i] as string).startsWith('>')) i += 1;
  const quoted = lines.slice(0, i).join('\n');
  return { text: lines.slice(i).join('\n').trim(), quoted };
}

/** The root of the thread a message was sent in, if its relation names one. */
export function threadOf(content: unknown): { threadRoot?: string } {
  const relates = isRecord(content) && isRecord(content['m.relates_to']) ? content['m.relates_to'] : {};
  return relates['rel_type'] === 'm.thread' && typeof relates['event_id'] === 'string'
    ? { threadRoot: relates['event_id'] }
    : {};
}

/** A typed mention of the bot at the start (`@clawgate: do this`), removed. */
function stripMention(text: string, bot: { userId: string }): { text: string; mentioned: boolean } {
  const localpart = bot.userId.slice(1).split(':')[0] ?? '';
  for (const name of [bot.userId, `@${localpart}`, localpart]) {
    const match = new RegExp(`^${escapeRegExp(name)}[:,]?(\\s+|$)`, 'i').exec(text);
    if (match && name !== '') return { text: text.slice(match[0].length).trim(), mentioned: true };
  }
  return { text, mentioned: false };
}

export function readMessage(content: unknown, bot: { userId: string }): MessageReading {
  if (!isRecord(content)) return { kind: 'skip', why: 'content is not an object' };
  const relates = isRecord(content['m.relates_to']) ? content['m.relates_to'] : undefined;
  if (relates?.['rel_type'] === 'm.replace') {
    const next = isRecord(content['m.new_content']) ? content['m.new_content']['body'] : content['body'];
    const target = relates['event_id'];
    return typeof target === 'string'
      ? { kind: 'edit', newText: typeof next === 'string' ? next : '', target }
      : { kind: 'edit', newText: typeof next === 'string' ? next : '' };
  }
  const msgtype = content['msgtype'];
  const body = content['body'];
  if (msgtype === 'm.notice') return { kind: 'skip', why: 'a notice (bots post notices)' };
  // Commands come from plain text messages only: an emote (`/me !approve`) reads as something
  // the sender does, not says, and a file's body is its name.
  if (msgtype !== 'm.text') {
    return typeof msgtype === 'string' && typeof body === 'string'
      ? { kind: 'skip', why: `msgtype ${msgtype}`, msgtype, body }
      : { kind: 'skip', why: `msgtype ${String(msgtype)}` };
  }
  if (typeof body !== 'string') return { kind: 'skip', why: 'body is not text' };
  const { threadRoot } = threadOf(content);
  const { text: unquoted, quoted } = stripQuote(body);
  const mentions = isRecord(content['m.mentions']) ? content['m.mentions']['user_ids'] : undefined;
  const typed = stripMention(unquoted, bot);
  const mentioned = typed.mentioned || (Array.isArray(mentions) && mentions.includes(bot.userId));
  const text = typed.text;
  return threadRoot === undefined
    ? { kind: 'message', text, mentioned, quoted }
    : { kind: 'message', text, mentioned, quoted, threadRoot };
}

/** What a command's event said, kept with the decision: its content's hash and the shown text. */
export interface CommandEvidence {
  /** SHA-256 of the event content (decrypted, RFC 8785 canonical JSON). */
  contentSha256: string;
  /** The text the room showed: the formatted body's text when there is one, else the body. */
  shown: string;
}

/** How much of the shown text the evidence keeps. */
export const MAX_SHOWN_CHARS = 2000;

export type CommandReading = { threadRoot?: string } & (
  | /** Not addressed to clawgate: nothing to say. */ { kind: 'none' }
    /** Looks like a command but does not count (an edit, a quote, an emote): the sender is told why. */
  | { kind: 'not-counted'; reason: string }
  /** A command word with bad arguments. */
  | { kind: 'invalid'; error: string }
  /**
   * An edit that holds no command, of the message `target`: if that message was a command, the
   * room now shows something else than what was acted on, and the sender is told it stands.
   */
  | { kind: 'edit'; target: string }
  | {
      kind: 'command';
      command: Command;
      evidence: CommandEvidence;
      /**
       * Why what the room shows does not say this command (a formatted body that says
       * otherwise, hidden or struck-out text, bidirectional controls). A command with a
       * mismatch is never acted on; an approval or denial still goes to its job, whose
       * workflow refuses it and keeps the refusal as evidence.
       */
      mismatch?: string;
    }
);

const MSGTYPE_NAMES: Record<string, string> = {
  'm.emote': 'an emote (/me)',
  'm.image': 'an image',
  'm.file': 'a file',
  'm.audio': 'an audio message',
  'm.video': 'a video',
  'm.location': 'a location',
};

/** The texts a client may show in place of the body: the HTML, and extensible-event text. */
function shownAlternatives(content: Record<string, unknown>): Array<{ what: string; text: string }> {
  const out: Array<{ what: string; text: string }> = [];
  for (const key of ['m.text', 'org.matrix.msc1767.text']) {
    const value = content[key];
    if (typeof value === 'string') out.push({ what: key, text: value });
    else if (Array.isArray(value)) {
      for (const block of value) {
        if (isRecord(block) && typeof block['body'] === 'string') {
          const html = block['mimetype'] === 'text/html';
          out.push({ what: key, text: html ? shownHtml(block['body']).text : block['body'] });
        }
      }
    }
  }
  return out;
}

/** The free text of a command (a request's text, a denial's reason), or ''. */
function freeText(command: Command): string {
  if (command.kind === 'request') return command.text;
  if (command.kind === 'deny') return command.reason ?? '';
  if (command.kind === 'call-deny') return command.reason;
  return '';
}

function sameCommand(a: ParseResult, b: ParseResult): boolean {
  if (a === null || b === null) return a === b;
  if (!a.ok || !b.ok) return a.ok === b.ok;
  const x = a.command;
  const y = b.command;
  const ref = (c: Command) => [
    c.kind,
    'job' in c ? c.job : undefined,
    'planHash' in c ? c.planHash : undefined,
    'cardId' in c ? c.cardId : undefined,
    'scope' in c ? c.scope : undefined,
  ];
  if (JSON.stringify(ref(x)) !== JSON.stringify(ref(y))) return false;
  return sameWords(freeText(x), freeText(y));
}

function contentHash(content: unknown): string {
  try {
    return canonicalHash(content);
  } catch {
    return sha256Hex(String(JSON.stringify(content)));
  }
}

/**
 * Reads one message's content as clawgate acts on it: what the sender wrote (not an edit, a
 * quote, an emote or a file name), and only if what the room shows says the same command.
 */
export function readCommand(
  content: unknown,
  bot: { userId: string },
  words: CommandWords = DEFAULT_COMMAND_WORDS,
): CommandReading {
  const reading = readMessage(content, bot);
  const thread = threadOf(content);
  if (reading.kind === 'skip') {
    if (reading.body === undefined || reading.msgtype === undefined) return { kind: 'none' };
    const looks = parseCommand(reading.body.replace(/^\*\s*/, ''), words);
    if (looks === null || (looks.ok && looks.command.kind === 'help')) return { kind: 'none' };
    const what = MSGTYPE_NAMES[reading.msgtype] ?? `a message of type ${reading.msgtype}`;
    return {
      ...thread,
      kind: 'not-counted',
      reason: `${what} is not read as a command; send the command as a plain text message.`,
    };
  }
  if (reading.kind === 'edit') {
    const edited = parseCommand(reading.newText.replace(/^\*\s*/, ''), words);
    if (edited?.ok !== true || edited.command.kind === 'help') {
      return reading.target === undefined ? { kind: 'none' } : { kind: 'edit', target: reading.target };
    }
    return {
      kind: 'not-counted',
      reason: 'an edit is not read as a command; send the command as a new message.',
    };
  }
  const record = content as Record<string, unknown>;
  const parsed = parseCommand(reading.text, words, reading.mentioned);

  // What the room shows, read the way the body is read.
  const shown: Array<{ what: string; text: string }> = [];
  const mismatches: string[] = [];
  const formatted = record['formatted_body'];
  const format = record['format'];
  if (formatted !== undefined || format !== undefined) {
    if (format !== MATRIX_HTML_FORMAT || typeof formatted !== 'string') {
      mismatches.push(
        `its formatted body is not ${MATRIX_HTML_FORMAT} text (format ${JSON.stringify(format) ?? 'missing'}), so clients may show something else`,
      );
    } else {
      const html = shownHtml(formatted);
      shown.push({ what: 'the formatted text', text: html.text });
      if (html.concealing.length > 0) {
        mismatches.push(`its formatted text holds ${html.concealing.join(', ')}`);
      }
    }
  }
  shown.push(...shownAlternatives(record));
  if ([String(record['body']), ...shown.map((a) => a.text)].some((t) => BIDI_CONTROLS.test(t))) {
    mismatches.push('it holds bidirectional control characters, which reorder the text on screen');
  }
  for (const alternative of shown) {
    const typed = stripMention(alternative.text, bot);
    const displayed = parseCommand(typed.text, words, reading.mentioned || typed.mentioned);
    if (sameCommand(parsed, displayed)) continue;
    const says = clip(typed.text);
    mismatches.push(
      parsed === null
        ? `${alternative.what} shows a command ("${says}") that the plain body does not hold`
        : `${alternative.what} says "${says}", not the command of its plain body`,
    );
  }

  if (parsed === null) {
    if (
      mismatches.length > 0 &&
      shown.some((a) => parseCommand(stripMention(a.text, bot).text, words) !== null)
    ) {
      return {
        ...thread,
        kind: 'not-counted',
        reason: `this message is not acted on: ${mismatches.join('; ')}.`,
      };
    }
    const quoted = reading.quoted.replace(/^>\s?/gm, '').replace(/^<[^>]*>\s*/, '');
    if (quoted && parseCommand(quoted, words)?.ok === true) {
      return {
        ...thread,
        kind: 'not-counted',
        reason: 'a quoted command is not acted on; send it as a message of its own.',
      };
    }
    return { ...thread, kind: 'none' };
  }
  if (!parsed.ok) return { ...thread, kind: 'invalid', error: parsed.error };
  const shownText = (shown[0]?.text ?? String(record['body'])).slice(0, MAX_SHOWN_CHARS);
  const evidence = { contentSha256: contentHash(content), shown: shownText };
  return mismatches.length === 0
    ? { ...thread, kind: 'command', command: parsed.command, evidence }
    : {
        ...thread,
        kind: 'command',
        command: parsed.command,
        evidence,
        mismatch: `what the room shows is not this command: ${mismatches.join('; ')}. Send the command as plain text`,
      };
}

/** The reaction keys that answer a card; the emoji's variation selector (U+FE0F) may follow. */
export const REACTION_DECISIONS: Readonly<Record<string, 'approve' | 'deny'>> = {
  '\u2705': 'approve',
  '\u2705\ufe0f': 'approve',
  '\u274c': 'deny',
  '\u274c\ufe0f': 'deny',
};

/** A reaction that may answer a card: its annotated event, its key and the decision the key says. */
export interface ReactionReading {
  target: string;
  key: string;
  decision: 'approve' | 'deny';
}

/** The relation of an `m.reaction`'s content, if it is a well-formed annotation. */
export function annotationOf(content: unknown): { target: string; key: string } | null {
  const relates = isRecord(content) && isRecord(content['m.relates_to']) ? content['m.relates_to'] : null;
  if (relates?.['rel_type'] !== 'm.annotation') return null;
  const target = relates['event_id'];
  const key = relates['key'];
  return typeof target === 'string' && typeof key === 'string' ? { target, key } : null;
}

/**
 * Reads an `m.reaction`'s content: an annotation whose key is ✅ (approve) or ❌ (deny), or null
 * for any other reaction (those are ordinary chat).
 */
export function readReaction(content: unknown): ReactionReading | null {
  const annotation = annotationOf(content);
  if (!annotation) return null;
  const decision = Object.hasOwn(REACTION_DECISIONS, annotation.key)
    ? REACTION_DECISIONS[annotation.key]
    : undefined;
  return decision === undefined ? null : { ...annotation, decision };
}

/** What a card message's content says of its card: the card id and the job's workflow id, or null. */
export function readCard(content: unknown): { cardId: string | null; workflowId: string } | null {
  const field = isRecord(content) ? content[CALL_CARD_FIELD] : undefined;
  if (!isRecord(field) || typeof field['workflow_id'] !== 'string') return null;
  const cardId = typeof field['card_id'] === 'string' ? field['card_id'] : null;
  return { cardId, workflowId: field['workflow_id'] };
}

/**
 * The request event of a job of this room, or null when the workflow id names no job of this
 * room. A short workflow id (`clawgate-<job id>`) is a hash, so its request event comes from
 * `threadRoot` (the thread the bot posted the card in) and counts only when it hashes to that
 * id in this room; an old one (`job:<room>:<request event id>`) carries its request event.
 */
export function jobRootInRoom(workflowId: string, roomId: string, threadRoot?: string): string | null {
  if (threadRoot !== undefined && /^\$\S{1,255}$/.test(threadRoot)) {
    const ids = jobWorkflowIds(roomId, threadRoot);
    if (ids.workflowId === workflowId || ids.legacy === workflowId) return threadRoot;
  }
  const prefix = legacyJobWorkflowId(roomId, '');
  if (!workflowId.startsWith(prefix)) return null;
  const root = workflowId.slice(prefix.length);
  // An event id starts with `$`, and a room id never holds `:$` (its server name follows its
  // first colon), so the workflow id of another room's job never reads as one of this room.
  return /^\$\S{1,255}$/.test(root) && legacyJobWorkflowId(roomId, root) === workflowId ? root : null;
}

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}
