// The tools a model is offered, as OpenAI function schemas generated from each tool's own zod
// schema (the one the tool layer validates calls with), so what the model is told and what is
// enforced cannot drift apart. In the agent loop, http is offered for GET only: calls with side
// effects wait for per-call approvals.
import { z } from 'zod';
import { TOOLS } from '../tools/runner.ts';
import { SAFE_HTTP_METHODS } from '../tools/kinds.ts';

export interface OpenAiTool {
  type: 'function';
  function: { name: string; description: string; parameters: Record<string, unknown> };
}

/** OpenAI `tools` for these tool names, in the order given; unknown names are left out. */
export function openAiTools(names: readonly string[], opts: { sideEffectFree: boolean }): OpenAiTool[] {
  const tools: OpenAiTool[] = [];
  for (const name of names) {
    const tool = TOOLS[name];
    if (!tool) continue;
    const {
      $schema: _schema,
      description: shape,
      ...parameters
    } = z.toJSONSchema(tool.args, {
      io: 'input',
      unrepresentable: 'any',
    }) as Record<string, unknown>;
    let description = tool.description;
    if (name === 'http' && opts.sideEffectFree) {
      const properties = { ...(parameters['properties'] as Record<string, Record<string, unknown>>) };
      const methods = (properties['method']?.['enum'] as string[] | undefined) ?? [];
      properties['method'] = { type: 'string', enum: methods.filter((m) => SAFE_HTTP_METHODS.includes(m)) };
      delete properties['body'];
      parameters['properties'] = properties;
      description = 'GET a URL on a host of the egress allowlist; redirects followed only to allowed hosts.';
    }
    tools.push({
      type: 'function',
      function: {
        name,
        description: typeof shape === 'string' ? `${description} (${shape})` : description,
        parameters,
      },
    });
  }
  return tools;
}
