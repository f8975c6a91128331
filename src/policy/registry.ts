// Signed WPCs and the registry that holds them. A signed WPC is a compact JWS (EdDSA, typ
// clawgate-wpc+jws) over the policy's canonical bytes by a key on the policy-signer allowlist.
// The registry is addressed by hash and append-only: documents are never changed or removed;
// an activation log names the active policy of each channel; rollback re-activates a hash that
// was active on that channel before, and the whole history stays readable.
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { decodeProtectedHeader, type JWK } from 'jose';
import { z } from 'zod';
import { ClawgateError, ERROR_CODES } from '../errors.ts';
import {
  signCompactJws,
  verifyCompactJws,
  JwsVerificationError,
  type Ed25519Signer,
} from '../evidence/jws.ts';
import { keysFor } from '../keys/keyring.ts';
import { AppendLog } from '../storage/append-log.ts';
import { ensurePrivateDir, writeFileAtomic } from '../storage/files.ts';
import { canonicalBytes, sha256Hex } from './canonical.ts';
import { parseWpc, wpcHash, type Wpc } from './wpc.ts';

export const WPC_JWS_TYPE = 'clawgate-wpc+jws';

const HASH = /^[0-9a-f]{64}$/;

export const signedWpcSchema = z
  .object({
    hash: z.string().regex(HASH, 'a SHA-256 in lowercase hex'),
    /** The compact JWS; its payload is the canonical policy. */
    jws: z
      .string()
      .max(1024 * 1024)
      .regex(/^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/, 'a compact JWS'),
  })
  .strict();
export type SignedWpc = z.infer<typeof signedWpcSchema>;

export function signWpc(wpc: Wpc, signer: Ed25519Signer): SignedWpc {
  return { hash: wpcHash(wpc), jws: signCompactJws(canonicalBytes(wpc), signer, WPC_JWS_TYPE) };
}

/** Checks that a string is a policy hash (64 lowercase hex digits). */
export function assertPolicyHash(hash: string): void {
  if (!HASH.test(hash)) {
    throw new ClawgateError(
      ERROR_CODES.policyHashInvalid,
      `${JSON.stringify(hash.slice(0, 80))} is not a policy hash (64 lowercase hex digits; see \`clawgate policy hash\`)`,
    );
  }
}

/**
 * Verifies a signed WPC against the policy-signer allowlist (a JWKS; keys marked for another
 * purpose are ignored) and returns the policy. The signed bytes must be exactly the canonical
 * policy whose SHA-256 is the claimed hash.
 */
export async function verifySignedWpc(
  signed: unknown,
  signers: { keys: JWK[] },
): Promise<{ wpc: Wpc; hash: string; signer: string }> {
  const shape = signedWpcSchema.safeParse(signed);
  if (!shape.success) {
    const issue = shape.error.issues[0];
    throw new ClawgateError(
      ERROR_CODES.policySignatureInvalid,
      `not a signed policy ({ "hash", "jws" } from \`clawgate policy sign\`): ${issue?.path.join('.') || '(root)'}: ${issue?.message ?? 'invalid'}`,
    );
  }
  const { jws, hash: claimed } = shape.data;
  let payload: Buffer;
  let kid: unknown;
  try {
    payload = await verifyCompactJws(jws, keysFor(signers, 'policy'), WPC_JWS_TYPE);
    kid = decodeProtectedHeader(jws).kid;
  } catch (error) {
    if (error instanceof JwsVerificationError && error.failure === 'unknown_key') {
      throw new ClawgateError(
        ERROR_CODES.policySignerNotAllowed,
        `the policy is signed by a key not on the signer allowlist`,
      );
    }
    throw new ClawgateError(
      ERROR_CODES.policySignatureInvalid,
      `the policy signature does not verify: ${error instanceof Error ? error.message : String(error)}`,
    );
  }
  let document: unknown;
  try {
    document = JSON.parse(payload.toString('utf8'));
  } catch {
    throw new ClawgateError(ERROR_CODES.policySignatureInvalid, 'the signed payload is not JSON');
  }
  const wpc = parseWpc(document);
  const hash = wpcHash(wpc);
  if (!canonicalBytes(wpc).equals(payload) || hash !== claimed) {
    throw new ClawgateError(
      ERROR_CODES.policySignatureInvalid,
      'the signed bytes are not the canonical policy of that hash',
    );
  }
  return { wpc, hash, signer: String(kid) };
}

