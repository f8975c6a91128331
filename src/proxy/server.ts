// The receipting model proxy. It speaks the OpenAI-compatible API, authenticates every call with
// the job's capability token (CST), forwards allowed calls to the configured upstream with the
// upstream's key (which never leaves the proxy), passes streamed answers through as they arrive,
// and signs a receipt for every call that reached a decision. A response completes to the
// caller only after its receipt is durable on disk.
import { randomUUID } from 'node:crypto';
import { createHash, type Hash } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Pool, type Dispatcher } from 'undici';
import { z } from 'zod';
import {
  CLAWSIG_BINDING_JWS_TYPE,
  signGatewayReceipt,
  type GatewayBinding,
  type ReceiptBindingRequest,
} from '../evidence/clawsig.ts';
import { verifyCompactJws, type Jwks } from '../evidence/jws.ts';
import { loadUpstreamCas, type ProxyConfig, type UpstreamConfig } from './config.ts';
import type { ReceiptStore } from './receipt-store.ts';
import {
  sha256,
  signReceipt,
  type ReceiptPayload,
  type ReceiptSigningKey,
  type ReceiptStatus,
} from './receipts.ts';
import { ProxyMetrics } from '../metrics/proxy.ts';
import { answerMetrics, METRICS_PATH } from '../metrics/prometheus.ts';
import { Outage } from '../stack/outages.ts';
import { pino, type Logger } from 'pino';

/** Stable reason codes of the proxy's own refusals (token and policy codes come from the verifier). */
export const PROXY_ERRORS = {
  tokenMissing: 'TOKEN_MISSING',
  bodyTooLarge: 'REQUEST_TOO_LARGE',
  malformed: 'REQUEST_MALFORMED',
  modelNotInScope: 'MODEL_NOT_IN_TOKEN_SCOPE',
  modelUnavailable: 'MODEL_NOT_SERVED',
  receiptOtherJob: 'RECEIPT_OF_OTHER_JOB',
  receiptNotFound: 'RECEIPT_NOT_FOUND',
  notFound: 'ROUTE_NOT_FOUND',
  upstreamTimeout: 'UPSTREAM_TIMEOUT',
  upstreamFailed: 'UPSTREAM_FAILED',
  receiptNotPersisted: 'RECEIPT_NOT_PERSISTED',
  budgetExhausted: 'MODEL_BUDGET_EXHAUSTED',
  bindingUnsigned: 'BINDING_REQUEST_UNSIGNED',
  bindingStale: 'BINDING_REQUEST_STALE',
  bindingOff: 'CLAWSIG_BINDING_NOT_CONFIGURED',
} as const;

/** How far a binding request's `iat` may be from the proxy's clock. */
const BINDING_MAX_SKEW_SECONDS = 300;

const b64u = z.string().regex(/^[A-Za-z0-9_-]{8,128}$/, 'base64url without padding, 8 to 128 characters');
const bindingRequestSchema = z
  .object({
    job: z.object({ workflow_id: z.string().min(1), run_id: z.string().min(1) }).strict(),
    run_id: z.string().min(1).max(200),
    iat: z.number().int(),
    receipts: z
      .array(
        z
          .object({
            receipt_id: z.string().min(1).max(200),
            event_hash_b64u: b64u,
            span_id: z.string().min(1).max(200),
            parent_span_id: z.string().min(1).max(200).nullable(),
            phase: z.enum(['planning', 'execution']),
          })
          .strict(),
      )
      .max(1000),
  })
  .strict();
export type BindingRequest = z.infer<typeof bindingRequestSchema>;

/** The Clawsig binding headers a caller may send with a model call. */
const CALL_BINDING_HEADERS = {
  run_id: { header: 'x-run-id', schema: z.string().min(1).max(200) },
  event_hash_b64u: { header: 'x-event-hash', schema: b64u },
  nonce: { header: 'x-idempotency-key', schema: z.string().min(1).max(200) },
} as const;

/** What a verified token allows a call to do. */
export interface CallGrant {
  workflowId: string;
  runId: string;
  tokenId: string;
  policyHash: string | null;
  /** Models the token's scope names (already intersected with the job's policy by the verifier). */
  models: readonly string[];
  /** The most model calls the job may have sent upstream (the token's budget claim), if any. */
  modelCallBudget?: number;
}

export type TokenCheck =
  { ok: true; grant: CallGrant } | { ok: false; code: string; reason: string; status?: 401 | 403 | 503 };

/**
 * What a token is presented for: a `call` (a model call, the model list) or a `read` of the
 * receipts its job's calls left, which a token outside its lifetime may still do (a turn whose
 * answer came after its token expired has its receipt read with that token).
 */
export type TokenUse = 'call' | 'read';

/**
 * Verifies a bearer CST for a model call: signature, type, expiry, audience, revocation, pinned
 * policy hash against the active one, and the job's policy. The proxy adds the model-scope check.
 * For a `read`, the token's lifetime is not checked.
 */
export type VerifyCallToken = (token: string, use?: TokenUse) => Promise<TokenCheck>;

