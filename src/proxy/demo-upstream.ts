// A small local model upstream that speaks the OpenAI-compatible API (the one OpenRouter,
// Ollama, vLLM and llama.cpp servers speak): `POST /v1/chat/completions` as JSON or as a
// server-sent event stream, and `GET /v1/models`. It stands in for a paid provider in tests,
// benchmarks and the demo; it answers by echoing the last user message, word by word when
// streaming, with configurable delays and faults. It is not a model, but it can stand in for
// one: given `reply`, it answers with what that function says, tool calls included (see
// demo-model.ts for a scripted one).
import { createHash } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createTlsServer } from 'node:https';
import type { AddressInfo } from 'node:net';

export type DemoUpstreamFault =
  | 'none'
  /** Answers 500 with an OpenAI-style error body. */
  | 'error-500'
  /** Sends headers and the first chunk of a stream, then destroys the connection. */
  | 'die-mid-stream'
  /** Accepts the request and never answers. */
  | 'hang';

export interface DemoUpstreamOptions {
  models?: string[];
  /** Delay before the response (JSON) or before the first chunk (stream), in ms. */
  firstByteDelayMs?: number;
  /**
   * Up to this many ms more, as a model's answer time varies (without it, callers that start
   * together stay in step). The share of it a call waits is drawn from the SHA-256 of its last
   * user message, so the same messages wait the same whichever path they came by.
   */
  firstByteJitterMs?: number;
  /** Delay between stream chunks, in ms. */
  chunkDelayMs?: number;
  /** When set, requests must carry `Authorization: Bearer <apiKey>`. */
  apiKey?: string;
  fault?: DemoUpstreamFault;
  /** When set, a stream waits for this after its first chunk (to observe pass-through). */
  afterFirstChunk?: () => Promise<void>;
  /** The answer to give, from the request's messages (default: echo the last user message). */
  answer?: (messages: ChatMessage[]) => string;
  /** The assistant message to give, tool calls included; when set, it wins over `answer`. */
  reply?: (request: ReplyRequest) => AssistantReply;
  /** Awaited before each chat answer (a test holds a model turn with it). */
  beforeAnswer?: (request: ReplyRequest) => Promise<void>;
  /**
   * Told when a chat answer's last byte has been handed to the connection: the proxy is then
   * signing and writing its receipt (a test aims a kill at that moment with it).
   */
  afterAnswer?: (request: ReplyRequest) => void;
  /** Serve over TLS with this key and certificate (PEM), as a provider's endpoint is. */
  tls?: { key: string; cert: string };
  /** The port on 127.0.0.1 (default: one the system picks). */
  port?: number;
}

export interface DemoUpstream {
  readonly url: string;
  readonly server: Server;
  /** Every request body received, as raw bytes (to check what the proxy sent). */
  readonly received: Buffer[];
  /** Authorization headers received, in order. */
  readonly authorizations: Array<string | undefined>;
  /** Every response body sent, as raw bytes, in order (complete ones only). */
  readonly sent: Buffer[];
  setFault(fault: DemoUpstreamFault): void;
  close(): Promise<void>;
}

/** A chat message as it arrives: nothing in it is trusted to have the type it should. */
export interface ChatMessage {
  role?: unknown;
  content?: unknown;
  /** On assistant messages: the tool calls the model made. */
  tool_calls?: unknown;
  /** On tool messages: the call this is the result of. */
  tool_call_id?: unknown;
}

/** One tool call of an assistant message, as OpenAI tool calling has it. */
export interface ToolCall {
  id: string;
  type: 'function';
  /** `arguments` is JSON text, as the model wrote it. */
  function: { name: string; arguments: string };
}

/** What the assistant says: text, tool calls, or both. */
export interface AssistantReply {
  content: string | null;
  tool_calls?: ToolCall[];
}

/** What `reply` is given of a request: the model asked for, the messages, the OpenAI `tools`. */
export interface ReplyRequest {
  model: string;
  messages: ChatMessage[];
  tools: unknown[];
}

interface ChatRequest {
  model?: unknown;
  stream?: unknown;
  messages?: ChatMessage[];
  tools?: unknown;
}

const sleep = (ms: number): Promise<void> =>
  ms > 0 ? new Promise((r) => setTimeout(r, ms)) : Promise.resolve();

