// What a chaos run checks at the end, from outside the parts: each job's end in Temporal, its
// sealed bundle (verified in this process, by `clawgate verify`, and its Clawsig export by the
// reference verifier's rules with the proxy's gateway DIDs), each decision a person sent counted
// exactly once in its job's bundle, each side effect done at most once (and never without its
// approval), each model call the upstream answered receipted in its job's bundle, every receipt
// the proxy wrote for a job in that job's bundle, and no error in the parts' logs.
import { execFile } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { Client } from '@temporalio/client';
import { verifyBundle } from '../../src/evidence/bundle.ts';
import { checkClawsigExport } from '../../src/evidence/clawsig-check.ts';
import { didKeyOf } from '../../src/evidence/did.ts';
import { gatewayDids } from '../../src/evidence/seal.ts';
import { KEY_PURPOSES, loadSigner, publicJwks } from '../../src/keys/keyring.ts';
import { ReceiptStore } from '../../src/proxy/receipt-store.ts';
import { statusQuery, type JobStatus } from '../../src/temporal/job-contract.ts';
import { APPROVAL_REFUSALS } from '../../src/workflows/approval.ts';
import type { JobResult } from '../../src/workflows/job.ts';
import { branchOf, EXPECTED_STATUS, markerOf, type ChaosJob } from './jobs.ts';
import type { LogLine } from './parts.ts';
import type { ModelCall } from './world.ts';

const execFileAsync = promisify(execFile);
const ROOT = new URL('../../', import.meta.url);

interface Entry {
  type: string;
  body: Record<string, unknown>;
}

export interface JobVerdict {
  index: number;
  kind: ChaosJob['kind'];
  workflowId: string | null;
  expected: JobStatus;
  /** Temporal's word on the workflow: COMPLETED, RUNNING, FAILED, ... or NOT_FOUND. */
  execution: string;
  status: JobStatus | null;
  digest: string | null;
  /** Why the job counts as lost (no end, no bundle), or null. */
  lost: string | null;
  bundleProblems: string[];
  clawsigProblems: string[];
  /** Decisions sent but not in the bundle, counted twice, or refused. */
  decisionProblems: string[];
  sideEffectProblems: string[];
  receiptProblems: string[];
  /** Model calls the upstream answered that have no receipt (a proxy killed before it wrote one). */
  unreceiptedCalls: number;
  /** Redelivered decisions the job recorded as such (kept, not counted). */
  redelivered: number;
  /** The write's tool call was interrupted by a lost worker (it may have run; it was not run again). */
  interrupted: boolean;
}

export interface CheckInput {
  jobs: ChaosJob[];
  client: Client;
  keysDir: string;
  bundleDir: string;
  receiptsLog: string;
  markers: Map<string, number>;
  branches: Map<string, string[]>;
  modelCalls: ModelCall[];
}

function receiptPayload(jws: string): Record<string, unknown> {
  return JSON.parse(Buffer.from(jws.split('.')[1] ?? '', 'base64url').toString('utf8')) as Record<
    string,
    unknown
  >;
}

async function finalOf(
  client: Client,
  workflowId: string,
): Promise<{ execution: string; result: JobResult | null }> {
  const handle = client.workflow.getHandle(workflowId);
  try {
    const described = await handle.describe();
    const execution = described.status.name;
    if (execution !== 'COMPLETED') return { execution, result: null };
    return { execution, result: (await handle.result()) as JobResult };
  } catch (error) {
    if ((error as Error).name === 'WorkflowNotFoundError') return { execution: 'NOT_FOUND', result: null };
    throw error;
  }
}

/** Runs `clawgate verify` on a bundle; its problems, none when it exits 0. */
async function cliVerify(file: string, keysDir: string): Promise<string[]> {
  try {
    await execFileAsync(
      new URL('scripts/node', ROOT).pathname,
      [new URL('src/cli/main.ts', ROOT).pathname, 'verify', file, '--keys', keysDir],
      { timeout: 60_000 },
    );
    return [];
  } catch (error) {
    const e = error as { stdout?: string; stderr?: string; message: string };
    return [`clawgate verify: ${(e.stdout ?? '').trim()} ${(e.stderr ?? e.message).trim()}`.slice(0, 600)];
  }
}

/** Runs `fn` over `items`, `width` at a time. */
async function inBatches<T, R>(items: T[], width: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array<R>(items.length);
  let next = 0;
  await Promise.all(
    Array.from({ length: width }, async () => {
      while (next < items.length) {
        const i = next++;
        out[i] = await fn(items[i] as T);
      }
    }),
  );
  return out;
}

