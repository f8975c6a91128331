// `clawgate status`: each part's state from its health endpoint, one line each, for a person at a
// terminal. The addresses come from the configuration, so it works against `clawgate start` and
// against parts run separately (docker-compose, one machine each); under `clawgate start` it also
// names each part's pid and log.
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { statePaths, type ClawgateConfig } from '../config/config.ts';
import { probeHttp, probeTemporal, type Probe } from '../stack/parts.ts';

export interface PartStatus {
  part: string;
  up: boolean;
  /** What was asked. */
  at: string;
  /** What it said: the reason when it is down, a few facts when it is up. */
  detail: string;
  /** Its process, when `clawgate start` runs it. */
  pid: number | null;
}

const base = (at: { host: string; port: number }): string =>
  `http://${at.host.includes(':') ? `[${at.host}]` : at.host}:${at.port}`;

function text(value: unknown): string | null {
  if (typeof value === 'string' && value !== '') return value;
  if (typeof value === 'object' && value !== null) {
    const o = value as Record<string, unknown>;
    return text(o['message']) ?? text(o['reason']) ?? text(o['error']);
  }
  return null;
}

/** What a part's health answer says, in a line: its own reason when it gives one. */
export function healthDetail(part: string, probe: Probe): string {
  if (probe.state === 'unreachable') return `no answer: ${probe.error ?? 'unreachable'}`;
  const body = probe.body;
  const code = probe.status === undefined ? '' : `HTTP ${probe.status}`;
  if (typeof body !== 'object' || body === null) {
    if (probe.state === 'healthy') return '';
    const said = typeof body === 'string' ? body.trim().slice(0, 200) : '';
    return [code, said].filter(Boolean).join(': ');
  }
  const o = body as Record<string, unknown>;
  const facts: string[] = [];
  // The gateway's and the worker's list of why they are not healthy says it all, accounts too.
  const reasons = Array.isArray(o['reasons']) ? o['reasons'].filter((r) => typeof r === 'string') : [];
  const reason = text(o['reason']) ?? text(o['refusing']) ?? text(o['error']);
  if (reasons.length > 0) facts.push(...reasons);
  else if (reason) facts.push(reason);
  if (reasons.length === 0 && part === 'gateway' && Array.isArray(o['accounts'])) {
    for (const a of o['accounts'] as Array<Record<string, unknown>>) {
      const why = text(a['lastError']) ?? text(a['error']);
      facts.push(
        `account ${String(a['id'])} ${String(a['state'])}${why && a['state'] !== 'syncing' ? ` (${why})` : ''}`,
      );
    }
  }
  if (reasons.length === 0 && part === 'worker' && typeof o['state'] === 'string') {
    facts.push(`worker ${o['state']}`);
  }
  const control = o['control'];
  if (typeof control === 'object' && control !== null) {
    const c = control as Record<string, unknown>;
    const why = text(c['refusing']) ?? text(c['error']);
    if (why) facts.push(`control state: ${why}`);
  }
  if (facts.length === 0 && probe.state !== 'healthy') facts.push(code);
  return facts.join('; ');
}

/** The pid `clawgate start` keeps for a part, when that process is alive. */
function runningPid(config: ClawgateConfig, part: string): number | null {
  const file = join(statePaths(config).run, `${part}.pid`);
  if (!existsSync(file)) return null;
  const pid = Number(readFileSync(file, 'utf8').trim());
  if (!Number.isInteger(pid) || pid <= 0) return null;
  try {
    process.kill(pid, 0);
    return pid;
  } catch {
    return null;
  }
}

/** Every part of the configuration, asked at the same time. */
export async function partStatuses(config: ClawgateConfig): Promise<PartStatus[]> {
  const temporalAddress = config.temporal.address ?? `127.0.0.1:${config.temporal.port}`;
  const homeserver = config.matrix.homeserverUrl;
  const checks: Array<{ part: string; at: string; probe: () => Promise<Probe> }> = [
    {
      part: 'temporal',
      at: temporalAddress,
      probe: () => probeTemporal(temporalAddress, config.temporal.namespace, { tls: config.temporal.tls }),
    },
    homeserver
      ? {
          part: 'homeserver',
          at: `${homeserver.replace(/\/+$/, '')}/_matrix/client/versions`,
          probe: () => probeHttp(`${homeserver.replace(/\/+$/, '')}/_matrix/client/versions`),
        }
      : {
          part: 'synapse',
          at: `http://127.0.0.1:${config.matrix.port}/health`,
          probe: () => probeHttp(`http://127.0.0.1:${config.matrix.port}/health`),
        },
  ];
  const demoUpstream = statePaths(config).demoUpstreamUrl;
  if (!config.proxy.upstreams && existsSync(demoUpstream)) {
    const url = `${readFileSync(demoUpstream, 'utf8').trim()}/v1/models`;
    checks.push({ part: 'demo-upstream', at: url, probe: () => probeHttp(url) });
  }
  for (const [part, url] of [
    ['proxy', `${base(config.proxy.listen)}/healthz`],
    ['worker', `${base(config.worker.health)}/health`],
    ['gateway', `${base(config.gateway.health)}/health`],
    ['codec', `${base(config.codec.listen)}/health`],
    ['evidence', `${base(config.evidence.listen)}/health`],
  ] as const) {
    checks.push({ part, at: url, probe: () => probeHttp(url) });
  }
  return Promise.all(
    checks.map(async ({ part, at, probe }) => {
      const result = await probe();
      return {
        part,
        up: result.state === 'healthy',
        at,
        detail: healthDetail(part, result),
        pid: runningPid(config, part),
      };
    }),
  );
}

/** One line a part: name, up or down, pid, what was asked, what it said. */
export function renderStatus(rows: PartStatus[]): string {
  const width = Math.max(...rows.map((r) => r.part.length));
  return rows
    .map((r) =>
      [
        r.part.padEnd(width),
        (r.up ? 'up' : 'down').padEnd(4),
        (r.pid === null ? '' : `pid ${r.pid}`).padEnd(10),
        r.at,
        r.detail ? ` ${r.detail}` : '',
      ]
        .join('  ')
        .trimEnd(),
    )
    .join('\n');
}