function sendJson(res: ServerResponse, status: number, body: unknown, sent?: Buffer[]): void {
  const bytes = Buffer.from(JSON.stringify(body));
  sent?.push(bytes);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': bytes.length });
  res.end(bytes);
}

async function readBody(req: IncomingMessage): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of req) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

function lastUserText(request: ChatRequest): string {
  const last = [...(request.messages ?? [])].reverse().find((m) => m.role === 'user');
  return typeof last?.content === 'string' ? last.content : '';
}

function answerFor(request: ChatRequest): string {
  return `echo: ${lastUserText(request)}`;
}

/** The share of `firstByteJitterMs` a call waits, in [0, 1), drawn from its last user message. */
export function jitterShare(text: string): number {
  return createHash('sha256').update(text).digest().readUInt32BE(0) / 2 ** 32;
}

/** Rough token counts (words), so usage figures exist and move with the text. */
function countTokens(text: string): number {
  return text.split(/\s+/).filter(Boolean).length;
}

/** The text a reply's usage is counted on: its content, and its calls' names and arguments. */
function replyText(reply: AssistantReply): string {
  const calls = (reply.tool_calls ?? []).map((c) => `${c.function.name} ${c.function.arguments}`);
  return [reply.content ?? '', ...calls].join(' ');
}

/** Characters of a call's arguments per stream chunk (real models send a token or so at a time). */
const ARGUMENT_FRAGMENT = 8;

/**
 * A reply as the deltas of a stream, in the OpenAI chunk format: the content word by word, then
 * each tool call, whose first delta carries its index, id, type, name and empty arguments, and
 * whose arguments follow in fragments. The first delta also carries the role.
 */
function streamDeltas(reply: AssistantReply): Array<Record<string, unknown>> {
  const deltas: Array<Record<string, unknown>> = [];
  if (reply.content !== null) {
    const words = reply.content.split(' ');
    words.forEach((word, i) => deltas.push({ content: i === 0 ? word : ` ${word}` }));
  }
  (reply.tool_calls ?? []).forEach((call, index) => {
    const { id, type, function: fn } = call;
    deltas.push({ tool_calls: [{ index, id, type, function: { name: fn.name, arguments: '' } }] });
    const chars = Array.from(fn.arguments); // code points, so no fragment splits a character
    for (let at = 0; at < chars.length; at += ARGUMENT_FRAGMENT) {
      const piece = chars.slice(at, at + ARGUMENT_FRAGMENT).join('');
      deltas.push({ tool_calls: [{ index, function: { arguments: piece } }] });
    }
  });
  const first = deltas[0] ?? { content: null };
  deltas[0] =
    reply.content === null ? { role: 'assistant', content: null, ...first } : { role: 'assistant', ...first };
  return deltas;
}

