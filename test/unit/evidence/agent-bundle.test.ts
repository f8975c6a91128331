// An agent job's proof bundle: every tool call was asked for by a receipted model turn of the
// job, with the arguments that turn's response holds, and every call that ran was inside the
// scope of the token of its phase; once the context is tainted, a call with side effects ran only
// after an approver accepted that exact call, under a call token bound to its arguments. Each way
// of breaking that fails with the entry named.
import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { before, test } from 'node:test';
import { calculateJwkThumbprint, exportJWK, type JWK } from 'jose';
import { toolCallsOf } from '../../../src/activities/agent-activities.ts';
import {
  canonicalHash,
  responseToolCalls,
  sealBundle,
  sha256Hex,
  verifyBundle,
  type BundleEntry,
  type BundleProblem,
} from '../../../src/evidence/bundle.ts';
import type { Ed25519Signer } from '../../../src/evidence/jws.ts';
import { signReceipt, type ReceiptPayload } from '../../../src/proxy/receipts.ts';
import { mintCapabilityToken } from '../../../src/tokens/cst.ts';
import { argumentShape } from '../../../src/tools/kinds.ts';

async function keyPair(): Promise<{ signer: Ed25519Signer; jwk: JWK }> {
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  const jwk = await exportJWK(publicKey);
  const kid = await calculateJwkThumbprint(jwk);
  return { signer: { kid, key: privateKey }, jwk: { ...jwk, kid, alg: 'EdDSA', use: 'sig' } };
}

const job = { workflow_id: 'job:!room:localhost:$event1', run_id: 'run-1' };
const policy = {
  wpc_version: '1',
  channel: 'matrix',
  matrix: {
    rooms_allowlist: ['!room:localhost'],
    requesters_allowlist: ['@alice:localhost'],
    approval: {
      required: true,
      approver_user_ids_allowlist: ['@bob:localhost'],
      requester_may_approve: false,
    },
  },
  execution: { tools: { allow: ['read', 'search', 'write_pr'], deny: ['exec'] }, mode: 'agent' },
};
const budget = { model_turns: 6, tool_calls: 10, model_tokens: 20_000, wall_seconds: 600 };
const plan = {
  mode: 'agent',
  goal: 'Find the TODOs in the readme',
  steps: ['Read the readme', 'Search for TODO', 'Answer with a list'],
  tools: ['read', 'search'],
  budget,
};
const answerText = 'There are two TODOs: the install guide and the changelog.';
/** The plan of a job that changes the repository: write_pr, whose calls wait for an approval. */
const writingPlan = { ...plan, goal: 'Fix the TODOs in the readme', tools: ['read', 'search', 'write_pr'] };
const writingAnswer = 'Both TODOs are fixed on branch fix-todos.';

let orchestrator: Ed25519Signer;
let minter: Ed25519Signer;
let receiptKey: Ed25519Signer;
let jwks: { keys: JWK[] };
let good: BundleEntry[];
/** A tainted job that ran two write_pr calls: one on its own approved card, one allowed by it. */
let gated: BundleEntry[];

type Call = { id: string; name: string; args: string };

/** A chat completion as an OpenAI-compatible upstream returns it. */
function completion(content: string | null, calls: Call[] = []): string {
  return JSON.stringify({
    id: 'chatcmpl-1',
    object: 'chat.completion',
    choices: [
      {
        index: 0,
        finish_reason: calls.length ? 'tool_calls' : 'stop',
        message: {
          role: 'assistant',
          content,
          ...(calls.length
            ? {
                tool_calls: calls.map((c) => ({
                  id: c.id,
                  type: 'function',
                  function: { name: c.name, arguments: c.args },
                })),
              }
            : {}),
        },
      },
    ],
    usage: { prompt_tokens: 100, completion_tokens: 20, total_tokens: 120 },
  });
}

function jtiOf(jwt: string): string {
  return (JSON.parse(Buffer.from(jwt.split('.')[1] ?? '', 'base64url').toString()) as { jti: string }).jti;
}

function receipt(n: number, tokenId: string, response: string, prev: string | null) {
  const payload: ReceiptPayload = {
    v: 1,
    receipt_id: `receipt-${n}`,
    proxy_id: 'proxy',
    job,
    token_id: tokenId,
    policy_hash: canonicalHash(policy),
    model: 'demo-agent',
    upstream: { name: 'demo', url: 'http://127.0.0.1:1/v1' },
    stream: false,
    status: 'ok',
    http_status: 200,
    refusal: null,
    error: null,
    request_sha256: 'a'.repeat(64),
    response_sha256: sha256Hex(Buffer.from(response, 'utf8')),
    request_bytes: 10,
    response_bytes: Buffer.byteLength(response),
    usage: { prompt_tokens: 100, completion_tokens: 20, total_tokens: 120 },
    started_at: '2026-01-01T00:00:00.000Z',
    ended_at: '2026-01-01T00:00:01.000Z',
    prev_receipt_sha256: prev,
  };
  return signReceipt(payload, receiptKey);
}