const eventSchema = z.discriminatedUnion('op', [
  z
    .object({
      op: z.literal('register'),
      hash: z.string().regex(HASH),
      signer: z.string(),
      at: z.iso.datetime(),
    })
    .strict(),
  z
    .object({
      op: z.enum(['activate', 'rollback']),
      channel: z.string(),
      hash: z.string().regex(HASH),
      previous: z.string().regex(HASH).nullable(),
      at: z.iso.datetime(),
      reason: z.string().optional(),
      by: z.string().optional(),
    })
    .strict(),
]);
export type RegistryEvent = z.infer<typeof eventSchema>;
export type ActivationEvent = Extract<RegistryEvent, { op: 'activate' | 'rollback' }>;

export interface ChangeNote {
  /** Why, for the history. */
  reason?: string;
  /** Who, for the history. */
  by?: string;
}

/**
 * The WPC registry: signed policies addressed by hash, append-only, with an active policy per
 * channel and its history. Reads are synchronous over the registry's current view (the file
 * registry re-reads its log when another process appended to it), so they can sit on a hot path.
 */
export interface PolicyRegistry {
  register(signed: unknown, signers: { keys: JWK[] }): Promise<{ hash: string; new: boolean }>;
  activate(channel: string, hash: string, note?: string | ChangeNote): ActivationEvent;
  /** Re-activates a policy that was active on the channel before. */
  rollback(channel: string, hash: string, note?: string | ChangeNote): ActivationEvent;
  activeHash(channel: string): string | null;
  /** The signed policy of a hash, as registered. */
  get(hash: string): SignedWpc;
  /** The registered policy of a hash, parsed. */
  policy(hash: string): Wpc;
  /** Every event, or the activations of one channel, oldest first. */
  history(channel?: string): RegistryEvent[];
  list(): Array<{ hash: string; signer: string; at: string }>;
  channels(): Array<{ channel: string; hash: string }>;
}

const CHANNEL = /^[a-z0-9][a-z0-9._:-]{0,63}$/;

/**
 * The registry in a state folder: `policies/<hash>.json` (each written once, atomically, 0600)
 * and `registry.log`, the append-only log of registrations and activations, which is the
 * source of truth; a document without its registration event is not registered.
 */
export class FilePolicyRegistry implements PolicyRegistry {
  private readonly dir: string;
  private readonly now: () => Date;
  private readonly log: AppendLog<RegistryEvent>;
  private applied = 0;
  private readonly registered = new Map<string, { signer: string; at: string }>();
  private readonly active = new Map<string, string>();
  private readonly everActive = new Set<string>();
  private readonly parsed = new Map<string, Wpc>();

  constructor(dir: string, now: () => Date = () => new Date()) {
    this.dir = dir;
    this.now = now;
    ensurePrivateDir(dir);
    ensurePrivateDir(join(dir, 'policies'));
    this.log = new AppendLog(join(dir, 'registry.log'), {
      what: 'policy registry log',
      schema: eventSchema,
      corruptCode: ERROR_CODES.registryCorrupt,
    });
    this.sync();
  }

  /** Applies the events this or another process appended since the last look. */
  private sync(): readonly RegistryEvent[] {
    const events = this.log.records();
    for (; this.applied < events.length; this.applied++) {
      const event = events[this.applied] as RegistryEvent;
      if (event.op === 'register') this.registered.set(event.hash, { signer: event.signer, at: event.at });
      else {
        this.active.set(event.channel, event.hash);
        this.everActive.add(`${event.channel}\n${event.hash}`);
      }
    }
    return events;
  }

  private documentPath(hash: string): string {
    return join(this.dir, 'policies', `${hash}.json`);
  }

  private requireRegistered(hash: string): void {
    assertPolicyHash(hash);
    this.sync();
    if (!this.registered.has(hash)) {
      throw new ClawgateError(
        ERROR_CODES.policyNotRegistered,
        `policy ${hash} is not registered (see \`clawgate policy list\`)`,
      );
    }
  }

