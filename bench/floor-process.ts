// What any proxy written on Node costs on this machine, measured beside clawgate so its figures
// can be read against it: a bare pass-through (reads the body, forwards it with a keep-alive
// agent, answers with the upstream's bytes; no token, no receipt) and, with `fdatasync` in its
// argument, the same plus one small write and fdatasync per call before the answer (the least a
// proxy pays to have a record on disk before the caller has its answer). Not a proxy to use.
import { closeSync, fdatasyncSync, openSync, writeSync } from 'node:fs';
import { Agent, createServer, request } from 'node:http';
import type { AddressInfo } from 'node:net';

const { upstreamUrl, logPath } = JSON.parse(process.argv[2] ?? '{}') as {
  upstreamUrl: string;
  /** When set, each call writes a line here (over zeros already on disk) and fdatasyncs it. */
  logPath?: string;
};
const target = new URL(`${upstreamUrl}/v1/chat/completions`);
const agent = new Agent({ keepAlive: true, maxSockets: 256 });
let fd: number | undefined;
let offset = 0;
if (logPath) {
  fd = openSync(logPath, 'w+', 0o600);
  const zeros = Buffer.alloc(64 << 20);
  writeSync(fd, zeros, 0, zeros.length, 0);
  fdatasyncSync(fd);
}
const record = Buffer.alloc(1000, 0x61);
record[record.length - 1] = 0x0a;

const server = createServer((req, res) => {
  const chunks: Buffer[] = [];
  req.on('data', (chunk: Buffer) => chunks.push(chunk));
  req.on('end', () => {
    const body = Buffer.concat(chunks);
    const upstreamReq = request(
      target,
      {
        method: 'POST',
        agent,
        headers: {
          'content-type': 'application/json',
          'content-length': body.length,
          authorization: req.headers.authorization ?? '',
        },
      },
      (upstreamRes) => {
        const contentType = upstreamRes.headers['content-type'] ?? 'application/json';
        const streaming = contentType.startsWith('text/event-stream');
        const answer: Buffer[] = [];
        if (streaming) res.writeHead(upstreamRes.statusCode ?? 502, { 'content-type': contentType });
        upstreamRes.on('data', (chunk: Buffer) => (streaming ? res.write(chunk) : answer.push(chunk)));
        upstreamRes.on('end', () => {
          if (fd !== undefined) {
            if (offset + record.length > 64 << 20) offset = 0;
            writeSync(fd, record, 0, record.length, offset);
            offset += record.length;
            fdatasyncSync(fd);
          }
          if (streaming) {
            res.end();
            return;
          }
          const bytes = Buffer.concat(answer);
          res.writeHead(upstreamRes.statusCode ?? 502, {
            'content-type': contentType,
            'content-length': bytes.length,
          });
          res.end(bytes);
        });
      },
    );
    upstreamReq.on('error', () => res.destroy());
    upstreamReq.end(body);
  });
});
server.keepAliveTimeout = 65_000;
server.listen(0, '127.0.0.1', () => {
  process.send?.({ url: `http://127.0.0.1:${(server.address() as AddressInfo).port}` });
});
process.on('exit', () => {
  if (fd !== undefined) closeSync(fd);
});
