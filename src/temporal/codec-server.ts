// The codec server: Temporal's remote codec HTTP protocol (POST /encode, POST /decode, each taking
// and answering `{"payloads": [{"metadata": {"<key>": "<base64>"}, "data": "<base64>"}]}`), so the
// Temporal Web UI, which only ever sees encrypted payloads, can show them decrypted. It holds the
// payload keys, so it answers two callers only: the configured Web UI origin (a browser sends its
// page's true Origin, and another site's page is refused, 403), and, without an Origin, a caller
// holding the bearer token kept in the state folder (the Temporal CLI's `--codec-endpoint` with
// `--codec-auth`, a script). It is meant for loopback: a local process can claim any Origin.
import { randomBytes, timingSafeEqual } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Payload, PayloadCodec } from '@temporalio/common';
import type { Logger } from 'pino';
import { ClawgateError, ERROR_CODES } from '../errors.ts';
import { writeFileAtomic } from '../storage/files.ts';

/** The request headers the Web UI sends a codec server. */
const ALLOWED_HEADERS = 'content-type, x-namespace, authorization';
/** A batch of payloads is at most this large; a request beyond it is refused before it is read. */
export const CODEC_MAX_BODY_BYTES = 16 * 1024 * 1024;

export interface CodecServerOptions {
  host: string;
  port: number;
  /** The one browser origin answered (scheme, host and port, as in an Origin header). */
  uiOrigin: string;
  /** The bearer token a caller without an Origin gives. */
  token: string;
  codec: PayloadCodec;
  logger?: Logger;
  maxBodyBytes?: number;
}

export interface RunningCodecServer {
  /** The endpoint to give the Web UI (`--ui-codec-endpoint`) or the CLI (`--codec-endpoint`). */
  url: string;
  server: Server;
  close(): Promise<void>;
}

/** The bearer token of the codec server in `path` (mode 0600), made on first use. */
export function ensureCodecToken(path: string): string {
  if (!existsSync(path)) writeFileAtomic(path, `${randomBytes(32).toString('base64url')}\n`, 0o600);
  const token = readFileSync(path, 'utf8').trim();
  if (token.length < 32) {
    throw new ClawgateError(
      ERROR_CODES.configInvalid,
      `${path} holds no codec server token (fewer than 32 characters)`,
    );
  }
  return token;
}

class RequestError extends Error {
  readonly status: number;
  constructor(status: number, message: string) {
    super(message);
    this.status = status;
  }
}

const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

function fromBase64(value: unknown, where: string): Uint8Array {
  if (typeof value !== 'string' || !BASE64.test(value)) {
    throw new RequestError(400, `${where}: not a base64 string`);
  }
  return Buffer.from(value, 'base64');
}

/** The payloads of a request body, each checked; the first problem is named by its path. */
export function parsePayloads(body: string): Payload[] {
  let parsed: unknown;
  try {
    parsed = JSON.parse(body);
  } catch (error) {
    throw new RequestError(400, `the body is not JSON: ${(error as Error).message}`);
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    throw new RequestError(400, 'the body must be a JSON object {"payloads": [...]}');
  }
  const payloads = (parsed as { payloads?: unknown }).payloads;
  if (!Array.isArray(payloads)) throw new RequestError(400, 'payloads: must be an array');
  return payloads.map((item: unknown, i) => {
    if (typeof item !== 'object' || item === null || Array.isArray(item)) {
      throw new RequestError(
        400,
        `payloads[${i}]: must be an object {"metadata": {...}, "data": "<base64>"}`,
      );
    }
    const { metadata, data } = item as { metadata?: unknown; data?: unknown };
    if (
      metadata !== undefined &&
      (typeof metadata !== 'object' || metadata === null || Array.isArray(metadata))
    ) {
      throw new RequestError(400, `payloads[${i}].metadata: must be an object of base64 strings`);
    }
    const decodedMetadata: Record<string, Uint8Array> = {};
    for (const [key, value] of Object.entries((metadata ?? {}) as Record<string, unknown>)) {
      decodedMetadata[key] = fromBase64(value, `payloads[${i}].metadata.${key}`);
    }
    return {
      metadata: decodedMetadata,
      data: data === undefined || data === null ? new Uint8Array() : fromBase64(data, `payloads[${i}].data`),
    };
  });
}

function toJson(payloads: Payload[]): string {
  const b64 = (bytes: Uint8Array | null | undefined) =>
    Buffer.from(bytes ?? new Uint8Array()).toString('base64');
  return JSON.stringify({
    payloads: payloads.map((p) => ({
      metadata: Object.fromEntries(Object.entries(p.metadata ?? {}).map(([k, v]) => [k, b64(v)])),
      data: b64(p.data),
    })),
  });
}

