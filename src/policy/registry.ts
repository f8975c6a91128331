// Signed WPCs and the registry that holds them. A signed WPC is a compact JWS (EdDSA, typ
// clawgate-wpc+jws) over the policy's canonical bytes by a key on the policy-signer allowlist.
// The registry is addressed by hash and append-only: documents are never changed or removed;
// an activation log names the active policy of each channel; rollback re-activates a hash that
// was active on that channel before, and the whole history stays readable.
import { closeSync, existsSync, fsyncSync, mkdirSync, openSync, readFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import type { JWK } from 'jose';
import { z } from 'zod';
import { ClawgateError, ERROR_CODES } from '../errors.ts';
import {
  signCompactJws,
  verifyCompactJws,
  JwsVerificationError,
  type Ed25519Signer,
} from '../evidence/jws.ts';
import { writeFileAtomic } from '../keys/keyring.ts';
import { canonicalBytes } from './canonical.ts';
import { parseWpc, wpcHash, type Wpc } from './wpc.ts';

export const WPC_JWS_TYPE = 'clawgate-wpc+jws';

export interface SignedWpc {
  hash: string;
  /** The compact JWS; its payload is the canonical policy. */
  jws: string;
}

export function signWpc(wpc: Wpc, signer: Ed25519Signer): SignedWpc {
  return { hash: wpcHash(wpc), jws: signCompactJws(canonicalBytes(wpc), signer, WPC_JWS_TYPE) };
}

/** Verifies a signed WPC against the policy-signer allowlist (a JWKS); returns the policy. */
export async function verifySignedWpc(
  signed: SignedWpc,
  signers: { keys: JWK[] },
): Promise<{ wpc: Wpc; hash: string; signer: string }> {
  let payload: Buffer;
  try {
    payload = await verifyCompactJws(signed.jws, signers, WPC_JWS_TYPE);
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
  const wpc = parseWpc(JSON.parse(payload.toString('utf8')));
  const hash = wpcHash(wpc);
  if (!canonicalBytes(wpc).equals(payload) || hash !== signed.hash) {
    throw new ClawgateError(
      ERROR_CODES.policySignatureInvalid,
      'the signed bytes are not the canonical policy of that hash',
    );
  }
  const kid = JSON.parse(Buffer.from(signed.jws.split('.')[0] ?? '', 'base64url').toString('utf8')) as {
    kid: string;
  };
  return { wpc, hash, signer: kid.kid };
}

const eventSchema = z.discriminatedUnion('op', [
  z.object({ op: z.literal('register'), hash: z.string(), signer: z.string(), at: z.string() }).strict(),
  z
    .object({
      op: z.enum(['activate', 'rollback']),
      channel: z.string(),
      hash: z.string(),
      previous: z.string().nullable(),
      at: z.string(),
      reason: z.string().optional(),
    })
    .strict(),
]);
export type RegistryEvent = z.infer<typeof eventSchema>;
export type ActivationEvent = Extract<RegistryEvent, { op: 'activate' | 'rollback' }>;

export interface PolicyRegistry {
  register(signed: SignedWpc, signers: { keys: JWK[] }): Promise<{ hash: string; new: boolean }>;
  activate(channel: string, hash: string, reason?: string): ActivationEvent;
  rollback(channel: string, hash: string, reason?: string): ActivationEvent;
  activeHash(channel: string): string | null;
  get(hash: string): SignedWpc;
  history(channel?: string): RegistryEvent[];
  list(): Array<{ hash: string; signer: string; at: string }>;
}

const CHANNEL = /^[a-z0-9][a-z0-9._:-]{0,63}$/;

export class FilePolicyRegistry implements PolicyRegistry {
  private readonly dir: string;
  private readonly now: () => Date;
  private readonly events: RegistryEvent[] = [];
  private readonly active = new Map<string, string>();

  constructor(dir: string, now: () => Date = () => new Date()) {
    this.dir = dir;
    this.now = now;
    mkdirSync(join(dir, 'policies'), { recursive: true, mode: 0o700 });
    const log = join(dir, 'registry.log');
    if (existsSync(log)) {
      const lines = readFileSync(log, 'utf8').split('\n');
      lines.forEach((line, i) => {
        if (line.trim() === '') return;
        let event: RegistryEvent;
        try {
          event = eventSchema.parse(JSON.parse(line));
        } catch (error) {
          if (i === lines.length - 1) return; // torn last line: its call never returned
          throw new ClawgateError(
            ERROR_CODES.registryCorrupt,
            `${log} line ${i + 1} is not a registry event`,
            { cause: error },
          );
        }
        this.apply(event);
      });
    }
  }

  private apply(event: RegistryEvent): void {
    this.events.push(event);
    if (event.op !== 'register') this.active.set(event.channel, event.hash);
  }

  private append(event: RegistryEvent): void {
    const fd = openSync(join(this.dir, 'registry.log'), 'a', 0o600);
    try {
      writeSync(fd, `${JSON.stringify(event)}\n`);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    this.apply(event);
  }

  private has(hash: string): boolean {
    return /^[0-9a-f]{64}$/.test(hash) && existsSync(join(this.dir, 'policies', `${hash}.json`));
  }

  async register(signed: SignedWpc, signers: { keys: JWK[] }): Promise<{ hash: string; new: boolean }> {
    const { hash, signer } = await verifySignedWpc(signed, signers);
    if (this.has(hash)) return { hash, new: false };
    writeFileAtomic(join(this.dir, 'policies', `${hash}.json`), `${JSON.stringify(signed)}\n`, 0o600);
    this.append({ op: 'register', hash, signer, at: this.now().toISOString() });
    return { hash, new: true };
  }

  private checkChannel(channel: string): void {
    if (!CHANNEL.test(channel)) {
      throw new ClawgateError(
        ERROR_CODES.policyChannelMismatch,
        `channel ${JSON.stringify(channel)}: lowercase letters, digits, . _ : -`,
      );
    }
  }

  activate(channel: string, hash: string, reason?: string): ActivationEvent {
    this.checkChannel(channel);
    if (!this.has(hash))
      throw new ClawgateError(ERROR_CODES.policyNotRegistered, `policy ${hash} is not registered`);
    const event: ActivationEvent = {
      op: 'activate',
      channel,
      hash,
      previous: this.activeHash(channel),
      at: this.now().toISOString(),
      ...(reason ? { reason } : {}),
    };
    this.append(event);
    return event;
  }

  rollback(channel: string, hash: string, reason?: string): ActivationEvent {
    this.checkChannel(channel);
    const wasActive = this.events.some(
      (e) => e.op !== 'register' && e.channel === channel && e.hash === hash,
    );
    if (!wasActive) {
      throw new ClawgateError(
        ERROR_CODES.policyNotRegistered,
        `policy ${hash} was never active on channel ${channel}; rollback goes back to an earlier active policy (see \`clawgate policy show --channel ${channel}\`)`,
      );
    }
    const event: ActivationEvent = {
      op: 'rollback',
      channel,
      hash,
      previous: this.activeHash(channel),
      at: this.now().toISOString(),
      ...(reason ? { reason } : {}),
    };
    this.append(event);
    return event;
  }

  activeHash(channel: string): string | null {
    return this.active.get(channel) ?? null;
  }

  get(hash: string): SignedWpc {
    if (!this.has(hash))
      throw new ClawgateError(ERROR_CODES.policyNotRegistered, `policy ${hash} is not registered`);
    return JSON.parse(readFileSync(join(this.dir, 'policies', `${hash}.json`), 'utf8')) as SignedWpc;
  }

  history(channel?: string): RegistryEvent[] {
    return this.events.filter((e) => channel === undefined || (e.op !== 'register' && e.channel === channel));
  }

  list(): Array<{ hash: string; signer: string; at: string }> {
    return this.events.flatMap((e) =>
      e.op === 'register' ? [{ hash: e.hash, signer: e.signer, at: e.at }] : [],
    );
  }
}
