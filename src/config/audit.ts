// `clawgate security audit`: what the runbook asks to check on every configuration change and
// before anything is exposed to a network. Each finding has a severity and the fix; a high one
// makes the command exit non-zero; `--fix` tightens file modes (the only thing it changes). A
// note is for a choice a team may have made on purpose (a room not encrypted): it is said, and
// never fails the audit. The homeserver's part is asked by audit-encryption.ts.
import { chmodSync, existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { FilePolicyRegistry } from '../policy/registry.ts';
import type { Wpc } from '../policy/wpc.ts';
import type { ClawgateConfig } from './config.ts';
import { statePaths } from './config.ts';

export type Severity = 'high' | 'medium' | 'low' | 'note';

export interface Finding {
  severity: Severity;
  what: string;
  fix: string;
  /** A file mode `--fix` can set. */
  chmod?: { path: string; mode: number };
}

const LOOPBACK = /^(127\.\d+\.\d+\.\d+|::1|localhost|\[::1\])$/i;

function hostOf(address: string): string {
  if (address.startsWith('[')) return address.slice(0, address.indexOf(']') + 1);
  return address.split(':')[0] ?? address;
}

function modeOf(path: string): number {
  return statSync(path).mode & 0o777;
}

function octal(mode: number): string {
  return mode.toString(8).padStart(3, '0');
}

/** Every file under a folder (not following links). */
function walk(dir: string): string[] {
  if (!existsSync(dir)) return [];
  const out: string[] = [];
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) out.push(path, ...walk(path));
    else if (entry.isFile()) out.push(path);
  }
  return out;
}