export async function startDemoUpstream(opts: DemoUpstreamOptions = {}): Promise<DemoUpstream> {
  const models = opts.models ?? ['demo-echo', 'demo-echo-large'];
  let fault: DemoUpstreamFault = opts.fault ?? 'none';
  const received: Buffer[] = [];
  const authorizations: Array<string | undefined> = [];
  const sent: Buffer[] = [];
  let counter = 0;

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    if (opts.apiKey !== undefined && req.headers.authorization !== `Bearer ${opts.apiKey}`) {
      sendJson(res, 401, {
        error: { message: 'invalid API key', type: 'invalid_request_error', code: 'invalid_api_key' },
      });
      return;
    }
    if (req.method === 'GET' && req.url === '/v1/models') {
      sendJson(res, 200, {
        object: 'list',
        data: models.map((id) => ({ id, object: 'model', owned_by: 'demo' })),
      });
      return;
    }
    if (req.method !== 'POST' || req.url !== '/v1/chat/completions') {
      sendJson(res, 404, {
        error: { message: `no route ${req.method} ${req.url}`, type: 'invalid_request_error' },
      });
      return;
    }
    const raw = await readBody(req);
    received.push(raw);
    authorizations.push(req.headers.authorization);
    let request: ChatRequest;
    try {
      request = JSON.parse(raw.toString('utf8')) as ChatRequest;
    } catch {
      sendJson(res, 400, { error: { message: 'body is not JSON', type: 'invalid_request_error' } });
      return;
    }
    const model = typeof request.model === 'string' ? request.model : '';
    if (!models.includes(model)) {
      sendJson(res, 404, { error: { message: `model ${model} not found`, type: 'invalid_request_error' } });
      return;
    }
    if (fault === 'hang') return; // never answers; the caller's timeout must act
    if (opts.beforeAnswer) {
      await opts.beforeAnswer({ model, messages: request.messages ?? [], tools: [] });
    }
    const { afterAnswer } = opts;
    if (afterAnswer)
      res.once('finish', () => afterAnswer({ model, messages: request.messages ?? [], tools: [] }));
    const jitter = opts.firstByteJitterMs ? opts.firstByteJitterMs * jitterShare(lastUserText(request)) : 0;
    await sleep((opts.firstByteDelayMs ?? 0) + jitter);
    if (fault === 'error-500') {
      sendJson(res, 500, { error: { message: 'demo upstream failure', type: 'server_error' } });
      return;
    }
    counter += 1;
    const id = `chatcmpl-demo-${counter}`;
    const created = Math.floor(Date.now() / 1000);
    const messages = request.messages ?? [];
    const reply: AssistantReply = opts.reply
      ? opts.reply({
          model,
          messages,
          tools: Array.isArray(request.tools) ? (request.tools as unknown[]) : [],
        })
      : { content: opts.answer ? opts.answer(messages) : answerFor(request) };
    const calls = reply.tool_calls?.length ? reply.tool_calls : undefined;
    const finishReason = calls ? 'tool_calls' : 'stop';
    const promptTokens = countTokens(JSON.stringify(messages));
    const completionTokens = countTokens(replyText(reply));
    const usage = {
      prompt_tokens: promptTokens,
      completion_tokens: completionTokens,
      total_tokens: promptTokens + completionTokens,
    };
    if (request.stream !== true) {
      sendJson(
        res,
        200,
        {
          id,
          object: 'chat.completion',
          created,
          model,
          choices: [
            {
              index: 0,
              message: { role: 'assistant', content: reply.content, ...(calls ? { tool_calls: calls } : {}) },
              finish_reason: finishReason,
            },
          ],
          usage,
        },
        sent,
      );
      return;
    }
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
    const streamed: string[] = [];
    const write = (text: string): void => {
      streamed.push(text);
      res.write(text);
    };
    const deltas = streamDeltas({ content: reply.content, ...(calls ? { tool_calls: calls } : {}) });
    for (let i = 0; i < deltas.length; i++) {
      const delta = deltas[i];
      write(
        `data: ${JSON.stringify({ id, object: 'chat.completion.chunk', created, model, choices: [{ index: 0, delta, finish_reason: null }] })}\n\n`,
      );
      if (fault === 'die-mid-stream') {
        // Let the headers and the first chunk reach the caller, then cut the connection.
        await new Promise<void>((resolve) => res.write('', () => resolve()));
        await sleep(20);
        res.socket?.destroy();
        return;
      }
      if (i === 0 && opts.afterFirstChunk) await opts.afterFirstChunk();
      await sleep(opts.chunkDelayMs ?? 0);
      if (res.destroyed) return;
    }
    write(
      `data: ${JSON.stringify({ id, object: 'chat.completion.chunk', created, model, choices: [{ index: 0, delta: {}, finish_reason: finishReason }], usage })}\n\n`,
    );
    streamed.push('data: [DONE]\n\n');
    sent.push(Buffer.from(streamed.join('')));
    res.end('data: [DONE]\n\n');
  }

  const onRequest = (req: IncomingMessage, res: ServerResponse): void => {
    handle(req, res).catch((error: unknown) => {
      if (!res.headersSent) sendJson(res, 500, { error: { message: String(error), type: 'server_error' } });
      else res.destroy();
    });
  };
  const server: Server = opts.tls ? createTlsServer(opts.tls, onRequest) : createServer(onRequest);
  server.keepAliveTimeout = 60_000;
  await new Promise<void>((resolve) => server.listen(opts.port ?? 0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `${opts.tls ? 'https' : 'http'}://127.0.0.1:${port}`,
    server,
    received,
    authorizations,
    sent,
    setFault: (next) => {
      fault = next;
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