export interface ProxyDeps {
  config: ProxyConfig;
  verifyToken: VerifyCallToken;
  receiptKey: ReceiptSigningKey;
  store: ReceiptStore;
  now?: () => Date;
  /**
   * The public keys that seal bundles: a job's sealer (and only it) may ask the proxy to sign
   * the job's receipts in the Clawsig form, bound to the job's event chain. Absent: refused.
   */
  bindingJwks?: () => Jwks;
  /** More to say in GET /healthz (the shared control state's mirror, say). */
  health?: () => Record<string, unknown>;
  /**
   * Why token checks refuse every call now (a stale mirror of the shared control state), or
   * null: GET /healthz then answers 503 with the reason, so a load balancer can route away.
   */
  refusing?: () => string | null;
  /** Where the proxy counts calls, receipts and refusals (its GET /metrics); a registry of its own when absent. */
  metrics?: ProxyMetrics;
  /** Where an upstream or the receipt log that starts or stops failing is said (once each way). */
  logger?: Logger;
}

/**
 * How the proxy's upstreams and its receipt log fare: each failing since its last call failed
 * (no answer, a timeout, a 5xx; a receipt not written or not fsynced) until one succeeds.
 */
function proxyDependencies(config: ProxyConfig, log: Logger) {
  const receiptLog = new Outage({
    service: 'the receipt log',
    log,
    impact: 'model calls fail closed until a receipt can be written',
    words: { down: 'cannot be written', up: 'is written again' },
  });
  const upstreams = new Map(
    config.upstreams.map((u) => [
      u,
      new Outage({
        service: `upstream ${u.name}`,
        log,
        impact: 'calls to its models fail',
        words: { down: 'is failing', up: 'answers again' },
      }),
    ]),
  );
  return {
    receiptLog,
    upstreams,
    /** What GET /healthz says of them: the reasons to answer 503, and each one's state. */
    health() {
      const reasons = [receiptLog, ...upstreams.values()]
        .map((o) => o.reason())
        .filter((r): r is string => r !== null);
      return {
        reasons,
        receiptLog: receiptLog.status(),
        upstreams: Object.fromEntries([...upstreams].map(([u, o]) => [u.name, o.status()])),
      };
    },
  };
}

export interface RunningProxy {
  readonly url: string;
  readonly server: Server;
  readonly store: ReceiptStore;
  readonly metrics: ProxyMetrics;
  close(): Promise<void>;
}

/** A call the proxy refuses: an HTTP status, a stable code, and a reason a person understands. */
class Refusal extends Error {
  readonly status: number;
  readonly code: string;
  readonly reason: string;
  constructor(status: number, code: string, reason: string) {
    super(`${code}: ${reason}`);
    this.status = status;
    this.code = code;
    this.reason = reason;
  }
}

/** Whether a stored receipt is of a call that was sent upstream (not one refused or abandoned before). */
function receiptSentUpstream(jws: string): boolean {
  try {
    const payload = JSON.parse(Buffer.from(jws.split('.')[1] ?? '', 'base64url').toString('utf8')) as {
      request_sha256?: unknown;
    };
    return typeof payload.request_sha256 === 'string';
  } catch {
    return true; // unreadable: counted, so a budget can only be reached sooner
  }
}

function errorBody(code: string, message: string, type = 'invalid_request_error'): Buffer {
  return Buffer.from(JSON.stringify({ error: { message, type, code, param: null } }));
}

/** The Retry-After of the proxy's 503 answers, in seconds. */
const RETRY_AFTER_S = 2;

function sendError(
  res: ServerResponse,
  status: number,
  code: string,
  message: string,
  receiptId?: string,
): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  const body = errorBody(code, message, status >= 500 ? 'server_error' : 'invalid_request_error');
  res.writeHead(status, {
    'content-type': 'application/json',
    'content-length': body.length,
    ...(receiptId ? { 'x-clawgate-receipt-id': receiptId } : {}),
    // Every 503 of the proxy is a "not now": what it needs (its receipt log, the shared control
    // state, an upstream) may be back in a moment.
    ...(status === 503 ? { 'retry-after': String(RETRY_AFTER_S) } : {}),
  });
  res.end(body);
}

function internalError(res: ServerResponse, error: unknown): void {
  sendError(res, 500, 'INTERNAL', `proxy error: ${error instanceof Error ? error.message : String(error)}`);
}

function bearer(req: IncomingMessage): string | undefined {
  const header = req.headers.authorization;
  if (!header) return undefined;
  const match = /^Bearer\s+(\S+)\s*$/i.exec(header);
  return match?.[1];
}

/** Reads the body up to `limit` bytes; a longer body is a refusal, not a crash. */
async function readBody(req: IncomingMessage, limit: number): Promise<Buffer> {
  const declared = Number(req.headers['content-length'] ?? NaN);
  if (Number.isFinite(declared) && declared > limit) {
    throw new Refusal(
      413,
      PROXY_ERRORS.bodyTooLarge,
      `request body of ${declared} bytes exceeds the limit of ${limit}`,
    );
  }
  // Usually the whole body came with the headers and waits in the stream's buffer (its length
  // declared, and never exceeded, by content-length): taken at once, without a turn of the loop.
  if (Number.isFinite(declared) && declared > 0 && req.readableLength === declared) {
    const body = req.read() as Buffer | null;
    if (body?.length === declared) {
      req.resume(); // nothing is left but the end of the stream
      return body;
    }
    if (body) req.unshift(body);
  }
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > limit) {
      throw new Refusal(413, PROXY_ERRORS.bodyTooLarge, `request body exceeds the limit of ${limit} bytes`);
    }
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks);
}

