// The proxy's metrics: every call that reached a decision, by the status its receipt records,
// how long it took, whether its receipt was written, how long the receipt log's fsync takes, and
// which token checks refused (by their stable code).
import { Counter, Histogram, type Registry } from 'prom-client';
import { ERROR_CODES } from '../errors.ts';
import { RECEIPT_STATUSES, type ReceiptStatus } from '../proxy/receipts.ts';
import { bounded, partRegistry } from './prometheus.ts';

/** The codes a token refusal can carry: the proxy's own, and the verifier's (src/errors.ts). */
const TOKEN_REFUSAL_CODES: readonly string[] = ['TOKEN_MISSING', 'INTERNAL', ...Object.values(ERROR_CODES)];

/** A model call: from under a millisecond (a refusal) to minutes (a long stream). */
const CALL_BUCKETS = [0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300];
/** An fdatasync: tens of microseconds on a good disk, hundreds of milliseconds on a sick one. */
const FSYNC_BUCKETS = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1];

export class ProxyMetrics {
  readonly registry: Registry;
  private readonly calls: Counter<'status' | 'receipt'>;
  private readonly callSeconds: Histogram<'status'>;
  private readonly receipts: Counter;
  private readonly receiptFailures: Counter;
  private readonly fsyncSeconds: Histogram;
  private readonly tokenRefusals: Counter<'code'>;

  constructor(registry: Registry = partRegistry('proxy')) {
    this.registry = registry;
    const registers = [registry];
    this.calls = new Counter({
      name: 'clawgate_proxy_calls_total',
      help: "Model calls that reached a decision, by their receipt's status and whether that receipt was written (receipt=failed: the call failed closed, 500 RECEIPT_NOT_PERSISTED)",
      labelNames: ['status', 'receipt'],
      registers,
    });
    this.callSeconds = new Histogram({
      name: 'clawgate_proxy_call_duration_seconds',
      help: "Seconds from a model call's arrival to its receipt being durable, by the receipt's status",
      labelNames: ['status'],
      buckets: CALL_BUCKETS,
      registers,
    });
    this.receipts = new Counter({
      name: 'clawgate_proxy_receipts_written_total',
      help: 'Receipts written to the receipt log and fsynced',
      registers,
    });
    this.receiptFailures = new Counter({
      name: 'clawgate_proxy_receipt_write_failures_total',
      help: 'Receipts that could not be written (a full disk, an I/O error): their calls failed closed',
      registers,
    });
    this.fsyncSeconds = new Histogram({
      name: 'clawgate_proxy_receipt_fsync_seconds',
      help: 'Seconds each fdatasync of the receipt log took (one per batch of receipts)',
      buckets: FSYNC_BUCKETS,
      registers,
    });
    this.tokenRefusals = new Counter({
      name: 'clawgate_proxy_token_refusals_total',
      help: 'Capability tokens refused, by refusal code (on model calls, model lists and receipt reads)',
      labelNames: ['code'],
      registers,
    });
  }

  /** A call's receipt was written (or not), `seconds` after the call came. */
  callReceipted(status: ReceiptStatus, written: boolean, seconds: number): void {
    const label = bounded(status, RECEIPT_STATUSES);
    this.calls.inc({ status: label, receipt: written ? 'written' : 'failed' });
    if (written) {
      this.receipts.inc();
      this.callSeconds.observe({ status: label }, seconds);
    } else this.receiptFailures.inc();
  }

  tokenRefused(code: string): void {
    this.tokenRefusals.inc({ code: bounded(code, TOKEN_REFUSAL_CODES) });
  }

  /** For the receipt store: one fdatasync took this long. */
  readonly fsynced = (seconds: number): void => {
    this.fsyncSeconds.observe(seconds);
  };
}
