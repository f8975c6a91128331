// Every long-running process mirrors the shared control state into its own state folder: the
// revocations and the active policy of each channel that the control workflow holds are
// appended to the local revocation log and registry, which the token checks read on every call.
// So `clawgate revoke` or `clawgate policy rollback` on one machine reaches the proxies and
// workers of every machine within a poll interval, while a machine that shares its state folder
// sees the change at once, as before. The mirror only ever adds: a revocation is never undone,
// and a policy arrives signed and is registered only if a key of the local signer allowlist
// signed it.
//
// A machine that cannot read the shared state cannot know what was revoked elsewhere. Past a
// limit (`temporal.controlStaleAfterSeconds`, 30 s by default) its token checks refuse every
// token with REVOCATION_CHECK_FAILED, naming how long the state has gone unread, until a read
// succeeds again: when in doubt, refuse.
import type { Client } from '@temporalio/client';
import type { Logger } from 'pino';
import { controlSnapshot } from '../activities/control-state.ts';
import type { JWK } from 'jose';
import type { FilePolicyRegistry } from '../policy/registry.ts';
import type { RevocationStore } from '../tokens/revocations.ts';
import type { ControlSnapshot } from '../workflows/control.ts';

export interface ControlMirrorOptions {
  client: Client;
  revocations: RevocationStore;
  registry: FilePolicyRegistry;
  /** Who may sign policies (the policy keys' public JWKS). */
  policySigners: () => { keys: JWK[] };
  log: Logger;
  intervalMs?: number;
  /** Longest wait for one read of the control state. */
  timeoutMs?: number;
}

export interface ControlMirror {
  /** For health endpoints: the last good read, and the error since, if reads fail. */
  status(): { lastSync: string | null; error: string | null };
  /**
   * Why this machine's copy of the shared state cannot be trusted for token checks (no good read
   * for longer than `maxStaleMs`, counted from the start before the first), or null.
   */
  staleness(maxStaleMs: number): string | null;
  stop(): Promise<void>;
}

export function startControlMirror(opts: ControlMirrorOptions): ControlMirror {
  const interval = opts.intervalMs ?? 1_000;
  const timeout = opts.timeoutMs ?? 5_000;
  const started = Date.now();
  let last: number | null = null;
  let stopped = false;
  let failing = false;
  let lastError: string | null = null;
  let timer: NodeJS.Timeout | undefined;
  let running: Promise<void> = Promise.resolve();
  const refused = new Set<string>();

  async function apply(snapshot: ControlSnapshot | null): Promise<{ revocations: number; policies: number }> {
    let revocations = 0;
    let policies = 0;
    if (!snapshot) return { revocations, policies };
    const known = new Set(opts.revocations.list().map((r) => `${r.kind}\n${r.id}`));
    for (const r of snapshot.revocations ?? []) {
      const key = `${r.kind}\n${r.id}`;
      if (known.has(key)) continue;
      const reason = `${String(r.reason).slice(0, 1_800)} (shared from another machine, revoked at ${r.at})`;
      try {
        if (r.kind === 'token') opts.revocations.revokeToken(r.id, reason, r.by);
        else opts.revocations.revokeJob(r.id, reason, r.by);
        revocations += 1;
      } catch (error) {
        // A record this log cannot hold (an id too long, say): said once; the others still land.
        if (!refused.has(key)) {
          refused.add(key);
          opts.log.error(
            { err: error, kind: r.kind, id: r.id },
            'a shared revocation cannot be recorded here',
          );
        }
      }
      known.add(key);
    }
    for (const [channel, policy] of Object.entries(snapshot.policies ?? {})) {
      if (opts.registry.activeHash(channel) === policy.hash) continue;
      try {
        await opts.registry.register({ hash: policy.hash, jws: policy.jws }, opts.policySigners());
        opts.registry.activate(channel, policy.hash, {
          by: policy.by,
          reason: `${policy.reason} (shared from another machine)`,
        });
        policies += 1;
      } catch (error) {
        // Not signed by a key this machine trusts, say: the local policy stays, and it is said once.
        const key = `${channel}\n${policy.hash}`;
        if (!refused.has(key)) {
          refused.add(key);
          opts.log.error(
            { err: error, channel, hash: policy.hash },
            'a shared policy is refused here; this machine keeps its active policy',
          );
        }
      }
    }
    return { revocations, policies };
  }

  async function syncOnce(): Promise<void> {
    const snapshot = await opts.client.connection.withDeadline(Date.now() + timeout, () =>
      controlSnapshot(opts.client),
    );
    const applied = await apply(snapshot);
    last = Date.now();
    if (applied.revocations > 0 || applied.policies > 0) {
      opts.log.info(applied, 'control state from other machines applied here');
    }
  }

  const tick = (): void => {
    if (stopped) return;
    running = syncOnce()
      .then(() => {
        if (failing) opts.log.info('the shared control state is readable again');
        failing = false;
        lastError = null;
      })
      .catch((error: unknown) => {
        lastError = error instanceof Error ? error.message : String(error);
        if (!failing) {
          opts.log.warn(
            { err: error },
            'the shared control state cannot be read; revocations and policy changes made on other machines do not reach this one until it can',
          );
        }
        failing = true;
      })
      .finally(() => {
        if (!stopped) timer = setTimeout(tick, interval);
      });
  };
  tick();

  return {
    status: () => ({ lastSync: last === null ? null : new Date(last).toISOString(), error: lastError }),
    staleness(maxStaleMs) {
      const now = Date.now();
      if (now - (last ?? started) <= maxStaleMs) return null;
      const limit = `${Math.round(maxStaleMs / 1000)} s`;
      const why = lastError ? ` (${lastError.slice(0, 300)})` : '';
      return last === null
        ? `the shared control state has not been read since this process started ${Math.round((now - started) / 1000)} s ago (limit ${limit})${why}: revocations made on other machines may be missing here`
        : `the shared control state was last read ${Math.round((now - last) / 1000)} s ago (limit ${limit})${why}: revocations made on other machines may be missing here`;
    },
    async stop() {
      stopped = true;
      clearTimeout(timer);
      await running;
    },
  };
}
