// The agent plan: read from the planning conversation's final answer, checked, and shown to
// the approvers as text and HTML. Deterministic (the workflow runs it): no I/O, no zod.
import type { AgentBudget, AgentPlan, ToolCallRef } from '../temporal/job-types.ts';

export type PlanReading = { ok: true; plan: AgentPlan; dropped: string[] } | { ok: false; reason: string };

const MAX_STEPS = 20;
const MAX_TEXT = 500;

/** The JSON object in a model's answer: a fenced block, the whole text, or its outermost braces. */
function jsonIn(text: string): unknown {
  const fenced = /```(?:json)?\s*([\s\S]*?)```/.exec(text)?.[1];
  for (const candidate of [fenced, text, text.slice(text.indexOf('{'), text.lastIndexOf('}') + 1)]) {
    if (!candidate?.trim()) continue;
    try {
      return JSON.parse(candidate);
    } catch {
      // next candidate
    }
  }
  return undefined;
}

/**
 * Reads the plan a model answered with. Tools the model lists that this job does not offer are
 * dropped (and said so in the posted plan); a plan without a goal, without steps, or with no
 * offered tool left is no plan.
 */
export function readAgentPlan(text: string, offered: readonly string[], budget: AgentBudget): PlanReading {
  const value = jsonIn(text);
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    return { ok: false, reason: 'the model did not answer with a JSON plan { goal, steps, tools }' };
  }
  const { goal, steps, tools } = value as Record<string, unknown>;
  if (typeof goal !== 'string' || !goal.trim() || goal.length > MAX_TEXT) {
    return { ok: false, reason: `the plan needs a goal: a line of text (at most ${MAX_TEXT} characters)` };
  }
  if (
    !Array.isArray(steps) ||
    steps.length === 0 ||
    steps.length > MAX_STEPS ||
    !steps.every((s) => typeof s === 'string' && s.trim() !== '' && s.length <= MAX_TEXT)
  ) {
    return { ok: false, reason: `the plan needs steps: 1 to ${MAX_STEPS} lines of text` };
  }
  if (!Array.isArray(tools) || !tools.every((t) => typeof t === 'string')) {
    return { ok: false, reason: 'the plan needs tools: a list of tool names' };
  }
  const listed = [...new Set(tools)];
  const kept = listed.filter((t) => offered.includes(t));
  const dropped = listed.filter((t) => !offered.includes(t));
  if (kept.length === 0 && listed.length > 0) {
    return {
      ok: false,
      reason: `the plan lists only tools this job does not offer (${dropped.join(', ')}; offered: ${offered.join(', ') || 'none'})`,
    };
  }
  return {
    ok: true,
    plan: {
      mode: 'agent',
      goal: goal.trim(),
      steps: (steps as string[]).map((s) => s.trim()),
      tools: kept,
      budget,
    },
    dropped,
  };
}

export function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

export function budgetLine(b: AgentBudget): string {
  return `${b.model_turns} model turns, ${b.tool_calls} tool calls, ${b.model_tokens} tokens, ${b.wall_seconds} s`;
}

/** The plan as the room shows it: plain text and the same as HTML. */
export function renderAgentPlan(input: {
  jobId: string;
  plan: AgentPlan;
  planHash: string;
  policyHash: string;
  dropped: string[];
  approvers: string[];
  approvalsRequired: number;
  expirySeconds: number;
}): { body: string; html: string } {
  const { plan } = input;
  const hours = Math.round((input.expirySeconds / 3600) * 10) / 10;
  const tools = plan.tools.join(', ') || 'none';
  const dropped = input.dropped.length
    ? `Not offered (calls with side effects wait for per-call approvals): ${input.dropped.join(', ')}.`
    : '';
  const ids = `plan ${input.planHash.slice(0, 12)} · policy ${input.policyHash.slice(0, 12)}`;
  const who = `Approvers: ${input.approvers.join(', ')} (${input.approvalsRequired} needed).`;
  const how = `Reply in this thread with !approve (or !deny <reason>) within ${hours} h.`;
  const body = [
    `Plan for job ${input.jobId}: ${plan.goal}`,
    ...plan.steps.map((s, i) => `  ${i + 1}. ${s}`),
    `Tools: ${tools}. Budget: ${budgetLine(plan.budget)}.`,
    ...(dropped ? [dropped] : []),
    ids,
    who,
    how,
  ].join('\n');
  const html = [
    `<p><b>Plan for job ${escapeHtml(input.jobId)}</b>: ${escapeHtml(plan.goal)}</p>`,
    `<ol>${plan.steps.map((s) => `<li>${escapeHtml(s)}</li>`).join('')}</ol>`,
    `<p>Tools: <code>${escapeHtml(tools)}</code>. Budget: ${escapeHtml(budgetLine(plan.budget))}.</p>`,
    ...(dropped ? [`<p>${escapeHtml(dropped)}</p>`] : []),
    `<p><code>${escapeHtml(ids)}</code><br>${escapeHtml(who)}<br>${escapeHtml(how)}</p>`,
  ].join('');
  return { body, html };
}

