// The proxy's configuration: where it listens, its upstreams (the only place provider API keys
// live), its limits, and where receipts go. Validated with zod; an error names the path.
import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { z } from 'zod';
import { ClawgateError, ERROR_CODES } from '../errors.ts';

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
    /**
     * A PEM file of the certificate authorities this upstream's TLS certificate must chain to,
     * instead of the system's (an internal vLLM or llama.cpp server behind your own CA).
     */
    caFile: z.string().min(1).optional(),
  })
  .strict()
  .superRefine((upstream, ctx) => {
    if (upstream.caFile !== undefined && !upstream.baseUrl.startsWith('https:')) {
      ctx.addIssue({
        code: 'custom',
        path: ['caFile'],
        message: 'a CA file is for an https:// upstream; this baseUrl is plain HTTP',
      });
    }
  });

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
    /**
     * Also give each receipt in the Clawsig `gateway_receipt` form (GET /v1/receipts lists it as
     * `clawsig`), bound to what the caller's X-Run-Id, X-Event-Hash and X-Idempotency-Key said.
     */
    clawsigReceipts: z.boolean().default(false),
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

/**
 * The CA certificates (PEM) of each upstream that names a `caFile`, read and checked once, at
 * start: a missing, unreadable or non-certificate file stops the proxy with its path named,
 * rather than failing each call later.
 */
export function loadUpstreamCas(config: ProxyConfig): Map<UpstreamConfig, string> {
  const cas = new Map<UpstreamConfig, string>();
  config.upstreams.forEach((upstream, i) => {
    if (upstream.caFile === undefined) return;
    const where = `upstreams[${i}].caFile (${upstream.caFile})`;
    let pem: string;
    try {
      pem = readFileSync(upstream.caFile, 'utf8');
    } catch (error) {
      throw new ClawgateError(
        ERROR_CODES.configInvalid,
        `${where}: cannot be read (${(error as NodeJS.ErrnoException).code ?? String(error)})`,
      );
    }
    const blocks = pem.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
    if (blocks.length === 0)
      throw new ClawgateError(ERROR_CODES.configInvalid, `${where}: holds no PEM certificate`);
    blocks.forEach((block, j) => {
      try {
        new X509Certificate(block);
      } catch (error) {
        throw new ClawgateError(
          ERROR_CODES.configInvalid,
          `${where}: certificate ${j + 1} cannot be parsed (${error instanceof Error ? error.message : String(error)})`,
        );
      }
    });
    cas.set(upstream, pem);
  });
  return cas;
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
