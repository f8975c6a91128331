// A job's tool context for sandbox tests: the example policy (with changes), a real verified
// execution token, a workspace folder, and the real bubblewrap sandbox.
import { generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { calculateJwkThumbprint, exportJWK } from 'jose';
import { parseWpc, wpcHash, type Wpc } from '../../src/policy/wpc.ts';
import { bubblewrapSandbox } from '../../src/sandbox/bubblewrap.ts';
import { mintCapabilityToken, verifyCapabilityToken } from '../../src/tokens/cst.ts';
import type { ToolContext } from '../../src/tools/types.ts';
import { testServers } from '../harness/servers.ts';

export function examplePolicy(change: (p: any) => void = () => {}): Wpc {
  const p = JSON.parse(readFileSync(new URL('../../examples/policy.json', import.meta.url), 'utf8'));
  change(p);
  return parseWpc(p);
}

export async function toolContext(
  opts: { policy?: Wpc; tools?: string[]; workspace?: string } = {},
): Promise<ToolContext> {
  const policy = opts.policy ?? examplePolicy();
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  const jwk = await exportJWK(publicKey);
  const kid = await calculateJwkThumbprint(jwk);
  const workflowId = 'job:!ops:localhost:$req';
  const { token } = await mintCapabilityToken(
    {
      purpose: 'execution',
      job: { workflowId, runId: 'run-1' },
      roomId: '!ops:localhost',
      scope: { tools: opts.tools ?? policy.execution.tools.allow, models: [] },
      planHash: 'a'.repeat(64),
      approval: { approvers: ['@approver:localhost'], eventIds: ['$approve'] },
      ...(policy.tokens.cst.pin_policy_hash ? { wpcHash: wpcHash(policy) } : {}),
    },
    { kid, key: privateKey },
  );
  const claims = await verifyCapabilityToken(token, {
    jwks: { keys: [{ ...jwk, kid }] },
    activePolicyHash: () => wpcHash(policy),
  });
  return {
    workflowId,
    policy,
    token: claims,
    sandbox: bubblewrapSandbox(testServers().bwrap),
    workspace: opts.workspace ?? mkdtempSync(join(tmpdir(), 'clawgate-workspace-')),
  };
}
