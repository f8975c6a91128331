// What `clawgate jobs show` prints of a job's status view, without Temporal: a fixed-step job as
// it always printed, an agent job with its plan, its turns, the budget used and the answer.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { formatStatusView } from '../../../src/cli/jobs.ts';
import type { JobStatusView } from '../../../src/temporal/job-contract.ts';

const planHash = 'ab'.repeat(32);

test('a fixed-step job shows its plan hash, steps done and approvals, as before', () => {
  const view: JobStatusView = {
    status: 'executing',
    planHash,
    policyHash: 'cd'.repeat(32),
    approvals: [
      { eventId: '$a1', sender: '@carol:localhost', accepted: false, reason: 'not an approver of this job' },
      { eventId: '$a2', sender: '@bob:localhost', accepted: true, reason: 'approved' },
    ],
    stepsDone: 1,
    stepsTotal: 2,
    bundleDigest: null,
  };
  assert.deepEqual(formatStatusView(view), [
    `plan      ${planHash}`,
    'steps     1/2',
    'approval  @carol:localhost refused: not an approver of this job',
    'approval  @bob:localhost counted: approved',
  ]);
  assert.deepEqual(formatStatusView({ ...view, mode: 'plan' }), formatStatusView(view));
});

test('an agent job shows its plan, one line per turn, the budget used and the answer', () => {
  const view: JobStatusView = {
    status: 'succeeded',
    planHash,
    policyHash: 'cd'.repeat(32),
    approvals: [{ eventId: '$a2', sender: '@bob:localhost', accepted: true, reason: 'approved' }],
    stepsDone: 0,
    stepsTotal: 0,
    bundleDigest: 'ef'.repeat(32),
    mode: 'agent',
    plan: {
      mode: 'agent',
      goal: 'Summarise the README',
      steps: ['Read README.md', 'Search for TODO markers', 'Answer with a summary'],
      tools: ['read', 'search'],
      budget: { model_turns: 20, tool_calls: 40, model_tokens: 200000, wall_seconds: 1800 },
    },
    turns: [
      {
        phase: 'planning',
        turn: 0,
        tool: 'read',
        args: '{"path":"README.md"}',
        outcome: 'exit 0, 1204 bytes',
      },
      {
        phase: 'execution',
        turn: 0,
        tool: 'search',
        args: `{"query":"${'x'.repeat(120)}"}`,
        outcome: 'exit 1, 0 bytes',
      },
      {
        phase: 'execution',
        turn: 0,
        tool: 'exec',
        args: '{"command":\n  ["ls"]}',
        outcome: 'refused: TOOL_NOT_OFFERED: tool exec is not offered in this job',
      },
      { phase: 'execution', turn: 1, tool: null, args: '', outcome: 'answer, 61 bytes' },
    ],
    answer: 'The README describes clawgate.\n\nIt has two TODOs.\n',
    used: { model_turns: 2, tool_calls: 2, model_tokens: 3512, wall_seconds: 7 },
  };
  assert.deepEqual(formatStatusView(view), [
    `plan      ${planHash}`,
    'goal      Summarise the README',
    'steps     1. Read README.md',
    '          2. Search for TODO markers',
    '          3. Answer with a summary',
    'tools     read, search',
    'budget    20 model turns, 40 tool calls, 200000 tokens, 1800 s',
    'approval  @bob:localhost counted: approved',
    'turns     planning turn 1: read {"path":"README.md"} → exit 0, 1204 bytes',
    `          execution turn 1: search {"query":"${'x'.repeat(69)}… → exit 1, 0 bytes`,
    '          execution turn 1: exec {"command": ["ls"]} → refused: TOOL_NOT_OFFERED: tool exec is not offered in this job',
    '          execution turn 2: answer, 61 bytes',
    'used      2 of 20 model turns, 2 of 40 tool calls, 3512 of 200000 tokens, 7 of 1800 s',
    'answer    The README describes clawgate.',
    '',
    '          It has two TODOs.',
  ]);
});

test('an agent job still planning shows its planning turns, and no plan yet', () => {
  const view: JobStatusView = {
    status: 'planning',
    planHash: null,
    policyHash: 'cd'.repeat(32),
    approvals: [],
    stepsDone: 0,
    stepsTotal: 0,
    bundleDigest: null,
    mode: 'agent',
    turns: [],
  };
  assert.deepEqual(formatStatusView(view), ['plan      -', 'turns     -']);
});

test('what the model wrote cannot drive the terminal: control characters are shown, not obeyed', () => {
  const view: JobStatusView = {
    status: 'succeeded',
    planHash,
    policyHash: null,
    approvals: [],
    stepsDone: 0,
    stepsTotal: 0,
    bundleDigest: null,
    mode: 'agent',
    plan: null,
    turns: [
      { phase: 'execution', turn: 0, tool: 'read', args: '{"path":"\u001b[2J"}', outcome: 'exit 0, 3 bytes' },
    ],
    answer: 'done \u001b]0;owned\u0007 \u202eevil',
    used: { model_turns: 1, tool_calls: 1, model_tokens: 10, wall_seconds: 1 },
  };
  const lines = formatStatusView(view);
  const obeyed = (line: string): boolean =>
    Array.from(line).some((c) => {
      const code = c.codePointAt(0) ?? 0;
      return code < 0x20 || (code >= 0x7f && code <= 0x9f) || c === '\u202e';
    });
  assert.ok(!lines.some(obeyed), JSON.stringify(lines));
  assert.ok(
    lines.includes('turns     execution turn 1: read {"path":"\\u001b[2J"} → exit 0, 3 bytes'),
    JSON.stringify(lines),
  );
  assert.ok(lines.includes('answer    done \\u001b]0;owned\\u0007 \\u202eevil'), JSON.stringify(lines));
  assert.ok(lines.includes('used      1 model turns, 1 tool calls, 10 tokens, 1 s'), JSON.stringify(lines));
});
