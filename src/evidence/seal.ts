// Sealing a job's bundle with its Clawsig form. Before the seal, the proxy is asked to sign the
// job's receipts in the Clawsig gateway_receipt form, bound to their events in the job's event
// chain (a request signed by the bundle key: only a job's sealer may ask); they become the
// entry before the outcome. After the seal, the Clawsig export is written beside the bundle as
// `<digest>.clawsig.json`. A proxy that cannot be reached fails the seal (it is retried); one
// that refuses, or answers what its receipts do not say, leaves the job's Clawsig export without
// gateway receipts, and the reason is recorded in the entry.
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { decodeProtectedHeader } from 'jose';
import { ClawgateError, ERROR_CODES } from '../errors.ts';
import { keysFor, loadSigner, publicJwks } from '../keys/keyring.ts';
import {
  bundleDigest,
  bundleSchema,
  sealBundle,
  verifyBundle,
  type BundleEntry,
  type ProofBundle,
} from './bundle.ts';
import {
  CLAWSIG_BINDING_JWS_TYPE,
  clawsigExportText,
  envelopeProblem,
  exportClawsig,
  receiptBindingRequests,
  type ClawsigEnvelope,
  type GatewayReceiptPayload,
} from './clawsig.ts';
import { didKeyFromJwkX } from './did.ts';
import { canonicalBytes, signCompactJws, type Ed25519Signer, type Jwks } from './jws.ts';

export interface SealDeps {
  keysDir: string;
  bundleDir: string;
  proxyUrl: string;
  signer: Ed25519Signer;
  fetch?: typeof fetch;
  warn?: (message: string) => void;
}

export interface SealedJob {
  bundle: ProofBundle;
  digest: string;
  /** Why the bundle has no Clawsig export, or null. */
  clawsigProblem: string | null;
}

/** The DIDs of the proxy's receipt keys (the gateway DIDs an auditor allows). */
export function gatewayDids(keysDir: string): string[] {
  return keysFor(publicJwks(keysDir, ['receipt']), 'receipt').keys.flatMap((k) =>
    typeof k.x === 'string' ? [didKeyFromJwkX(k.x)] : [],
  );
}

type GatewayEnvelope = ClawsigEnvelope<GatewayReceiptPayload>;

async function gatewayReceiptsFor(
  deps: SealDeps,
  job: ProofBundle['job'],
  entries: BundleEntry[],
  sealedAt: Date,
): Promise<{ envelopes: GatewayEnvelope[]; refused: string | null } | null> {
  let request;
  try {
    request = receiptBindingRequests({ job, entries }, sealedAt.toISOString());
  } catch (error) {
    return { envelopes: [], refused: error instanceof Error ? error.message : String(error) };
  }
  if (request.receipts.length === 0) return null;
  const body = signCompactJws(
    canonicalBytes({ job, ...request, iat: Math.floor(sealedAt.getTime() / 1000) }),
    deps.signer,
    CLAWSIG_BINDING_JWS_TYPE,
  );
  // Unreachable or failing: thrown, so the seal is retried once the proxy answers.
  const res = await (deps.fetch ?? fetch)(`${deps.proxyUrl.replace(/\/$/, '')}/v1/clawsig/receipts`, {
    method: 'POST',
    headers: { 'content-type': 'application/jose' },
    body,
    signal: AbortSignal.timeout(30_000),
  });
  const text = await res.text();
  if (res.status >= 500)
    throw new Error(`the proxy answered ${res.status} to the binding request: ${text.slice(0, 300)}`);
  if (!res.ok)
    return {
      envelopes: [],
      refused: `the proxy refused the binding request (${res.status}): ${text.slice(0, 300)}`,
    };
  let envelopes: GatewayEnvelope[];
  try {
    envelopes = (JSON.parse(text) as { receipts: GatewayEnvelope[] }).receipts;
    if (!Array.isArray(envelopes)) throw new Error('no receipts list');
  } catch (error) {
    return { envelopes: [], refused: `the proxy's answer is not a receipts list: ${String(error)}` };
  }
  // What the proxy signed must be its own key's, one per call asked, bound as asked.
  const allowed = new Set(gatewayDids(deps.keysDir));
  if (envelopes.length !== request.receipts.length) {
    return {
      envelopes: [],
      refused: `the proxy signed ${envelopes.length} receipts of ${request.receipts.length}`,
    };
  }
  for (const [i, env] of envelopes.entries()) {
    const want = request.receipts[i];
    const problem =
      envelopeProblem(env) ??
      (allowed.has(env.signer_did)
        ? null
        : `receipt ${i} is signed by ${env.signer_did}, not a receipt key`) ??
      (env.payload.receipt_id === want?.receipt_id &&
      env.payload.binding.event_hash_b64u === want.event_hash_b64u &&
      env.payload.binding.run_id === request.run_id
        ? null
        : `receipt ${i} is not bound as asked`);
    if (problem) return { envelopes: [], refused: problem };
  }
  return { envelopes, refused: null };
}

