// The http tool: GET or POST to hosts on the policy's egress allowlist only. The host is
// resolved once and the connection goes to the address that was checked (no second lookup
// for a rebinding DNS server to answer differently); addresses in private, loopback,
// link-local and other special ranges are refused unless the allowlist names that address
// itself. Redirects are followed by hand, each hop checked the same way; the body and the
// time are limited.
import { BlockList, isIP } from 'node:net';
import { lookup as dnsLookup } from 'node:dns/promises';
import { request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { z } from 'zod';
import { ClawgateError, ERROR_CODES } from '../errors.ts';
import type { ToolContext, ToolDefinition, ToolOutput } from './types.ts';

const MAX_REDIRECTS = 5;
const MAX_BODY_BYTES = 1024 * 1024;
const TIMEOUT_MS = 15_000;

/** Ranges that are not the public internet. */
const special = new BlockList();
for (const [net, prefix] of [
  ['0.0.0.0', 8],
  ['10.0.0.0', 8],
  ['100.64.0.0', 10],
  ['127.0.0.0', 8],
  ['169.254.0.0', 16],
  ['172.16.0.0', 12],
  ['192.0.0.0', 24],
  ['192.168.0.0', 16],
  ['198.18.0.0', 15],
  ['224.0.0.0', 4],
  ['240.0.0.0', 4],
] as const) {
  special.addSubnet(net, prefix, 'ipv4');
}
for (const [net, prefix] of [
  ['::', 128],
  ['::1', 128],
  ['::ffff:0:0', 96],
  ['fc00::', 7],
  ['fe80::', 10],
  ['ff00::', 8],
  ['64:ff9b::', 96],
] as const) {
  special.addSubnet(net, prefix, 'ipv6');
}

export function isSpecialAddress(address: string): boolean {
  const family = isIP(address);
  if (family === 0) return true;
  return special.check(address, family === 4 ? 'ipv4' : 'ipv6');
}

function hostMatches(entry: string, host: string, port: string): boolean {
  const [entryHost, entryPort] =
    entry.includes(':') && !entry.startsWith('[') ? entry.split(':') : [entry, undefined];
  if (entryPort !== undefined && entryPort !== port) return false;
  if (entryHost?.startsWith('*.')) return host.endsWith(entryHost.slice(1));
  return entryHost === host;
}

const httpArgs = z
  .object({
    method: z.enum(['GET', 'HEAD', 'POST']),
    url: z.url({ protocol: /^https?$/ }),
    headers: z.record(z.string().regex(/^[A-Za-z0-9-]{1,64}$/), z.string().max(4096)).optional(),
    body: z.string().max(MAX_BODY_BYTES).optional(),
  })
  .strict()
  .describe('http: { method: GET|HEAD|POST, url, headers?, body? } — to allowlisted hosts only')
  .refine((a) => a.method === 'POST' || a.body === undefined, {
    message: 'only a POST has a body',
    path: ['body'],
  });

function deny(reason: string): never {
  throw new ClawgateError(ERROR_CODES.egressDenied, reason);
}

/** Checks one URL against the allowlist; returns the address to connect to. */
async function checkedAddress(url: URL, ctx: ToolContext): Promise<{ address: string; family: number }> {
  const allowlist = ctx.policy.execution.egress_allowlist;
  const host = url.hostname.replace(/^\[|\]$/g, '').toLowerCase();
  const port = url.port || (url.protocol === 'https:' ? '443' : '80');
  if (!allowlist.some((entry) => hostMatches(entry, host, port))) {
    deny(`${host}:${port} is not on the policy's egress allowlist`);
  }
  const addresses = isIP(host)
    ? [{ address: host, family: isIP(host) }]
    : await (ctx.lookup ?? ((h: string) => dnsLookup(h, { all: true })))(host);
  const first = addresses[0];
  if (!first) deny(`${host} does not resolve`);
  for (const { address } of addresses) {
    // A private or loopback address is allowed only when the allowlist names that address.
    if (isSpecialAddress(address) && !allowlist.some((entry) => hostMatches(entry, address, port))) {
      deny(
        `${host} resolves to ${address}, a private, loopback or link-local address the allowlist does not name`,
      );
    }
  }
  return first;
}

function once(
  url: URL,
  target: { address: string; family: number },
  args: z.infer<typeof httpArgs>,
): Promise<{
  status: number;
  location: string | undefined;
  body: string;
  truncated: boolean;
  headers: string;
}> {
  return new Promise((resolve, reject) => {
    const request = url.protocol === 'https:' ? httpsRequest : httpRequest;
    const req = request(
      url,
      {
        method: args.method,
        headers: { ...args.headers, 'user-agent': 'clawgate-http-tool' },
        timeout: TIMEOUT_MS,
        // Connect to the address that was checked; TLS still verifies the host name.
        lookup: (_host, _opts, callback) => callback(null, target.address, target.family),
      },
      (res) => {
        const chunks: Buffer[] = [];
        let size = 0;
        let truncated = false;
        res.on('data', (chunk: Buffer) => {
          if (size + chunk.length > MAX_BODY_BYTES) {
            truncated = true;
            chunks.push(chunk.subarray(0, MAX_BODY_BYTES - size));
            size = MAX_BODY_BYTES;
            res.destroy();
            return;
          }
          chunks.push(chunk);
          size += chunk.length;
        });
        const done = (): void =>
          resolve({
            status: res.statusCode ?? 0,
            location: res.headers.location,
            body: Buffer.concat(chunks).toString('utf8'),
            truncated,
            headers: Object.entries(res.headers)
              .map(([name, value]) => `${name}: ${Array.isArray(value) ? value.join(', ') : String(value)}`)
              .join('\n'),
          });
        res.on('end', done);
        res.on('close', done);
      },
    );
    req.on('timeout', () => req.destroy(new Error(`no answer within ${TIMEOUT_MS} ms`)));
    req.on('error', reject);
    req.end(args.method === 'POST' ? (args.body ?? '') : undefined);
  });
}

export const httpTool: ToolDefinition<typeof httpArgs> = {
  name: 'http',
  description:
    'GET, HEAD or POST to a host on the egress allowlist; redirects followed only to allowed hosts. A HEAD answers with the headers.',
  args: httpArgs,
  async run(args, ctx): Promise<ToolOutput> {
    let url = new URL(args.url);
    for (let hop = 0; hop <= MAX_REDIRECTS; hop++) {
      const target = await checkedAddress(url, ctx);
      let answer;
      try {
        // A redirect is followed with GET (HEAD stays HEAD), without the body.
        const method = args.method === 'HEAD' ? 'HEAD' : 'GET';
        answer = await once(url, target, hop === 0 ? args : { ...args, method, body: undefined });
      } catch (error) {
        return {
          exitStatus: null,
          signal: null,
          output: `request failed: ${error instanceof Error ? error.message : String(error)}`,
          timedOut: error instanceof Error && error.message.startsWith('no answer'),
          outputTruncated: false,
          sandboxProfile: null,
        };
      }
      if (answer.status >= 300 && answer.status < 400 && answer.location) {
        url = new URL(answer.location, url);
        continue;
      }
      return {
        exitStatus: answer.status,
        signal: null,
        output: args.method === 'HEAD' ? `HTTP ${answer.status}\n${answer.headers}\n` : answer.body,
        timedOut: false,
        outputTruncated: answer.truncated,
        sandboxProfile: 'http: egress allowlist, checked address, redirects checked per hop',
      };
    }
    deny(`more than ${MAX_REDIRECTS} redirects`);
  },
};
