// A scripted model for the demo upstream: it speaks OpenAI tool calling (tool calls out, tool
// messages back, text at the end) by following a script that is data, so each test can choose
// the model it needs: one that calls a tool and stops, one that never stops calling, one that
// obeys instructions planted in tool output, or the demo's own, which looks around the
// workspace and answers from what it found. It is deterministic: the same messages get the
// same reply, whatever asked.
import { PLANNER_PROMPT_HEAD, TOOL_OUTPUT_HEADER } from '../agent/protocol.ts';
import { SANDBOX_WORKSPACE } from '../sandbox/bubblewrap.ts';
import type { AssistantReply, ChatMessage, ReplyRequest, ToolCall } from './demo-upstream.ts';

/** A tool call a script makes; string values in `arguments` are templates (see `fill`). */
export interface ScriptCall {
  name: string;
  arguments: Record<string, unknown>;
}

/** What the model does on one turn. */
export type ScriptStep =
  /** One tool call. */
  | { call: ScriptCall }
  /** Several tool calls in one turn. */
  | { calls: ScriptCall[] }
  /** A text answer (a template), which ends the conversation. */
  | { answer: string }
  /** This step on this turn and every later one: a model that never stops. */
  | { loop: ScriptStep }
  /** Make the calls tool output asks for (`CALL <tool> <json-args>` lines), once each. */
  | { obey: true }
  /** The demo's behaviour: plan, look around with read and search, answer from what was found. */
  | { auto: true };

/** A script for each kind of conversation; turn n (n assistant messages so far) takes step n. */
export interface DemoScript {
  planning?: ScriptStep[];
  execution?: ScriptStep[];
}

/** What `npm start`'s demo runs: the auto behaviour, for whole conversations. */
export const DEMO_SCRIPT: DemoScript = {
  planning: [{ loop: { auto: true } }],
  execution: [{ loop: { auto: true } }],
};

/** The answer once a script has no step left for the turn. */
export const SCRIPT_FINISHED = '(demo model: script finished)';

/** A model that follows `script`: give it to `startDemoUpstream({ reply })`. */
export function scriptedModel(script: DemoScript): (request: ReplyRequest) => AssistantReply {
  return (request) => {
    const convo = readConversation(request);
    const steps = (convo.phase === 'planning' ? script.planning : script.execution) ?? [];
    const step = stepFor(steps, convo.turn);
    return step ? play(step, convo) : { content: SCRIPT_FINISHED };
  };
}

// --- The conversation as the model sees it ---------------------------------------------------

/** A call the model made earlier, with its result once one came back. */
interface PastCall {
  id: string;
  name: string;
  /** The arguments, parsed (undefined when they were not JSON). */
  args: unknown;
  result?: ToolResult;
}

interface ToolResult {
  /** The tool, from the header (or the call it answers). */
  tool: string;
  /** Why it was refused, when the header says so. */
  refused: string | null;
  /** The output, after the header. */
  text: string;
}

interface Conversation {
  phase: 'planning' | 'execution';
  /** Assistant messages so far: the index of the step to play. */
  turn: number;
  /** The first user message's text. */
  request: string;
  /** The names of the OpenAI tools offered. */
  tools: string[];
  /** The system prompt. */
  system: string;
  calls: PastCall[];
  /** Tool results in the order they came. */
  results: ToolResult[];
}

/** A message's text: a string, or the text parts of a content array. */
function textOf(content: unknown): string {
  if (typeof content === 'string') return content;
  if (!Array.isArray(content)) return '';
  return content
    .map((part: unknown) => (isRecord(part) && typeof part['text'] === 'string' ? part['text'] : ''))
    .join('');
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return undefined;
  }
}

/** The tool calls of an assistant message, as far as they are well formed. */
function callsOf(message: ChatMessage): Array<{ id: string; name: string; args: unknown }> {
  if (!Array.isArray(message.tool_calls)) return [];
  return message.tool_calls.flatMap((c: unknown) => {
    if (!isRecord(c) || !isRecord(c['function'])) return [];
    const fn = c['function'];
    const name = typeof fn['name'] === 'string' ? fn['name'] : '';
    const args = typeof fn['arguments'] === 'string' ? parseJson(fn['arguments']) : undefined;
    return [{ id: typeof c['id'] === 'string' ? c['id'] : '', name, args }];
  });
}

