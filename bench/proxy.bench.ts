// Proxy overhead, measured in one run against the same local upstream (its own process): direct to the upstream,
// through clawgate's proxy (token verified, receipt signed and fsync'ed per call), and through
// Portkey's open-source gateway, a peer people use for the same job. JSON and streaming,
// sequential and with 100 concurrent clients. Prints added latency (p50, p99) over direct,
// time-to-first-byte difference for streams, requests per second, and each proxy's RSS.
//
// Two references are measured in the same run so the figures can be read against what this
// machine allows: a bare Node pass-through proxy (sequential and under load), and the same with
// one fdatasync per call (sequential: the least a proxy pays to have a record on disk before the
// caller's answer completes).
//
// Under load, two upstreams: one that answers at once (the 100 clients then saturate the
// machine, and the added latency is mostly queueing behind the proxy's work per call), and one
// paced like a model (BENCH_PACED_MS on average before its answer, from half to one and a half
// times that, the same for the same message on every path; BENCH_PACED_CHUNK_MS between stream
// events), where the added latency is what a caller of a real model would see.
import { fork, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { Agent, request } from 'node:http';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { generateKeyring, loadSigner, publicJwks } from '../src/keys/keyring.ts';
import { FilePolicyRegistry, signWpc } from '../src/policy/registry.ts';
import { parseWpc } from '../src/policy/wpc.ts';
import { mintCapabilityToken } from '../src/tokens/cst.ts';
import { freeLoopbackPort, waitUntil } from '../src/devstack/net.ts';

const SEQUENTIAL = Number(process.env['BENCH_SEQUENTIAL'] ?? 1000);
const CONCURRENT_CLIENTS = 100;
const CONCURRENT_REQUESTS = Number(process.env['BENCH_CONCURRENT'] ?? 4000);
const WARMUP = 200;
const ROUNDS = 10;
const PACED_MS = Number(process.env['BENCH_PACED_MS'] ?? 200);
const PACED_CHUNK_MS = Number(process.env['BENCH_PACED_CHUNK_MS'] ?? 5);
const PACED_REQUESTS = Number(process.env['BENCH_PACED_CONCURRENT'] ?? 4000);

interface Target {
  name: string;
  url: string;
  headers: Record<string, string>;
  pid?: number;
  /**
   * A reference measured sequentially only. The pass-through with its fdatasync per call is one:
   * under load it syncs call by call where a proxy batches them, so it would be no floor there.
   */
  sequentialOnly?: boolean;
}

const agent = new Agent({ keepAlive: true, maxSockets: CONCURRENT_CLIENTS });

/** One call; resolves with total time and time to the first body byte, in ms. */
function call(
  target: Target,
  body: string,
): Promise<{ totalMs: number; firstByteMs: number; status: number; text: string }> {
  return new Promise((resolve, reject) => {
    const started = performance.now();
    let firstByteMs = -1;
    const req = request(
      `${target.url}/v1/chat/completions`,
      {
        method: 'POST',
        agent,
        headers: {
          'content-type': 'application/json',
          'content-length': Buffer.byteLength(body),
          ...target.headers,
        },
      },
      (res) => {
        let text = '';
        res.on('data', (chunk: Buffer) => {
          if (firstByteMs < 0) firstByteMs = performance.now() - started;
          if (res.statusCode !== 200) text += chunk.toString();
        });
        res.on('end', () =>
          resolve({ totalMs: performance.now() - started, firstByteMs, status: res.statusCode ?? 0, text }),
        );
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? NaN;
}

interface Run {
  p50: number;
  p99: number;
  ttfb50: number;
  rps: number;
}

/**
 * Sequential calls, interleaved: every target gets its share in each of ROUNDS rounds, so a
 * slow spell of this shared machine falls on all of them alike instead of on one.
 */
async function sequential(targets: Target[], body: string): Promise<Map<string, Run | Error>> {
  const live = new Map<string, { totals: number[]; firsts: number[]; elapsed: number }>();
  const out = new Map<string, Run | Error>();
  for (const target of targets) {
    try {
      // Warm-up answers are not checked (a peer's first calls may fail while it warms up).
      for (let i = 0; i < WARMUP; i++) await call(target, body);
      live.set(target.name, { totals: [], firsts: [], elapsed: 0 });
    } catch (error) {
      out.set(target.name, error as Error);
    }
  }
  const perRound = Math.ceil(SEQUENTIAL / ROUNDS);
  for (let round = 0; round < ROUNDS; round++) {
    for (const target of targets) {
      const acc = live.get(target.name);
      if (!acc) continue;
      const started = performance.now();
      try {
        for (let i = 0; i < perRound; i++) {
          const r = await call(target, body);
          if (r.status !== 200) throw new Error(`${target.name}: status ${r.status}: ${r.text}`);
          acc.totals.push(r.totalMs);
          acc.firsts.push(r.firstByteMs);
        }
      } catch (error) {
        live.delete(target.name);
        out.set(target.name, error as Error);
      }
      acc.elapsed += performance.now() - started;
    }
  }
  for (const [name, acc] of live) {
    acc.totals.sort((a, b) => a - b);
    acc.firsts.sort((a, b) => a - b);
    out.set(name, {
      p50: percentile(acc.totals, 50),
      p99: percentile(acc.totals, 99),
      ttfb50: percentile(acc.firsts, 50),
      rps: (acc.totals.length / acc.elapsed) * 1000,
    });
  }
  return out;
}

async function concurrent(
  target: Target,
  body: string | ((i: number) => string),
  requests = CONCURRENT_REQUESTS,
): Promise<Run> {
  const totals: number[] = [];
  const firsts: number[] = [];
  let next = 0;
  const started = performance.now();
  await Promise.all(
    Array.from({ length: CONCURRENT_CLIENTS }, async () => {
      while (next < requests) {
        const i = next;
        next += 1;
        const r = await call(target, typeof body === 'string' ? body : body(i));
        if (r.status !== 200) throw new Error(`${target.name}: status ${r.status}: ${r.text}`);
        totals.push(r.totalMs);
        firsts.push(r.firstByteMs);
      }
    }),
  );
  const elapsed = performance.now() - started;
  totals.sort((a, b) => a - b);
  firsts.sort((a, b) => a - b);
  return {
    p50: percentile(totals, 50),
    p99: percentile(totals, 99),
    ttfb50: percentile(firsts, 50),
    rps: (requests / elapsed) * 1000,
  };
}

/** Starts a bench process that answers its URL in its first message. */
async function child(
  children: ChildProcess[],
  script: string,
  arg: unknown,
): Promise<{ url: string; pid: number | undefined }> {
  const process_ = fork(join(import.meta.dirname, script), [JSON.stringify(arg)]);
  children.push(process_);
  const url = await new Promise<string>((resolve, reject) => {
    process_.once('message', (m: { url: string }) => resolve(m.url));
    process_.once('exit', (code) => reject(new Error(`${script} exited with ${code}`)));
  });
  return { url, pid: process_.pid };
}

function table(header: string[], rows: string[][]): void {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]?.length ?? 0)));
  const line = (cells: string[]): string => cells.map((c, i) => c.padStart(widths[i] ?? 0)).join('  ');
  console.log(line(header));
  for (const row of rows) console.log(line(row));
}

const failure = (error: unknown): string =>
  `failed: ${error instanceof Error ? error.message.slice(0, 120) : String(error)}`;

function rssMiB(pid: number | undefined): string {
  if (pid === undefined) return '-';
  const match = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return match ? `${(Number(match[1]) / 1024).toFixed(0)} MiB` : '?';
}

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'clawgate-bench-proxy-'));
  const children: ChildProcess[] = [];
  try {
    const instant = await child(children, 'upstream-process.ts', { models: ['demo-echo'] });
    const paced = await child(children, 'upstream-process.ts', {
      models: ['demo-paced'],
      firstByteDelayMs: PACED_MS / 2,
      firstByteJitterMs: PACED_MS,
      chunkDelayMs: PACED_CHUNK_MS,
    });
    // clawgate's proxy, in a process of its own, with real keys, a registry and an active policy.
    const keys = join(dir, 'keys');
    for (const purpose of ['token', 'receipt', 'policy'] as const) await generateKeyring(keys, purpose);
    const example = JSON.parse(
      readFileSync(join(import.meta.dirname, '../examples/policy.json'), 'utf8'),
    ) as { model_access: { allowed_models: string[] } };
    example.model_access.allowed_models = ['demo-echo', 'demo-paced'];
    const policy = parseWpc(example);
    const registry = new FilePolicyRegistry(join(dir, 'registry'));
    const { hash } = await registry.register(
      signWpc(policy, loadSigner(keys, 'policy')),
      publicJwks(keys, ['policy']),
    );
    registry.activate('matrix', hash);
    const clawgate = await child(children, 'proxy-process.ts', {
      upstreams: { 'demo-echo': instant.url, 'demo-paced': paced.url },
      state: dir,
    });
    const { token } = await mintCapabilityToken(
      {
        purpose: 'planning',
        job: { workflowId: 'bench-job', runId: 'bench-run' },
        roomId: '!ops:localhost',
        scope: { tools: [], models: ['demo-echo', 'demo-paced'] },
        wpcHash: hash,
        ttlSeconds: 3600,
      },
      loadSigner(keys, 'token'),
    );
    const passThrough = await child(children, 'floor-process.ts', { upstreamUrl: instant.url });
    const passThroughSync = await child(children, 'floor-process.ts', {
      upstreamUrl: instant.url,
      logPath: join(dir, 'floor.log'),
    });

    // Portkey's gateway, in a process of its own, held to loopback.
    const portkeyPort = await freeLoopbackPort();
    const portkeyEntry = join(
      createRequire(import.meta.url).resolve('@portkey-ai/gateway/package.json'),
      '..',
      'build',
      'start-server.js',
    );
    const portkey = spawn(
      process.execPath,
      [
        '--import',
        join(import.meta.dirname, 'loopback-only.mjs'),
        portkeyEntry,
        `--port=${portkeyPort}`,
        '--headless',
      ],
      { stdio: 'ignore', env: { ...process.env, NODE_ENV: 'production' } },
    );
    children.push(portkey);
    const portkeyUrl = `http://127.0.0.1:${portkeyPort}`;
    await waitUntil(async () => (await fetch(portkeyUrl)).ok, {
      timeoutMs: 30_000,
      message: 'Portkey gateway',
    });

    const targetsFor = (upstreamUrl: string): Target[] => [
      { name: 'direct', url: upstreamUrl, headers: { authorization: 'Bearer bench-key' } },
      {
        name: 'clawgate',
        url: clawgate.url,
        headers: { authorization: `Bearer ${token}` },
        pid: clawgate.pid,
      },
      {
        name: 'portkey',
        url: portkeyUrl,
        headers: {
          authorization: 'Bearer bench-key',
          'x-portkey-provider': 'openai',
          'x-portkey-custom-host': `${upstreamUrl}/v1`,
        },
        pid: portkey.pid,
      },
    ];
    const floors: Target[] = [
      {
        name: 'node pass-through',
        url: passThrough.url,
        headers: { authorization: 'Bearer bench-key' },
        pid: passThrough.pid,
      },
      {
        name: 'pass-through+fdatasync',
        url: passThroughSync.url,
        headers: { authorization: 'Bearer bench-key' },
        sequentialOnly: true,
      },
    ];
    const bodyOf = (kind: 'json' | 'stream', model: string, n?: number): string =>
      JSON.stringify({
        model,
        ...(kind === 'stream' ? { stream: true } : {}),
        messages: [
          {
            role: 'user',
            content: `measure the overhead of this ${kind === 'stream' ? 'streamed ' : ''}call${n === undefined ? '' : ` ${n}`}`,
          },
        ],
      });

    console.log(
      `${SEQUENTIAL} sequential calls (after ${WARMUP} warm-up; the targets take turns in ${ROUNDS} rounds), then ${CONCURRENT_REQUESTS} calls from ${CONCURRENT_CLIENTS} concurrent clients; ` +
        'clawgate verifies a CST per call (signature, claims, revocation, pinned policy), signs a receipt and fdatasyncs it before the answer completes.',
    );
    const rows: string[][] = [];
    const pacedRows: string[][] = [];
    const failures: string[] = [];
    for (const kind of ['json', 'stream'] as const) {
      const body = bodyOf(kind, 'demo-echo');
      const targets = targetsFor(instant.url);
      const results = new Map<string, { seq: Run; conc?: Run }>();
      const sequentialRuns = await sequential([...targets, ...floors], body);
      for (const target of [...targets, ...floors]) {
        try {
          const seq = sequentialRuns.get(target.name);
          if (seq instanceof Error || seq === undefined) throw seq ?? new Error('no sequential run');
          const conc = target.sequentialOnly ? undefined : await concurrent(target, body);
          results.set(target.name, { seq, ...(conc ? { conc } : {}) });
        } catch (error) {
          // A peer that fails here is reported, not hidden; clawgate or direct failing ends the run.
          if (target.name !== 'portkey') throw error;
          failures.push(`${kind} ${target.name}, unpaced: ${failure(error)}`);
        }
      }
      const direct = results.get('direct');
      if (!direct?.conc) throw new Error('no direct run');
      for (const target of [...targets, ...floors]) {
        const r = results.get(target.name);
        if (!r) continue;
        const added = (a: number | undefined, b: number): string =>
          target.name === 'direct' || a === undefined ? '-' : (a - b).toFixed(3);
        rows.push([
          kind,
          target.name,
          r.seq.p50.toFixed(3),
          added(r.seq.p50, direct.seq.p50),
          added(r.seq.p99, direct.seq.p99),
          kind === 'stream' ? added(r.seq.ttfb50, direct.seq.ttfb50) : '-',
          r.seq.rps.toFixed(0),
          added(r.conc?.p50, direct.conc.p50),
          added(r.conc?.p99, direct.conc.p99),
          r.conc ? r.conc.rps.toFixed(0) : '-',
          r.conc ? (r.conc.rps / direct.conc.rps).toFixed(2) : '-',
          rssMiB(target.pid),
        ]);
      }

      // The paced upstream: 100 clients calling a model that takes its time.
      // Call i carries the same message on every path, so it waits the same upstream.
      const pacedBody = (i: number): string => bodyOf(kind, 'demo-paced', i);
      const pacedResults = new Map<string, Run>();
      for (const target of targetsFor(paced.url)) {
        try {
          pacedResults.set(target.name, await concurrent(target, pacedBody, PACED_REQUESTS));
        } catch (error) {
          if (target.name !== 'portkey') throw error;
          failures.push(`${kind} ${target.name}, paced: ${failure(error)}`);
        }
      }
      const pacedDirect = pacedResults.get('direct');
      if (!pacedDirect) throw new Error('no direct run against the paced upstream');
      for (const [name, r] of pacedResults) {
        const added = (a: number, b: number): string => (name === 'direct' ? '-' : (a - b).toFixed(3));
        pacedRows.push([
          kind,
          name,
          r.p50.toFixed(3),
          r.p99.toFixed(3),
          added(r.p50, pacedDirect.p50),
          added(r.p99, pacedDirect.p99),
          kind === 'stream' ? added(r.ttfb50, pacedDirect.ttfb50) : '-',
          r.rps.toFixed(0),
        ]);
      }
    }
    table(
      [
        'body',
        'path',
        'seq p50 ms',
        'added p50',
        'added p99',
        'added TTFB p50',
        'seq rps',
        'load added p50',
        'load added p99',
        'load rps',
        'rps/direct',
        'RSS',
      ],
      rows,
    );
    console.log(
      `\n${PACED_REQUESTS} calls from ${CONCURRENT_CLIENTS} concurrent clients to an upstream paced like a model ` +
        `(${PACED_MS / 2}-${(PACED_MS * 3) / 2} ms before its answer, the same for the same message on every path` +
        `${PACED_CHUNK_MS > 0 ? `, ${PACED_CHUNK_MS} ms between stream events` : ''}):`,
    );
    table(['body', 'path', 'p50 ms', 'p99 ms', 'added p50', 'added p99', 'added TTFB p50', 'rps'], pacedRows);
    for (const line of failures) console.log(line);
    // The log ends at its first zero byte (the zeros after it are laid down ahead of the data).
    const log = readFileSync(join(dir, 'receipts.log'));
    const receipts = log
      .subarray(0, log.indexOf(0) < 0 ? log.length : log.indexOf(0))
      .toString('utf8')
      .split('\n')
      .filter(Boolean).length;
    console.log(`clawgate wrote ${receipts} receipts in this run.`);
  } finally {
    for (const child of children) child.kill('SIGKILL');
    agent.destroy();
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