function modelTurn(phase: 'planning' | 'execution', turn: number, receiptId: string, response: string) {
  const calls = responseToolCalls(response);
  return {
    type: 'model_turn' as const,
    body: {
      phase,
      turn,
      receipt_id: receiptId,
      http_status: 200,
      response_sha256: sha256Hex(Buffer.from(response, 'utf8')),
      finish: calls.length ? 'tool_calls' : 'answer',
      tool_calls: calls,
      usage: { prompt_tokens: 100, completion_tokens: 20, total_tokens: 120 },
      response,
    },
  };
}

function toolRecord(
  phase: 'planning' | 'execution',
  turn: number,
  call: Call,
  denial: { code: string; reason: string } | null = null,
  gating: Record<string, unknown> = {},
) {
  return {
    type: 'tool_record' as const,
    body: {
      tool: call.name,
      args_sha256: canonicalHash(JSON.parse(call.args)),
      output_sha256: denial ? null : 'e'.repeat(64),
      exit_status: denial ? null : 0,
      signal: null,
      timed_out: false,
      output_truncated: false,
      duration_ms: 3,
      sandbox_profile: denial ? null : 'bwrap',
      denial,
      started_at: '2026-01-01T00:00:00.500Z',
      phase,
      turn,
      call_id: call.id,
      ...gating,
    },
  };
}

/** What a record of a gated job says of how its call was gated. */
function gating(call: Call, effect: 'read' | 'write', gate: string, approval: Record<string, unknown> = {}) {
  return {
    effect,
    gate,
    shape_sha256: canonicalHash(argumentShape(JSON.parse(call.args))),
    ...approval,
  };
}

const planningRead: Call = { id: 'call_p0', name: 'read', args: '{"path": "README.md"}' };
const executionSearch: Call = { id: 'call_e0a', name: 'search', args: '{"query":"TODO","path":"."}' };
const executionExec: Call = { id: 'call_e0b', name: 'exec', args: '{"command":["rm","-rf","/"]}' };
const writeFirst: Call = {
  id: 'call_e1',
  name: 'write_pr',
  args: JSON.stringify({
    branch: 'fix-todos',
    message: 'Fill in the install guide',
    files: [{ path: 'INSTALL.md', content: 'npm install\n' }],
  }),
};
/** Another write_pr of the same argument shape (other values). */
const writeSecond: Call = {
  id: 'call_e2',
  name: 'write_pr',
  args: JSON.stringify({
    branch: 'fix-todos',
    message: 'Start the changelog',
    files: [{ path: 'CHANGELOG.md', content: '# Changelog\n' }],
  }),
};
const argsOf = (call: Call): string => canonicalHash(JSON.parse(call.args));
const cardId = 'c2.1';
const decisionEvent = '$decide1';

/** A call token, as the workflow mints one after an approver accepted a card. */
async function callToken(
  call: Call,
  options: { approver?: string; argsSha256?: string; workflowId?: string } = {},
): Promise<string> {
  const minted = await mintCapabilityToken(
    {
      purpose: 'call',
      job: { workflowId: options.workflowId ?? job.workflow_id, runId: job.run_id },
      roomId: '!room:localhost',
      scope: { tools: [call.name], models: [] },
      planHash: canonicalHash(writingPlan),
      approval: { approvers: [options.approver ?? '@bob:localhost'], eventIds: [decisionEvent] },
      call: { cardId, callId: call.id, argsSha256: options.argsSha256 ?? argsOf(call) },
    },
    minter,
  );
  return minted.token;
}