interface ChatRequestSummary {
  model: string;
  stream: boolean;
}

function parseChatRequest(body: Buffer): ChatRequestSummary {
  let parsed: unknown;
  try {
    parsed = JSON.parse(body.toString('utf8'));
  } catch (error) {
    throw new Refusal(
      400,
      PROXY_ERRORS.malformed,
      `request body is not valid JSON (${error instanceof Error ? error.message : 'parse error'})`,
    );
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    throw new Refusal(400, PROXY_ERRORS.malformed, 'request body must be a JSON object');
  }
  const request = parsed as Record<string, unknown>;
  if (typeof request['model'] !== 'string' || request['model'] === '') {
    throw new Refusal(400, PROXY_ERRORS.malformed, 'model: required, a non-empty string');
  }
  if (!Array.isArray(request['messages']) || request['messages'].length === 0) {
    throw new Refusal(400, PROXY_ERRORS.malformed, 'messages: required, a non-empty array');
  }
  if (request['stream'] !== undefined && typeof request['stream'] !== 'boolean') {
    throw new Refusal(400, PROXY_ERRORS.malformed, 'stream: must be true or false');
  }
  return { model: request['model'], stream: request['stream'] === true };
}

type Usage = NonNullable<ReceiptPayload['usage']>;

/** A receipt's fields for a call that sent nothing upstream (refused, or its caller gone first). */
const NOTHING_SENT = {
  upstream: null,
  request_sha256: null,
  response_sha256: null,
  request_bytes: 0,
  response_bytes: 0,
  usage: null,
} as const;

function usageFrom(value: unknown): Usage | null {
  if (typeof value !== 'object' || value === null) return null;
  const u = value as Record<string, unknown>;
  const n = (x: unknown): number | null =>
    typeof x === 'number' && Number.isInteger(x) && x >= 0 ? x : null;
  const prompt = n(u['prompt_tokens']);
  const completion = n(u['completion_tokens']);
  if (prompt === null || completion === null) return null;
  return {
    prompt_tokens: prompt,
    completion_tokens: completion,
    total_tokens: n(u['total_tokens']) ?? prompt + completion,
  };
}

/**
 * Finds the usage an upstream reports in the last SSE events of a stream (OpenAI's final chunk),
 * and an error it reports in the stream after its 200 (OpenRouter's mid-stream `error` event).
 */
class StreamUsageScanner {
  private tail = '';
  usage: Usage | null = null;
  /** What the first error event of the stream said. */
  error: string | null = null;
  push(chunk: Buffer): void {
    const text = this.tail + chunk.toString('utf8');
    const lines = text.split('\n');
    this.tail = lines.pop() ?? '';
    for (const line of lines) {
      if (!line.startsWith('data:')) continue;
      const usage = line.includes('"usage"');
      const error = this.error === null && line.includes('"error"');
      if (!usage && !error) continue;
      try {
        const event = JSON.parse(line.slice(5)) as { usage?: unknown; error?: unknown };
        const found = usageFrom(event.usage);
        if (found) this.usage = found;
        if (error && typeof event.error === 'object' && event.error !== null) {
          const { message, code } = event.error as { message?: unknown; code?: unknown };
          const said = typeof message === 'string' ? message : 'an error event';
          const coded = typeof code === 'string' || typeof code === 'number' ? ` (code ${code})` : '';
          this.error = `${said}${coded}`;
        }
      } catch {
        // Not JSON: not a usage or error line.
      }
    }
  }
}

/** The event that ends an OpenAI-compatible stream: clients stop reading there. */
const STREAM_END = Buffer.from('data: [DONE]');

/**
 * What of a stream waits for its receipt: its end event (`data: [DONE]`) and what comes after
 * it. An OpenAI client takes the answer as complete at that event, whatever follows, so it goes
 * out only once the receipt is on disk; without it the caller sees the connection cut. Every
 * event before it passes at once (a chunk that ends with the first bytes of an event that may be
 * the end keeps those bytes back: no client can read an event before it is whole anyway).
 */
class StreamEndHold {
  private held: Buffer = Buffer.alloc(0);
  private ended = false;
  /** The bytes of `chunk` that may go to the caller now; the rest is held. */
  pass(chunk: Buffer): Buffer {
    const data = this.held.length > 0 ? Buffer.concat([this.held, chunk]) : chunk;
    if (this.ended) {
      this.held = data;
      return Buffer.alloc(0);
    }
    const atEventStart = (i: number): boolean => i === 0 || data[i - 1] === 0x0a;
    for (let at = data.indexOf(STREAM_END); at >= 0; at = data.indexOf(STREAM_END, at + 1)) {
      if (!atEventStart(at)) continue;
      this.ended = true;
      this.held = data.subarray(at);
      return data.subarray(0, at);
    }
    for (let k = Math.min(STREAM_END.length - 1, data.length); k > 0; k--) {
      const from = data.length - k;
      if (atEventStart(from) && data.subarray(from).equals(STREAM_END.subarray(0, k))) {
        this.held = data.subarray(from);
        return data.subarray(0, from);
      }
    }
    this.held = Buffer.alloc(0);
    return data;
  }
  /** What is held, once the receipt is on disk. */
  rest(): Buffer {
    return this.held;
  }
}