/** A tool message's content split into what its header says and the output after it. */
function parseToolResult(content: string, fallbackTool: string): ToolResult {
  const header = TOOL_OUTPUT_HEADER.exec(content)?.[0] ?? '';
  const text = content.slice(header.length);
  const tool = /^\[clawgate: (?:output of )?tool (\S+)/.exec(header)?.[1] ?? fallbackTool;
  const refused = / refused: (.*)\]\s*$/.exec(header)?.[1] ?? null;
  return { tool, refused, text };
}

/** The names of OpenAI `tools` entries (`{ type: 'function', function: { name } }`). */
function toolNames(tools: unknown[]): string[] {
  return tools.flatMap((t) =>
    isRecord(t) && isRecord(t['function']) && typeof t['function']['name'] === 'string'
      ? [t['function']['name']]
      : [],
  );
}

function readConversation(request: ReplyRequest): Conversation {
  const { messages } = request;
  const system = textOf(messages.find((m) => m.role === 'system')?.content);
  // A planning conversation opens with PLANNER_PROMPT_HEAD; an execution one with
  // AGENT_PROMPT_HEAD, and one the protocol does not mark is treated as execution too.
  const phase = system.startsWith(PLANNER_PROMPT_HEAD) ? 'planning' : 'execution';
  const calls: PastCall[] = [];
  const results: ToolResult[] = [];
  for (const m of messages) {
    if (m.role === 'assistant') calls.push(...callsOf(m));
    if (m.role === 'tool') {
      const call = calls.find((c) => c.id === m.tool_call_id);
      const result = parseToolResult(textOf(m.content), call?.name ?? '');
      results.push(result);
      if (call) call.result = result;
    }
  }
  return {
    phase,
    turn: messages.filter((m) => m.role === 'assistant').length,
    request: textOf(messages.find((m) => m.role === 'user')?.content),
    tools: toolNames(request.tools),
    system,
    calls,
    results,
  };
}

/** Step n of a script; past the end, the last step again if it loops, else none. */
function stepFor(steps: ScriptStep[], turn: number): ScriptStep | undefined {
  const last = steps.at(-1);
  const step = turn < steps.length ? steps[turn] : last && 'loop' in last ? last : undefined;
  return step;
}

// --- Playing a step ---------------------------------------------------------------------------

function play(step: ScriptStep, convo: Conversation): AssistantReply {
  if ('loop' in step) return play(step.loop, convo);
  if ('call' in step) return callReply(convo, [fillCall(step.call, convo)]);
  if ('calls' in step)
    return callReply(
      convo,
      step.calls.map((c) => fillCall(c, convo)),
    );
  if ('answer' in step) return { content: fill(step.answer, convo) };
  if ('obey' in step) return obey(convo);
  return convo.phase === 'planning' ? { content: autoPlan(convo) } : autoExecute(convo);
}

/** Tool calls with deterministic ids, `call_<turn>_<i>`. */
function callReply(convo: Conversation, calls: Array<{ name: string; args: unknown }>): AssistantReply {
  const toolCalls: ToolCall[] = calls.map((c, i) => ({
    id: `call_${convo.turn}_${i}`,
    type: 'function',
    function: { name: c.name, arguments: JSON.stringify(c.args) },
  }));
  return { content: null, tool_calls: toolCalls };
}

function fillCall(call: ScriptCall, convo: Conversation): { name: string; args: unknown } {
  return { name: call.name, args: fillValue(call.arguments, convo) };
}

/** A script value with every string in it filled in. */
function fillValue(value: unknown, convo: Conversation): unknown {
  if (typeof value === 'string') return fill(value, convo);
  if (Array.isArray(value)) return value.map((v: unknown) => fillValue(v, convo));
  if (isRecord(value)) {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, fillValue(v, convo)]));
  }
  return value;
}