async function buildEntries(kind: 'reading' | 'writing' = 'reading'): Promise<BundleEntry[]> {
  const writing = kind === 'writing';
  const jobPlan = writing ? writingPlan : plan;
  const ref = { workflowId: job.workflow_id, runId: job.run_id };
  const planning = await mintCapabilityToken(
    {
      purpose: 'planning',
      job: ref,
      roomId: '!room:localhost',
      scope: { tools: ['read', 'search'], models: ['demo-agent'] },
      budget: { modelCalls: 4 },
    },
    minter,
  );
  const execution = await mintCapabilityToken(
    {
      purpose: 'execution',
      job: ref,
      roomId: '!room:localhost',
      scope: { tools: jobPlan.tools, models: ['demo-agent'] },
      planHash: canonicalHash(jobPlan),
      approval: { approvers: ['@bob:localhost'], eventIds: ['$approve1'] },
      // The gated job's tests change its policy; its tokens are not pinned to it.
      ...(writing ? {} : { wpcHash: canonicalHash(policy) }),
      budget: { modelCalls: 2 + budget.model_turns },
    },
    minter,
  );
  const responses = [
    completion(null, [planningRead]),
    completion(JSON.stringify({ goal: jobPlan.goal, steps: jobPlan.steps, tools: jobPlan.tools })),
    completion('Searching.', [executionSearch, executionExec]),
    ...(writing
      ? [
          completion('Filling in the install guide.', [writeFirst]),
          completion('And the changelog.', [writeSecond]),
        ]
      : []),
    completion(writing ? writingAnswer : answerText),
  ];
  const tokenOf = [planning.token, planning.token, ...responses.slice(2).map(() => execution.token)];
  const receipts: Array<ReturnType<typeof signReceipt>> = [];
  responses.forEach((response, n) => {
    receipts.push(receipt(n + 1, jtiOf(tokenOf[n] ?? ''), response, receipts.at(-1)?.payloadSha256 ?? null));
  });
  const r = (n: number) => ({ type: 'model_receipt' as const, body: { jws: receipts[n]?.jws } });
  const response = (n: number): string => responses[n] ?? '';
  const marks = (call: Call, effect: 'read' | 'write', gate: string) =>
    writing ? gating(call, effect, gate) : {};
  const prefix: BundleEntry[] = [
    { type: 'job', body: job },
    {
      type: 'request',
      body: {
        room_id: '!room:localhost',
        sender: '@alice:localhost',
        event_id: '$event1',
        text: 'list TODOs',
      },
    },
    { type: 'policy', body: { document: policy, hash: canonicalHash(policy) } },
    { type: 'workspace', body: { commit: 'f'.repeat(40) } },
    { type: 'token', body: { purpose: 'planning', jwt: planning.token } }, // 4
    r(0), // 5
    modelTurn('planning', 0, 'receipt-1', response(0)), // 6
    toolRecord('planning', 0, planningRead, null, marks(planningRead, 'read', 'never')), // 7
    {
      type: 'taint',
      body: {
        phase: 'planning',
        turn: 0,
        tool: 'read',
        call_id: planningRead.id,
        source: 'output of tool read',
      },
    }, // 8
    r(1), // 9
    modelTurn('planning', 1, 'receipt-2', response(1)), // 10
    { type: 'plan', body: jobPlan }, // 11
    { type: 'approval_attempt', body: { sender: '@bob:localhost', eventId: '$approve1', accepted: true } }, // 12
    { type: 'token', body: { purpose: 'execution', jwt: execution.token } }, // 13
    r(2), // 14
    modelTurn('execution', 0, 'receipt-3', response(2)), // 15
    toolRecord('execution', 0, executionSearch, null, marks(executionSearch, 'read', 'never')), // 16
    toolRecord(
      'execution',
      0,
      executionExec,
      {
        code: 'TOOL_NOT_OFFERED',
        reason: 'tool exec is not offered in this job (offered: read, search)',
      },
      marks(executionExec, 'write', 'when_tainted'),
    ), // 17
  ];
  if (writing) return [...prefix, ...(await writingSuffix(r, response))];
  return [
    ...prefix,
    r(3), // 18
    modelTurn('execution', 1, 'receipt-4', response(3)), // 19
    {
      type: 'budget',
      body: {
        limits: { ...budget },
        used: { model_turns: 2, tool_calls: 2, model_tokens: 480, wall_seconds: 4 },
        exhausted: null,
      },
    }, // 20
    {
      type: 'answer',
      body: { turn: 1, sha256: sha256Hex(Buffer.from(answerText)), bytes: Buffer.byteLength(answerText) },
    }, // 21
    { type: 'outcome', body: { status: 'succeeded', reason: 'answered' } }, // 22
  ];
}

