// A sealed proof bundle as one page a reviewer reads: what was asked and by whom, the plan that
// was approved, every approval and refusal with who and when, each model turn and tool call in
// order with its hashes, the budget, the outcome, the policy, and whether the bundle verified
// when the page was made. The page is one self-contained HTML file: inline CSS, no script, no
// request to anywhere (its Content-Security-Policy says so too), so it can be mailed, archived
// or opened from disk.
//
// Everything the bundle says comes from people in a Matrix room or from a model, so every value
// is escaped: the `html` template below escapes whatever is put in it unless it is markup this
// module made. A bundle that is malformed (or not a bundle) still gets a page: it says FAILED and
// why, and shows what it cannot read as raw JSON. The same bundle, verification and options
// make the same page.
import { parseStrict } from '../policy/canonical.ts';
import { canonicalHash, verifyBundle, type BundleProblem, type BundleVerification } from './bundle.ts';
import type { Jwks } from './jws.ts';

/** The page's own policy: its styles, and images given as data: only. */
export const PAGE_CSP =
  "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'";

export interface PageOptions {
  /** When the page (and its verification) was made. */
  generatedAt: Date;
  /** The keys the bundle was verified against, in words, and their key ids. */
  keys: { source: string; kids: string[] };
  /** The digest the bundle is stored under (its file name), when known. */
  storedAs?: string | null;
  /** Links to the files beside the page, when it is served: the bundle, and its Clawsig export. */
  links?: { bundle?: string; clawsig?: string };
}

/**
 * Reads a bundle file's text and verifies it, as `clawgate verify` does; a file stored under a
 * digest (its name) must be the bundle of that digest. A file that does not parse is a failed
 * verification, not an error.
 */
export async function verifyBundleText(
  text: string,
  jwks: Jwks,
  storedAs?: string | null,
): Promise<{ input: unknown; verification: BundleVerification }> {
  let input: unknown;
  try {
    input = parseStrict(text, 'the bundle file');
  } catch (error) {
    const problem = error instanceof Error ? error.message : String(error);
    return { input: null, verification: { ok: false, digest: null, problems: [bundleProblem(problem)] } };
  }
  const verification = await verifyBundle(input, jwks);
  if (storedAs && verification.digest !== null && verification.digest !== storedAs) {
    verification.problems.push(
      bundleProblem(
        `the file is stored as ${storedAs}.json, but the digest of what it holds is ${verification.digest}: it is not the bundle of that name`,
      ),
    );
    verification.ok = false;
  }
  return { input, verification };
}

const bundleProblem = (problem: string): BundleProblem => ({ entry: null, type: 'bundle', problem });

// --- Markup that escapes by default ----------------------------------------------------------------

/** Markup made here: put into `html` as it is. Everything else put there is escaped. */
class Markup {
  readonly text: string;
  constructor(text: string) {
    this.text = text;
  }
}

type Content = Markup | string | number | boolean | null | undefined | Content[];