/**
 * A template filled in: `{{request}}` (the first user message), `{{output}}` (the last tool
 * result's text), `{{hitFile}}` (the file of the first hit in the last search output),
 * `{{summary}}` (a summary of the last tool output), `{{keyword}}` and `{{keyword2}}` (the
 * request's two longest words that are not stop words). Other `{{...}}` stay as they are.
 */
function fill(template: string, convo: Conversation): string {
  const last = convo.results.at(-1);
  const lastSearch = convo.results.findLast((r) => r.tool === 'search');
  const [keyword = '', keyword2 = ''] = keywords(convo.request);
  const values: Record<string, () => string> = {
    request: () => convo.request,
    output: () => last?.text ?? '',
    hitFile: () => (lastSearch ? (searchHits(lastSearch.text)[0]?.file ?? '') : ''),
    summary: () => (last ? resultSummary(last) : '(no tool output yet)'),
    keyword: () => keyword,
    keyword2: () => keyword2,
  };
  return template.replace(/\{\{(\w+)\}\}/g, (whole, name: string) => values[name]?.() ?? whole);
}

// --- obey: a model that takes orders from tool output -------------------------------------------

/** A key for a call that does not depend on the order of its arguments' keys. */
function callKey(name: string, args: unknown): string {
  const sorted = (v: unknown): unknown =>
    Array.isArray(v)
      ? v.map(sorted)
      : isRecord(v)
        ? Object.fromEntries(
            Object.keys(v)
              .sort()
              .map((k) => [k, sorted(v[k])]),
          )
        : v;
  return `${name} ${JSON.stringify(sorted(args))}`;
}

function obey(convo: Conversation): AssistantReply {
  const made = new Set(convo.calls.map((c) => callKey(c.name, c.args)));
  for (const result of [...convo.results].reverse()) {
    for (const line of result.text.split('\n')) {
      const m = /^\s*CALL\s+(\S+)\s+(\{.*\})\s*$/.exec(line);
      if (!m) continue;
      const [, name = '', json = ''] = m;
      const args = parseJson(json);
      if (args === undefined || made.has(callKey(name, args))) continue;
      return callReply(convo, [{ name, args }]);
    }
  }
  const seen = convo.results.map((r) => `- ${r.tool}: ${oneLine(resultSummary(r))}`);
  return {
    content: seen.length ? ['What I saw in the tool output:', ...seen].join('\n') : 'I saw no tool output.',
  };
}

// --- auto: the demo's own behaviour -----------------------------------------------------------------

const STOP_WORDS = new Set(
  (
    'a an and are as at be been but by can could did do does doing for from had has have how i if in ' +
    'into is it its me my no not of on or our please should so than that the their them then there ' +
    'these they this those to too us was we were what when where which while who whom why will with ' +
    'would you your about all any some each every find show tell explain describe give list look see ' +
    'defined define used use uses using work works working done happen happens handled handle get gets ' +
    'made make makes called call calls here just also only more most other such very way ways'
  ).split(' '),
);

/** The request's words that are not stop words, longest first (ties: the earlier first). */
function keywords(request: string): string[] {
  const words = request.match(/[\p{L}\p{N}_]+/gu) ?? [];
  const seen = new Set<string>();
  const kept = words.filter((w) => {
    const key = w.toLowerCase();
    if (w.length < 2 || STOP_WORDS.has(key) || seen.has(key)) return false;
    seen.add(key);
    return true;
  });
  return kept
    .map((w, i) => ({ w, i }))
    .sort((a, b) => b.w.length - a.w.length || a.i - b.i)
    .map((x) => x.w);
}

const mentionsReadme = (request: string): boolean => /readme/i.test(request);

/** The one line of a request that can stand as a goal. */
function goalOf(request: string): string {
  const line = request.replace(/\s+/g, ' ').trim();
  if (!line) return 'Answer the request';
  return line.length > 200 ? `${line.slice(0, 199)}…` : line;
}

