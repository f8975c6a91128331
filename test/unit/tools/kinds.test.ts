// Each call's effect class and gate: the defaults, and the policy's own word per tool and method.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { argumentShape, effectOf, gateOf, type GateRules } from '../../../src/tools/kinds.ts';

const ro: GateRules = { workspaceAccess: 'ro' };

test('by default: read and search read; http reads with GET and HEAD only; exec writes with a writable workspace; the rest write', () => {
  assert.equal(effectOf('read', { path: 'a' }, ro), 'read');
  assert.equal(effectOf('search', { query: 'a' }, ro), 'read');
  assert.equal(effectOf('http', { method: 'GET' }, ro), 'read');
  assert.equal(effectOf('http', { method: 'HEAD' }, ro), 'read');
  assert.equal(effectOf('http', { method: 'POST' }, ro), 'write');
  assert.equal(effectOf('http', {}, ro), 'write', 'no method: assumed to have side effects');
  assert.equal(effectOf('exec', { argv: ['id'] }, ro), 'read');
  assert.equal(effectOf('exec', { argv: ['id'] }, { workspaceAccess: 'rw' }), 'write');
  assert.equal(effectOf('write_pr', {}, ro), 'write');
  assert.equal(effectOf('some_new_tool', {}, ro), 'write', 'an unknown tool is assumed to have side effects');
  assert.equal(gateOf('read', 'read', ro), 'never');
  assert.equal(gateOf('write_pr', 'write', ro), 'when_tainted');
});

test("the policy's own classes and gates win", () => {
  const rules: GateRules = {
    workspaceAccess: 'ro',
    effects: { search: 'write', exec: 'write' },
    httpEffects: { GET: 'write', PUT: 'read' },
    approval: { search: 'always', write_pr: 'never' },
  };
  assert.equal(effectOf('search', {}, rules), 'write');
  assert.equal(effectOf('exec', {}, rules), 'write');
  assert.equal(effectOf('http', { method: 'get' }, rules), 'write');
  assert.equal(effectOf('http', { method: 'PUT' }, rules), 'read');
  assert.equal(gateOf('search', 'write', rules), 'always');
  assert.equal(gateOf('write_pr', 'write', rules), 'never');
});

test('the shape of arguments: their structure with leaves by type, keys sorted, so only calls of one kind match', () => {
  const a = argumentShape({ message: 'x', branch: 'b', files: [{ path: 'p', content: 'c' }] });
  const b = argumentShape({ branch: 'other', files: [{ content: 'd', path: 'q' }], message: 'y' });
  assert.deepEqual(a, b);
  assert.deepEqual(a, {
    branch: 'string',
    files: [{ content: 'string', path: 'string' }],
    message: 'string',
  });
  assert.notDeepEqual(argumentShape({ argv: ['a'] }), argumentShape({ argv: ['a'], env: {} }));
  assert.deepEqual(argumentShape(null), 'null');
});