  async register(signed: unknown, signers: { keys: JWK[] }): Promise<{ hash: string; new: boolean }> {
    const { hash, signer } = await verifySignedWpc(signed, signers);
    this.sync();
    if (this.registered.has(hash)) return { hash, new: false };
    const { jws } = signedWpcSchema.parse(signed);
    // The document first, then the event that makes it registered: a crash in between leaves a
    // document nobody refers to, which the next registration of the same policy rewrites.
    writeFileAtomic(this.documentPath(hash), `${JSON.stringify({ hash, jws })}\n`);
    this.log.append({ op: 'register', hash, signer, at: this.now().toISOString() });
    this.sync();
    return { hash, new: true };
  }

  private checkChannel(channel: string): void {
    if (!CHANNEL.test(channel)) {
      throw new ClawgateError(
        ERROR_CODES.policyChannelMismatch,
        `channel ${JSON.stringify(channel)}: lowercase letters, digits, . _ : - (at most 64)`,
      );
    }
  }

  private change(
    op: 'activate' | 'rollback',
    channel: string,
    hash: string,
    note: string | ChangeNote | undefined,
  ): ActivationEvent {
    const { reason, by } = typeof note === 'string' ? { reason: note, by: undefined } : (note ?? {});
    const event: ActivationEvent = {
      op,
      channel,
      hash,
      previous: this.activeHash(channel),
      at: this.now().toISOString(),
      ...(reason ? { reason } : {}),
      ...(by ? { by } : {}),
    };
    this.log.append(event);
    this.sync();
    return event;
  }

  activate(channel: string, hash: string, note?: string | ChangeNote): ActivationEvent {
    this.checkChannel(channel);
    this.requireRegistered(hash);
    return this.change('activate', channel, hash, note);
  }

  rollback(channel: string, hash: string, note?: string | ChangeNote): ActivationEvent {
    this.checkChannel(channel);
    assertPolicyHash(hash);
    this.sync();
    if (!this.everActive.has(`${channel}\n${hash}`)) {
      throw new ClawgateError(
        ERROR_CODES.policyNotRegistered,
        `policy ${hash} was never active on channel ${channel}; rollback goes back to an earlier active policy (see \`clawgate policy show --channel ${channel}\`)`,
      );
    }
    return this.change('rollback', channel, hash, note);
  }

  activeHash(channel: string): string | null {
    this.sync();
    return this.active.get(channel) ?? null;
  }

  get(hash: string): SignedWpc {
    this.requireRegistered(hash);
    const path = this.documentPath(hash);
    let stored: SignedWpc;
    try {
      stored = signedWpcSchema.parse(JSON.parse(readFileSync(path, 'utf8')));
    } catch (error) {
      throw new ClawgateError(
        ERROR_CODES.registryCorrupt,
        existsSync(path)
          ? `${path} is not a signed policy`
          : `${path} is missing although policy ${hash} is registered`,
        { cause: error },
      );
    }
    // Addressed by hash: the stored bytes must still be the policy of that hash.
    const payload = Buffer.from(stored.jws.split('.')[1] ?? '', 'base64url');
    if (stored.hash !== hash || sha256Hex(payload) !== hash) {
      throw new ClawgateError(
        ERROR_CODES.registryCorrupt,
        `${path} does not hold the policy of hash ${hash}`,
      );
    }
    return stored;
  }

  policy(hash: string): Wpc {
    let wpc = this.parsed.get(hash);
    if (!wpc) {
      const payload = Buffer.from(this.get(hash).jws.split('.')[1] ?? '', 'base64url');
      wpc = parseWpc(JSON.parse(payload.toString('utf8')));
      this.parsed.set(hash, wpc);
    }
    return wpc;
  }

  history(channel?: string): RegistryEvent[] {
    return this.sync().filter((e) => channel === undefined || (e.op !== 'register' && e.channel === channel));
  }

  list(): Array<{ hash: string; signer: string; at: string }> {
    this.sync();
    return [...this.registered].map(([hash, { signer, at }]) => ({ hash, signer, at }));
  }

  channels(): Array<{ channel: string; hash: string }> {
    this.sync();
    return [...this.active].map(([channel, hash]) => ({ channel, hash }));
  }
}
