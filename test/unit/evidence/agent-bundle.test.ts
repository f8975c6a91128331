// An agent job's proof bundle: every tool call was asked for by a receipted model turn of the
// job, with the arguments that turn's response holds, and every call that ran was inside the
// scope of the token of its phase. Each way of breaking that fails with the entry named.
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
  execution: { tools: { allow: ['read', 'search'], deny: ['exec'] }, mode: 'agent' },
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

let orchestrator: Ed25519Signer;
let minter: Ed25519Signer;
let receiptKey: Ed25519Signer;
let jwks: { keys: JWK[] };
let good: BundleEntry[];

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
    },
  };
}

const planningRead: Call = { id: 'call_p0', name: 'read', args: '{"path": "README.md"}' };
const executionSearch: Call = { id: 'call_e0a', name: 'search', args: '{"query":"TODO","path":"."}' };
const executionExec: Call = { id: 'call_e0b', name: 'exec', args: '{"command":["rm","-rf","/"]}' };

async function buildEntries(): Promise<BundleEntry[]> {
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
      scope: { tools: plan.tools, models: ['demo-agent'] },
      planHash: canonicalHash(plan),
      approval: { approvers: ['@bob:localhost'], eventIds: ['$approve1'] },
      wpcHash: canonicalHash(policy),
      budget: { modelCalls: 2 + budget.model_turns },
    },
    minter,
  );
  const responses = [
    completion(null, [planningRead]),
    completion(JSON.stringify({ goal: plan.goal, steps: plan.steps, tools: plan.tools })),
    completion('Searching.', [executionSearch, executionExec]),
    completion(answerText),
  ];
  const tokenOf = [planning.token, planning.token, execution.token, execution.token];
  const receipts: Array<ReturnType<typeof signReceipt>> = [];
  responses.forEach((response, n) => {
    receipts.push(receipt(n + 1, jtiOf(tokenOf[n] ?? ''), response, receipts.at(-1)?.payloadSha256 ?? null));
  });
  const r = (n: number) => ({ type: 'model_receipt' as const, body: { jws: receipts[n]?.jws } });
  const response = (n: number): string => responses[n] ?? '';
  return [
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
    toolRecord('planning', 0, planningRead), // 7
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
    { type: 'plan', body: plan }, // 11
    { type: 'approval_attempt', body: { sender: '@bob:localhost', eventId: '$approve1', accepted: true } }, // 12
    { type: 'token', body: { purpose: 'execution', jwt: execution.token } }, // 13
    r(2), // 14
    modelTurn('execution', 0, 'receipt-3', response(2)), // 15
    toolRecord('execution', 0, executionSearch), // 16
    toolRecord('execution', 0, executionExec, {
      code: 'TOOL_NOT_OFFERED',
      reason: 'tool exec is not offered in this job (offered: read, search)',
    }), // 17
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

async function verify(entries: BundleEntry[]): Promise<BundleProblem[]> {
  const bundle = sealBundle(job, entries, orchestrator, new Date('2026-01-01T00:00:05Z'));
  return (await verifyBundle(JSON.parse(JSON.stringify(bundle)), jwks)).problems;
}

/** The good entries with some changed (each body a fresh copy). */
function changed(
  edit: (entries: Array<{ type: BundleEntry['type']; body: Record<string, unknown> }>) => void,
) {
  const entries = structuredClone(good) as Array<{
    type: BundleEntry['type'];
    body: Record<string, unknown>;
  }>;
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