export function audit(
  config: ClawgateConfig,
  opts: { configFile?: string; bwrapExists?: (path: string) => boolean } = {},
): Finding[] {
  const findings: Finding[] = [];
  const paths = statePaths(config);
  const add = (f: Finding) => findings.push(f);

  // Files: keys and credentials 0600, state folders 0700.
  const privateDir = (path: string, severity: Severity, what: string) => {
    if (!existsSync(path)) return;
    const mode = modeOf(path);
    if ((mode & 0o077) !== 0) {
      add({
        severity,
        what: `${what} ${path} is open to group or others (mode ${octal(mode)})`,
        fix: `chmod 700 ${path}`,
        chmod: { path, mode: 0o700 },
      });
    }
  };
  const privateFile = (path: string, severity: Severity, what: string) => {
    if (!existsSync(path)) return;
    const mode = modeOf(path);
    if ((mode & 0o077) !== 0) {
      add({
        severity,
        what: `${what} ${path} is readable by group or others (mode ${octal(mode)})`,
        fix: `chmod 600 ${path}`,
        chmod: { path, mode: 0o600 },
      });
    }
  };
  privateDir(config.stateDir, 'medium', 'the state folder');
  privateDir(paths.keys, 'high', 'the key folder');
  for (const path of walk(paths.keys)) {
    if (statSync(path).isDirectory()) privateDir(path, 'high', 'the key folder');
    else privateFile(path, 'high', 'key file');
  }
  // The payload keyring may live outside the key folder (codec.keysDir, shared by every process).
  if (paths.payloadKeys !== paths.keys) {
    const payloadDir = join(paths.payloadKeys, 'payload');
    privateDir(payloadDir, 'high', 'the payload keyring');
    for (const path of walk(payloadDir)) privateFile(path, 'high', 'payload key file');
  }
  privateFile(paths.codecToken, 'high', "the codec server's token");
  privateDir(paths.gateway, 'high', "the gateway's state folder");
  for (const path of walk(paths.gateway)) {
    if (statSync(path).isDirectory()) privateDir(path, 'high', "a gateway account's state folder");
    else privateFile(path, 'high', "a gateway account's file");
  }
  privateFile(paths.demo, 'high', 'the demo users file');
  if (opts.configFile && existsSync(opts.configFile)) {
    const text = readFileSync(opts.configFile, 'utf8');
    if (/\b(apiKey|password|accessToken|recoveryKey)\b/.test(text)) {
      privateFile(opts.configFile, 'high', 'the configuration (it holds secrets)');
    }
  }

  // Provider keys only in the proxy's upstreams.
  for (const [i, account] of (config.gateway.accounts ?? []).entries()) {
    for (const [key, value] of Object.entries(account)) {
      if (typeof value === 'string' && /^sk-[A-Za-z0-9_-]{8,}/.test(value)) {
        add({
          severity: 'high',
          what: `gateway.accounts[${i}].${key} looks like a model provider key`,
          fix: 'provider keys belong in proxy.upstreams[].apiKey only; remove it here and rotate it',
        });
      }
    }
  }

  // The sandbox.
  if (config.worker.sandbox.backend === 'bubblewrap') {
    const bwrap = config.worker.sandbox.bwrap;
    if (bwrap && !(opts.bwrapExists ?? existsSync)(bwrap)) {
      add({
        severity: 'high',
        what: `worker.sandbox.bwrap ${bwrap} does not exist: every tool would be refused`,
        fix: 'run `npm run bootstrap` (it installs bubblewrap) or point worker.sandbox.bwrap at it',
      });
    }
  }

  // Listeners and connections.
  for (const [what, host] of [
    ['proxy.listen.host', config.proxy.listen.host],
    ['gateway.health.host', config.gateway.health.host],
    ['worker.health.host', config.worker.health.host],
    ['evidence.listen.host', config.evidence.listen.host],
    // It decrypts any payload it is sent: beyond loopback, anyone could claim the Web UI's origin.
    ['codec.listen.host', config.codec.listen.host],
  ] as const) {
    if (!LOOPBACK.test(host)) {
      add({
        severity: 'high',
        what: `${what} is ${host}: it listens beyond this machine without TLS`,
        fix: `set ${what} to 127.0.0.1 and put a TLS-terminating reverse proxy in front`,
      });
    }
  }
  if (config.temporal.address && !LOOPBACK.test(hostOf(config.temporal.address)) && !config.temporal.tls) {
    add({
      severity: 'high',
      what: `Temporal at ${config.temporal.address} is reached without TLS`,
      fix: 'set temporal.tls: true (and the server up for TLS), or reach it on loopback',
    });
  }
  const homeservers = [
    config.matrix.homeserverUrl,
    ...(config.gateway.accounts ?? []).map((a) => a.homeserverUrl),
  ];
  for (const url of homeservers) {
    if (!url) continue;
    const parsed = new URL(url);
    if (parsed.protocol === 'http:' && !LOOPBACK.test(parsed.hostname)) {
      add({
        severity: 'high',
        what: `the homeserver ${url} is reached over plain HTTP: access tokens travel in the clear`,
        fix: 'use its https:// address',
      });
    }
  }
  for (const [i, upstream] of (config.proxy.upstreams ?? []).entries()) {
    const parsed = new URL(upstream.baseUrl);
    if (parsed.protocol === 'http:' && !LOOPBACK.test(parsed.hostname) && upstream.apiKey) {
      add({
        severity: 'high',
        what: `proxy.upstreams[${i}] (${upstream.name}) sends its API key over plain HTTP`,
        fix: 'use the https:// address of the upstream',
      });
    }
  }

  // The active policies.
  let registry: FilePolicyRegistry | null = null;
  try {
    registry = new FilePolicyRegistry(paths.registry);
  } catch (error) {
    add({
      severity: 'high',
      what: `the policy registry ${paths.registry} cannot be read: ${(error as Error).message}`,
      fix: 'restore it from a backup; nothing runs without a readable registry',
    });
  }
  const channels = registry?.channels() ?? [];
  if (registry && !channels.some((c) => c.channel === config.policy.channel)) {
    add({
      severity: 'medium',
      what: `no policy is active on channel ${config.policy.channel}: every request is refused`,
      fix: '`clawgate policy register` and `clawgate policy activate` one',
    });
  }
  for (const { channel, hash } of channels) {
    let wpc: Wpc;
    try {
      wpc = (registry as FilePolicyRegistry).policy(hash);
    } catch (error) {
      add({
        severity: 'high',
        what: `the active policy of channel ${channel} (${hash.slice(0, 12)}) cannot be read: ${(error as Error).message}`,
        fix: 'roll back to an earlier policy with `clawgate policy rollback`',
      });
      continue;
    }
    const where = `the active policy of channel ${channel} (${hash.slice(0, 12)})`;
    if (!wpc.tokens.cst.pin_policy_hash) {
      add({
        severity: 'high',
        what: `${where} does not pin its hash in tokens: a policy change would not stop running jobs`,
        fix: 'set tokens.cst.pin_policy_hash: true, register and activate it',
      });
    }
    if (wpc.execution.tools.allow.includes('exec') && !wpc.execution.tools.deny.includes('exec')) {
      add({
        severity: 'medium',
        what: `${where} allows exec: approved plans may run any command in the sandbox`,
        fix: 'allow exec only where needed, with workspace_access ro or none',
      });
    }
    const { approval } = wpc.matrix;
    if (approval.requester_may_approve) {
      add({
        severity: 'medium',
        what: `${where} lets requesters approve their own jobs`,
        fix: 'set matrix.approval.requester_may_approve: false',
      });
    }
    if (wpc.execution.sandbox.workspace_access === 'rw' && approval.approvals_required < 2) {
      add({
        severity: 'low',
        what: `${where} gives tools a writable workspace on one approval`,
        fix: 'consider matrix.approval.approvals_required: 2',
      });
    }
  }
  return sortFindings(findings);
}

/** Findings in order of severity, the highest first. */
export function sortFindings(findings: Finding[]): Finding[] {
  const order: Record<Severity, number> = { high: 0, medium: 1, low: 2, note: 3 };
  return findings.sort((a, b) => order[a.severity] - order[b.severity]);
}

/** Applies the file-mode fixes; returns what it changed. */
export function applyModeFixes(findings: Finding[]): string[] {
  const done: string[] = [];
  for (const f of findings) {
    if (!f.chmod) continue;
    chmodSync(f.chmod.path, f.chmod.mode);
    done.push(`chmod ${octal(f.chmod.mode)} ${f.chmod.path}`);
  }
  return done;
}

export function renderFindings(findings: Finding[]): string {
  if (findings.length === 0) return 'no findings';
  return findings
    .map((f) => `${f.severity.toUpperCase().padEnd(6)} ${f.what}\n       fix: ${f.fix}`)
    .join('\n');
}