/** The gated job after its first execution turn: two approved write_pr calls, then the answer. */
async function writingSuffix(
  r: (n: number) => BundleEntry,
  response: (n: number) => string,
): Promise<BundleEntry[]> {
  const taint = { phase: 'planning', turn: 0, call_id: planningRead.id };
  return [
    r(3), // 18
    modelTurn('execution', 1, 'receipt-4', response(3)), // 19
    {
      type: 'call_card',
      body: {
        card_id: cardId,
        phase: 'execution',
        turn: 1,
        call_id: writeFirst.id,
        tool: 'write_pr',
        args_sha256: argsOf(writeFirst),
        shape_sha256: canonicalHash(argumentShape(JSON.parse(writeFirst.args))),
        effect: 'write',
        gate: 'when_tainted',
        taint,
        event_id: '$card1',
        expires_at: Date.parse('2026-01-01T01:00:00Z'),
      },
    }, // 20
    {
      type: 'call_decision',
      body: {
        card_id: cardId,
        event_id: decisionEvent,
        sender: '@bob:localhost',
        via: 'command',
        decision: 'approve',
        scope: 'job',
        accepted: true,
        code: null,
        reason: 'approved',
        origin_server_ts: Date.parse('2026-01-01T00:00:02Z'),
      },
    }, // 21
    {
      type: 'card_outcome',
      body: {
        card_id: cardId,
        state: 'approved',
        by: '@bob:localhost',
        reason: 'approved by @bob:localhost',
      },
    }, // 22
    { type: 'token', body: { purpose: 'call', jwt: await callToken(writeFirst) } }, // 23
    toolRecord(
      'execution',
      1,
      writeFirst,
      null,
      gating(writeFirst, 'write', 'when_tainted', { card_id: cardId }),
    ), // 24
    r(4), // 25
    modelTurn('execution', 2, 'receipt-5', response(4)), // 26
    toolRecord(
      'execution',
      2,
      writeSecond,
      null,
      gating(writeSecond, 'write', 'when_tainted', { allowed_by: { card_id: cardId } }),
    ), // 27
    r(5), // 28
    modelTurn('execution', 3, 'receipt-6', response(5)), // 29
    {
      type: 'budget',
      body: {
        limits: { ...budget },
        used: { model_turns: 4, tool_calls: 4, model_tokens: 720, wall_seconds: 9 },
        exhausted: null,
      },
    }, // 30
    {
      type: 'answer',
      body: {
        turn: 3,
        sha256: sha256Hex(Buffer.from(writingAnswer)),
        bytes: Buffer.byteLength(writingAnswer),
      },
    }, // 31
    { type: 'outcome', body: { status: 'succeeded', reason: 'answered' } }, // 32
  ];
}

const INDEX = {
  planningRecord: 7,
  taint: 8,
  plan: 11,
  executionToken: 13,
  turn: 15,
  search: 16,
  exec: 17,
  answer: 21,
};

/** Entries of the gated job. */
const GATED = {
  planningRecord: 7,
  search: 16,
  card: 20,
  decision: 21,
  outcome: 22,
  callToken: 23,
  first: 24,
  second: 27,
};

async function verify(entries: BundleEntry[]): Promise<BundleProblem[]> {
  const bundle = sealBundle(job, entries, orchestrator, new Date('2026-01-01T00:00:05Z'));
  return (await verifyBundle(JSON.parse(JSON.stringify(bundle)), jwks)).problems;
}

type Editable = Array<{ type: BundleEntry['type']; body: Record<string, unknown> }>;

/** The good entries with some changed (each body a fresh copy). */
function changed(edit: (entries: Editable) => void) {
  const entries = structuredClone(good) as Editable;
  edit(entries);
  return entries as BundleEntry[];
}

function assertProblem(problems: BundleProblem[], entry: number, pattern: RegExp): void {
  assert.ok(
    problems.some((p) => p.entry === entry && pattern.test(p.problem)),
    `no problem ${String(pattern)} at entry ${entry}: ${JSON.stringify(problems)}`,
  );
}

before(async () => {
  const [o, m, r] = await Promise.all([keyPair(), keyPair(), keyPair()]);
  orchestrator = o.signer;
  minter = m.signer;
  receiptKey = r.signer;
  jwks = { keys: [o.jwk, m.jwk, r.jwk] };
  good = await buildEntries();
  gated = await buildEntries('writing');
});

test('the tool calls the verifier reads from a response are those the agent loop read from it', () => {
  const messages = [
    { role: 'assistant', content: null, tool_calls: [] },
    {
      role: 'assistant',
      content: null,
      tool_calls: [
        {
          id: 'a',
          type: 'function' as const,
          function: { name: 'read', arguments: '{"b":1,"a":[2,{"d":3,"c":4}]}' },
        },
        { id: 'b', type: 'function' as const, function: { name: 'search', arguments: '{"query": "x"' } },
        { id: 'c', type: 'function' as const, function: { name: 'http', arguments: '' } },
        { id: 'd', type: 'function' as const, function: { name: 'read', arguments: '"just a string"' } },
      ],
    },
  ];
  for (const message of messages) {
    const text = JSON.stringify({ choices: [{ message }] });
    assert.deepEqual(
      responseToolCalls(text),
      toolCallsOf(message).map((c) => ({ id: c.id, name: c.name, args_sha256: c.argsSha256 })),
    );
  }
  assert.deepEqual(responseToolCalls('not json'), []);
});

