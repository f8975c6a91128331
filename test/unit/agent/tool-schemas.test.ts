// The tools the model is offered: OpenAI function schemas generated from each tool's own zod
// schema, so what the model is told and what the tool layer enforces are one thing.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { openAiTools } from '../../../src/agent/tool-schemas.ts';
import { TOOLS } from '../../../src/tools/runner.ts';

test('each offered tool is an OpenAI function whose parameters are its zod schema as JSON Schema', () => {
  const [read, search] = openAiTools(['read', 'search', 'no_such_tool'], { sideEffectFree: true });
  assert.equal(openAiTools(['read', 'search', 'no_such_tool'], { sideEffectFree: true }).length, 2);
  assert.equal(read?.type, 'function');
  assert.equal(read?.function.name, 'read');
  assert.match(read?.function.description ?? '', /^Read a file under the job workspace\./);
  assert.deepEqual(read?.function.parameters, {
    type: 'object',
    properties: { path: { type: 'string', minLength: 1, maxLength: 4096 } },
    required: ['path'],
    additionalProperties: false,
  });
  assert.deepEqual(search?.function.parameters['required'], ['query']);
  assert.ok(!('$schema' in (read?.function.parameters ?? {})));
});

test('in the agent loop http is offered for GET and HEAD only, without a body; other tools as they are', () => {
  const [http] = openAiTools(['http'], { sideEffectFree: true });
  const properties = http?.function.parameters['properties'] as Record<string, { enum?: string[] }>;
  assert.deepEqual(properties['method']?.enum, ['GET', 'HEAD']);
  assert.ok(!('body' in properties));
  assert.match(http?.function.description ?? '', /^GET a URL/);
  const [full] = openAiTools(['http'], { sideEffectFree: false });
  const all = full?.function.parameters['properties'] as Record<string, { enum?: string[] }>;
  assert.deepEqual(all['method']?.enum, ['GET', 'HEAD', 'POST']);
  // What the schema says the tool takes is what the tool accepts.
  assert.equal(TOOLS['http']?.args.safeParse({ method: 'HEAD', url: 'https://example.org/' }).success, true);
  assert.equal(TOOLS['read']?.args.safeParse({ path: 'a', extra: 1 }).success, false);
});
