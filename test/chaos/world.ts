// The world outside clawgate that a chaos run counts from: the model upstream (the "paid
// service": a scripted model in this process, which keeps every request it was sent), a web
// server on the policy's egress allowlist that counts each marker POSTed to it, a bare git
// remote that logs every update of its branches, and a tap on the worker's way to the proxy (a
// plain pass-through) that shows when a job is being sealed. All on 127.0.0.1, all in this
// process, none of them killed: they are what the killed parts must not lose or do twice.
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { createServer, request as httpRequest, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { pipeline } from 'node:stream';
import { DEMO_SCRIPT, scriptedModel, type DemoScript } from '../../src/proxy/demo-model.ts';
import { startDemoUpstream, type ChatMessage, type DemoUpstream } from '../../src/proxy/demo-upstream.ts';
import type { Moment } from './schedule.ts';

/** The tag every request of a chaos job carries: `[chaos-<n>]`. */
export const JOB_TAG = /\[chaos-(\d+)\]/;

export function jobTag(index: number): string {
  return `[chaos-${index}]`;
}

function firstUserText(messages: ChatMessage[]): string {
  const first = messages.find((m) => m.role === 'user');
  return typeof first?.content === 'string' ? first.content : '';
}

/** The job a model request is of, from the tag in its request text; null when it has none. */
export function jobOfMessages(messages: ChatMessage[]): number | null {
  const m = JOB_TAG.exec(firstUserText(messages));
  return m ? Number(m[1]) : null;
}

export interface ModelCall {
  job: number | null;
  requestSha256: string;
}

export interface World {
  /** Moments the harness can see: a tool call with side effects arriving, a model call, a seal. */
  readonly moments: EventEmitter<Record<Moment, [number | null]>>;
  readonly upstream: DemoUpstream;
  /** Each job's model, set before its request is sent. */
  readonly scripts: Map<number, DemoScript>;
  readonly countUrl: string;
  readonly countHost: string;
  /** How many times each marker was POSTed. */
  readonly markers: Map<string, number>;
  readonly relayUrl: string;
  /** Where the relay sends what it is given (the proxy's address). */
  proxyPort: number;
  /** Every model call the upstream was sent, with the job it was of. */
  modelCalls(): ModelCall[];
  /** Every update the remote's branches have had, by branch. */
  branchUpdates(): Map<string, string[]>;
  close(): Promise<void>;
}

async function listenOn(server: Server): Promise<number> {
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return (server.address() as AddressInfo).port;
}

function closeServer(server: Server): Promise<void> {
  return new Promise((resolve) => {
    server.closeAllConnections();
    server.close(() => resolve());
  });
}

export async function startWorld(opts: { remote: string; proxyPort: number }): Promise<World> {
  const moments = new EventEmitter<Record<Moment, [number | null]>>();
  const scripts = new Map<number, DemoScript>();
  const upstream = await startDemoUpstream({
    // A model's answer takes a while, and not always the same while.
    firstByteDelayMs: 60,
    firstByteJitterMs: 250,
    reply: (request) => {
      const job = jobOfMessages(request.messages);
      return scriptedModel((job !== null && scripts.get(job)) || DEMO_SCRIPT)(request);
    },
    beforeAnswer: (request) => {
      moments.emit('model-call', jobOfMessages(request.messages));
      return Promise.resolve();
    },
    afterAnswer: (request) => {
      moments.emit('receipt-write', jobOfMessages(request.messages));
    },
  });

  const markers = new Map<string, number>();
  const counter = createServer((req, res) => {
    const m = /^\/mark\/([a-z0-9-]+)$/.exec(req.url ?? '');
    if (req.method !== 'POST' || !m) {
      res.writeHead(404).end('no such route\n');
      return;
    }
    const marker = m[1] as string;
    req.resume();
    req.once('end', () => {
      markers.set(marker, (markers.get(marker) ?? 0) + 1);
      moments.emit('tool-call', Number(/(\d+)$/.exec(marker)?.[1] ?? -1));
      // Held a moment, so that a kill aimed at "during the tool call" lands during it.
      setTimeout(() => res.writeHead(200, { 'content-type': 'text/plain' }).end(`recorded ${marker}\n`), 400);
    });
  });
  const countPort = await listenOn(counter);

  const world = {
    moments,
    upstream,
    scripts,
    countUrl: `http://127.0.0.1:${countPort}`,
    countHost: `127.0.0.1:${countPort}`,
    markers,
    relayUrl: '',
    proxyPort: opts.proxyPort,
    modelCalls: (): ModelCall[] =>
      upstream.received.map((raw) => {
        let job: number | null;
        try {
          job = jobOfMessages(
            (JSON.parse(raw.toString('utf8')) as { messages?: ChatMessage[] }).messages ?? [],
          );
        } catch {
          job = null;
        }
        return { job, requestSha256: createHash('sha256').update(raw).digest('hex') };
      }),
    branchUpdates: (): Map<string, string[]> => branchUpdates(opts.remote),
    close: async () => {
      await Promise.all([upstream.close(), closeServer(counter), closeServer(relay)]);
    },
  } satisfies World;

  // The tap: whatever the worker sends the proxy goes on to it unchanged; a connection the proxy
  // does not take (it is down) is cut, so the worker sees what it would see without the tap.
  const relay = createServer((req, res) => {
    if (req.method === 'POST' && req.url === '/v1/clawsig/receipts') moments.emit('seal', null);
    const onward = httpRequest(
      {
        host: '127.0.0.1',
        port: world.proxyPort,
        method: req.method,
        path: req.url,
        headers: req.headers,
        agent: false,
      },
      (answer) => {
        res.writeHead(answer.statusCode ?? 502, answer.headers);
        pipeline(answer, res, () => undefined);
      },
    );
    onward.on('error', () => {
      req.socket.destroy();
      res.destroy();
    });
    res.on('close', () => {
      if (!res.writableFinished) onward.destroy();
    });
    pipeline(req, onward, () => undefined);
  });
  world.relayUrl = `http://127.0.0.1:${await listenOn(relay)}`;
  return world;
}

/** A bare clone of `source` that keeps a log of every update of every branch. */
export function makeRemote(source: string, remote: string): void {
  execFileSync('git', ['clone', '-q', '--bare', source, remote], { env: gitEnv() });
  execFileSync('git', ['--git-dir', remote, 'config', 'core.logAllRefUpdates', 'always'], { env: gitEnv() });
}

function gitEnv(): NodeJS.ProcessEnv {
  return {
    PATH: process.env['PATH'] ?? '/usr/bin:/bin',
    HOME: process.env['HOME'] ?? '/',
    GIT_CONFIG_NOSYSTEM: '1',
  };
}

function branchUpdates(remote: string): Map<string, string[]> {
  const out = new Map<string, string[]>();
  const refs = execFileSync(
    'git',
    ['--git-dir', remote, 'for-each-ref', '--format=%(refname)', 'refs/heads'],
    {
      env: gitEnv(),
    },
  )
    .toString()
    .split('\n')
    .filter(Boolean);
  for (const ref of refs) {
    const updates = execFileSync('git', ['--git-dir', remote, 'reflog', 'show', '--format=%H', ref], {
      env: gitEnv(),
    })
      .toString()
      .split('\n')
      .filter(Boolean);
    out.set(ref.replace(/^refs\/heads\//, ''), updates);
  }
  return out;
}