test('an agent job bundle verifies offline from itself and the JWKS', async () => {
  assert.deepEqual(await verify(good), []);
});

test('a tool call no model turn asked for is refused', async () => {
  const stray = toolRecord('execution', 0, { id: 'call_e0z', name: 'read', args: '{"path":"secrets"}' });
  const unasked = await verify(changed((e) => e.splice(INDEX.exec + 1, 0, stray)));
  assertProblem(unasked, INDEX.exec + 1, /call call_e0z was not asked for by execution turn 0/);

  const noTurn = toolRecord('execution', 7, { id: 'call_e7', name: 'read', args: '{"path":"README.md"}' });
  const orphan = await verify(changed((e) => e.splice(INDEX.exec + 1, 0, noTurn)));
  assertProblem(orphan, INDEX.exec + 1, /not asked for by a receipted model turn of this job/);

  const twice = await verify(changed((e) => e.splice(INDEX.exec + 1, 0, structuredClone(e[INDEX.search]!))));
  assertProblem(twice, INDEX.exec + 1, /call call_e0a of execution turn 0 is recorded more than once/);
});

test('a tool call run with other arguments than its turn asked for is refused', async () => {
  const problems = await verify(
    changed((e) => {
      e[INDEX.search]!.body['args_sha256'] = canonicalHash({ query: 'password', path: '/' });
    }),
  );
  assertProblem(problems, INDEX.search, /ran search with other arguments than execution turn 0 asked for/);
  assert.equal(problems.length, 1, JSON.stringify(problems));

  const otherTool = await verify(
    changed((e) => {
      e[INDEX.search]!.body['tool'] = 'read';
    }),
  );
  assertProblem(otherTool, INDEX.search, /call call_e0a ran read; execution turn 0 asked for search/);
});

test('a model turn whose response was altered is refused', async () => {
  const problems = await verify(
    changed((e) => {
      const body = e[INDEX.turn]!.body;
      body['response'] = String(body['response']).replace('TODO', 'PASSWORD');
    }),
  );
  assertProblem(problems, INDEX.turn, /execution turn 0: its response is not the one response_sha256 names/);
  assert.equal(problems.length, 1, JSON.stringify(problems));

  // The tool calls listed must be those of the response.
  const listed = await verify(
    changed((e) => {
      const calls = e[INDEX.turn]!.body['tool_calls'] as Array<Record<string, unknown>>;
      calls[0]!['args_sha256'] = canonicalHash({ query: 'password' });
      e[INDEX.search]!.body['args_sha256'] = canonicalHash({ query: 'password' });
    }),
  );
  assertProblem(listed, INDEX.turn, /the tool calls it lists are not those its response asks for/);

  // A turn that asks for tools keeps its response.
  const withoutResponse = await verify(
    changed((e) => {
      delete e[INDEX.turn]!.body['response'];
    }),
  );
  assertProblem(withoutResponse, INDEX.turn, /asks for tools but does not carry its response/);
});

test('a model turn whose response is not the one its receipt signed is refused', async () => {
  const other: Call = { id: 'call_e0a', name: 'search', args: '{"query":"PASSWORD","path":"/"}' };
  const forged = completion('Searching.', [other, executionExec]);
  const problems = await verify(
    changed((e) => {
      // The turn, its calls and the record all agree with each other; only the receipt does not.
      e[INDEX.turn] = modelTurn('execution', 0, 'receipt-3', forged);
      e[INDEX.search] = toolRecord('execution', 0, other);
    }),
  );
  assertProblem(problems, INDEX.turn, /response_sha256 is not the response hash receipt receipt-3 signed/);
  assert.equal(problems.length, 1, JSON.stringify(problems));

  const unknownReceipt = await verify(
    changed((e) => {
      e[INDEX.turn]!.body['receipt_id'] = 'receipt-99';
    }),
  );
  assertProblem(unknownReceipt, INDEX.turn, /names receipt receipt-99, which is not a verified receipt/);

  const reused = await verify(
    changed((e) => {
      e[INDEX.turn]!.body['receipt_id'] = 'receipt-2';
    }),
  );
  assertProblem(reused, INDEX.turn, /names receipt receipt-2, which entry 10 names too/);
});

test('a tool that ran outside the scope of its token is refused; a refused one is only recorded', async () => {
  const problems = await verify(
    changed((e) => {
      const body = e[INDEX.exec]!.body;
      body['denial'] = null;
      body['exit_status'] = 0;
    }),
  );
  assertProblem(problems, INDEX.exec, /exec ran outside the scope of the execution token \(read, search\)/);
  assert.equal(problems.length, 1, JSON.stringify(problems));
});