function readBody(req: IncomingMessage, limit: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const declared = Number(req.headers['content-length']);
    if (Number.isFinite(declared) && declared > limit) {
      reject(new RequestError(413, `the body is ${declared} bytes; at most ${limit} are read`));
      req.resume();
      return;
    }
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > limit) {
        reject(new RequestError(413, `the body is over ${limit} bytes`));
        req.destroy();
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function sameToken(given: string, expected: string): boolean {
  const a = Buffer.from(given);
  const b = Buffer.from(expected);
  return a.length === b.length && timingSafeEqual(a, b);
}

export async function startCodecServer(opts: CodecServerOptions): Promise<RunningCodecServer> {
  const uiOrigin = new URL(opts.uiOrigin).origin;
  const limit = opts.maxBodyBytes ?? CODEC_MAX_BODY_BYTES;
  const send = (
    res: ServerResponse,
    status: number,
    body: string | null,
    headers: Record<string, string> = {},
  ) => {
    res.writeHead(status, {
      ...(body === null ? {} : { 'content-type': 'application/json' }),
      'cache-control': 'no-store',
      vary: 'Origin',
      ...headers,
    });
    res.end(body ?? undefined);
  };
  const refuse = (
    res: ServerResponse,
    status: number,
    message: string,
    headers: Record<string, string> = {},
  ) => send(res, status, JSON.stringify({ error: message }), headers);

  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const origin = req.headers.origin;
    // CORS headers go to the Web UI's origin only: no other page may read an answer.
    const cors: Record<string, string> =
      origin === uiOrigin
        ? { 'access-control-allow-origin': uiOrigin, 'access-control-allow-credentials': 'true' }
        : {};
    if (origin !== undefined && origin !== uiOrigin) {
      return refuse(
        res,
        403,
        `origin ${origin} is not the Temporal Web UI this codec server answers (${uiOrigin})`,
      );
    }
    const path = new URL(req.url ?? '/', 'http://codec.invalid').pathname;
    // For `clawgate status` and load balancers: no payload, no token.
    if (path === '/health' && req.method === 'GET') return send(res, 200, JSON.stringify({ ok: true }));
    const operation = path === '/encode' ? 'encode' : path === '/decode' ? 'decode' : null;
    if (!operation) return refuse(res, 404, `no ${path} here: POST /encode or POST /decode`, cors);
    if (req.method === 'OPTIONS') {
      if (origin === undefined) return refuse(res, 403, 'a CORS preflight without an Origin header');
      return send(res, 204, null, {
        ...cors,
        'access-control-allow-methods': 'POST, OPTIONS',
        'access-control-allow-headers': ALLOWED_HEADERS,
        'access-control-max-age': '600',
      });
    }
    if (req.method !== 'POST') {
      return refuse(res, 405, `${req.method ?? '?'} ${path}: only POST (and OPTIONS)`, {
        ...cors,
        allow: 'POST, OPTIONS',
      });
    }
    if (origin === undefined) {
      const auth = req.headers.authorization ?? '';
      const match = /^Bearer (\S+)$/i.exec(auth);
      if (!match) {
        return refuse(
          res,
          401,
          'no Origin and no bearer token: give Authorization: Bearer <token of codec-server.token>',
          {
            'www-authenticate': 'Bearer',
          },
        );
      }
      if (!sameToken(match[1] as string, opts.token)) {
        return refuse(res, 403, 'the bearer token is not the codec server token');
      }
    }
    const contentType = req.headers['content-type'] ?? '';
    if (!/^application\/json\b/i.test(contentType)) {
      return refuse(
        res,
        415,
        `content-type ${contentType || '(none)'}: the body must be application/json`,
        cors,
      );
    }
    const payloads = parsePayloads(await readBody(req, limit));
    let result: Payload[];
    try {
      result = await (operation === 'encode' ? opts.codec.encode(payloads) : opts.codec.decode(payloads));
    } catch (error) {
      throw new RequestError(422, `cannot ${operation} the payloads: ${(error as Error).message}`);
    }
    send(res, 200, toJson(result), cors);
  };

  const server = createServer((req, res) => {
    handle(req, res).catch((error: unknown) => {
      const status = error instanceof RequestError ? error.status : 500;
      const message = error instanceof RequestError ? error.message : 'internal error';
      if (status >= 500) opts.logger?.error({ err: error }, 'codec server request failed');
      else opts.logger?.warn({ status, reason: message, path: req.url }, 'codec server refused a request');
      if (res.headersSent) {
        res.destroy();
        return;
      }
      const origin = req.headers.origin;
      refuse(
        res,
        status,
        message,
        origin === uiOrigin
          ? { 'access-control-allow-origin': uiOrigin, 'access-control-allow-credentials': 'true' }
          : {},
      );
      // A body left unread (a refused one) must not hold the connection.
      if (!req.complete) req.resume();
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port, opts.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const { port } = server.address() as AddressInfo;
  const host = opts.host.includes(':') ? `[${opts.host}]` : opts.host;
  return {
    url: `http://${host}:${port}`,
    server,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