/** The Clawsig binding a model call's headers name, or a refusal naming the header at fault. */
function callBindingOf(req: IncomingMessage): NonNullable<ReceiptPayload['clawsig']> | null {
  const out: Record<string, string> = {};
  for (const [field, { header, schema }] of Object.entries(CALL_BINDING_HEADERS)) {
    const values = req.headersDistinct[header];
    if (values === undefined) continue;
    if (values.length !== 1) {
      throw new Refusal(400, PROXY_ERRORS.malformed, `${header}: sent ${values.length} times; send it once`);
    }
    const parsed = schema.safeParse(values[0]);
    if (!parsed.success) {
      throw new Refusal(
        400,
        PROXY_ERRORS.malformed,
        `${header}: ${parsed.error.issues[0]?.message ?? 'invalid'} (once, at most 200 characters)`,
      );
    }
    out[field] = parsed.data;
  }
  return Object.keys(out).length > 0 ? out : null;
}

export function startProxy(deps: ProxyDeps): Promise<RunningProxy> {
  const { config, store } = deps;
  const now = deps.now ?? (() => new Date());
  const metrics = deps.metrics ?? new ProxyMetrics();
  store.onFsync = metrics.fsynced;
  const dependencies = proxyDependencies(config, deps.logger ?? pino({ level: 'silent' }));
  const upstreamByModel = new Map<string, UpstreamConfig>();
  for (const upstream of config.upstreams)
    for (const model of upstream.models) upstreamByModel.set(model, upstream);
  // Each upstream's connection pool (undici, the client Node's own fetch is built on: it set up
  // and parsed a call in less time than node:http here) and chat path, made once, at start: a CA
  // file that cannot be used stops the proxy here, not each call later. The proxy keeps the one
  // timer of a call (first byte, and between chunks), so the pool's own timeouts are off.
  interface Target {
    pool: Pool;
    path: string;
  }
  let cas: Map<UpstreamConfig, string>;
  try {
    cas = loadUpstreamCas(config);
  } catch (error) {
    return store.close().then(() => Promise.reject(error as Error));
  }
  const targets = new Map<UpstreamConfig, Target>();
  for (const upstream of config.upstreams) {
    const url = new URL(`${upstream.baseUrl.replace(/\/$/, '')}/chat/completions`);
    const ca = cas.get(upstream);
    const pool = new Pool(url.origin, {
      connections: 256,
      keepAliveTimeout: 60_000,
      headersTimeout: 0,
      bodyTimeout: 0,
      ...(ca === undefined ? {} : { connect: { ca } }),
    });
    targets.set(upstream, { pool, path: `${url.pathname}${url.search}` });
  }
  const targetOf = (upstream: UpstreamConfig): Target => targets.get(upstream) as Target;
  /** Ends every upstream connection (calls still running fail, as the proxy is going). */
  const closePools = async (): Promise<void> => {
    await Promise.all([...targets.values()].map(({ pool }) => pool.destroy().catch(() => undefined)));
  };

  /** `arrived`: the call's arrival, on performance.now()'s clock (for its latency). */
  async function persistReceipt(
    fields: Omit<ReceiptPayload, 'v' | 'proxy_id' | 'prev_receipt_sha256'>,
    arrived: number,
  ): Promise<void> {
    const jobId = fields.job?.workflow_id ?? null;
    const prev = jobId === null ? null : store.chainHead(jobId);
    const payload: ReceiptPayload = { v: 1, proxy_id: config.proxyId, ...fields, prev_receipt_sha256: prev };
    const signed = signReceipt(payload, deps.receiptKey);
    if (jobId !== null) store.advanceHead(jobId, signed.payloadSha256);
    try {
      await store.append(signed);
    } catch (error) {
      metrics.callReceipted(fields.status, false, (performance.now() - arrived) / 1000);
      dependencies.receiptLog.failed(error);
      throw error;
    }
    metrics.callReceipted(fields.status, true, (performance.now() - arrived) / 1000);
    dependencies.receiptLog.answered();
  }

  /** A token refused: counted by its code, then the same refusal as before. */
  const tokenRefusal = (status: number, code: string, reason: string): Refusal => {
    metrics.tokenRefused(code);
    return new Refusal(status, code, reason);
  };

  // Model calls each job has sent upstream, counted from its receipts (read once per job from
  // the store, then kept as calls go out): the budget a token carries is checked against it.
  const sentUpstream = new Map<string, number>();
  const upstreamCallsOf = (jobId: string): number => {
    let count = sentUpstream.get(jobId);
    if (count === undefined) {
      count = store.forJob(jobId).filter((r) => receiptSentUpstream(r.jws)).length;
      sentUpstream.set(jobId, count);
    }
    return count;
  };

  async function handleChat(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const receiptId = randomUUID();
    const arrived = performance.now();
    const startedAt = now();
    let grant: CallGrant | null = null;
    let model: string | null = null;
    let stream = false;
    let callBinding: NonNullable<ReceiptPayload['clawsig']> | null = null;
    const base = () => ({
      ...(callBinding ? { clawsig: callBinding } : {}),
      receipt_id: receiptId,
      job: grant ? { workflow_id: grant.workflowId, run_id: grant.runId } : null,
      token_id: grant?.tokenId ?? null,
      policy_hash: grant?.policyHash ?? null,
      model,
      stream,
      started_at: startedAt.toISOString(),
    });

    const refuse = async (refusal: Refusal): Promise<void> => {
      try {
        await persistReceipt(
          {
            ...base(),
            ...NOTHING_SENT,
            status: 'refused',
            http_status: refusal.status,
            refusal: { code: refusal.code, reason: refusal.reason },
            error: null,
            ended_at: now().toISOString(),
          },
          arrived,
        );
      } catch (error) {
        // Still refused; the caller learns the refusal could not be recorded.
        const message = `refused (${refusal.code}: ${refusal.reason}), and the receipt could not be written: ${error instanceof Error ? error.message : String(error)}`;
        sendError(res, 500, PROXY_ERRORS.receiptNotPersisted, message);
        return;
      }
      sendError(res, refusal.status, refusal.code, refusal.reason, receiptId);
    };

    let body: Buffer;
    let upstream: UpstreamConfig;
    try {
      const token = bearer(req);
      if (!token) {
        throw tokenRefusal(
          401,
          PROXY_ERRORS.tokenMissing,
          'no capability token: send Authorization: Bearer <CST>',
        );
      }
      const check = await deps.verifyToken(token);
      if (!check.ok) throw tokenRefusal(check.status ?? 401, check.code, check.reason);
      grant = check.grant;
      if (config.clawsigReceipts) callBinding = callBindingOf(req);
      body = await readBody(req, config.limits.maxBodyBytes);
      const summary = parseChatRequest(body);
      model = summary.model;
      stream = summary.stream;
      if (!grant.models.includes(summary.model)) {
        throw new Refusal(
          403,
          PROXY_ERRORS.modelNotInScope,
          `model ${summary.model} is not in this token's scope (allowed: ${grant.models.join(', ') || 'none'})`,
        );
      }
      const found = upstreamByModel.get(summary.model);
      if (!found) {
        throw new Refusal(
          404,
          PROXY_ERRORS.modelUnavailable,
          `no upstream of this proxy serves model ${summary.model}`,
        );
      }
      upstream = found;
      const used = upstreamCallsOf(grant.workflowId);
      if (grant.modelCallBudget !== undefined && used >= grant.modelCallBudget) {
        throw new Refusal(
          429,
          PROXY_ERRORS.budgetExhausted,
          `job ${grant.workflowId} has made ${used} model call(s), its budget is ${grant.modelCallBudget}`,
        );
      }
      // Counted now, before it goes out: two calls at once cannot both take the last one.
      sentUpstream.set(grant.workflowId, used + 1);
    } catch (error) {
      if (!(error instanceof Refusal) && req.destroyed && !req.complete) {
        // The caller went away while its request was being read: nothing went upstream.
        await persistReceipt(
          {
            ...base(),
            ...NOTHING_SENT,
            status: 'aborted',
            http_status: 0,
            refusal: null,
            error: 'the caller closed the connection before its request was read',
            ended_at: now().toISOString(),
          },
          arrived,
        );
        return;
      }
      req.resume();
      // Anything else that stops the checks is a refusal too (fail closed), and recorded.
      await refuse(
        error instanceof Refusal
          ? error
          : new Refusal(
              500,
              'INTERNAL',
              `proxy error: ${error instanceof Error ? error.message : String(error)}`,
            ),
      );
      return;
    }
    await forward(req, res, { body, upstream, base, receiptId, arrived });
  }

  async function forward(
    req: IncomingMessage,
    res: ServerResponse,
    call: {
      body: Buffer;
      upstream: UpstreamConfig;
      base: () => Record<string, unknown>;
      receiptId: string;
      arrived: number;
    },
  ): Promise<void> {
    const { body, upstream, receiptId } = call;
    const { pool, path } = targetOf(upstream);
    const responseHash: Hash = createHash('sha256');
    let responseBytes = 0;
    let upstreamStatus = 0;
    const usageScanner = new StreamUsageScanner();
    const endHold = new StreamEndHold();
    const jsonChunks: Buffer[] = [];
    let outcome: { status: ReceiptStatus; error: string | null } | undefined;
    let streaming = false;
    let jsonContentType = 'application/json';
    let timer: NodeJS.Timeout | undefined;

    const finished = new Promise<void>((resolve) => {
      let controller: Dispatcher.DispatchController | undefined;
      const settle = (status: ReceiptStatus, error: string | null): void => {
        if (outcome) return;
        outcome = { status, error };
        clearTimeout(timer);
        resolve();
      };
      /** Ends the upstream call (its connection goes), once it has one. */
      const abortUpstream = (why: string): void => {
        if (controller && !controller.aborted) controller.abort(new Error(why));
      };
      const armTimer = (): void => {
        clearTimeout(timer);
        timer = setTimeout(() => {
          settle(
            'timeout',
            `no answer from upstream ${upstream.name} within ${config.limits.upstreamTimeoutMs} ms`,
          );
          abortUpstream('timeout');
        }, config.limits.upstreamTimeoutMs);
      };
      const account = (chunk: Buffer): void => {
        if (!outcome) armTimer();
        responseHash.update(chunk);
        responseBytes += chunk.length;
        if (streaming) usageScanner.push(chunk);
      };
      armTimer();
      // The caller went away before the answer completed: abort the upstream call.
      res.once('close', () => {
        if (!res.writableFinished && !outcome) {
          settle('aborted', 'the caller closed the connection before the answer was complete');
          abortUpstream('the caller closed the connection');
        }
      });
      pool.dispatch(
        {
          path,
          method: 'POST',
          headers: {
            'content-type': 'application/json',
            accept: req.headers.accept ?? 'application/json',
            ...(upstream.apiKey ? { authorization: `Bearer ${upstream.apiKey}` } : {}),
          },
          body,
        },
        {
          onRequestStart(c) {
            controller = c;
            // Settled before the call had a connection (the caller left, the timer fired).
            if (outcome) c.abort(new Error(outcome.error ?? outcome.status));
          },
          onResponseStart(_c, statusCode, headers) {
            upstreamStatus = statusCode;
            const type = headers['content-type'];
            const contentType = (Array.isArray(type) ? type[0] : type) ?? 'application/json';
            streaming = contentType.startsWith('text/event-stream');
            jsonContentType = contentType;
            if (streaming) {
              // A stream's headers go out with its first event (one write, not two), and its
              // events as they arrive. No content-length: the response ends (its last chunk)
              // only after the receipt is on disk.
              res.writeHead(upstreamStatus, {
                'content-type': contentType,
                'cache-control': 'no-cache',
                'x-clawgate-receipt-id': receiptId,
              });
            }
          },
          onResponseData(_c, chunk) {
            if (streaming) {
              // The event goes to the caller first (the write leaves on the next tick); it is
              // hashed and scanned for usage in a microtask, which runs after that write and,
              // in the order of the chunks, before the outcome is read (a settled call resumes
              // in a later microtask).
              const ready = endHold.pass(chunk);
              if (ready.length > 0) res.write(ready);
              queueMicrotask(() => account(chunk));
            } else {
              // A JSON answer is one document: it goes out whole, in one write, once its
              // receipt is on disk (the caller cannot use half of it anyway).
              account(chunk);
              jsonChunks.push(chunk);
            }
          },
          onResponseEnd() {
            settle(upstreamStatus >= 200 && upstreamStatus < 300 ? 'ok' : 'upstream_error', null);
          },
          onResponseError(_c, error) {
            settle(
              'upstream_failed',
              upstreamStatus === 0
                ? `upstream ${upstream.name}: ${error.message}`
                : `upstream ${upstream.name} failed mid-answer: ${error.message}`,
            );
          },
        },
      );
    });
    await finished;
    let result = outcome ?? { status: 'upstream_failed' as const, error: 'no outcome' };
    if (result.status === 'ok' && usageScanner.error !== null) {
      // A 200 stream that carried an error event: the answer in it is not the model's whole answer.
      result = {
        status: 'upstream_error',
        error: `upstream ${upstream.name} reported an error mid-stream: ${usageScanner.error}`,
      };
    }
    const upstreamHealth = dependencies.upstreams.get(upstream);
    if (result.status === 'timeout' || result.status === 'upstream_failed')
      upstreamHealth?.failed(result.error);
    else if (upstreamStatus >= 500) upstreamHealth?.failed(`it answered ${upstreamStatus}`);
    else if (result.status !== 'aborted') upstreamHealth?.answered();
    let usage: Usage | null = usageScanner.usage;
    const json = streaming ? null : Buffer.concat(jsonChunks);
    if (!usage && json !== null && json.length > 0 && result.status === 'ok') {
      try {
        usage = usageFrom((JSON.parse(json.toString('utf8')) as { usage?: unknown }).usage);
      } catch {
        usage = null;
      }
    }
    // A JSON answer cut off mid-way is a gateway error, whatever status came before the cut:
    // the caller gets none of it. A stream's status went out with its first event.
    const httpStatus =
      result.status === 'timeout'
        ? 504
        : result.status === 'upstream_failed' && (upstreamStatus === 0 || !streaming)
          ? 502
          : upstreamStatus;
    try {
      await persistReceipt(
        {
          ...(call.base() as Pick<
            ReceiptPayload,
            'receipt_id' | 'job' | 'token_id' | 'policy_hash' | 'model' | 'stream' | 'started_at'
          >),
          upstream: { name: upstream.name, url: upstream.baseUrl },
          status: result.status,
          http_status: httpStatus,
          refusal: null,
          error: result.error,
          request_sha256: sha256(body),
          response_sha256: responseHash.digest('hex'),
          request_bytes: body.length,
          response_bytes: responseBytes,
          usage,
          ended_at: now().toISOString(),
        },
        call.arrived,
      );
    } catch (error) {
      // Fail closed: without a durable receipt the answer does not complete.
      const message = `the receipt could not be written: ${error instanceof Error ? error.message : String(error)}`;
      if (!res.headersSent) sendError(res, 500, PROXY_ERRORS.receiptNotPersisted, message);
      else {
        // The stream's end event was held back: the caller sees it cut, not complete.
        if (streaming)
          res.write(`: clawgate-error ${PROXY_ERRORS.receiptNotPersisted}\n\n`, () => res.destroy());
        else res.destroy();
      }
      return;
    }
    if (result.status === 'aborted') return;
    if (json !== null && (result.status === 'ok' || result.status === 'upstream_error')) {
      res.writeHead(upstreamStatus, {
        'content-type': jsonContentType,
        'content-length': json.length,
        'cache-control': 'no-cache',
        'x-clawgate-receipt-id': receiptId,
      });
      res.end(json);
      return;
    }
    if (!res.headersSent) {
      const code = result.status === 'timeout' ? PROXY_ERRORS.upstreamTimeout : PROXY_ERRORS.upstreamFailed;
      sendError(res, httpStatus, code, result.error ?? 'upstream failure', receiptId);
      return;
    }
    if (result.status === 'ok' || result.status === 'upstream_error') {
      // The receipt is on disk: the end event goes out, and the receipt id closes the stream,
      // as an SSE comment clients ignore.
      res.end(Buffer.concat([endHold.rest(), Buffer.from(`: clawgate-receipt ${receiptId}\n\n`)]));
      return;
    }
    // The upstream failed mid-answer: say so in the stream, then cut the connection so the
    // caller cannot mistake the partial answer for a complete one.
    if (streaming)
      res.write(`: clawgate-error ${result.status} receipt ${receiptId}\n\n`, () => res.destroy());
    else res.destroy();
  }

  async function handleModels(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const token = bearer(req);
    if (!token) {
      metrics.tokenRefused(PROXY_ERRORS.tokenMissing);
      return sendError(
        res,
        401,
        PROXY_ERRORS.tokenMissing,
        'no capability token: send Authorization: Bearer <CST>',
      );
    }
    const check = await deps.verifyToken(token);
    if (!check.ok) {
      metrics.tokenRefused(check.code);
      return sendError(res, check.status ?? 401, check.code, check.reason);
    }
    const models = check.grant.models.filter((m) => upstreamByModel.has(m));
    const body = Buffer.from(
      JSON.stringify({
        object: 'list',
        data: models.map((id) => ({
          id,
          object: 'model',
          owned_by: upstreamByModel.get(id)?.name ?? 'unknown',
        })),
      }),
    );
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': body.length });
    res.end(body);
  }

  async function handleReceipts(req: IncomingMessage, res: ServerResponse, url: URL): Promise<void> {
    const token = bearer(req);
    if (!token) {
      metrics.tokenRefused(PROXY_ERRORS.tokenMissing);
      return sendError(
        res,
        401,
        PROXY_ERRORS.tokenMissing,
        'no capability token: send Authorization: Bearer <CST>',
      );
    }
    const check = await deps.verifyToken(token, 'read');
    if (!check.ok) {
      metrics.tokenRefused(check.code);
      return sendError(res, check.status ?? 401, check.code, check.reason);
    }
    const rest = url.pathname.slice('/v1/receipts'.length);
    let receipts;
    if (rest === '' || rest === '/') {
      const job = url.searchParams.get('job') ?? check.grant.workflowId;
      if (job !== check.grant.workflowId) {
        return sendError(
          res,
          403,
          PROXY_ERRORS.receiptOtherJob,
          `this token may read receipts of job ${check.grant.workflowId} only`,
        );
      }
      receipts = store.forJob(job);
      // `after=<receipt id>`: only the receipts that came after that one (a job's new ones).
      const after = url.searchParams.get('after');
      if (after !== null) {
        const at = receipts.findIndex((r) => r.receiptId === after);
        if (at === -1) {
          return sendError(res, 404, PROXY_ERRORS.receiptNotFound, `job ${job} has no receipt ${after}`);
        }
        receipts = receipts.slice(at + 1);
      }
    } else {
      const receipt = store.get(decodeURIComponent(rest.slice(1)));
      if (!receipt) return sendError(res, 404, PROXY_ERRORS.receiptNotFound, `no receipt ${rest.slice(1)}`);
      if (receipt.jobId !== check.grant.workflowId) {
        return sendError(
          res,
          403,
          PROXY_ERRORS.receiptOtherJob,
          `this token may read receipts of job ${check.grant.workflowId} only`,
        );
      }
      receipts = [receipt];
    }
    const body = Buffer.from(
      JSON.stringify({
        receipts: receipts.map((r) => ({
          receipt_id: r.receiptId,
          job_id: r.jobId,
          jws: r.jws,
          ...(config.clawsigReceipts ? { clawsig: clawsigFormOf(r) } : {}),
        })),
      }),
    );
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': body.length });
    res.end(body);
  }

  /** A stored receipt's own payload (the proxy's store: no signature check needed). */
  const payloadOf = (jws: string): ReceiptPayload =>
    JSON.parse(Buffer.from(jws.split('.')[1] ?? '', 'base64url').toString('utf8')) as ReceiptPayload;

  /** A receipt in the Clawsig form, bound to what its caller's headers said. */
  function clawsigFormOf(r: { jws: string; payloadSha256: string }) {
    const payload = payloadOf(r.jws);
    const said = payload.clawsig;
    const binding: GatewayBinding = {
      event_hash_b64u: said?.event_hash_b64u,
      nonce: said?.nonce,
      span_id: payload.receipt_id,
    };
    const runId = said?.run_id ?? payload.job?.run_id ?? 'none';
    return signGatewayReceipt(payload, r.payloadSha256, runId, binding, deps.receiptKey.key);
  }

  /**
   * POST /v1/clawsig/receipts: the sealer of a job asks for the job's receipts in the Clawsig
   * form, each bound to its model call's event in the job's event chain and to its causal span.
   * The body is a compact JWS by a bundle key; every fact signed comes from the proxy's own
   * receipts, of that job only.
   */
  async function handleBinding(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const jwks = deps.bindingJwks?.();
    if (!jwks) {
      req.resume();
      return sendError(
        res,
        404,
        PROXY_ERRORS.bindingOff,
        'this proxy has no bundle keys to check binding requests with',
      );
    }
    let body: Buffer;
    try {
      body = await readBody(req, config.limits.maxBodyBytes);
    } catch (error) {
      if (error instanceof Refusal) return sendError(res, error.status, error.code, error.reason);
      throw error;
    }
    let payload: Buffer;
    try {
      payload = await verifyCompactJws(body.toString('utf8').trim(), jwks, CLAWSIG_BINDING_JWS_TYPE);
    } catch (error) {
      return sendError(
        res,
        401,
        PROXY_ERRORS.bindingUnsigned,
        `the binding request is not a JWS of a bundle key: ${error instanceof Error ? error.message : String(error)}`,
      );
    }
    let json: unknown;
    try {
      json = JSON.parse(payload.toString('utf8'));
    } catch {
      return sendError(res, 400, PROXY_ERRORS.malformed, 'the binding request payload is not JSON');
    }
    const parsed = bindingRequestSchema.safeParse(json);
    if (!parsed.success) {
      const issue = parsed.error.issues[0];
      return sendError(
        res,
        400,
        PROXY_ERRORS.malformed,
        `binding request ${issue?.path.join('.') ?? ''}: ${issue?.message ?? 'invalid'}`,
      );
    }
    const request: BindingRequest = parsed.data;
    const skew = Math.abs(now().getTime() / 1000 - request.iat);
    if (skew > BINDING_MAX_SKEW_SECONDS) {
      return sendError(
        res,
        401,
        PROXY_ERRORS.bindingStale,
        `the binding request was made ${Math.round(skew)} s from now; at most ${BINDING_MAX_SKEW_SECONDS} s`,
      );
    }
    const signed = [];
    for (const want of request.receipts as ReceiptBindingRequest[]) {
      const stored = store.get(want.receipt_id);
      if (!stored) {
        return sendError(res, 404, PROXY_ERRORS.receiptNotFound, `no receipt ${want.receipt_id}`);
      }
      const payload = payloadOf(stored.jws);
      if (stored.jobId !== request.job.workflow_id || payload.job?.run_id !== request.job.run_id) {
        return sendError(
          res,
          403,
          PROXY_ERRORS.receiptOtherJob,
          `receipt ${want.receipt_id} is not of job ${request.job.workflow_id}`,
        );
      }
      signed.push(
        signGatewayReceipt(payload, stored.payloadSha256, request.run_id, want, deps.receiptKey.key),
      );
    }
    const out = Buffer.from(JSON.stringify({ receipts: signed }));
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': out.length });
    res.end(out);
  }

  const server = createServer((req, res) => {
    // The model call, the one route on every call's path, is matched without parsing a URL.
    if (req.method === 'POST' && req.url === '/v1/chat/completions') {
      handleChat(req, res).catch((error: unknown) => internalError(res, error));
      return;
    }
    const url = new URL(req.url ?? '/', 'http://proxy.invalid');
    let handling: Promise<void>;
    if (req.method === 'POST' && url.pathname === '/v1/chat/completions') handling = handleChat(req, res);
    else if (req.method === 'GET' && url.pathname === '/v1/models') handling = handleModels(req, res);
    else if (req.method === 'POST' && url.pathname === '/v1/clawsig/receipts')
      handling = handleBinding(req, res);
    else if (req.method === 'GET' && url.pathname.startsWith('/v1/receipts'))
      handling = handleReceipts(req, res, url);
    else if (req.method === 'GET' && url.pathname === '/healthz') {
      const refusing = deps.refusing?.() ?? null;
      const { reasons, ...states } = dependencies.health();
      if (refusing) reasons.unshift(refusing);
      res.writeHead(reasons.length > 0 ? 503 : 200, { 'content-type': 'application/json' });
      res.end(
        JSON.stringify({
          ok: reasons.length === 0,
          proxy_id: config.proxyId,
          ...(refusing ? { refusing } : {}),
          reasons,
          ...states,
          ...(deps.health?.() ?? {}),
        }),
      );
      return;
    } else if (req.method === 'GET' && url.pathname === METRICS_PATH) {
      answerMetrics(res, metrics.registry);
      return;
    } else {
      req.resume();
      sendError(res, 404, PROXY_ERRORS.notFound, `no route ${req.method ?? ''} ${url.pathname}`);
      return;
    }
    handling.catch((error: unknown) => internalError(res, error));
  });
  server.keepAliveTimeout = 65_000;
  return new Promise((resolve, reject) => {
    // A port another process holds: the error goes to the caller, and the receipt log is let go.
    const failed = (error: Error): void => {
      Promise.all([closePools(), store.close()]).then(
        () => reject(error),
        () => reject(error),
      );
    };
    server.once('error', failed);
    server.listen(config.listen.port, config.listen.host, () => {
      server.off('error', failed);
      const { port } = server.address() as AddressInfo;
      resolve({
        url: `http://${config.listen.host}:${port}`,
        server,
        store,
        metrics,
        close: async () => {
          await new Promise<void>((r) => {
            server.closeAllConnections();
            server.close(() => r());
          });
          await closePools();
          await store.close();
        },
      });
    });
  });
}