test('the taint point must name the first call that ran, right after it', async () => {
  const missing = await verify(changed((e) => e.splice(INDEX.taint, 1)));
  assertProblem(
    missing,
    INDEX.planningRecord,
    /read ran, and no taint entry records that its output entered/,
  );
  const other = await verify(
    changed((e) => ((e[INDEX.taint] as { body: Record<string, unknown> }).body['call_id'] = 'call_e0a')),
  );
  assertProblem(other, INDEX.taint, /does not name the first call that ran \(planning turn 0, call_p0\)/);
  const late = await verify(
    changed((e) => {
      const [taint] = e.splice(INDEX.taint, 1);
      e.splice(INDEX.search, 0, taint as (typeof e)[number]);
    }),
  );
  assertProblem(late, INDEX.search, /does not name the first call that ran/);
});

test('a planning call outside the planning token scope is refused', async () => {
  const http: Call = { id: 'call_p0', name: 'http', args: '{"method":"GET","url":"https://example.org"}' };
  const problems = await verify(
    changed((e) => {
      e[6] = modelTurn('planning', 0, 'receipt-1', completion(null, [http]));
      e[INDEX.planningRecord] = toolRecord('planning', 0, http);
    }),
  );
  assertProblem(problems, INDEX.planningRecord, /http ran outside the scope of the planning token/);
});