/** Answers longer than this are folded in the room (the whole answer is in the evidence store). */
export const ANSWER_FOLD_CHARS = 3000;

/** The final answer as the room shows it: plain text (cut when long) and HTML (folded when long). */
export function renderAnswer(input: {
  jobId: string;
  text: string;
  sha256: string;
  bytes: number;
  truncated: boolean;
}): { body: string; html: string } {
  const head = `Answer for job ${input.jobId}:`;
  const long = input.text.length > ANSWER_FOLD_CHARS || input.truncated;
  const note = `(${input.bytes} bytes; sha256 ${input.sha256.slice(0, 16)}; the whole answer is kept with the job's evidence)`;
  const body = long
    ? `${head}\n${input.text.slice(0, ANSWER_FOLD_CHARS)}…\n${note}`
    : `${head}\n${input.text}`;
  const text = escapeHtml(input.text).replace(/\n/g, '<br>');
  const html = long
    ? `<p><b>${escapeHtml(head)}</b></p><details><summary>${escapeHtml(input.text.slice(0, 120))}…</summary><p>${text}</p></details><p>${escapeHtml(note)}</p>`
    : `<p><b>${escapeHtml(head)}</b></p><p>${text}</p>`;
  return { body, html };
}

/** An approval card: the call in full where short, why the model wants it, what tainted the job. */
export function renderCard(input: {
  jobId: string;
  cardId: string;
  call: ToolCallRef;
  said: string | null;
  taint: { phase: string; turn: number; tool: string; callId: string } | null;
  expirySeconds: number;
}): { body: string; html: string } {
  const { call, cardId } = input;
  const args = call.argsPreview ?? call.argsShort;
  const minutes = Math.round(input.expirySeconds / 60);
  const why = input.said ? `Why (the model): ${input.said}` : 'The model gave no reason.';
  const taint = input.taint
    ? `The job's context holds untrusted text since ${input.taint.phase} turn ${input.taint.turn + 1} (output of ${input.taint.tool}).`
    : 'The policy asks for an approval of every call of this tool.';
  const how = `Reply in this thread: !approve ${cardId}, or !approve ${cardId} job (also later ${call.name} calls of this shape in this job), or !deny ${cardId} <reason>; or react ✅ / ❌. Expires in ${minutes} min.`;
  const hash = `arguments sha256 ${call.argsSha256}`;
  const head = `Approval needed for job ${input.jobId}, card ${cardId}: ${call.name} (${call.effect ?? 'write'})`;
  const body = [head, args, why, taint, hash, how].join('\n');
  const html = [
    `<p><b>${escapeHtml(head)}</b></p>`,
    args.length > 600
      ? `<details><summary>arguments (${args.length} characters)</summary><pre><code>${escapeHtml(args)}</code></pre></details>`
      : `<pre><code>${escapeHtml(args)}</code></pre>`,
    `<p>${escapeHtml(why)}<br>${escapeHtml(taint)}<br><code>${escapeHtml(hash)}</code></p>`,
    `<p>${escapeHtml(how)}</p>`,
  ].join('');
  return { body, html };
}