export async function checkJobs(input: CheckInput): Promise<JobVerdict[]> {
  const jwks = publicJwks(input.keysDir, KEY_PURPOSES);
  const dids = gatewayDids(input.keysDir);
  const agentDid = didKeyOf(loadSigner(input.keysDir, 'bundle').key);
  const store = existsSync(input.receiptsLog) ? ReceiptStore.read(input.receiptsLog) : null;
  const verdicts = await inBatches(input.jobs, 2, (job) => checkJob(job));
  await store?.close();
  return verdicts;

  async function checkJob(job: ChaosJob): Promise<JobVerdict> {
    const verdict: JobVerdict = {
      index: job.index,
      kind: job.kind,
      workflowId: job.workflowId,
      expected: EXPECTED_STATUS[job.kind],
      execution: 'NOT_STARTED',
      status: null,
      digest: null,
      lost: null,
      bundleProblems: [],
      clawsigProblems: [],
      decisionProblems: [],
      sideEffectProblems: [],
      receiptProblems: [],
      unreceiptedCalls: 0,
      redelivered: 0,
      interrupted: false,
    };
    if (!job.workflowId) {
      verdict.lost = `its request was never posted (${job.stuckAt ?? 'no reason'})`;
      return verdict;
    }
    const { execution, result } = await finalOf(input.client, job.workflowId);
    verdict.execution = execution;
    if (!result) {
      verdict.lost = `the workflow is ${execution}${job.stuckAt ? ` (the driver gave up ${job.stuckAt})` : ''}`;
      // A job still open has no bundle; what it decided so far is in its status.
      if (execution === 'RUNNING') checkDecisions(job, verdict, await decidedSoFar(job.workflowId));
      checkSideEffects(job, verdict, []);
      return verdict;
    }
    verdict.status = result.status;
    verdict.digest = result.bundleDigest;
    const file = join(input.bundleDir, `${result.bundleDigest}.json`);
    if (!result.bundleDigest || !existsSync(file)) {
      verdict.lost = `ended ${result.status} without a bundle on disk`;
      checkSideEffects(job, verdict, []);
      return verdict;
    }
    const bundle = JSON.parse(readFileSync(file, 'utf8')) as { entries: Entry[] };
    const verified = await verifyBundle(bundle, jwks);
    verdict.bundleProblems = verified.problems.map((p) => `entry ${p.entry ?? '-'}: ${p.problem}`);
    verdict.bundleProblems.push(...(await cliVerify(file, input.keysDir)));
    const exportFile = join(input.bundleDir, `${result.bundleDigest}.clawsig.json`);
    if (!existsSync(exportFile)) verdict.clawsigProblems.push('no Clawsig export beside the bundle');
    else {
      const checked = checkClawsigExport(JSON.parse(readFileSync(exportFile, 'utf8')), {
        gatewayDids: dids,
        agentDid,
        bundle,
      });
      verdict.clawsigProblems = checked.problems.map((p) => `${p.code} ${p.field}: ${p.problem}`);
    }
    if (job.reported !== null && job.reported !== result.status) {
      verdict.bundleProblems.push(`the room was told ${job.reported}, the workflow ended ${result.status}`);
    }
    checkDecisions(job, verdict, bundle.entries);
    checkSideEffects(job, verdict, bundle.entries);
    checkReceipts(job, verdict, bundle.entries);
    return verdict;
  }

  /** An open job's decisions so far, from its status query, as the bundle entries would say them. */
  async function decidedSoFar(workflowId: string): Promise<Entry[] | null> {
    try {
      const view = await input.client.workflow.getHandle(workflowId).query(statusQuery);
      return [
        ...view.approvals
          .filter((a) => !/was already counted/.test(a.reason))
          .map((a) => ({
            type: 'approval_attempt',
            body: { eventId: a.eventId, accepted: a.accepted, reason: a.reason },
          })),
        ...(view.callDecisions ?? []).map((d) => ({
          type: 'call_decision',
          body: { event_id: d.eventId, accepted: d.accepted, reason: d.reason },
        })),
      ];
    } catch {
      return null;
    }
  }

  function checkDecisions(job: ChaosJob, verdict: JobVerdict, entries: Entry[] | null): void {
    if (entries === null) return;
    for (const sent of job.decisions) {
      // A cancel is not in an open job's status; only its bundle tells.
      if (sent.what === 'cancel' && !entries.some((e) => e.type === 'cancel_request' || e.type === 'outcome'))
        continue;
      const counted = entries.filter((e) => {
        const b = e.body;
        if (e.type === 'approval_attempt')
          return b['eventId'] === sent.eventId && b['code'] !== APPROVAL_REFUSALS.duplicateEvent;
        if (e.type === 'call_decision') return b['event_id'] === sent.eventId;
        if (e.type === 'cancel_request') return b['eventId'] === sent.eventId;
        return false;
      });
      verdict.redelivered += entries.filter(
        (e) =>
          e.type === 'approval_attempt' &&
          e.body['eventId'] === sent.eventId &&
          e.body['code'] === APPROVAL_REFUSALS.duplicateEvent,
      ).length;
      if (counted.length === 0) verdict.decisionProblems.push(`${sent.what} ${sent.eventId}: lost`);
      else if (counted.length > 1)
        verdict.decisionProblems.push(`${sent.what} ${sent.eventId}: counted ${counted.length} times`);
      else if (counted[0]?.body['accepted'] !== true) {
        const { code, reason } = counted[0]?.body as { code?: string | null; reason?: string };
        verdict.decisionProblems.push(
          `${sent.what} ${sent.eventId}: refused (${code ?? ''} ${reason ?? ''})`,
        );
      }
    }
  }

  function checkSideEffects(job: ChaosJob, verdict: JobVerdict, entries: Entry[]): void {
    if (job.effect === null) return;
    const write = entries.find((e) => e.type === 'tool_record' && e.body['tool'] === job.effect);
    const denial = write?.body['denial'] as { code?: string } | null | undefined;
    verdict.interrupted = denial?.code === 'TOOL_CALL_INTERRUPTED';
    const times =
      job.effect === 'http'
        ? (input.markers.get(markerOf(job.index)) ?? 0)
        : (input.branches.get(branchOf(job.index))?.length ?? 0);
    const what = job.effect === 'http' ? `marker ${markerOf(job.index)}` : `branch ${branchOf(job.index)}`;
    if (times > 1) verdict.sideEffectProblems.push(`${what}: done ${times} times`);
    const approved = job.kind === 'pr' || job.kind === 'post';
    if (!approved && times > 0) verdict.sideEffectProblems.push(`${what}: done without an approval`);
    // An approved call that did not happen and was not cut off by a lost worker was lost.
    if (approved && times === 0 && verdict.status === 'succeeded' && !verdict.interrupted) {
      verdict.sideEffectProblems.push(
        `${what}: approved, but never done (${JSON.stringify(denial ?? null)})`,
      );
    }
    if (approved && times === 1 && write && denial && !verdict.interrupted) {
      verdict.sideEffectProblems.push(`${what}: done, but its record says ${JSON.stringify(denial)}`);
    }
  }

  function checkReceipts(job: ChaosJob, verdict: JobVerdict, entries: Entry[]): void {
    const receipts = entries
      .filter((e) => e.type === 'model_receipt')
      .map((e) => receiptPayload(String(e.body['jws'])));
    const inBundle = new Set(receipts.map((r) => String(r['receipt_id'])));
    const hashes = new Set(receipts.map((r) => r['request_sha256']).filter((h) => typeof h === 'string'));
    const calls = input.modelCalls.filter((c) => c.job === job.index);
    const missing = new Set(calls.map((c) => c.requestSha256).filter((h) => !hashes.has(h)));
    for (const h of missing)
      verdict.receiptProblems.push(`model call ${h.slice(0, 12)} has no receipt in the bundle`);
    const sentUpstream = receipts.filter(
      (r) => r['request_sha256'] !== null && r['status'] !== 'refused',
    ).length;
    verdict.unreceiptedCalls = Math.max(0, calls.length - sentUpstream);
    for (const stored of store?.forJob(job.workflowId as string) ?? []) {
      if (!inBundle.has(stored.receiptId)) {
        const p = receiptPayload(stored.jws);
        verdict.receiptProblems.push(
          `receipt ${stored.receiptId} (${String(p['status'])}, ${String(p['started_at'])}) of the job is not in its bundle`,
        );
      }
    }
  }
}

/** Side effects that belong to no job of the run (a marker or branch nobody asked for). */
export function strayEffects(
  jobs: ChaosJob[],
  markers: Map<string, number>,
  branches: Map<string, string[]>,
): string[] {
  const markerNames = new Set(jobs.map((j) => markerOf(j.index)));
  const branchNames = new Set(jobs.map((j) => branchOf(j.index)));
  return [
    ...[...markers.keys()].filter((m) => !markerNames.has(m)).map((m) => `marker ${m} of no job`),
    ...[...branches.keys()]
      .filter((b) => b.startsWith('chaos-') && !branchNames.has(b))
      .map((b) => `branch ${b} of no job`),
  ];
}

/** Log lines that say something went wrong: level error or fatal, or an uncaught exception. */
export function logErrors(lines: LogLine[]): LogLine[] {
  return lines.filter((l) => {
    if (l.json) {
      const level = l.json['level'];
      return typeof level === 'number' && level >= 50;
    }
    if (l.stream === 'stderr') return true;
    return /uncaught|unhandled/i.test(l.text);
  });
}