/** The plan JSON of a planning conversation, for the tools the request needs that are offered. */
function autoPlan(convo: Conversation): string {
  const readme = mentionsReadme(convo.request);
  const [keyword, keyword2] = keywords(convo.request);
  const steps = readme
    ? ['Read README.md', 'Answer with a summary of it: title, what it says first, its sections, some facts']
    : [
        ...(keyword ? [`Search the workspace for "${keyword}"`] : []),
        ...(keyword2 ? [`Search the workspace for "${keyword2}"`] : []),
        'Read the first file that matches',
        'Answer with the files and lines found, quoting them',
      ];
  const needs = readme ? ['read'] : ['search', 'read'];
  // The tools offered as OpenAI tools; without any, the ones the prompt says a plan may list.
  const listed = /^Tools you may list[^:]*: (.*)\.$/m.exec(convo.system)?.[1]?.split(', ') ?? [];
  const offered = convo.tools.length ? convo.tools : listed;
  return JSON.stringify({
    goal: goalOf(convo.request),
    steps,
    tools: needs.filter((t) => offered.includes(t)),
  });
}

function autoExecute(convo: Conversation): AssistantReply {
  return mentionsReadme(convo.request) ? readmeTurn(convo) : questionTurn(convo);
}

/** Read README.md, then answer with a summary of what came back. */
function readmeTurn(convo: Conversation): AssistantReply {
  const read = convo.calls.find((c) => c.name === 'read');
  if (!read) return callReply(convo, [{ name: 'read', args: { path: 'README.md' } }]);
  if (!read.result) return { content: 'I asked to read README.md and got nothing back.' };
  if (read.result.refused !== null) {
    return { content: `I could not read README.md: the call was refused: "${read.result.refused}".` };
  }
  return { content: `What README.md says:\n${summarize(read.result.text)}` };
}

/**
 * A question: search for its longest word, then its second longest, read the first file that
 * matched, and answer from what was found. What has been done is read off the calls already
 * made, so a search that was refused or found nothing moves the work on all the same.
 */
function questionTurn(convo: Conversation): AssistantReply {
  const words = keywords(convo.request).slice(0, 2);
  const searches = convo.calls.filter((c) => c.name === 'search');
  const next = words[searches.length];
  if (next !== undefined) return callReply(convo, [{ name: 'search', args: { query: next } }]);
  const firstHit = searches.map((s) => searchHits(s.result?.text ?? '')[0]).find((h) => h !== undefined);
  const read = convo.calls.find((c) => c.name === 'read');
  if (firstHit && !read) return callReply(convo, [{ name: 'read', args: { path: firstHit.file } }]);
  return { content: questionAnswer(words, searches, read) };
}

function questionAnswer(words: string[], searches: PastCall[], read: PastCall | undefined): string {
  if (words.length === 0) return 'Your request has no word I could search the workspace for.';
  const lines: string[] = [];
  for (const s of searches) {
    const query = isRecord(s.args) && typeof s.args['query'] === 'string' ? s.args['query'] : '?';
    if (!s.result) {
      lines.push(`Searching for "${query}" gave no result.`);
    } else if (s.result.refused !== null) {
      lines.push(`Searching for "${query}" was refused: "${s.result.refused}".`);
    } else {
      const hits = searchHits(s.result.text);
      if (hits.length === 0) {
        lines.push(`Nothing in the workspace matches "${query}".`);
        continue;
      }
      const files = [...new Set(hits.map((h) => h.file))];
      lines.push(
        `"${query}" matches ${plural(hits.length, 'line')} in ${plural(files.length, 'file')} (${files.join(', ')}):`,
        ...hits.slice(0, 5).map((h) => `> ${h.file}:${h.line}: ${h.text.trim()}`),
        ...(hits.length > 5 ? [`(and ${hits.length - 5} more)`] : []),
      );
    }
  }
  if (read) {
    const path = isRecord(read.args) && typeof read.args['path'] === 'string' ? read.args['path'] : '?';
    if (read.result && read.result.refused !== null) {
      lines.push(`Reading ${path} was refused: "${read.result.refused}".`);
    } else if (read.result) {
      const opening = nonEmptyLines(read.result.text).slice(0, 2);
      lines.push(`${path} begins:`, ...opening.map((l) => `> ${l.trim()}`));
    }
  }
  return lines.join('\n');
}

