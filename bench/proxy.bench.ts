// Proxy overhead, measured in one run against the same local upstream (its own process): direct to the upstream,
// through clawgate's proxy (token verified, receipt signed and fsync'ed per call), and through
// Portkey's open-source gateway, a peer people use for the same job. JSON and streaming,
// sequential and with 100 concurrent clients. Prints added latency (p50, p99) over direct,
// time-to-first-byte difference for streams, requests per second, and each proxy's RSS.
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

interface Target {
  name: string;
  url: string;
  headers: Record<string, string>;
  pid?: number;
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

async function concurrent(target: Target, body: string): Promise<Run> {
  const totals: number[] = [];
  const firsts: number[] = [];
  let next = 0;
  const started = performance.now();
  await Promise.all(
    Array.from({ length: CONCURRENT_CLIENTS }, async () => {
      while (next < CONCURRENT_REQUESTS) {
        next += 1;
        const r = await call(target, body);
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
    rps: (CONCURRENT_REQUESTS / elapsed) * 1000,
  };
}

function rssMiB(pid: number | undefined): string {
  if (pid === undefined) return '-';
  const match = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return match ? `${(Number(match[1]) / 1024).toFixed(0)} MiB` : '?';
}

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'clawgate-bench-proxy-'));
  const children: ChildProcess[] = [];
  try {
    const upstreamProcess = fork(join(import.meta.dirname, 'upstream-process.ts'));
    children.push(upstreamProcess);
    const upstream = {
      url: await new Promise<string>((resolve) =>
        upstreamProcess.once('message', (m: { url: string }) => resolve(m.url)),
      ),
    };
    // clawgate's proxy, in a process of its own, with real keys, a registry and an active policy.
    const keys = join(dir, 'keys');
    for (const purpose of ['token', 'receipt', 'policy'] as const) await generateKeyring(keys, purpose);
    const example = JSON.parse(
      readFileSync(join(import.meta.dirname, '../examples/policy.json'), 'utf8'),
    ) as unknown;
    const policy = parseWpc(example);
    const registry = new FilePolicyRegistry(join(dir, 'registry'));
    const { hash } = await registry.register(
      signWpc(policy, loadSigner(keys, 'policy')),
      publicJwks(keys, ['policy']),
    );
    registry.activate('matrix', hash);
    const clawgate = fork(join(import.meta.dirname, 'proxy-process.ts'), [
      JSON.stringify({ upstreamUrl: upstream.url, state: dir }),
    ]);
    children.push(clawgate);
    const clawgateUrl = await new Promise<string>((resolve) =>
      clawgate.once('message', (m: { url: string }) => resolve(m.url)),
    );
    const { token } = await mintCapabilityToken(
      {
        purpose: 'planning',
        job: { workflowId: 'bench-job', runId: 'bench-run' },
        roomId: '!ops:localhost',
        scope: { tools: [], models: ['demo-echo'] },
        wpcHash: hash,
        ttlSeconds: 3600,
      },
      loadSigner(keys, 'token'),
    );

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

    const targets: Target[] = [
      { name: 'direct', url: upstream.url, headers: { authorization: 'Bearer bench-key' } },
      {
        name: 'clawgate',
        url: clawgateUrl,
        headers: { authorization: `Bearer ${token}` },
        pid: clawgate.pid,
      },
      {
        name: 'portkey',
        url: portkeyUrl,
        headers: {
          authorization: 'Bearer bench-key',
          'x-portkey-provider': 'openai',
          'x-portkey-custom-host': `${upstream.url}/v1`,
        },
        pid: portkey.pid,
      },
    ];
    const bodies = {
      json: JSON.stringify({
        model: 'demo-echo',
        messages: [{ role: 'user', content: 'measure the overhead of this call' }],
      }),
      stream: JSON.stringify({
        model: 'demo-echo',
        stream: true,
        messages: [{ role: 'user', content: 'measure the overhead of this streamed call' }],
      }),
    };

    console.log(
      `${SEQUENTIAL} sequential calls (after ${WARMUP} warm-up; the targets take turns in ${ROUNDS} rounds), then ${CONCURRENT_REQUESTS} calls from ${CONCURRENT_CLIENTS} concurrent clients; ` +
        'clawgate verifies a CST per call (signature, claims, revocation, pinned policy), signs a receipt and fdatasyncs it before the answer completes.',
    );
    const rows: string[][] = [];
    for (const kind of ['json', 'stream'] as const) {
      const results = new Map<string, { seq: Run; conc: Run }>();
      const sequentialRuns = await sequential(targets, bodies[kind]);
      for (const target of targets) {
        try {
          const seq = sequentialRuns.get(target.name);
          if (seq instanceof Error || seq === undefined) throw seq ?? new Error('no sequential run');
          const conc = await concurrent(target, bodies[kind]);
          results.set(target.name, { seq, conc });
        } catch (error) {
          // A peer that fails here is reported, not hidden; clawgate or direct failing ends the run.
          if (target.name !== 'portkey') throw error;
          rows.push([
            kind,
            target.name,
            `failed: ${error instanceof Error ? error.message.slice(0, 90) : String(error)}`,
          ]);
        }
      }
      const direct = results.get('direct');
      if (!direct) throw new Error('no direct run');
      for (const target of targets) {
        const r = results.get(target.name);
        if (!r) continue;
        const added = (a: number, b: number): string => (target.name === 'direct' ? '-' : (a - b).toFixed(3));
        rows.push([
          kind,
          target.name,
          r.seq.p50.toFixed(3),
          added(r.seq.p50, direct.seq.p50),
          added(r.seq.p99, direct.seq.p99),
          kind === 'stream' ? added(r.seq.ttfb50, direct.seq.ttfb50) : '-',
          r.seq.rps.toFixed(0),
          added(r.conc.p50, direct.conc.p50),
          added(r.conc.p99, direct.conc.p99),
          r.conc.rps.toFixed(0),
          (r.conc.rps / direct.conc.rps).toFixed(2),
          rssMiB(target.pid),
        ]);
      }
    }
    const header = [
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
    ];
    const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]?.length ?? 0)));
    const line = (cells: string[]): string => cells.map((c, i) => c.padStart(widths[i] ?? 0)).join('  ');
    console.log(line(header));
    for (const row of rows) console.log(line(row));
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
