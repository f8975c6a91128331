// The WPC schema: strict, versioned, errors that name the exact path; and the property that
// no malformed policy makes the loader throw anything but clawgate's own error.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import fc from 'fast-check';
import { ClawgateError, ERROR_CODES } from '../../../src/errors.ts';
import { loadWpc, parseWpc, wpcHash } from '../../../src/policy/wpc.ts';

const exampleText = readFileSync(new URL('../../../examples/policy.json', import.meta.url), 'utf8');
const example = JSON.parse(exampleText) as Record<string, unknown>;
const clone = (): Record<string, any> => structuredClone(example) as Record<string, any>;

test('the example policy validates, with defaults filled in', () => {
  const { wpc, hash } = loadWpc(exampleText);
  assert.match(hash, /^[0-9a-f]{64}$/);
  assert.equal(wpc.matrix.approval.requester_may_approve, false);
  assert.equal(wpc.matrix.approval.approvals_required, 1);
  assert.equal(wpc.tokens.cst.ttl_seconds, 900);
});

test('a policy spelling out a default has the same hash as one leaving it implicit', () => {
  const explicit = clone();
  explicit['tokens'].cst.ttl_seconds = 900;
  assert.equal(wpcHash(parseWpc(explicit)), wpcHash(parseWpc(example)));
});

const broken: Array<[string, (p: Record<string, any>) => void, RegExp]> = [
  [
    'a bad tool name names its index',
    (p) => (p['execution'].tools.allow[2] = 'Http'),
    /execution\.tools\.allow\[2\]: a tool name/,
  ],
  [
    'an unknown key is refused',
    (p) => (p['execution'].tools.allowlist = ['read']),
    /execution\.tools: Unrecognized key: "allowlist"/,
  ],
  ['an unknown top-level key is refused', (p) => (p['extra'] = true), /\(root\): Unrecognized key: "extra"/],
  ['another version is refused', (p) => (p['wpc_version'] = '2'), /wpc_version:/],
  [
    'approval cannot be switched off',
    (p) => (p['matrix'].approval.required = false),
    /matrix\.approval\.required: approval cannot be switched off/,
  ],
  [
    'the sandbox cannot be switched off',
    (p) => (p['execution'].sandbox.mode = 'off'),
    /execution\.sandbox\.mode: the sandbox cannot be switched off/,
  ],
  [
    'requesters are required, apart from approvers',
    (p) => delete p['matrix'].requesters_allowlist,
    /matrix\.requesters_allowlist: required/,
  ],
  [
    'a display name is not a user id',
    (p) => (p['matrix'].approval.approver_user_ids_allowlist = ['Alice']),
    /approver_user_ids_allowlist\[0\]: a Matrix user id/,
  ],
  [
    'more approvals than approvers',
    (p) => (p['matrix'].approval.approvals_required = 2),
    /approvals_required: 2 approvals required but only 1 approver/,
  ],
  [
    'a duplicate room',
    (p) => p['matrix'].rooms_allowlist.push('!ops:localhost'),
    /rooms_allowlist\[1\]: !ops:localhost is listed twice/,
  ],
  [
    'receipts cannot be switched off',
    (p) => (p['model_access'].receipts = 'optional'),
    /model_access\.receipts: receipts cannot be switched off/,
  ],
  [
    'a non-finite number is refused',
    (p) => (p['tokens'].cst.ttl_seconds = Infinity),
    /tokens\.cst\.ttl_seconds/,
  ],
];
for (const [what, mutate, message] of broken) {
  test(`${what}`, () => {
    const p = clone();
    mutate(p);
    assert.throws(
      () => parseWpc(p),
      (error: unknown) => {
        assert.ok(error instanceof ClawgateError);
        assert.equal(error.code, ERROR_CODES.policyInvalid);
        assert.match(error.message, message);
        return true;
      },
    );
  });
}

test('property: any JSON value, and any mutation of a valid policy, is accepted or refused with POLICY_INVALID', () => {
  fc.assert(
    fc.property(fc.jsonValue(), (value) => {
      try {
        parseWpc(value);
      } catch (error) {
        assert.ok(error instanceof ClawgateError && error.code === ERROR_CODES.policyInvalid, String(error));
      }
    }),
    { numRuns: 500 },
  );
  const paths = [
    ['wpc_version'],
    ['matrix', 'rooms_allowlist'],
    ['matrix', 'approval', 'approvals_required'],
    ['execution', 'tools', 'allow'],
    ['execution', 'sandbox'],
    ['tokens', 'cst', 'ttl_seconds'],
    ['model_access', 'allowed_models'],
  ];
  fc.assert(
    fc.property(fc.constantFrom(...paths), fc.jsonValue(), (path, value) => {
      const p = clone();
      let target: Record<string, unknown> = p;
      for (const key of path.slice(0, -1)) target = target[key] as Record<string, unknown>;
      target[path.at(-1) as string] = value;
      try {
        parseWpc(p);
      } catch (error) {
        assert.ok(error instanceof ClawgateError && error.code === ERROR_CODES.policyInvalid, String(error));
      }
    }),
    { numRuns: 1000 },
  );
});

test('property: any text is loaded or refused with clawgate errors only', () => {
  fc.assert(
    fc.property(fc.oneof(fc.string(), fc.json(), fc.constant(exampleText.slice(0, 200))), (text) => {
      try {
        loadWpc(text);
      } catch (error) {
        assert.ok(error instanceof ClawgateError, `not a ClawgateError: ${String(error)}`);
      }
    }),
    { numRuns: 500 },
  );
});
