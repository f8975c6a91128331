// The gateway's metrics, per configured account (accounts are few and named in the
// configuration, so the account label stays bounded): jobs started, signals sent, events
// refused, approval attempts by verdict, how far behind each account's sync is, and the state
// of its encryption. The counts /health shows are read at each scrape, so the two never disagree.
import { Counter, Gauge, type Registry } from 'prom-client';
import type { AccountHealth } from '../ingress/gateway.ts';
import type { ApprovalVerdict } from '../temporal/job-types.ts';
import { APPROVAL_REFUSALS } from '../workflows/approval.ts';
import { bounded, partRegistry } from './prometheus.ts';

/** Why the gateway itself refused an approval attempt, before any job saw it. */
export const GATEWAY_APPROVAL_REFUSALS = [
  /** The command named no job it could find (or none, outside a thread). */
  'job_unresolved',
  /** The job named has ended, or never existed. */
  'job_ended',
  /** A card answered outside its job's thread. */
  'not_in_thread',
  /** A reaction on a card of a job of another room. */
  'other_room',
  /** An encrypted reaction whose clear relation says something else than its content. */
  'relation_mismatch',
] as const;
export type GatewayApprovalRefusal = (typeof GATEWAY_APPROVAL_REFUSALS)[number];

/** The codes a job refuses an approval or a card's answer with (src/workflows/). */
const JOB_REFUSALS: readonly string[] = [
  ...Object.values(APPROVAL_REFUSALS),
  'CALL_CARD_UNKNOWN',
  'CALL_CARD_DECIDED',
];

const ACCOUNT_STATES: readonly AccountHealth['state'][] = [
  'starting',
  'syncing',
  'catching-up',
  'error',
  'stopped',
  'failed',
];
const CRYPTO_STATES = ['disabled', 'ready', 'unavailable'] as const;
const BACKUP_STATES = ['none', 'ready', 'error'] as const;

function cryptoState(h: AccountHealth): (typeof CRYPTO_STATES)[number] {
  if (!h.encryption.enabled) return 'disabled';
  return h.encryption.available ? 'ready' : 'unavailable';
}

function backupState(h: AccountHealth): (typeof BACKUP_STATES)[number] {
  const backup = h.encryption.backup;
  if (!backup) return 'none';
  return backup.error === null ? 'ready' : 'error';
}

export class GatewayMetrics {
  readonly registry: Registry;
  private readonly approvals: Counter<'account' | 'subject' | 'verdict' | 'reason'>;

  /** `accounts`: each account's health, read at each scrape. */
  constructor(accounts: () => AccountHealth[], registry: Registry = partRegistry('gateway')) {
    this.registry = registry;
    const registers = [registry];
    const startedAt = Date.now();
    const fromHealth = (
      name: string,
      help: string,
      value: (h: AccountHealth) => number,
    ): Counter<'account'> =>
      new Counter({
        name,
        help,
        labelNames: ['account'],
        registers,
        collect() {
          // The account's own count since the process started: monotonic, as a counter is.
          this.reset();
          for (const h of accounts()) this.inc({ account: h.id }, value(h));
        },
      });
    fromHealth(
      'clawgate_gateway_jobs_started_total',
      'Jobs started by the account (accepted by Temporal)',
      (h) => h.startedJobs,
    );
    fromHealth(
      'clawgate_gateway_signals_total',
      'Signals sent to jobs (approvals, denials, card answers, cancels) and accepted by Temporal',
      (h) => h.signals,
    );
    fromHealth(
      'clawgate_gateway_events_refused_total',
      'Events the account refused or could not handle (answered with the reason in the room, or logged)',
      (h) => h.refusedEvents,
    );
    fromHealth(
      'clawgate_gateway_events_handled_total',
      'Messages and reactions the account read',
      (h) => h.handledEvents,
    );
    new Gauge({
      name: 'clawgate_gateway_sync_lag_seconds',
      help: "Seconds since the account's last sync batch was handled and its position saved (since the start, before the first)",
      labelNames: ['account'],
      registers,
      collect() {
        this.reset();
        const now = Date.now();
        for (const h of accounts()) {
          const last = h.lastSyncAt === null ? startedAt : Date.parse(h.lastSyncAt);
          this.set({ account: h.id }, Math.max(0, now - last) / 1000);
        }
      },
    });
    new Gauge({
      name: 'clawgate_gateway_event_lag_seconds',
      help: "Seconds from the homeserver's time of the last command the account acted on to its handling",
      labelNames: ['account'],
      registers,
      collect() {
        this.reset();
        for (const h of accounts()) {
          if (h.eventLagMs !== null) this.set({ account: h.id }, Math.max(0, h.eventLagMs) / 1000);
        }
      },
    });
    const stateGauge = <S extends string>(
      name: string,
      help: string,
      states: readonly S[],
      stateOf: (h: AccountHealth) => S,
    ): void => {
      new Gauge({
        name,
        help,
        labelNames: ['account', 'state'],
        registers,
        collect() {
          this.reset();
          for (const h of accounts()) {
            const current = stateOf(h);
            for (const state of states) this.set({ account: h.id, state }, state === current ? 1 : 0);
          }
        },
      });
    };
    stateGauge(
      'clawgate_gateway_account_state',
      "The account's state (1 for the current one)",
      ACCOUNT_STATES,
      (h) => h.state,
    );
    stateGauge(
      'clawgate_gateway_crypto_state',
      "The account's encryption: disabled (not configured), ready, or unavailable (the crypto module failed; 1 for the current one)",
      CRYPTO_STATES,
      cryptoState,
    );
    stateGauge(
      'clawgate_gateway_key_backup_state',
      "The account's server-side key backup: none (no recovery key), ready, or error (1 for the current one)",
      BACKUP_STATES,
      backupState,
    );
    this.approvals = new Counter({
      name: 'clawgate_gateway_approval_attempts_total',
      help: "Approval attempts (of plans, and answers to approval cards), by verdict: the job's, told through its reaction, or the gateway's own refusal before any job saw it; reason is the refusal's code",
      labelNames: ['account', 'subject', 'verdict', 'reason'],
      registers,
    });
  }

  /** A job decided an approval attempt (through the reaction it posted). */
  jobVerdict(account: string, verdict: ApprovalVerdict): void {
    this.approvals.inc({
      account,
      subject: verdict.subject,
      verdict: verdict.accepted ? 'accepted' : 'refused',
      reason: verdict.accepted ? 'none' : bounded(verdict.code, JOB_REFUSALS),
    });
  }

  /** The gateway refused an approval attempt itself. */
  gatewayRefusal(account: string, subject: ApprovalVerdict['subject'], reason: GatewayApprovalRefusal): void {
    this.approvals.inc({ account, subject, verdict: 'refused', reason });
  }
}
