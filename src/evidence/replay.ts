// `clawgate replay <workflow id>`: an incident responder's check that a job's history and its
// sealed bundle tell the same story. The history is fetched from Temporal and replayed against
// the current workflow code (a nondeterminism error means the code no longer explains it);
// then the entries the workflow handed to the sealing activity, as the history recorded them,
// are compared one by one with the bundle's entries, and the bundle itself is verified.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Client } from '@temporalio/client';
import { Worker } from '@temporalio/worker';
import { canonicalHash } from '../policy/canonical.ts';
import { decodeHistory, FAILURE_CONVERTER_PATH } from '../temporal/codec.ts';
import { verifyBundle, type BundleProblem } from './bundle.ts';
import type { Jwks } from './jws.ts';

export interface ReplayReport {
  workflowId: string;
  replayed: boolean;
  replayError: string | null;
  bundleDigest: string | null;
  /** Entries that differ between the history and the bundle, by index. */
  mismatches: Array<{ entry: number; problem: string }>;
  bundleProblems: BundleProblem[];
  ok: boolean;
}

interface Payload {
  metadata?: Record<string, Uint8Array | string>;
  data?: Uint8Array | string | null;
}

function decodePayload(payload: Payload | undefined): unknown {
  const data = payload?.data;
  if (data === undefined || data === null) return undefined;
  const bytes = typeof data === 'string' ? Buffer.from(data, 'base64') : Buffer.from(data);
  return JSON.parse(bytes.toString('utf8'));
}

export async function replayJob(
  client: Client,
  workflowId: string,
  opts: { bundleDir: string; jwks: Jwks },
): Promise<ReplayReport> {
  // The history as Temporal stores it has its payloads encrypted (src/temporal/codec.ts): they
  // are decrypted with the client's own codec, so the replay and the comparison read them as
  // the workflow did. A history from before encryption passes through as it is.
  const history = await decodeHistory(
    await client.workflow.getHandle(workflowId).fetchHistory(),
    client.options.loadedDataConverter.payloadCodecs,
  );
  const report: ReplayReport = {
    workflowId,
    replayed: false,
    replayError: null,
    bundleDigest: null,
    mismatches: [],
    bundleProblems: [],
    ok: false,
  };
  try {
    await Worker.runReplayHistory(
      {
        workflowsPath: fileURLToPath(new URL('../workflows/index.ts', import.meta.url)),
        // The payloads are decrypted already; the workflow code's failures are encoded as the
        // worker's are, and failures recorded in clear (before that) read as they are.
        dataConverter: { failureConverterPath: FAILURE_CONVERTER_PATH },
      },
      history,
      workflowId,
    );
    report.replayed = true;
  } catch (error) {
    report.replayError = error instanceof Error ? error.message : String(error);
  }

  const events = history.events ?? [];
  const sealing = events
    .map((e) => e.activityTaskScheduledEventAttributes)
    .filter((a) => a?.activityType?.name === 'sealJobBundle')
    .at(-1);
  const completed = events.map((e) => e.workflowExecutionCompletedEventAttributes).find(Boolean);
  const result = decodePayload(completed?.result?.payloads?.[0] as Payload | undefined) as
    { bundleDigest?: string } | undefined;
  report.bundleDigest = result?.bundleDigest ?? null;
  if (!sealing || !report.bundleDigest) {
    report.mismatches.push({
      entry: -1,
      problem: 'the history has no sealed bundle (the job has not finished)',
    });
    return report;
  }
  const sealedInput = decodePayload(sealing.input?.payloads?.[0] as Payload | undefined) as {
    entries: unknown[];
  };
  let bundle: { entries: unknown[] };
  try {
    bundle = JSON.parse(readFileSync(join(opts.bundleDir, `${report.bundleDigest}.json`), 'utf8')) as {
      entries: unknown[];
    };
  } catch {
    report.mismatches.push({
      entry: -1,
      problem: `bundle ${report.bundleDigest} is not in ${opts.bundleDir}`,
    });
    return report;
  }
  const verification = await verifyBundle(bundle, opts.jwks);
  report.bundleProblems = verification.problems;
  if (verification.digest !== report.bundleDigest) {
    report.mismatches.push({
      entry: -1,
      problem: `the bundle's digest is ${String(verification.digest)}, not the one the job reported`,
    });
  }
  // The seal adds one entry of its own, before the outcome: the gateway receipts the proxy
  // signed then (checked with the bundle); every other entry is the history's.
  const sealed = bundle.entries;
  const last = sealed.length - 1;
  const ownEntry = (sealed[last - 1] as { type?: unknown } | undefined)?.type === 'gateway_receipts';
  if (ownEntry) bundle = { entries: [...sealed.slice(0, last - 1), ...sealed.slice(last)] };
  const count = Math.max(sealedInput.entries.length, bundle.entries.length);
  for (let i = 0; i < count; i++) {
    const fromHistory = sealedInput.entries[i];
    const fromBundle = bundle.entries[i];
    if (fromHistory === undefined)
      report.mismatches.push({ entry: i, problem: 'in the bundle but not in the history' });
    else if (fromBundle === undefined)
      report.mismatches.push({ entry: i, problem: 'in the history but not in the bundle' });
    else if (canonicalHash(fromHistory) !== canonicalHash(fromBundle)) {
      report.mismatches.push({ entry: i, problem: 'differs between the history and the bundle' });
    }
  }
  report.ok = report.replayed && report.mismatches.length === 0 && report.bundleProblems.length === 0;
  return report;
}