test('an execution call recorded before the execution token is refused', async () => {
  const problems = await verify(
    changed((e) => {
      // The execution turn's receipt, the turn and its first call, moved before the approval.
      const moved = e.splice(INDEX.executionToken + 1, 3);
      e.splice(INDEX.plan + 1, 0, ...moved);
    }),
  );
  assertProblem(problems, INDEX.plan + 3, /search ran before the execution token \(the plan's approval\)/);
  assertProblem(problems, INDEX.plan + 2, /execution turn 0 comes before the execution token/);
});

test('an answer that names a turn which asked for tools is refused', async () => {
  const problems = await verify(
    changed((e) => {
      e[INDEX.answer]!.body['turn'] = 0;
    }),
  );
  assertProblem(
    problems,
    INDEX.answer,
    /names execution turn 0, which finished with tool_calls, not an answer/,
  );

  const otherAnswer = await verify(
    changed((e) => {
      e[INDEX.answer]!.body['sha256'] = sha256Hex(Buffer.from('another answer'));
    }),
  );
  assertProblem(otherAnswer, INDEX.answer, /is not the answer in the response of execution turn 1/);
});

test('the plan, the execution token scope and the budget must agree', async () => {
  const badPlan = await verify(
    changed((e) => {
      e[INDEX.plan]!.body['steps'] = [{ tool: 'read', args: {} }];
    }),
  );
  assertProblem(badPlan, INDEX.plan, /is not an agent plan: steps\.0/);

  const wider = await mintCapabilityToken(
    {
      purpose: 'execution',
      job: { workflowId: job.workflow_id, runId: job.run_id },
      roomId: '!room:localhost',
      scope: { tools: ['read', 'search', 'exec'], models: ['demo-agent'] },
      planHash: canonicalHash(plan),
      approval: { approvers: ['@bob:localhost'], eventIds: ['$approve1'] },
    },
    minter,
  );
  const widerScope = await verify(
    changed((e) => {
      e[INDEX.executionToken] = { type: 'token', body: { purpose: 'execution', jwt: wider.token } };
    }),
  );
  assertProblem(
    widerScope,
    INDEX.executionToken,
    /scope.tools \(exec, read, search\) is not the plan's tools/,
  );

  const budgetChanged = await verify(
    changed((e) => {
      (e[20]!.body['limits'] as Record<string, number>)['tool_calls'] = 1000;
    }),
  );
  assertProblem(budgetChanged, 20, /limits are not the approved plan's budget/);

  const twoAnswers = await verify(
    changed((e) => e.splice(INDEX.answer, 0, structuredClone(e[INDEX.answer]!))),
  );
  assert.ok(twoAnswers.some((p) => p.entry === null && /at most one answer/.test(p.problem)));
});

/** Where a tool call's record is in a bundle's entries. */
function recordOf(entries: BundleEntry[], callId: string, nth = 0): number {
  const at = entries.flatMap((e, i) =>
    e.type === 'tool_record' && (e.body as { call_id?: unknown }).call_id === callId ? [i] : [],
  );
  const found = at[nth];
  assert.ok(found !== undefined, `no record ${nth} of ${callId}`);
  return found;
}

/** The gated entries with some changed, and the problems they have. */
async function gatedProblems(edit: (entries: Editable) => void | Promise<void>) {
  const entries = structuredClone(gated) as Editable;
  await edit(entries);
  const edited = entries as BundleEntry[];
  return { entries: edited, problems: await verify(edited) };
}

const firstCall = 'write_pr call call_e1';
const secondCall = 'write_pr call call_e2';
const afterTaint = 'ran after the taint point without an accepted approval of its arguments';

test('a tainted job whose write_pr calls ran on an accepted approval and their call token verifies', async () => {
  assert.deepEqual(await verify(gated), []);
  // The bundle of a job before calls were gated (no effect or gate, no cards) still verifies.
  assert.deepEqual(await verify(good), []);
});

test('a write after the taint point without an approval card is refused', async () => {
  const unnamed = await gatedProblems((e) => {
    delete e[GATED.first]!.body['card_id'];
  });
  assertProblem(
    unnamed.problems,
    GATED.first,
    new RegExp(`${firstCall} ${afterTaint} \\(it names no approval card\\)`),
  );

  const noCard = await gatedProblems((e) => void e.splice(GATED.card, 1));
  assertProblem(
    noCard.problems,
    recordOf(noCard.entries, writeFirst.id),
    new RegExp(`${firstCall} ${afterTaint} \\(card c2.1 is not before it in this bundle\\)`),
  );
  assertProblem(
    noCard.problems,
    GATED.decision - 1,
    /accepts an answer to card c2.1, which is not before it/,
  );

  const otherArgs = await gatedProblems((e) => {
    e[GATED.card]!.body['args_sha256'] = canonicalHash({ branch: 'main', message: 'x', files: [] });
  });
  assertProblem(
    otherArgs.problems,
    GATED.first,
    new RegExp(`${afterTaint} \\(card c2.1 shows other arguments\\)`),
  );
  assertProblem(otherArgs.problems, GATED.card, /did not ask for with those arguments/);

  const otherCall = await gatedProblems((e) => {
    e[GATED.first]!.body['card_id'] = 'c9.1';
  });
  assertProblem(otherCall.problems, GATED.first, /card c9.1 is not before it/);
});

test('an approval by someone who is not an approver, or by the requester, does not count', async () => {
  const stranger = await gatedProblems((e) => {
    e[GATED.decision]!.body['sender'] = '@mallory:localhost';
    e[GATED.outcome]!.body['by'] = '@mallory:localhost';
  });
  assertProblem(
    stranger.problems,
    GATED.first,
    new RegExp(`${firstCall}: card c2.1 was approved by @mallory:localhost, who is not an approver`),
  );
  assertProblem(stranger.problems, GATED.second, /approved by @mallory:localhost, who is not an approver/);

  const byRequester = (entries: Editable) => {
    const approval = (entries[2]!.body['document'] as typeof policy).matrix.approval;
    approval.approver_user_ids_allowlist.push('@alice:localhost');
    entries[GATED.decision]!.body['sender'] = '@alice:localhost';
    entries[GATED.outcome]!.body['by'] = '@alice:localhost';
  };
  const rehash = (entries: Editable) => {
    entries[2]!.body['hash'] = canonicalHash(entries[2]!.body['document']);
  };
  const requester = await gatedProblems(async (e) => {
    byRequester(e);
    rehash(e);
    e[GATED.callToken]!.body['jwt'] = await callToken(writeFirst, { approver: '@alice:localhost' });
  });
  assertProblem(
    requester.problems,
    GATED.first,
    /card c2.1 was approved by @alice:localhost, who requested the job \(the policy does not let requesters approve\)/,
  );

  // A policy that lets requesters approve accepts the same evidence.
  const allowed = await gatedProblems(async (e) => {
    byRequester(e);
    (e[2]!.body['document'] as typeof policy).matrix.approval.requester_may_approve = true;
    rehash(e);
    e[GATED.callToken]!.body['jwt'] = await callToken(writeFirst, { approver: '@alice:localhost' });
  });
  assert.deepEqual(allowed.problems, []);
});

test('a refused answer to a card is kept but is no approval', async () => {
  const { problems } = await gatedProblems((e) => {
    Object.assign(e[GATED.decision]!.body, {
      accepted: false,
      code: 'NOT_AN_APPROVER',
      reason: '@bob:localhost is not an approver',
    });
  });
  assertProblem(
    problems,
    GATED.first,
    new RegExp(`${firstCall} ${afterTaint} \\(card c2.1 has no accepted approval before it\\)`),
  );
  assertProblem(problems, GATED.outcome, /whose accepted approval of it is not before it/);

  // Accepted, but the card never says it was approved.
  const noOutcome = await gatedProblems((e) => void e.splice(GATED.outcome, 1));
  assertProblem(noOutcome.problems, GATED.first - 1, /card c2.1 has no approved outcome before it/);
});

test('an approved call runs only with a call token bound to its arguments, once', async () => {
  const none = await gatedProblems((e) => void e.splice(GATED.callToken, 1));
  assertProblem(
    none.problems,
    GATED.first - 1,
    new RegExp(`${firstCall} ran with no call token bound to its arguments \\(card c2.1\\)`),
  );

  const otherArgs = await gatedProblems(async (e) => {
    e[GATED.callToken]!.body['jwt'] = await callToken(writeFirst, { argsSha256: argsOf(writeSecond) });
  });
  assertProblem(otherArgs.problems, GATED.first, /ran with no call token bound to its arguments/);

  const twice = await gatedProblems(
    (e) => void e.splice(GATED.first + 1, 0, structuredClone(e[GATED.first]!)),
  );
  assertProblem(
    twice.problems,
    GATED.first + 1,
    new RegExp(
      `${firstCall}: its call token \\(entry ${GATED.callToken}\\) was used by entry ${GATED.first} already`,
    ),
  );

  const forged = await gatedProblems(async (e) => {
    const jwt = await callToken(writeFirst);
    e[GATED.callToken]!.body['jwt'] = `${jwt.slice(0, jwt.lastIndexOf('.'))}.${'A'.repeat(86)}`;
  });
  assertProblem(forged.problems, GATED.callToken, /token does not verify/);
  assertProblem(forged.problems, GATED.first, /no call token bound to its arguments/);

  const otherJob = await gatedProblems(async (e) => {
    e[GATED.callToken]!.body['jwt'] = await callToken(writeFirst, {
      workflowId: 'job:!room:localhost:$other',
    });
  });
  assertProblem(
    otherJob.problems,
    GATED.callToken,
    /token is for job job:!room:localhost:\$other, not this one/,
  );

  const otherApproval = await gatedProblems(async (e) => {
    e[GATED.callToken]!.body['jwt'] = await callToken(writeFirst, { approver: '@carol:localhost' });
  });
  assertProblem(
    otherApproval.problems,
    GATED.first,
    /its call token \(entry 23\) does not carry an accepted approval of card c2.1 made before it/,
  );
});

test('a tool the policy always gates needs an approval before the taint point too', async () => {
  const always = await gatedProblems((e) => {
    e[GATED.planningRecord]!.body['gate'] = 'always';
  });
  assertProblem(
    always.problems,
    GATED.planningRecord,
    /read call call_p0 ran with gate always without an accepted approval of its arguments \(it names no approval card\)/,
  );

  // The record's gate is at least the policy's.
  const policyAlways = await gatedProblems((e) => {
    const document = e[2]!.body['document'] as { execution: { tools: Record<string, unknown> } };
    document.execution.tools['approval'] = { search: 'always' };
    e[2]!.body['hash'] = canonicalHash(document);
  });
  assertProblem(
    policyAlways.problems,
    GATED.search,
    /is recorded with gate never; the policy's gate for it is always/,
  );
  assertProblem(
    policyAlways.problems,
    GATED.search,
    /search call call_e0a ran with gate always without an accepted approval/,
  );
});

test('a call allowed by an earlier card needs that card for the same tool and shape, approved for the job', async () => {
  const shape = await gatedProblems((e) => {
    e[GATED.card]!.body['shape_sha256'] = canonicalHash(argumentShape({ branch: 'x' }));
  });
  assertProblem(
    shape.problems,
    GATED.second,
    new RegExp(
      `${secondCall} ${afterTaint} \\(card c2.1, which it names as allowing it, is for arguments of another shape\\)`,
    ),
  );
  assert.ok(!shape.problems.some((p) => p.entry === GATED.first), JSON.stringify(shape.problems));

  const callOnly = await gatedProblems((e) => {
    e[GATED.decision]!.body['scope'] = 'call';
  });
  assertProblem(
    callOnly.problems,
    GATED.second,
    new RegExp(
      `${secondCall} ${afterTaint} \\(card c2.1 was approved for its own call only, not for the job\\)`,
    ),
  );
  assert.equal(callOnly.problems.length, 1, JSON.stringify(callOnly.problems));
});

test('a call with side effects must say how it was gated, and not less than the policy does', async () => {
  const bare = await gatedProblems((e) => {
    delete e[GATED.second]!.body['effect'];
    delete e[GATED.second]!.body['gate'];
  });
  assertProblem(
    bare.problems,
    GATED.second,
    /ran with side effects, and its record has no effect class or gate/,
  );

  const read = await gatedProblems((e) => {
    e[GATED.second]!.body['effect'] = 'read';
    e[GATED.second]!.body['gate'] = 'never';
  });
  assertProblem(
    read.problems,
    GATED.second,
    /is recorded as without side effects; the policy says write_pr has them/,
  );
});
