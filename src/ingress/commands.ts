// What people type in a room, read the way clawgate reads it. One table holds every command;
// `!help` is rendered from it and the parser follows it. Only what the sender wrote counts:
// edits (`m.replace`) are not read as commands, the quoted part of a reply is dropped, and
// notices (what bots post) are ignored.
import { isJobRef } from './job-ids.ts';

export type Command =
  | { kind: 'request'; text: string }
  | { kind: 'approve'; job?: string; planHash?: string }
  | { kind: 'deny'; job?: string; reason?: string }
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
  const spec = COMMANDS.find((c) => c.word(words) === word);
  if (!spec) {
    if (mentioned && trimmed !== '' && !trimmed.startsWith('!')) return request(trimmed);
    return null;
  }
  const argText = trimmed.slice(first.length).trim();
  const bad = (message: string): ParseResult => ({
    ok: false,
    error: `${message}. Usage: ${usage(spec, words)}`,
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
    case 'approve': {
      const args = [...rest];
      const command: { kind: 'approve'; job?: string; planHash?: string } = { kind: 'approve' };
      if (args[0] !== undefined && isJobRef(args[0])) command.job = args.shift();
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
      const reason = args.join(' ');
      if (reason.length > MAX_REASON_CHARS) {
        return bad(`the reason is ${reason.length} characters long, at most ${MAX_REASON_CHARS}`);
      }
      if (reason !== '') command.reason = reason;
      return { ok: true, command };
    }
  }
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
  /** Not text a person wrote to clawgate (a notice, an image, a malformed content). */
  | { kind: 'skip'; why: string }
  /** An edit; its new text is kept only to explain, if it holds a command, that edits do not count. */
  | { kind: 'edit'; newText: string }
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

export function readMessage(content: unknown, bot: { userId: string }): MessageReading {
  if (!isRecord(content)) return { kind: 'skip', why: 'content is not an object' };
  const relates = isRecord(content['m.relates_to']) ? content['m.relates_to'] : undefined;
  if (relates?.['rel_type'] === 'm.replace') {
    const next = isRecord(content['m.new_content']) ? content['m.new_content']['body'] : content['body'];
    return { kind: 'edit', newText: typeof next === 'string' ? next : '' };
  }
  const msgtype = content['msgtype'];
  if (msgtype === 'm.notice') return { kind: 'skip', why: 'a notice (bots post notices)' };
  if (msgtype !== 'm.text' && msgtype !== 'm.emote')
    return { kind: 'skip', why: `msgtype ${String(msgtype)}` };
  const body = content['body'];
  if (typeof body !== 'string') return { kind: 'skip', why: 'body is not text' };
  const threadRoot =
    relates?.['rel_type'] === 'm.thread' && typeof relates['event_id'] === 'string'
      ? relates['event_id']
      : undefined;
  const { text: unquoted, quoted } = stripQuote(body);
  const mentions = isRecord(content['m.mentions']) ? content['m.mentions']['user_ids'] : undefined;
  let mentioned = Array.isArray(mentions) && mentions.includes(bot.userId);
  // A typed mention: the user id, or the localpart, at the start (`@clawgate: do this`).
  const localpart = bot.userId.slice(1).split(':')[0] ?? '';
  let text = unquoted;
  for (const name of [bot.userId, `@${localpart}`, localpart]) {
    const match = new RegExp(`^${escapeRegExp(name)}[:,]?(\\s+|$)`, 'i').exec(text);
    if (match && name !== '') {
      text = text.slice(match[0].length).trim();
      mentioned = true;
      break;
    }
  }
  return threadRoot === undefined
    ? { kind: 'message', text, mentioned, quoted }
    : { kind: 'message', text, mentioned, quoted, threadRoot };
}

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}
