// The evidence server: sealed proof bundles as pages a reviewer opens from the link in a job's
// result. Read-only, and it serves exactly three things per bundle, named by the bundle's
// digest (the SHA-256 of its canonical form, its file name in the bundle folder):
//
//   GET /bundles/<digest>               the page (src/evidence/html.ts), verified on each request
//   GET /bundles/<digest>.json          the bundle file, byte for byte
//   GET /bundles/<digest>.clawsig.json  its Clawsig v1 export, stored beside it
//
// and GET /health. Nothing lists the bundles: a digest is known only to whoever was given it.
// A digest that is not 64 lowercase hex characters is refused before any file is touched, so
// no request names a path of its own.
import { readFile } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { join } from 'node:path';
import type { Logger } from 'pino';
import type { Jwks } from './jws.ts';
import { PAGE_CSP, renderBundlePage, verifyBundleText } from './html.ts';

/** The codes of the server's JSON errors (`{ error: { code, message } }`). */
export const EVIDENCE_ERRORS = {
  digestInvalid: 'DIGEST_INVALID',
  notFound: 'NOT_FOUND',
  bundleNotFound: 'BUNDLE_NOT_FOUND',
  clawsigNotFound: 'CLAWSIG_NOT_FOUND',
  methodNotAllowed: 'METHOD_NOT_ALLOWED',
  internal: 'INTERNAL',
} as const;

const DIGEST = /^[0-9a-f]{64}$/;
const ROUTE = /^\/bundles\/([^/]*?)(\.clawsig\.json|\.json)?$/;

export interface EvidenceServerOptions {
  host: string;
  port: number;
  /** The folder of sealed bundles: `<digest>.json`, and `<digest>.clawsig.json` beside each. */
  bundleDir: string;
  /** The public keys pages are verified against, read for each page (keys rotate). */
  jwks: () => Jwks;
  /** Where those keys come from, in words, for the page. */
  keysSource: string;
  logger?: Logger;
  /** The clock pages are dated by. */
  now?: () => Date;
}

export interface RunningEvidenceServer {
  /** The address it listens on, `http://host:port`. */
  url: string;
  close(): Promise<void>;
}

/** The page of a bundle under a base URL (`evidence.baseUrl`, or the server's own address). */
export function evidencePageUrl(baseUrl: string, digest: string): string {
  return `${baseUrl.replace(/\/+$/, '')}/bundles/${digest}`;
}

/** The base URL of the evidence pages: the configured one, else the listening address. */
export function evidenceBaseUrl(evidence: {
  listen: { host: string; port: number };
  baseUrl?: string | undefined;
}): string {
  if (evidence.baseUrl) return evidence.baseUrl.replace(/\/+$/, '');
  const { host, port } = evidence.listen;
  return `http://${host.includes(':') ? `[${host}]` : host}:${port}`;
}

const COMMON_HEADERS = {
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
  'x-frame-options': 'DENY',
  'cross-origin-resource-policy': 'same-origin',
} as const;

interface Reply {
  status: number;
  type: string;
  body: string | Buffer;
  /** The policy of what the reply may load. */
  csp: string;
  cache: string;
  extra?: Record<string, string>;
}

const JSON_CSP = "default-src 'none'; frame-ancestors 'none'";

function jsonReply(status: number, value: unknown, extra?: Record<string, string>): Reply {
  return {
    status,
    type: 'application/json; charset=utf-8',
    body: `${JSON.stringify(value)}\n`,
    csp: JSON_CSP,
    cache: 'no-store',
    ...(extra ? { extra } : {}),
  };
}

const errorReply = (status: number, code: string, message: string, extra?: Record<string, string>): Reply =>
  jsonReply(status, { error: { code, message } }, extra);