export function escapeHtml(text: string): string {
  return text
    .replace(/&/g, '&amp;')
    .replace(/</g, '&lt;')
    .replace(/>/g, '&gt;')
    .replace(/"/g, '&quot;')
    .replace(/'/g, '&#39;');
}

function contentText(value: Content): string {
  if (value instanceof Markup) return value.text;
  if (Array.isArray(value)) return value.map(contentText).join('');
  if (value === null || value === undefined || value === false) return '';
  return escapeHtml(String(value));
}

function html(strings: TemplateStringsArray, ...values: Content[]): Markup {
  let out = strings[0] ?? '';
  values.forEach((value, i) => {
    out += contentText(value) + (strings[i + 1] ?? '');
  });
  return new Markup(out);
}

// --- Reading what may not be there ---------------------------------------------------------------

type Rec = Record<string, unknown>;
const rec = (v: unknown): Rec | null =>
  typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Rec) : null;
const str = (o: Rec | null, key: string): string | null => {
  const v = o?.[key];
  return typeof v === 'string' ? v : null;
};
const num = (o: Rec | null, key: string): number | null => {
  const v = o?.[key];
  return typeof v === 'number' && Number.isFinite(v) ? v : null;
};
const list = (o: Rec | null, key: string): unknown[] => {
  const v = o?.[key];
  return Array.isArray(v) ? v : [];
};
const strings = (o: Rec | null, key: string): string[] =>
  list(o, key).filter((v): v is string => typeof v === 'string');

function json(value: unknown): string {
  try {
    return JSON.stringify(value, null, 2) ?? String(value);
  } catch {
    return String(value);
  }
}

/** The payload of a compact JWS or JWT, read without checking it (the verification does that). */
function jwsPayload(compact: string | null): Rec | null {
  const part = compact?.split('.')[1];
  if (!part) return null;
  try {
    return rec(JSON.parse(Buffer.from(part, 'base64url').toString('utf8')));
  } catch {
    return null;
  }
}

/** A time as a reviewer reads it, in UTC: from epoch milliseconds, epoch seconds or an ISO string. */
function when(value: number | string | null, unit: 'ms' | 's' = 'ms'): string | null {
  if (value === null) return null;
  const date = typeof value === 'number' ? new Date(unit === 's' ? value * 1000 : value) : new Date(value);
  if (Number.isNaN(date.getTime())) return typeof value === 'string' ? value : null;
  return `${date.toISOString().slice(0, 19).replace('T', ' ')} UTC`;
}

const turnName = (phase: string | null, turn: number | null): string =>
  `${phase ?? '?'} turn ${turn === null ? '?' : turn + 1}`;

// --- What the page shows ---------------------------------------------------------------------------

interface Entry {
  index: number;
  type: string;
  body: unknown;
}

interface Refusal {
  index: number;
  what: Content;
  reason: string;
  code: string | null;
}

/** One item of "what happened": its heading, its facts, and whether it is a refusal. */
interface Shown {
  title: Content;
  facts?: Array<[string, Content]>;
  more?: Content;
  refusal?: { reason: string; code: string | null } | undefined;
  tone?: 'ok' | 'note';
}

function entriesOf(input: unknown): Entry[] {
  return list(rec(input), 'entries').map((e, index) => {
    const entry = rec(e);
    return { index, type: str(entry, 'type') ?? '(not an entry)', body: entry ? entry['body'] : e };
  });
}

function firstBody(entries: Entry[], type: string): Rec | null {
  return rec(entries.find((e) => e.type === type)?.body);
}

const hash = (value: string | null): Markup => html`<code class="hash">${value ?? '-'}</code>`;

function factsTable(facts: Array<[string, Content]>): Markup {
  return html`<dl class="facts">
    ${facts.map(
      ([k, v]) =>
        html`<dt>${k}</dt>
          <dd>${v}</dd>`,
    )}
  </dl>`;
}

function raw(value: unknown, label = 'The entry as it is in the bundle (JSON)'): Markup {
  return html`<details class="raw">
    <summary>${label}</summary>
    <pre>${json(value)}</pre>
  </details>`;
}

/** An entry as a reviewer reads it; what it cannot read is shown as it is. */
function showEntry(entry: Entry): Shown {
  const b = rec(entry.body);
  switch (entry.type) {
    case 'job':
      return { title: html`The job: ${str(b, 'workflow_id')}`, facts: [['run', str(b, 'run_id')]] };
    case 'request':
      return { title: html`The request by ${str(b, 'sender')} (shown above)` };
    case 'policy':
      return { title: html`The policy in force was pinned: ${hash(str(b, 'hash'))} (shown below)` };
    case 'workspace':
      return { title: html`The job's workspace was made from commit ${hash(str(b, 'commit'))}` };
    case 'plan':
      return { title: html`The plan was drafted: ${hash(safeHash(entry.body))} (shown above)` };
    case 'approval_attempt':
      return showApproval(b);
    case 'cancel_request': {
      const accepted = b?.['accepted'] === true;
      const reason = str(b, 'reason') ?? '';
      return {
        title: html`${str(b, 'sender')} asked to cancel the job: ${accepted ? 'accepted' : 'not accepted'}`,
        facts: [['at', when(num(b, 'originServerTs'))]],
        refusal: accepted ? undefined : { reason, code: null },
        tone: 'note',
      };
    }
    case 'token':
      return showToken(b);
    case 'model_receipt':
      return showReceipt(b);
    case 'model_turn':
      return showTurn(b);
    case 'tool_record':
      return showToolRecord(b);
    case 'taint':
      return {
        title: html`From here on the job's context holds text that is not the requester's:
        ${str(b, 'source') ?? 'tool output'}`,
        facts: [
          ['where', `${turnName(str(b, 'phase'), num(b, 'turn'))}, call ${str(b, 'call_id') ?? '?'}`],
          ['so', 'calls with side effects after this wait for a person to approve each of them'],
        ],
        tone: 'note',
      };
    case 'call_card':
      return {
        title: html`Approval card ${str(b, 'card_id')} posted: ${str(b, 'tool')} call ${str(b, 'call_id')}`,
        facts: [
          ['asked by', turnName(str(b, 'phase'), num(b, 'turn'))],
          ['effect, gate', `${str(b, 'effect') ?? '?'}, ${str(b, 'gate') ?? '?'}`],
          ['arguments SHA-256', hash(str(b, 'args_sha256'))],
          ['expires', when(num(b, 'expires_at'))],
          ['card event', str(b, 'event_id')],
        ],
        more:
          str(b, 'preview') === null
            ? null
            : html`<details open>
                <summary>What the card showed</summary>
                <pre>${str(b, 'preview')}</pre>
              </details>`,
      };
    case 'call_decision': {
      const accepted = b?.['accepted'] === true;
      const scope = str(b, 'scope') === 'job' ? ' (for the rest of the job)' : '';
      return {
        title: html`${str(b, 'sender')}: ${str(b, 'decision')} card ${str(b, 'card_id') ?? '?'}${scope} —
        ${accepted ? 'counted' : 'not counted'}`,
        facts: [
          ['at', when(num(b, 'origin_server_ts'))],
          ['by', str(b, 'via') === 'reaction' ? 'a reaction' : 'a command'],
          ['reason', str(b, 'reason')],
        ],
        refusal: accepted ? undefined : { reason: str(b, 'reason') ?? '', code: str(b, 'code') },
        tone: 'ok',
      };
    }
    case 'card_outcome': {
      const state = str(b, 'state');
      const reason = str(b, 'reason') ?? '';
      return {
        title: html`Card ${str(b, 'card_id')}: ${state}${str(b, 'by') ? html` by ${str(b, 'by')}` : ''}`,
        facts: reason ? [['reason', reason]] : [],
        refusal: state === 'approved' ? undefined : { reason: reason || String(state), code: null },
        tone: 'ok',
      };
    }
    case 'budget':
      return {
        title: html`The budget was
        closed${str(b, 'exhausted') ? html`: ${str(b, 'exhausted')} exhausted` : ''} (shown below)`,
      };
    case 'answer':
      return {
        title: html`The answer, from execution turn ${(num(b, 'turn') ?? -1) + 1}: ${num(b, 'bytes')} bytes`,
        facts: [['SHA-256', hash(str(b, 'sha256'))]],
        tone: 'ok',
      };
    case 'gateway_receipts':
      return showGatewayReceipts(b);
    case 'outcome':
      return {
        title: html`Outcome: ${str(b, 'status')}`,
        facts: [['reason', html`<span class="pre">${str(b, 'reason')}</span>`]],
        tone: 'ok',
      };
    default:
      return {
        title: html`An entry of type ${entry.type} that this page does not know`,
        more: raw(entry.body),
      };
  }
}

function safeHash(value: unknown): string | null {
  try {
    return canonicalHash(value);
  } catch {
    return null;
  }
}

function showApproval(b: Rec | null): Shown {
  const accepted = b?.['accepted'] === true;
  const decision = str(b, 'decision') ?? '?';
  const reason = str(b, 'reason') ?? '';
  const shown = str(rec(b?.['content']), 'shown');
  return {
    title: html`${str(b, 'sender')}: ${decision === 'deny' ? '!deny' : '!approve'} —
    ${accepted ? 'counted' : 'not counted'}`,
    facts: [
      ['at', when(num(b, 'originServerTs'))],
      ['reason', reason],
      ...(shown !== null ? ([['the message showed', shown]] as Array<[string, Content]>) : []),
      ['event', str(b, 'eventId')],
    ],
    refusal: accepted ? undefined : { reason, code: str(b, 'code') },
    tone: 'ok',
  };
}

/** The job's receipts in the Clawsig form (gateway receipt envelopes), added when it was sealed. */
function showGatewayReceipts(b: Rec | null): Shown {
  const envelopes = list(b, 'envelopes').map(rec);
  const refused = str(b, 'refused');
  const signers = [...new Set(envelopes.map((e) => str(e, 'signer_did')).filter((d) => d !== null))];
  return {
    title: refused
      ? html`The model calls' receipts in the Clawsig form could not be had: ${refused}`
      : html`The model calls' receipts in the Clawsig form: ${envelopes.length} gateway receipt(s)`,
    facts: [
      [
        'signed by',
        signers.length ? html`${signers.map((d, i) => html`${i ? ', ' : ''}<code>${d}</code>`)}` : '-',
      ],
      [
        'receipts',
        envelopes.length
          ? html`<ul class="calls">
              ${envelopes.map((e) => {
                const p = rec(e?.['payload']);
                return html`<li>
                  <code>${str(p, 'receipt_id')}</code> ${str(p, 'model')} at ${when(str(p, 'timestamp'))},
                  payload SHA-256 (base64url) <code class="hash">${str(e, 'payload_hash_b64u')}</code>
                </li>`;
              })}
            </ul>`
          : 'none',
      ],
    ],
    tone: 'note',
  };
}

function showToken(b: Rec | null): Shown {
  const claims = jwsPayload(str(b, 'jwt'));
  const purpose = str(b, 'purpose');
  const scope = rec(claims?.['scope']);
  const approval = rec(claims?.['approval']);
  const call = rec(claims?.['call']);
  const words: Record<string, string> = {
    planning: 'A planning token was minted (read-only tools, to draft the plan)',
    execution: 'The execution token was minted: the plan is approved',
    call: 'A call token was minted for one approved call',
  };
  return {
    title: (purpose && words[purpose]) ?? `A token (${purpose ?? '?'}) was minted`,
    facts: [
      ['token id', html`<code>${str(claims, 'jti')}</code>`],
      ['valid', `${when(num(claims, 'iat'), 's') ?? '?'} to ${when(num(claims, 'exp'), 's') ?? '?'}`],
      ['tools', strings(scope, 'tools').join(', ') || '-'],
      ...(approval
        ? ([['approved by', strings(approval, 'approvers').join(', ')]] as Array<[string, Content]>)
        : []),
      ...(call
        ? ([['for', `card ${str(call, 'card_id') ?? '?'}, call ${str(call, 'call_id') ?? '?'}`]] as Array<
            [string, Content]
          >)
        : []),
    ],
  };
}

function showReceipt(b: Rec | null): Shown {
  const p = jwsPayload(str(b, 'jws'));
  const refusal = rec(p?.['refusal']);
  const status = str(p, 'status');
  return {
    title: html`The model proxy signed receipt ${str(p, 'receipt_id')}: ${status ?? '?'}`,
    facts: [
      ['model', str(p, 'model')],
      ['at', when(str(p, 'started_at'))],
      ['HTTP status', num(p, 'http_status')],
      ['request SHA-256', hash(str(p, 'request_sha256'))],
      ['response SHA-256', hash(str(p, 'response_sha256'))],
    ],
    refusal:
      refusal || status === 'refused'
        ? { reason: str(refusal, 'reason') ?? 'the proxy refused the call', code: str(refusal, 'code') }
        : undefined,
  };
}

function showTurn(b: Rec | null): Shown {
  const finish = str(b, 'finish');
  const error = rec(b?.['error']);
  const usage = rec(b?.['usage']);
  const calls = list(b, 'tool_calls').map(rec);
  const response = str(b, 'response');
  const said =
    finish === 'tool_calls'
      ? `asked for ${calls.length} tool call(s)`
      : finish === 'answer'
        ? 'answered'
        : 'the call failed';
  return {
    title: html`Model, ${turnName(str(b, 'phase'), num(b, 'turn'))}: ${said}`,
    facts: [
      ['receipt', html`<code>${str(b, 'receipt_id') ?? 'none'}</code>`],
      ['response SHA-256', hash(str(b, 'response_sha256'))],
      ['tokens', num(usage, 'total_tokens') ?? '-'],
      ...(calls.length
        ? ([
            [
              'tool calls',
              html`<ul class="calls">
                ${calls.map(
                  (c) =>
                    html`<li>
                      <strong>${str(c, 'name')}</strong> <code>${str(c, 'id')}</code> arguments SHA-256
                      ${hash(str(c, 'args_sha256'))}
                    </li>`,
                )}
              </ul>`,
            ],
          ] as Array<[string, Content]>)
        : []),
    ],
    more:
      response === null
        ? null
        : html`<details>
            <summary>The model's response, as received</summary>
            <pre>${response}</pre>
          </details>`,
    refusal:
      finish === 'error'
        ? {
            reason: `${str(error, 'message') ?? 'the model call failed'}${num(b, 'http_status') ? ` (HTTP ${num(b, 'http_status')})` : ''}`,
            code: str(error, 'code'),
          }
        : undefined,
  };
}

function showToolRecord(b: Rec | null): Shown {
  const denial = rec(b?.['denial']);
  const step = num(b, 'step');
  const tool = str(b, 'tool') ?? '?';
  const allowedBy = str(rec(b?.['allowed_by']), 'card_id');
  const where =
    step !== null
      ? `step ${step + 1}`
      : `${turnName(str(b, 'phase'), num(b, 'turn'))}, call ${str(b, 'call_id') ?? '?'}`;
  const exit = num(b, 'exit_status');
  const ran = denial
    ? 'refused, it did not run'
    : b?.['timed_out'] === true
      ? 'ran, and was stopped at its time limit'
      : exit === null
        ? 'ran'
        : `ran, exit ${exit}`;
  return {
    title: html`Tool <strong>${tool}</strong>, ${where}: ${ran}`,
    facts: [
      ['at', when(str(b, 'started_at'))],
      ['arguments SHA-256', hash(str(b, 'args_sha256'))],
      ['output SHA-256', hash(str(b, 'output_sha256'))],
      ...(str(b, 'effect') || str(b, 'gate')
        ? ([['effect, gate', `${str(b, 'effect') ?? '?'}, ${str(b, 'gate') ?? '?'}`]] as Array<
            [string, Content]
          >)
        : []),
      ...(str(b, 'card_id')
        ? ([['approved on', `card ${str(b, 'card_id')}`]] as Array<[string, Content]>)
        : allowedBy
          ? ([['allowed by', `card ${allowedBy}, approved for the job`]] as Array<[string, Content]>)
          : []),
      ...(num(b, 'duration_ms') !== null
        ? ([['took', `${Math.round(num(b, 'duration_ms') ?? 0)} ms`]] as Array<[string, Content]>)
        : []),
      ...(str(b, 'sandbox_profile')
        ? ([['sandbox', str(b, 'sandbox_profile')]] as Array<[string, Content]>)
        : []),
    ],
    refusal: denial ? { reason: str(denial, 'reason') ?? '', code: str(denial, 'code') } : undefined,
  };
}

// --- The sections ----------------------------------------------------------------------------------

function verdictBanner(v: BundleVerification): Markup {
  return v.ok
    ? html`<div class="verdict verified" id="verdict">
        <strong>VERIFIED</strong> every signature, hash and binding of this bundle checks out.
      </div>`
    : html`<div class="verdict failed" id="verdict">
        <strong>Verification FAILED</strong> ${v.problems.length} problem(s): this bundle is not evidence of
        what it says.
        <ul>
          ${v.problems.map(problemItem)}
        </ul>
      </div>`;
}

function problemItem(p: BundleProblem): Markup {
  return html`<li>
    ${p.entry === null ? 'the bundle' : html`<a href="#entry-${p.entry}">entry ${p.entry}</a> (${p.type})`}:
    ${p.problem}
  </li>`;
}

interface Facts {
  entries: Entry[];
  request: Rec | null;
  outcome: Rec | null;
  /** Who approved the plan, and who approved calls on their cards. */
  approvers: string[];
  callApprovers: string[];
  approvedAt: string | null;
  workStarted: string | null;
  sealedAt: string | null;
  refusals: Refusal[];
}

function factsOf(input: unknown, entries: Entry[], shown: Shown[]): Facts {
  const approvals = entries
    .filter((e) => e.type === 'approval_attempt')
    .map((e) => rec(e.body))
    .filter((b) => b?.['accepted'] === true && str(b, 'decision') !== 'deny');
  const callApprovals = entries
    .filter((e) => e.type === 'call_decision')
    .map((e) => rec(e.body))
    .filter((b) => b?.['accepted'] === true && str(b, 'decision') === 'approve');
  const senders = (list: Array<Rec | null>): string[] => [
    ...new Set(list.map((b) => str(b, 'sender')).filter((s) => s !== null)),
  ];
  const lastApproval = approvals.at(-1) ?? null;
  const firstRun = entries.find((e) => e.type === 'tool_record' && rec(e.body)?.['denial'] === null);
  const seal = jwsPayload(str(rec(input), 'seal'));
  const refusals: Refusal[] = [];
  shown.forEach((s, index) => {
    if (!s.refusal) return;
    refusals.push({ index, what: s.title, reason: s.refusal.reason, code: s.refusal.code });
  });
  return {
    entries,
    request: firstBody(entries, 'request'),
    outcome: rec(entries.findLast((e) => e.type === 'outcome')?.body),
    approvers: senders(approvals),
    callApprovers: senders(callApprovals),
    approvedAt: when(num(lastApproval, 'originServerTs')),
    workStarted: when(str(rec(firstRun?.body), 'started_at')),
    sealedAt: when(str(seal, 'sealed_at')),
    refusals,
  };
}

function summaryBox(input: unknown, f: Facts, v: BundleVerification, opts: PageOptions): Markup {
  const status = str(f.outcome, 'status') ?? 'unknown';
  const job = rec(rec(input)?.['job']);
  return html`<section class="summary" aria-label="Summary">
    <div class="outcome outcome-${status.replace(/[^a-z_]/g, '')}">
      <span class="label">Outcome</span> <strong id="outcome">${status}</strong>
      <span class="reason">${str(f.outcome, 'reason')}</span>
      ${v.ok ? '' : html`<div class="bad">This is what the bundle says; it does not verify (see above).</div>`}
    </div>
    ${factsTable([
      ['Verification', v.ok ? html`<span class="ok">verified</span>` : html`<span class="bad">FAILED</span>`],
      [
        'Requested by',
        html`<span class="who" id="requester">${str(f.request, 'sender') ?? 'unknown'}</span>`,
      ],
      ['Room', str(f.request, 'room_id')],
      [
        'Plan approved by',
        f.approvers.length
          ? html`<span id="approvers"
              >${f.approvers.map((a, i) => html`${i ? ', ' : ''}<span class="who">${a}</span>`)}</span
            >`
          : 'nobody',
      ],
      ...(f.callApprovers.length
        ? ([
            [
              'Calls approved by',
              html`${f.callApprovers.map((a, i) => html`${i ? ', ' : ''}<span class="who">${a}</span>`)}`,
            ],
          ] as Array<[string, Content]>)
        : []),
      ['Plan approved', f.approvedAt ?? '-'],
      ['Work started', f.workStarted ?? '-'],
      ['Sealed', f.sealedAt ?? '-'],
      [
        'Refusals',
        f.refusals.length
          ? html`<a href="#refusals">${f.refusals.length} refused or denied (listed below)</a>`
          : 'none',
      ],
      ['Job', html`<code>${str(job, 'workflow_id')}</code>`],
      ['Bundle digest', hash(v.digest ?? opts.storedAs ?? null)],
    ])}
  </section>`;
}

function requestSection(f: Facts): Markup {
  const r = f.request;
  return html`<section id="request">
    <h2>The request</h2>
    <blockquote class="request-text" id="request-text">${str(r, 'text') ?? '(no request text)'}</blockquote>
    ${factsTable([
      ['Asked by', html`<span class="who">${str(r, 'sender')}</span>`],
      ['Room', str(r, 'room_id')],
      ['Message', html`<code>${str(r, 'event_id')}</code>`],
    ])}
  </section>`;
}

function planSection(entries: Entry[]): Markup {
  const entry = entries.find((e) => e.type === 'plan');
  if (!entry)
    return html`<section id="plan">
      <h2>The plan</h2>
      <p>There is no plan: the job ended before one was made.</p>
    </section>`;
  const p = rec(entry.body);
  const head = html`<p>Plan hash ${hash(safeHash(entry.body))} (what the approvers approved).</p>`;
  if (str(p, 'mode') === 'agent') {
    const budget = rec(p?.['budget']);
    return html`<section id="plan">
      <h2>The plan (an agent job)</h2>
      ${head}
      ${factsTable([
        ['Goal', str(p, 'goal')],
        [
          'Steps',
          html`<ol class="plan-steps">
            ${strings(p, 'steps').map((s) => html`<li>${s}</li>`)}
          </ol>`,
        ],
        ['Tools it may use', strings(p, 'tools').join(', ') || 'none'],
        [
          'Budget',
          `${num(budget, 'model_turns') ?? '?'} model turns, ${num(budget, 'tool_calls') ?? '?'} tool calls, ${num(budget, 'model_tokens') ?? '?'} model tokens, ${num(budget, 'wall_seconds') ?? '?'} s`,
        ],
      ])}
    </section>`;
  }
  const steps = list(p, 'steps').map(rec);
  return html`<section id="plan">
    <h2>The plan (fixed steps)</h2>
    ${head} ${str(p, 'summary') ? html`<p class="plan-summary">${str(p, 'summary')}</p>` : ''}
    <ol class="plan-steps">
      ${steps.map((s) => html`<li><strong>${str(s, 'tool')}</strong> <code class="args">${json(s?.['args'])}</code></li>`)}
    </ol>
    ${steps.length === 0 ? raw(entry.body, 'The plan as it is in the bundle (JSON)') : ''}
  </section>`;
}

function approvalsSection(entries: Entry[]): Markup {
  const attempts = entries.filter((e) => e.type === 'approval_attempt');
  if (attempts.length === 0) {
    return html`<section id="approvals">
      <h2>Approvals</h2>
      <p>No one answered the plan.</p>
    </section>`;
  }
  const rows = attempts.map((e) => {
    const b = rec(e.body);
    const accepted = b?.['accepted'] === true;
    return html`<tr class="${accepted ? 'counted' : 'refusal'}">
      <td>${when(num(b, 'originServerTs'))}</td>
      <td class="who">${str(b, 'sender')}</td>
      <td>${str(b, 'decision')}</td>
      <td>${accepted ? 'yes' : html`<strong>no</strong>`}</td>
      <td class="reason">
        ${str(b, 'reason')}${str(b, 'code') ? html` <code>${str(b, 'code')}</code>` : ''}
      </td>
      <td><a href="#entry-${e.index}">${e.index}</a></td>
    </tr>`;
  });
  return html`<section id="approvals">
    <h2>Approvals of the plan</h2>
    <p>
      Every answer to the plan is kept, counted or not; only an approver on the policy's list, in the job's
      room, for this plan, counts.
    </p>
    <table>
      <thead>
        <tr>
          <th>When</th>
          <th>Who</th>
          <th>Decision</th>
          <th>Counted</th>
          <th>Why</th>
          <th>Entry</th>
        </tr>
      </thead>
      <tbody>
        ${rows}
      </tbody>
    </table>
  </section>`;
}

function refusalsSection(f: Facts): Markup {
  if (f.refusals.length === 0) {
    return html`<section id="refusals">
      <h2>Refused and denied</h2>
      <p>Nothing was refused or denied.</p>
    </section>`;
  }
  return html`<section id="refusals">
    <h2>Refused and denied (${f.refusals.length})</h2>
    <ul class="refusals">
      ${f.refusals.map(
        (r) =>
          html`<li class="refusal">
            <a href="#entry-${r.index}">entry ${r.index}</a>: ${r.what}.
            <span class="refusal-reason">${r.reason}</span>${r.code ? html` <code>${r.code}</code>` : ''}
          </li>`,
      )}
    </ul>
  </section>`;
}

function timelineSection(entries: Entry[], shown: Shown[], v: BundleVerification): Markup {
  const problems = new Map<number, string[]>();
  for (const p of v.problems)
    if (p.entry !== null) problems.set(p.entry, [...(problems.get(p.entry) ?? []), p.problem]);
  const items = entries.map((e, i) => {
    const s = shown[i] as Shown;
    const bad = problems.get(e.index);
    const classes = [
      'entry',
      `entry-${e.type.replace(/[^a-z_]/g, '')}`,
      s.refusal ? 'refusal' : '',
      s.tone ? `tone-${s.tone}` : '',
      bad ? 'problem' : '',
    ]
      .filter(Boolean)
      .join(' ');
    return html`<li id="entry-${e.index}" class="${classes}">
      <div class="entry-head"><span class="idx">${e.index}</span> ${s.title}</div>
      ${s.refusal ? html`<div class="why"><strong>Refused:</strong> <span class="refusal-reason">${s.refusal.reason}</span>${s.refusal.code ? html` <code>${s.refusal.code}</code>` : ''}</div>` : ''}
      ${s.facts?.length ? factsTable(s.facts) : ''}${s.more ?? ''}
      ${
        bad
          ? html`<div class="problem-text"><strong>Does not verify:</strong> ${bad.join('; ')}</div>
              ${raw(e.body)}`
          : ''
      }
    </li>`;
  });
  return html`<section id="timeline">
    <h2>What happened, in order</h2>
    <p>
      Each entry of the bundle, as sealed. Hashes are SHA-256: of a tool call's arguments in canonical JSON,
      of the exact bytes a tool printed or a model answered. Receipts are signed by the model proxy for each
      model call.
    </p>
    <ol class="timeline">
      ${items}
    </ol>
  </section>`;
}

function budgetSection(entries: Entry[]): Markup {
  const b = firstBody(entries, 'budget');
  if (!b) return html``;
  const limits = rec(b['limits']);
  const used = rec(b['used']);
  const exhausted = str(b, 'exhausted');
  const rows = (['model_turns', 'tool_calls', 'model_tokens', 'wall_seconds'] as const).map(
    (k) =>
      html`<tr class="${exhausted === k ? 'refusal' : ''}">
        <td>${k.replace('_', ' ')}</td>
        <td>${num(used, k) ?? '-'}</td>
        <td>${num(limits, k) ?? '-'}</td>
      </tr>`,
  );
  return html`<section id="budget">
    <h2>Budget</h2>
    <table>
      <thead>
        <tr>
          <th>What</th>
          <th>Used</th>
          <th>Limit</th>
        </tr>
      </thead>
      <tbody>
        ${rows}
      </tbody>
    </table>
    <p>${exhausted ? html`<strong>Stopped: ${exhausted} exhausted.</strong>` : 'Within the budget.'}</p>
  </section>`;
}

function answerText(entries: Entry[]): string | null {
  const answer = firstBody(entries, 'answer');
  if (!answer) return null;
  const turn = entries
    .map((e) => rec(e.body))
    .find(
      (b) => str(b, 'phase') === 'execution' && num(b, 'turn') === num(answer, 'turn') && str(b, 'response'),
    );
  try {
    const completion = rec(JSON.parse(str(turn ?? null, 'response') ?? 'null'));
    const message = rec(rec(list(completion, 'choices')[0])?.['message']);
    return str(message, 'content');
  } catch {
    return null;
  }
}

function outcomeSection(f: Facts): Markup {
  const text = answerText(f.entries);
  return html`<section id="result">
    <h2>Outcome</h2>
    <p class="outcome-line"><strong>${str(f.outcome, 'status') ?? 'unknown'}</strong></p>
    <pre class="outcome-reason">${str(f.outcome, 'reason')}</pre>
    ${
      text !== null
        ? html`<h3>The answer posted in the thread</h3>
            <pre class="answer">${text}</pre>`
        : ''
    }
  </section>`;
}

function policySection(entries: Entry[]): Markup {
  const p = firstBody(entries, 'policy');
  if (!p)
    return html`<section id="policy">
      <h2>The policy</h2>
      <p>The bundle holds no policy.</p>
    </section>`;
  const doc = rec(p['document']);
  const approval = rec(rec(doc?.['matrix'])?.['approval']);
  const tools = rec(rec(doc?.['execution'])?.['tools']);
  return html`<section id="policy">
    <h2>The policy</h2>
    <p>
      The work policy in force when the job started, named by the SHA-256 of its canonical JSON (RFC 8785):
      ${hash(str(p, 'hash'))}
    </p>
    ${factsTable([
      ['Description', str(doc, 'description') ?? '-'],
      ['Rooms', strings(rec(doc?.['matrix']), 'rooms_allowlist').join(', ') || '-'],
      ['Requesters', strings(rec(doc?.['matrix']), 'requesters_allowlist').join(', ') || '-'],
      ['Approvers', strings(approval, 'approver_user_ids_allowlist').join(', ') || '-'],
      ['Tools allowed', strings(tools, 'allow').join(', ') || '-'],
      ['Tools denied', strings(tools, 'deny').join(', ') || '-'],
    ])}
    <pre class="policy-json">${json(p['document'])}</pre>
  </section>`;
}

function verificationSection(v: BundleVerification, opts: PageOptions): Markup {
  return html`<section id="verification">
    <h2>Verification</h2>
    <p class="${v.ok ? 'ok' : 'bad'}">
      <strong>${v.ok ? 'Verified' : 'FAILED'}</strong> when this page was made,
      ${when(opts.generatedAt.toISOString())}, against ${opts.keys.source}.
    </p>
    <p>
      Checked: the seal (the orchestrator's signature over every entry's hash and the Merkle root), each entry
      against what was sealed, each token's and receipt's signature, the receipts' chain, that every token is
      this job's and bound to the approved plan and policy, that each tool call was asked for by a receipted
      model turn (or was a step of the approved plan), and that each call with side effects after untrusted
      text entered the job ran only with a person's approval of that exact call.
    </p>
    ${
      v.ok
        ? ''
        : html`<h3>Problems</h3>
            <ul class="problems">
              ${v.problems.map(problemItem)}
            </ul>`
    }
    ${factsTable([
      [
        'Key ids',
        opts.keys.kids.length
          ? html`${opts.keys.kids.map((k, i) => html`${i ? ', ' : ''}<code>${k}</code>`)}`
          : 'none',
      ],
      ['Digest of the bundle', hash(v.digest)],
      ...(opts.storedAs
        ? ([['Stored as', html`<code>${opts.storedAs}.json</code>`]] as Array<[string, Content]>)
        : []),
    ])}
  </section>`;
}

function offlineSection(v: BundleVerification, opts: PageOptions): Markup {
  const name = `${v.digest ?? opts.storedAs ?? '<digest>'}.json`;
  const links = opts.links;
  return html`<section id="offline">
    <h2>How to verify this offline</h2>
    <p>
      This page is a reading of the bundle; the bundle itself is the evidence. To check it yourself, with
      nothing but the bundle file and the operator's public keys:
    </p>
    <pre class="commands">
# the operator's public keys (published with: clawgate keys jwks &gt; keys.json)
clawgate verify ${name} --jwks keys.json

# the same evidence as a Clawsig v1 file (written beside the bundle when it was sealed)
clawgate export clawsig ${name}
# checked by the public Clawsig verifier, with the gateway DID of: clawgate keys publish
GATEWAY_RECEIPT_SIGNER_DIDS=&lt;gateway did&gt; clawverify verify proof-bundle --input ${name.replace(/\.json$/, '.clawsig.json')}
# or by clawgate, by the same rules, and against the bundle it came from
clawgate clawsig verify ${name.replace(/\.json$/, '.clawsig.json')} --bundle ${name}</pre>
    <p>
      <code>clawgate verify</code> prints <code>ok</code> and the bundle digest,
      <code>${v.digest ?? '-'}</code>: the SHA-256 of the bundle's canonical JSON (RFC 8785), which is also
      its file name. The Clawsig v1 file that <code>clawgate export clawsig</code> writes is checked by the
      public Clawsig verifier, <code>clawverify</code>, against the agent and gateway DIDs that
      <code>clawgate keys publish</code> prints: a PASS means the file is intact and signed by the agent DID
      it names, so compare that DID with the published one (the verifier has no option to pin it).
    </p>
    ${
      links?.bundle || links?.clawsig
        ? html`<p>
            Files:
            ${links.bundle ? html`<a href="${links.bundle}">the bundle (JSON)</a>` : ''}${links.bundle && links.clawsig ? ' · ' : ''}${links.clawsig ? html`<a href="${links.clawsig}">its Clawsig export</a>` : ''}
          </p>`
        : ''
    }
  </section>`;
}

const STYLE = `
:root { color-scheme: light; --bad: #b3261e; --bad-bg: #fdecea; --ok: #1b6e20; --ok-bg: #e8f5e9; --line: #d0d7de; --muted: #57606a; }
* { box-sizing: border-box; }
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; margin: 0 auto; max-width: 1100px; padding: 1.5rem; color: #1f2328; background: #fff; }
h1 { font-size: 1.5rem; margin: 0 0 1rem; } h2 { font-size: 1.2rem; margin: 2rem 0 .6rem; border-bottom: 1px solid var(--line); padding-bottom: .3rem; } h3 { font-size: 1rem; }
code, pre, .hash { font-family: ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: .85em; }
.hash { word-break: break-all; }
pre { background: #f6f8fa; border: 1px solid var(--line); border-radius: 6px; padding: .7rem; overflow-x: auto; white-space: pre-wrap; word-break: break-word; }
.pre { white-space: pre-wrap; }
.verdict { border-radius: 8px; padding: 1rem 1.2rem; font-size: 1.1rem; margin-bottom: 1rem; }
.verdict.verified { background: var(--ok-bg); border: 2px solid var(--ok); color: var(--ok); }
.verdict.failed { background: var(--bad-bg); border: 2px solid var(--bad); color: var(--bad); }
.verdict ul { font-size: .95rem; color: #1f2328; }
.summary { border: 1px solid var(--line); border-radius: 8px; padding: 1rem 1.2rem; background: #fbfcfd; }
.outcome { font-size: 1.2rem; margin-bottom: .6rem; } .outcome .label { color: var(--muted); font-size: .9rem; text-transform: uppercase; letter-spacing: .05em; }
.outcome .reason { color: var(--muted); font-size: .95rem; white-space: pre-wrap; }
.outcome-succeeded strong { color: var(--ok); }
.outcome-failed strong, .outcome-denied strong, .outcome-refused strong, .outcome-timed_out strong, .outcome-cancelled strong, .outcome-budget_exhausted strong { color: var(--bad); }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: .2rem 1rem; margin: .4rem 0; }
dl.facts dt { color: var(--muted); } dl.facts dd { margin: 0; min-width: 0; }
.ok { color: var(--ok); } .bad { color: var(--bad); }
.who { font-weight: 600; }
blockquote.request-text { margin: 0 0 .6rem; padding: .7rem 1rem; border-left: 4px solid #8c959f; background: #f6f8fa; white-space: pre-wrap; word-break: break-word; }
table { border-collapse: collapse; width: 100%; } th, td { border: 1px solid var(--line); padding: .35rem .5rem; text-align: left; vertical-align: top; }
th { background: #f6f8fa; }
tr.refusal td { background: var(--bad-bg); }
ol.timeline { list-style: none; padding: 0; } ol.timeline > li { border: 1px solid var(--line); border-left: 4px solid #8c959f; border-radius: 6px; padding: .5rem .8rem; margin: .5rem 0; }
ol.timeline > li.tone-ok { border-left-color: var(--ok); } ol.timeline > li.tone-note { border-left-color: #9a6700; }
ol.timeline > li.refusal { border-left-color: var(--bad); background: var(--bad-bg); }
ol.timeline > li.problem { outline: 2px dashed var(--bad); }
.idx { display: inline-block; min-width: 2.2em; color: var(--muted); font-variant-numeric: tabular-nums; }
.why, .problem-text { color: var(--bad); margin: .3rem 0; }
ul.refusals li.refusal { background: var(--bad-bg); border-left: 4px solid var(--bad); padding: .3rem .6rem; margin: .3rem 0; list-style: none; }
ul.refusals { padding: 0; }
.refusal-reason { font-weight: 600; }
details summary { cursor: pointer; color: var(--muted); }
footer { margin-top: 2rem; color: var(--muted); font-size: .85rem; }
@media print { details { display: block; } body { max-width: none; } }
`;

/**
 * The page for a bundle (`input`: the bundle file's JSON, valid or not) and its verification.
 * Deterministic: the same input, verification and options make the same page.
 */
export function renderBundlePage(
  input: unknown,
  verification: BundleVerification,
  opts: PageOptions,
): string {
  const entries = entriesOf(input);
  const shown = entries.map((entry) => {
    try {
      return showEntry(entry);
    } catch (error) {
      return {
        title: html`Entry of type ${entry.type} that this page could not read
        (${error instanceof Error ? error.message : String(error)})`,
        more: raw(entry.body),
      } satisfies Shown;
    }
  });
  const f = factsOf(input, entries, shown);
  const status = str(f.outcome, 'status') ?? 'unknown';
  const jobName = str(f.request, 'text')?.slice(0, 60) ?? 'a job';
  const body =
    entries.length === 0
      ? html`<section>
          <h2>The file</h2>
          <p>This file holds no entries a page can show.</p>
          ${raw(input, 'What the file holds (JSON)')}
        </section>`
      : html`${requestSection(f)}${planSection(entries)}${approvalsSection(entries)}${refusalsSection(f)}${outcomeSection(f)}${budgetSection(entries)}${timelineSection(entries, shown, verification)}${policySection(entries)}`;
  const page = html`<!doctype html>
    <html lang="en">
      <head>
        <meta charset="utf-8" />
        <meta http-equiv="Content-Security-Policy" content="${PAGE_CSP}" />
        <meta name="referrer" content="no-referrer" />
        <meta name="viewport" content="width=device-width, initial-scale=1" />
        <title>${verification.ok ? 'Verified' : 'FAILED'}: ${status}: ${jobName} (clawgate evidence)</title>
        <style>
          ${new Markup(STYLE)}
        </style>
      </head>
      <body>
        <header><h1>Evidence of a clawgate job</h1></header>
        ${verdictBanner(verification)} ${summaryBox(input, f, verification, opts)} ${body}
        ${verificationSection(verification, opts)} ${offlineSection(verification, opts)}
        <footer>
          Made by clawgate from the sealed proof bundle on ${when(opts.generatedAt.toISOString())}. Everything
          on this page comes from the bundle; the verdict was computed when the page was made.
        </footer>
      </body>
    </html> `;
  return page.text;
}