/** Seals a job's bundle, with its gateway receipts, and writes the bundle and its Clawsig export. */
export async function sealJob(
  deps: SealDeps,
  job: ProofBundle['job'],
  input: BundleEntry[],
  sealedAt: Date,
): Promise<SealedJob> {
  // The gateway receipts' entry goes right before the outcome, which stays last; the events
  // the receipts are bound to all come before it, so its content changes none of them.
  const slotted = (body: unknown): BundleEntry[] => [
    ...input.slice(0, -1),
    { type: 'gateway_receipts', body },
    ...input.slice(-1),
  ];
  const gateway = await gatewayReceiptsFor(deps, job, slotted(null), sealedAt);
  const entries: BundleEntry[] = gateway
    ? slotted({ envelopes: gateway.envelopes, refused: gateway.refused })
    : input;
  const bundle = sealBundle(job, entries, deps.signer, sealedAt);
  const digest = bundleDigest(bundle);
  mkdirSync(deps.bundleDir, { recursive: true, mode: 0o700 });
  const path = join(deps.bundleDir, `${digest}.json`);
  if (!existsSync(path)) writeFileSync(path, `${JSON.stringify(bundle, null, 2)}\n`, { mode: 0o600 });
  let clawsigProblem: string | null = gateway?.refused ?? null;
  try {
    const envelope = exportClawsig(
      { bundle, digest, sealedAt: sealedAt.toISOString(), gatewayReceipts: gateway?.envelopes ?? [] },
      deps.signer.key,
    );
    const exportPath = join(deps.bundleDir, `${digest}.clawsig.json`);
    if (!existsSync(exportPath)) writeFileSync(exportPath, clawsigExportText(envelope), { mode: 0o600 });
  } catch (error) {
    clawsigProblem = error instanceof Error ? error.message : String(error);
  }
  if (clawsigProblem) deps.warn?.(`job ${job.workflow_id}: Clawsig export: ${clawsigProblem}`);
  return { bundle, digest, clawsigProblem };
}

/**
 * The Clawsig export of a sealed bundle, as `clawgate export clawsig` makes it: only of a
 * bundle that verifies, signed with the key that sealed it (a retired one too), from the
 * gateway receipts sealed in it. The same bundle gives the same bytes.
 */
export async function exportSealedBundle(
  input: unknown,
  keysDir: string,
  jwks: Jwks,
): Promise<{ text: string; envelope: ClawsigEnvelope<unknown>; digest: string; gatewayReceipts: number }> {
  const verification = await verifyBundle(input, jwks);
  if (!verification.ok) {
    const first = verification.problems[0];
    throw new ClawgateError(
      ERROR_CODES.bundleInvalid,
      `the bundle does not verify, so it is not exported (${verification.problems.length} problem(s); first: entry ${first?.entry ?? '-'}: ${first?.problem ?? ''})`,
    );
  }
  const bundle = bundleSchema.parse(input);
  const seal = JSON.parse(Buffer.from(bundle.seal.split('.')[1] ?? '', 'base64url').toString('utf8')) as {
    sealed_at: string;
  };
  const { kid } = decodeProtectedHeader(bundle.seal);
  const signer = loadSigner(keysDir, 'bundle', kid);
  const entry = bundle.entries.find((e) => e.type === 'gateway_receipts');
  const gatewayReceipts = ((entry?.body as { envelopes?: unknown[] } | undefined)?.envelopes ??
    []) as ClawsigEnvelope<GatewayReceiptPayload>[];
  const digest = verification.digest ?? bundleDigest(bundle);
  const envelope = exportClawsig({ bundle, digest, sealedAt: seal.sealed_at, gatewayReceipts }, signer.key);
  return { text: clawsigExportText(envelope), envelope, digest, gatewayReceipts: gatewayReceipts.length };
}