const INDEX_PAGE = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="Content-Security-Policy" content="${PAGE_CSP}">
<title>clawgate evidence</title></head>
<body><h1>clawgate evidence</h1><p>Each job's page is at <code>/bundles/&lt;digest&gt;</code>: open the link in the job's result message. Bundles are not listed.</p></body></html>
`;

async function readStored(path: string): Promise<Buffer | null> {
  try {
    return await readFile(path);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw error;
  }
}

/** What one request gets: the whole routing of the server. */
async function route(req: IncomingMessage, opts: EvidenceServerOptions): Promise<Reply> {
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    return errorReply(
      405,
      EVIDENCE_ERRORS.methodNotAllowed,
      `${req.method ?? 'this method'} is not allowed: the evidence server is read-only (GET, HEAD)`,
      { allow: 'GET, HEAD' },
    );
  }
  const path = (req.url ?? '/').split('?')[0] ?? '/';
  if (path === '/health') return jsonReply(200, { status: 'ok' });
  if (path === '/') {
    return {
      status: 200,
      type: 'text/html; charset=utf-8',
      body: INDEX_PAGE,
      csp: `${PAGE_CSP}; frame-ancestors 'none'`,
      cache: 'no-cache',
    };
  }
  const match = ROUTE.exec(path);
  if (!match) {
    return errorReply(
      404,
      EVIDENCE_ERRORS.notFound,
      `nothing is served at ${path.slice(0, 100)}: a bundle's page is /bundles/<digest>, its file /bundles/<digest>.json, its Clawsig export /bundles/<digest>.clawsig.json`,
    );
  }
  const digest = match[1] ?? '';
  const suffix = match[2] ?? '';
  if (digest === '' && suffix === '') {
    return errorReply(404, EVIDENCE_ERRORS.notFound, 'bundles are not listed: ask for /bundles/<digest>');
  }
  if (!DIGEST.test(digest)) {
    return errorReply(
      400,
      EVIDENCE_ERRORS.digestInvalid,
      `${JSON.stringify(digest.slice(0, 80))} is not a bundle digest: a bundle is named by the SHA-256 of its canonical form, 64 lowercase hex characters`,
    );
  }
  const bundlePath = join(opts.bundleDir, `${digest}.json`);
  if (suffix === '.clawsig.json') {
    const bytes = await readStored(join(opts.bundleDir, `${digest}.clawsig.json`));
    if (!bytes) {
      const bundled = (await readStored(bundlePath)) !== null;
      return errorReply(
        404,
        EVIDENCE_ERRORS.clawsigNotFound,
        bundled
          ? `bundle ${digest} has no Clawsig export beside it; make one with \`clawgate export clawsig\``
          : `there is no bundle ${digest}`,
      );
    }
    return fileReply(bytes);
  }
  const bytes = await readStored(bundlePath);
  if (!bytes) return errorReply(404, EVIDENCE_ERRORS.bundleNotFound, `there is no bundle ${digest}`);
  if (suffix === '.json') return fileReply(bytes);

  const jwks = opts.jwks();
  const { input, verification } = await verifyBundleText(bytes.toString('utf8'), jwks, digest);
  const page = renderBundlePage(input, verification, {
    generatedAt: (opts.now ?? (() => new Date()))(),
    keys: { source: opts.keysSource, kids: jwks.keys.flatMap((k) => (k.kid ? [k.kid] : [])) },
    storedAs: digest,
    links: { bundle: `${digest}.json`, clawsig: `${digest}.clawsig.json` },
  });
  // The verdict is computed per request (keys may have been rotated or revoked since): no reuse
  // without asking again.
  return {
    status: 200,
    type: 'text/html; charset=utf-8',
    body: page,
    csp: `${PAGE_CSP}; frame-ancestors 'none'`,
    cache: 'private, no-cache',
  };
}

/** A stored file, named by its content's digest: it never changes under that name. */
function fileReply(bytes: Buffer): Reply {
  return {
    status: 200,
    type: 'application/json',
    body: bytes,
    csp: JSON_CSP,
    cache: 'private, max-age=31536000, immutable',
  };
}

function send(req: IncomingMessage, res: ServerResponse, reply: Reply): void {
  const body = typeof reply.body === 'string' ? Buffer.from(reply.body, 'utf8') : reply.body;
  res.writeHead(reply.status, {
    ...COMMON_HEADERS,
    'content-type': reply.type,
    'content-length': String(body.length),
    'content-security-policy': reply.csp,
    'cache-control': reply.cache,
    ...reply.extra,
  });
  res.end(req.method === 'HEAD' ? undefined : body);
}

export async function startEvidenceServer(opts: EvidenceServerOptions): Promise<RunningEvidenceServer> {
  const server: Server = createServer((req, res) => {
    route(req, opts).then(
      (reply) => {
        opts.logger?.debug({ method: req.method, url: req.url, status: reply.status }, 'evidence request');
        send(req, res, reply);
      },
      (error: unknown) => {
        opts.logger?.error({ err: error, url: req.url }, 'evidence request failed');
        send(
          req,
          res,
          errorReply(500, EVIDENCE_ERRORS.internal, 'the bundle could not be read; see the log'),
        );
      },
    );
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port, opts.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const address = server.address();
  const port = typeof address === 'object' && address ? address.port : opts.port;
  const url = evidenceBaseUrl({ listen: { host: opts.host, port } });
  return {
    url,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
