// The proxy's configuration: where it listens, its upstreams (the only place provider API keys
// live), its limits, and where receipts go. Validated with zod; an error names the path.
import { z } from 'zod';

export const upstreamSchema = z
  .object({
    /** A short name, recorded in receipts (`openrouter`, `local-ollama`). */
    name: z.string().regex(/^[a-z0-9][a-z0-9._-]*$/, 'lowercase letters, digits, dot, dash, underscore'),
    /** Base URL of an OpenAI-compatible API, up to and including `/v1`. */
    baseUrl: z.url({ protocol: /^https?$/ }),
    /** Sent upstream as `Authorization: Bearer <apiKey>`; never returned or logged. */
    apiKey: z.string().min(1).optional(),
    /** Model ids this upstream serves. */
    models: z.array(z.string().min(1)).min(1),
  })
  .strict();

export const proxyConfigSchema = z
  .object({
    listen: z
      .object({
        host: z.string().default('127.0.0.1'),
        port: z.number().int().min(0).max(65_535).default(8787),
      })
      .strict()
      .prefault({}),
    /** Identifies this proxy in its receipts. */
    proxyId: z.string().min(1).default('clawgate-proxy'),
    upstreams: z.array(upstreamSchema).min(1),
    limits: z
      .object({
        maxBodyBytes: z
          .number()
          .int()
          .positive()
          .default(1024 * 1024),
        /** Time allowed for the upstream's first byte, and between two chunks of its answer. */
        upstreamTimeoutMs: z.number().int().positive().default(120_000),
      })
      .strict()
      .prefault({}),
    /** Append-only receipt log. */
    receiptsPath: z.string().min(1),
  })
  .strict()
  .superRefine((config, ctx) => {
    const seen = new Map<string, string>();
    config.upstreams.forEach((upstream, i) => {
      upstream.models.forEach((model, j) => {
        const other = seen.get(model);
        if (other !== undefined) {
          ctx.addIssue({
            code: 'custom',
            path: ['upstreams', i, 'models', j],
            message: `model ${model} is already served by upstream ${other}; each model has one upstream`,
          });
        }
        seen.set(model, upstream.name);
      });
    });
  });

export type ProxyConfig = z.infer<typeof proxyConfigSchema>;
export type ProxyConfigInput = z.input<typeof proxyConfigSchema>;
export type UpstreamConfig = z.infer<typeof upstreamSchema>;

/** `upstreams[0].baseUrl` style paths, as the rest of clawgate names config errors. */
export function formatConfigPath(path: ReadonlyArray<PropertyKey>): string {
  return path.reduce<string>((out, part) => {
    if (typeof part === 'number') return `${out}[${part}]`;
    return out === '' ? String(part) : `${out}.${String(part)}`;
  }, '');
}

export class ProxyConfigError extends Error {
  override readonly name = 'ProxyConfigError';
}

export function parseProxyConfig(input: unknown): ProxyConfig {
  const result = proxyConfigSchema.safeParse(input);
  if (!result.success) {
    const lines = result.error.issues.map(
      (issue) => `${formatConfigPath(issue.path) || '(root)'}: ${issue.message}`,
    );
    throw new ProxyConfigError(`invalid proxy config:\n  ${lines.join('\n  ')}`);
  }
  return result.data;
}