const plural = (n: number, word: string): string => `${n} ${word}${n === 1 ? '' : 's'}`;

/** `path:line:text` lines of search (grep) output, paths made relative to the workspace. */
function searchHits(output: string): Array<{ file: string; line: number; text: string }> {
  return output.split('\n').flatMap((l) => {
    const m = /^(.+?):(\d+):(.*)$/.exec(l);
    if (!m) return [];
    const [, path = '', line = '0', text = ''] = m;
    const file = path.startsWith(`${SANDBOX_WORKSPACE}/`) ? path.slice(SANDBOX_WORKSPACE.length + 1) : path;
    return [{ file, line: Number(line), text }];
  });
}

// --- Summaries ----------------------------------------------------------------------------------

function resultSummary(r: ToolResult): string {
  return r.refused !== null ? `refused: "${r.refused}"` : summarize(r.text);
}

const nonEmptyLines = (text: string): string[] => text.split('\n').filter((l) => l.trim() !== '');

const oneLine = (text: string): string => text.replace(/\s*\n\s*/g, ' ');

const BULLET = /^\s*(?:[-*+]|\d+[.)])\s+\S/;
const HEADING = /^#{1,6}\s+/;

/** The first one or two sentences of a paragraph (two when the first is short). */
function leadSentences(paragraph: string): string {
  const sentences = paragraph.split(/(?<=[.!?])\s+/);
  const [first = '', second] = sentences;
  const lead = first.length < 80 && second ? `${first} ${second}` : first;
  return lead.length > 400 ? `${lead.slice(0, 399)}…` : lead;
}

/**
 * A summary of a text. Markdown: its title (the first `# ` heading), the first one or two
 * sentences of its first paragraph, its section headings (`## `), and up to three bullet lines
 * quoted as they are. Plain text: its size and its first lines, quoted.
 */
export function summarize(text: string): string {
  const lines = text.split('\n');
  if (nonEmptyLines(text).length === 0) return '(empty)';
  const isMarkdown = lines.some((l) => HEADING.test(l));
  if (!isMarkdown) {
    const shown = nonEmptyLines(text).slice(0, 3);
    const count = text.replace(/\n$/, '').split('\n').length; // a final newline ends a line, starts none
    return [`${plural(count, 'line')}, beginning:`, ...shown.map((l) => `> ${l.trim()}`)].join('\n');
  }
  let title: string | undefined;
  let paragraph: string[] | undefined; // the first paragraph, once found
  let inParagraph = false;
  let inFence = false;
  const sections: string[] = [];
  const bullets: string[] = [];
  for (const line of lines) {
    if (/^\s*(```|~~~)/.test(line)) {
      inFence = !inFence;
      inParagraph = false;
      continue;
    }
    if (inFence) continue;
    const trimmed = line.trim();
    if (title === undefined && /^#\s+/.test(line)) title = line.replace(/^#\s+/, '').trim();
    else if (/^##\s+/.test(line)) sections.push(line.replace(/^##\s+/, '').trim());
    else if (BULLET.test(line)) {
      if (bullets.length < 3) bullets.push(trimmed);
    } else if (trimmed !== '' && !HEADING.test(line) && !/^(<|!\[|\[!\[|\||>|---)/.test(trimmed)) {
      // Prose: the first run of it is the first paragraph (badges, HTML, tables and quotes are not).
      if (paragraph === undefined) {
        paragraph = [];
        inParagraph = true;
      }
      if (inParagraph) paragraph.push(trimmed);
      continue;
    }
    inParagraph = false;
  }
  const out: string[] = [];
  if (title !== undefined) out.push(`Title: ${title}`);
  if (paragraph) out.push(leadSentences(paragraph.join(' ')));
  if (sections.length) out.push(`Sections: ${sections.join('; ')}.`);
  if (bullets.length) out.push('Points it makes:', ...bullets.map((b) => `> ${b}`));
  return out.join('\n');
}
