// The `clawgate` command line. It only parses arguments and prints; the work is done by the
// modules it calls. An error a person can cause prints one line saying what was wrong and
// exits 1; anything else is a bug and exits 2.
import type * as ControlStateApi from '../activities/control-state.ts';
import { existsSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import type { Client } from '@temporalio/client';
import { Command, CommanderError, Option } from 'commander';
import { FileRevocationStore } from '../tokens/revocations.ts';
import type { JWK } from 'jose';
import { ClawgateError, ERROR_CODES } from '../errors.ts';
import { bundleSchema, verifyBundle } from '../evidence/bundle.ts';
import { didKeyFromJwkX } from '../evidence/did.ts';
import {
  generateKeyring,
  KEY_PURPOSES,
  keysFor,
  loadSigner,
  publicJwks,
  rotateKeyring,
  type KeyPurpose,
} from '../keys/keyring.ts';
import {
  generatePayloadKeyring,
  hasPayloadKeyring,
  PAYLOAD_PURPOSE,
  rotatePayloadKeyring,
} from '../keys/payload-keyring.ts';
import { canonicalJson, parseStrict } from '../policy/canonical.ts';
import { FilePolicyRegistry, signWpc } from '../policy/registry.ts';
import { writeFileAtomic } from '../storage/files.ts';
import { loadWpc } from '../policy/wpc.ts';
import { verifyReceipt } from '../proxy/receipts.ts';
import { ReceiptStore } from '../proxy/receipt-store.ts';
import { addClawsigCommands } from './clawsig-commands.ts';
import { addEvidenceCommands } from './evidence-commands.ts';
import { addStackCommands } from './stack-commands.ts';

const stateDir = (): string => resolve(process.env['CLAWGATE_STATE_DIR'] ?? 'state');
const out = (text: string): void => void process.stdout.write(`${text}\n`);

function readText(path: string, what: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch (error) {
    throw new ClawgateError(
      ERROR_CODES.fileUnreadable,
      `cannot read ${what} ${path}: ${(error as NodeJS.ErrnoException).code ?? String(error)}`,
    );
  }
}

function readJwks(
  path: string | undefined,
  keysDir: string,
  purposes: readonly KeyPurpose[],
): { keys: JWK[] } {
  if (path) return parseStrict(readText(path, 'JWKS'), 'JWKS') as { keys: JWK[] };
  return publicJwks(keysDir, purposes);
}

const keysOption = (): Option => new Option('--keys <dir>', 'keyring folder').default(`${stateDir()}/keys`);
/** The keys folder whose payload/ keyring encrypts what clawgate hands Temporal (src/temporal/codec.ts). */
const payloadKeysOption = (): Option =>
  new Option(
    '--payload-keys <dir>',
    'keys folder of the payload keyring (Temporal payload encryption)',
  ).default(process.env['CLAWGATE_PAYLOAD_KEYS_DIR'] ?? `${stateDir()}/keys`);
const registryOption = (): Option =>
  new Option('--registry <dir>', 'policy registry folder').default(`${stateDir()}/policy-registry`);

type ShareOpts = { address?: string; namespace: string; taskQueue?: string; payloadKeys: string };
type ControlStateModule = typeof ControlStateApi;

/** Where a change is shared with every machine: the Temporal of the control workflow. */
function shareOptions(command: Command): Command {
  return command
    .option(
      '--address <host:port>',
      'Temporal frontend, to share the change with every machine (default: CLAWGATE_TEMPORAL_ADDRESS; without one, this state folder only)',
      process.env['CLAWGATE_TEMPORAL_ADDRESS'],
    )
    .option(
      '--namespace <name>',
      'Temporal namespace',
      process.env['CLAWGATE_TEMPORAL_NAMESPACE'] ?? 'default',
    )
    .option('--task-queue <name>', "the workers' job task queue (default: clawgate's job queue)")
    .addOption(payloadKeysOption());
}

/**
 * Shares a change made in this state folder through the control workflow, so the processes of
 * other machines apply it too. Without an address it says the change stayed here; when Temporal
 * does not answer it fails (exit 1), saying the change holds here only.
 */
async function share(
  opts: ShareOpts,
  what: string,
  fn: (client: Client, taskQueue: string, control: ControlStateModule) => Promise<void>,
): Promise<void> {
  if (!opts.address) {
    out(`${what} holds in this state folder only (give --address to share it with every machine)`);
    return;
  }
  const [{ Client, Connection }, control, { JOB_TASK_QUEUE }, { dataConverterFor }] = await Promise.all([
    import('@temporalio/client'),
    import('../activities/control-state.ts'),
    import('../temporal/job-contract.ts'),
    import('../temporal/codec.ts'),
  ]);
  try {
    const connection = await Connection.connect({ address: opts.address, connectTimeout: 5_000 });
    try {
      await fn(
        new Client({
          connection,
          namespace: opts.namespace,
          dataConverter: dataConverterFor(opts.payloadKeys),
        }),
        opts.taskQueue ?? JOB_TASK_QUEUE,
        control,
      );
    } finally {
      await connection.close();
    }
  } catch (error) {
    throw new ClawgateError(
      ERROR_CODES.usage,
      `${what} holds in this state folder, but could not be shared through Temporal at ${opts.address} ` +
        `(${error instanceof Error ? error.message : String(error)}); run the command again when Temporal answers`,
    );
  }
  out(`${what} is shared through Temporal at ${opts.address}: every machine's processes apply it`);
}

export function buildProgram(): Command {
  const program = new Command('clawgate')
    .description('Matrix rooms as an approval-gated control plane for AI agent work')
    .showHelpAfterError()
    .exitOverride();

  const policy = program
    .command('policy')
    .description('work policy contracts (WPC): validate, sign, register, activate');
  policy
    .command('validate <file>')
    .description('check a policy (JSON or YAML); prints its hash, or every problem with its path')
    .action((file: string) => {
      const { wpc, hash } = loadWpc(readText(file, 'policy'));
      out(`ok: ${file} is a valid WPC v${wpc.wpc_version}\nhash ${hash}`);
      const both = wpc.execution.tools.allow.filter((t) => wpc.execution.tools.deny.includes(t));
      if (both.length > 0) out(`note: ${both.join(', ')} on both the allow and the deny list: deny wins`);
    });
  policy
    .command('hash <file>')
    .description('print the SHA-256 of the policy in RFC 8785 canonical form')
    .action((file: string) => out(loadWpc(readText(file, 'policy')).hash));
  policy
    .command('sign <file>')
    .description('sign a policy with the active policy key')
    .addOption(keysOption())
    .option('--out <file>', 'where to write the signed policy (default: stdout)')
    .action((file: string, opts: { keys: string; out?: string }) => {
      const { wpc } = loadWpc(readText(file, 'policy'));
      const signed = JSON.stringify(signWpc(wpc, loadSigner(opts.keys, 'policy')), null, 2);
      if (opts.out) {
        writeFileAtomic(opts.out, `${signed}\n`);
        out(`signed policy written to ${opts.out}`);
      } else out(signed);
    });
  policy
    .command('register <signed-file>')
    .description('add a signed policy to the registry (its signer must be on the allowlist)')
    .addOption(registryOption())
    .addOption(keysOption())
    .option('--signers <jwks>', 'allowlist of policy signers as a JWKS file (default: the policy keyring)')
    .action(async (file: string, opts: { registry: string; keys: string; signers?: string }) => {
      const signed = parseStrict(readText(file, 'signed policy'), 'signed policy');
      const result = await new FilePolicyRegistry(opts.registry).register(
        signed,
        readJwks(opts.signers, opts.keys, ['policy']),
      );
      out(`${result.new ? 'registered' : 'already registered'} ${result.hash}`);
    });
  for (const op of ['activate', 'rollback'] as const) {
    shareOptions(
      policy
        .command(`${op} <hash>`)
        .description(
          op === 'activate'
            ? 'make a registered policy the active one of a channel'
            : 'go back to a policy that was active on the channel before',
        )
        .requiredOption('--channel <name>', 'the policy channel (for example: matrix)')
        .option('--reason <text>', 'why, for the history')
        .option('--by <who>', 'who makes the change, for the history', process.env['USER'])
        .addOption(registryOption()),
    ).action(
      async (
        hash: string,
        opts: { channel: string; reason?: string; by?: string; registry: string } & ShareOpts,
      ) => {
        const registry = new FilePolicyRegistry(opts.registry);
        const event = registry[op](opts.channel, hash, {
          ...(opts.reason ? { reason: opts.reason } : {}),
          ...(opts.by ? { by: opts.by } : {}),
        });
        out(`${opts.channel}: active policy ${event.hash} (was ${event.previous ?? 'none'})`);
        const { jws } = registry.get(event.hash);
        await share(opts, 'this policy change', (client, taskQueue, { sharePolicy }) =>
          sharePolicy(client, taskQueue, {
            channel: opts.channel,
            hash: event.hash,
            jws,
            by: opts.by ?? 'unknown',
            reason: opts.reason ?? op,
            rollback: op === 'rollback',
          }),
        );
      },
    );
  }
  policy
    .command('show [hash]')
    .description('print a registered policy, or the active one and the history of a channel')
    .option('--channel <name>', 'show the channel: its active policy and history')
    .addOption(registryOption())
    .action((hash: string | undefined, opts: { channel?: string; registry: string }) => {
      const registry = new FilePolicyRegistry(opts.registry);
      if (hash) {
        out(JSON.stringify(JSON.parse(canonicalJson(registry.policy(hash))), null, 2));
        return;
      }
      if (!opts.channel) throw new ClawgateError(ERROR_CODES.usage, 'give a policy hash or --channel <name>');
      out(`channel ${opts.channel}: active ${registry.activeHash(opts.channel) ?? 'none'}`);
      for (const e of registry.history(opts.channel)) {
        if (e.op === 'register') continue;
        const note = [e.by ? `by ${e.by}` : '', e.reason ?? ''].filter(Boolean).join(': ');
        out(`${e.at}  ${e.op.padEnd(8)} ${e.hash}${note ? `  (${note})` : ''}`);
      }
    });
  policy
    .command('list')
    .description('list registered policies')
    .addOption(registryOption())
    .action((opts: { registry: string }) => {
      const registry = new FilePolicyRegistry(opts.registry);
      const channels = registry.channels();
      for (const p of registry.list()) {
        const active = channels.filter((c) => c.hash === p.hash).map((c) => c.channel);
        out(
          `${p.hash}  signed by ${p.signer}  ${p.at}${active.length ? `  active on ${active.join(', ')}` : ''}`,
        );
      }
    });

  const keys = program
    .command('keys')
    .description('Ed25519 signing keys and the payload encryption keyring: generate, publish, rotate');
  const purposeOption = (): Option =>
    new Option('--purpose <purpose>', 'which keyring').choices([...KEY_PURPOSES, PAYLOAD_PURPOSE]);
  type AnyPurpose = KeyPurpose | typeof PAYLOAD_PURPOSE;
  keys
    .command('generate')
    .description(
      'create keyrings: the one of --purpose, or every missing one; files 0600, kid = RFC 7638 thumbprint',
    )
    .addOption(purposeOption())
    .addOption(keysOption())
    .action(async (opts: { purpose?: AnyPurpose; keys: string }) => {
      if (opts.purpose === PAYLOAD_PURPOSE) {
        out(`${PAYLOAD_PURPOSE}: ${generatePayloadKeyring(opts.keys)}`);
        return;
      }
      if (opts.purpose) {
        out(`${opts.purpose}: ${await generateKeyring(opts.keys, opts.purpose)}`);
        return;
      }
      for (const purpose of KEY_PURPOSES) {
        if (existsSync(join(opts.keys, purpose, 'keyring.json'))) out(`${purpose}: exists, left as it is`);
        else out(`${purpose}: ${await generateKeyring(opts.keys, purpose)}`);
      }
      if (hasPayloadKeyring(opts.keys)) out(`${PAYLOAD_PURPOSE}: exists, left as it is`);
      else out(`${PAYLOAD_PURPOSE}: ${generatePayloadKeyring(opts.keys)}`);
    });
  keys
    .command('jwks')
    .description('print the public JWKS (keys that still verify)')
    .addOption(purposeOption())
    .addOption(keysOption())
    .action((opts: { purpose?: AnyPurpose; keys: string }) => {
      if (opts.purpose === PAYLOAD_PURPOSE) {
        throw new ClawgateError(
          ERROR_CODES.usage,
          'the payload keyring holds secret AES keys, not signing keys: it has no public JWKS',
        );
      }
      out(JSON.stringify(publicJwks(opts.keys, opts.purpose ? [opts.purpose] : KEY_PURPOSES), null, 2));
    });
  keys
    .command('publish')
    .description(
      'print the DIDs an auditor pins for Clawsig exports: the agent (bundle keys) and the gateway (receipt keys)',
    )
    .addOption(keysOption())
    .option('--json', 'as JSON')
    .action((opts: { keys: string; json?: boolean }) => {
      const didsOf = (purpose: KeyPurpose) =>
        keysFor(publicJwks(opts.keys, [purpose]), purpose).keys.flatMap((k) =>
          typeof k.x === 'string' ? [{ kid: String(k.kid), did: didKeyFromJwkX(k.x) }] : [],
        );
      const published = { agent: didsOf('bundle'), gateway: didsOf('receipt') };
      if (opts.json) return out(JSON.stringify(published, null, 2));
      for (const { kid, did } of published.agent) out(`agent    ${did}  (bundle key ${kid})`);
      for (const { kid, did } of published.gateway) out(`gateway  ${did}  (receipt key ${kid})`);
    });
  keys
    .command('rotate')
    .description(
      'make a new key active; the old one keeps verifying (token keys: until their tokens expire), or decrypting (payload keys)',
    )
    .addOption(purposeOption().makeOptionMandatory())
    .addOption(keysOption())
    .action(async (opts: { purpose: AnyPurpose; keys: string }) => {
      const { kid, retired } =
        opts.purpose === PAYLOAD_PURPOSE
          ? rotatePayloadKeyring(opts.keys)
          : await rotateKeyring(opts.keys, opts.purpose);
      out(`${opts.purpose}: active ${kid}, retired ${retired}`);
    });

  const receipts = program.command('receipts').description("read the proxy's signed model-call receipts");
  receipts
    .command('show <receipt-id>')
    .description('print one receipt, verified')
    .option('--log <file>', 'receipt log', `${stateDir()}/proxy/receipts.log`)
    .option('--jwks <file>', 'public keys (default: the receipt keyring)')
    .addOption(keysOption())
    .action(async (id: string, opts: { log: string; jwks?: string; keys: string }) => {
      const stored = ReceiptStore.read(opts.log).get(id);
      if (!stored) throw new ClawgateError(ERROR_CODES.receiptNotFound, `no receipt ${id} in ${opts.log}`);
      const receipt = await verifyReceipt(
        stored.jws,
        keysFor(readJwks(opts.jwks, opts.keys, ['receipt']), 'receipt'),
      );
      out(JSON.stringify(receipt.payload, null, 2));
    });
  receipts
    .command('list')
    .description("list a job's receipts in chain order, each verified")
    .requiredOption('--job <workflow-id>', 'the job')
    .option('--log <file>', 'receipt log', `${stateDir()}/proxy/receipts.log`)
    .option('--jwks <file>', 'public keys (default: the receipt keyring)')
    .addOption(keysOption())
    .action(async (opts: { job: string; log: string; jwks?: string; keys: string }) => {
      const list = ReceiptStore.read(opts.log).forJob(opts.job);
      const jwks = keysFor(readJwks(opts.jwks, opts.keys, ['receipt']), 'receipt');
      for (const stored of list) {
        const { payload } = await verifyReceipt(stored.jws, jwks);
        out(
          `${payload.started_at}  ${payload.receipt_id}  ${payload.status.padEnd(15)} ${payload.model ?? '-'}  ${payload.response_sha256 ?? '-'}`,
        );
      }
    });

  program
    .command('verify <bundle>')
    .description('verify a sealed proof bundle offline: signatures, hashes, Merkle root, bindings')
    .option('--jwks <file>', 'public keys (default: the local keyrings)')
    .addOption(keysOption())
    .action(async (file: string, opts: { jwks?: string; keys: string }) => {
      const bundle = parseStrict(readText(file, 'bundle'), 'bundle');
      const result = await verifyBundle(bundle, readJwks(opts.jwks, opts.keys, KEY_PURPOSES));
      if (result.ok) {
        const entries = bundleSchema.parse(bundle).entries.length;
        out(`ok: ${entries} entries verified; bundle digest ${result.digest ?? ''}`);
        return;
      }
      for (const p of result.problems) out(`entry ${p.entry ?? '-'} (${p.type}): ${p.problem}`);
      throw new ClawgateError(
        ERROR_CODES.bundleInvalid,
        `the bundle does not verify (${result.problems.length} problem(s))`,
      );
    });
  // Where Temporal is, for the commands that talk to it.
  const temporalAddress = (command: Command): Command =>
    command
      .option(
        '--address <host:port>',
        'Temporal frontend',
        process.env['CLAWGATE_TEMPORAL_ADDRESS'] ?? '127.0.0.1:7233',
      )
      .option(
        '--namespace <name>',
        'Temporal namespace',
        process.env['CLAWGATE_TEMPORAL_NAMESPACE'] ?? 'default',
      );
  const temporalOptions = (command: Command): Command =>
    temporalAddress(command)
      .option('--task-queue <name>', "the workers' job task queue (default: clawgate's job queue)")
      .option('--by <who>', 'who makes the change, for the audit trail', process.env['USER'] ?? 'operator')
      .requiredOption('--reason <text>', 'why, for the audit trail')
      .addOption(payloadKeysOption());
  // Temporal's client is loaded by the commands that talk to Temporal only: it takes longer to
  // load than everything else the command line needs.
  async function withClient<T>(
    opts: { address: string; namespace: string; payloadKeys: string },
    fn: (client: Client) => Promise<T>,
  ): Promise<T> {
    const { Client, Connection } = await import('@temporalio/client');
    const { dataConverterFor } = await import('../temporal/codec.ts');
    const connection = await Connection.connect({ address: opts.address });
    try {
      return await fn(
        new Client({
          connection,
          namespace: opts.namespace,
          dataConverter: dataConverterFor(opts.payloadKeys),
        }),
      );
    } finally {
      await connection.close();
    }
  }
  type ControlOpts = {
    address: string;
    namespace: string;
    taskQueue?: string;
    by: string;
    reason: string;
    payloadKeys: string;
  };
  const control = async () => ({
    ...(await import('../activities/control-state.ts')),
    JOB_TASK_QUEUE: (await import('../temporal/job-contract.ts')).JOB_TASK_QUEUE,
  });
  temporalOptions(
    program
      .command('mode <mode>')
      .description('read-only triage mode (no job mints a token) or normal, for every process and job'),
  ).action(async (mode: string, opts: ControlOpts) => {
    if (mode !== 'read-only' && mode !== 'normal') {
      throw new ClawgateError(ERROR_CODES.usage, `mode must be read-only or normal, not ${mode}`);
    }
    const { setMode, JOB_TASK_QUEUE } = await control();
    await withClient(opts, (client) =>
      setMode(client, opts.taskQueue ?? JOB_TASK_QUEUE, mode, opts.by, opts.reason),
    );
    out(`mode ${mode} (by ${opts.by}: ${opts.reason})`);
  });
  for (const [name, frozen] of [
    ['freeze', true],
    ['unfreeze', false],
  ] as const) {
    temporalOptions(
      program
        .command(name)
        .description(frozen ? 'refuse every approval until unfreeze' : 'accept approvals again'),
    ).action(async (opts: ControlOpts) => {
      const { setApprovalFreeze, JOB_TASK_QUEUE } = await control();
      await withClient(opts, (client) =>
        setApprovalFreeze(client, opts.taskQueue ?? JOB_TASK_QUEUE, frozen, opts.by, opts.reason),
      );
      out(`approvals ${frozen ? 'frozen' : 'unfrozen'} (by ${opts.by}: ${opts.reason})`);
    });
  }
  shareOptions(
    program
      .command('revoke')
      .description('revoke one capability token, or every token of a job (durable; checked on every call)')
      .option('--token <jti>', 'the token id')
      .option('--job <workflow-id>', 'the job')
      .requiredOption('--reason <text>', 'why, for the record')
      .option('--by <who>', 'who revokes, for the record', process.env['USER'])
      .option('--revocations <file>', 'revocation log', `${stateDir()}/revocations.log`),
  ).action(
    async (
      opts: { token?: string; job?: string; reason: string; by?: string; revocations: string } & ShareOpts,
    ) => {
      if (!opts.token === !opts.job)
        throw new ClawgateError(ERROR_CODES.usage, 'give exactly one of --token or --job');
      // Here first: the revocation holds on this machine whatever happens to the sharing.
      const store = new FileRevocationStore(opts.revocations);
      if (opts.token) store.revokeToken(opts.token, opts.reason, opts.by || undefined);
      if (opts.job) store.revokeJob(opts.job, opts.reason, opts.by || undefined);
      out(`revoked ${opts.token ? `token ${opts.token}` : `every token of job ${opts.job ?? ''}`}`);
      const record = store.list().at(-1);
      if (!record) return;
      await share(opts, 'this revocation', (client, taskQueue, { shareRevocation }) =>
        shareRevocation(client, taskQueue, record),
      );
    },
  );

  program
    .command('replay <workflow-id>')
    .description(
      "replay a job's history against the current code and check it against its bundle, entry by entry",
    )
    .option(
      '--address <host:port>',
      'Temporal frontend',
      process.env['CLAWGATE_TEMPORAL_ADDRESS'] ?? '127.0.0.1:7233',
    )
    .option(
      '--namespace <name>',
      'Temporal namespace',
      process.env['CLAWGATE_TEMPORAL_NAMESPACE'] ?? 'default',
    )
    .option('--bundles <dir>', 'sealed bundles', `${stateDir()}/bundles`)
    .option('--jwks <file>', 'public keys (default: the local keyrings)')
    .addOption(keysOption())
    .addOption(payloadKeysOption())
    .action(
      async (
        workflowId: string,
        opts: {
          address: string;
          namespace: string;
          bundles: string;
          jwks?: string;
          keys: string;
          payloadKeys: string;
        },
      ) => {
        const { replayJob } = await import('../evidence/replay.ts');
        await withClient(opts, async (client) => {
          const report = await replayJob(client, workflowId, {
            bundleDir: opts.bundles,
            jwks: readJwks(opts.jwks, opts.keys, KEY_PURPOSES),
          });
          out(
            `replay: ${report.replayed ? 'the current code reproduces the history' : `FAILED: ${report.replayError ?? ''}`}`,
          );
          out(`bundle: ${report.bundleDigest ?? 'none'}`);
          for (const m of report.mismatches) out(`entry ${m.entry}: ${m.problem}`);
          for (const p of report.bundleProblems) out(`entry ${p.entry ?? '-'} (${p.type}): ${p.problem}`);
          if (!report.ok)
            throw new ClawgateError(ERROR_CODES.bundleInvalid, `job ${workflowId} does not check out`);
          out('ok: history and bundle agree');
        });
      },
    );
  const schedule = program
    .command('schedule')
    .description('recurring jobs on Temporal Schedules: a fixed request, room and policy channel');
  const scheduleTemporal = (command: Command): Command =>
    temporalAddress(command).addOption(payloadKeysOption());
  type ScheduleTemporalOpts = { address: string; namespace: string; payloadKeys: string };
  scheduleTemporal(
    schedule
      .command('create <name>')
      .description(
        'create a schedule; each run posts "Scheduled job <name>: <text>" in the room and runs a job in that message\'s thread',
      )
      .option('--every <duration>', 'an interval, such as 1h or 15m')
      .option('--cron <expression>', "a five-field cron expression, such as '0 9 * * 1-5'")
      .requiredOption('--room <room-id>', 'the room the jobs post in')
      .requiredOption('--text <request>', 'the request each run makes')
      .requiredOption(
        '--requester <user-id>',
        "the schedule's creator: the Matrix user id each job is requested as",
      )
      .option('--channel <name>', 'the policy channel', 'matrix')
      .option(
        '--overlap <policy>',
        'a run due while one runs: skip, buffer-one, allow-all, cancel-other',
        'skip',
      )
      .option('--catchup-window <duration>', 'how late a missed run may still start', '10m')
      .option(
        '--pre-approved-by <user-id>',
        "an approver who approves every run's plan now (only if the policy's schedules.pre_approval allows it)",
      )
      .option('--task-queue <name>', "the workers' job task queue (default: clawgate's job queue)")
      .option('--account <id>', 'the gateway account that holds the room (its id in the configuration)')
      .option(
        '--matrix-task-queue <name>',
        "that account's task queue, when its configuration sets one (instead of --account)",
      )
      .addOption(registryOption()),
  ).action(
    async (
      name: string,
      opts: ScheduleTemporalOpts & {
        every?: string;
        cron?: string;
        room: string;
        text: string;
        requester: string;
        channel: string;
        overlap: string;
        catchupWindow: string;
        preApprovedBy?: string;
        taskQueue?: string;
        account?: string;
        matrixTaskQueue?: string;
        registry: string;
      },
    ) => {
      const { checkSchedule, createSchedule } = await import('./schedules.ts');
      // Checked before Temporal is asked: a refused schedule is never created.
      const checked = checkSchedule({ ...opts, name }, new FilePolicyRegistry(opts.registry), new Date());
      await withClient(opts, (client) => createSchedule(client, checked, opts.taskQueue));
      const pre = checked.input.preApproval;
      out(
        `schedule ${checked.name} created under policy ${checked.policyHash}` +
          (pre ? `; pre-approved by ${pre.approver}` : '; each plan waits for an approval in the room'),
      );
    },
  );
  scheduleTemporal(schedule.command('list').description("clawgate's schedules")).action(
    async (opts: ScheduleTemporalOpts) => {
      const { listSchedules } = await import('./schedules.ts');
      const rows = await withClient(opts, (client) => listSchedules(client));
      for (const r of rows) {
        out(
          `${r.name}  ${r.paused ? 'paused' : 'active'}  ${r.spec}  next ${r.next ?? '-'}${r.note ? `  (${r.note})` : ''}`,
        );
      }
    },
  );
  for (const op of ['pause', 'unpause', 'delete'] as const) {
    scheduleTemporal(
      schedule
        .command(`${op} <name>`)
        .description(
          op === 'delete'
            ? 'delete a schedule (jobs it started go on)'
            : op === 'pause'
              ? 'start no more runs until unpause'
              : 'start runs again',
        )
        .option('--note <text>', 'why, shown with the schedule'),
    ).action(async (name: string, opts: ScheduleTemporalOpts & { note?: string }) => {
      const { changeSchedule } = await import('./schedules.ts');
      await withClient(opts, (client) => changeSchedule(client, name, op, opts.note));
      out(`schedule ${name}: ${op === 'delete' ? 'deleted' : op === 'pause' ? 'paused' : 'unpaused'}`);
    });
  }
  addStackCommands(program);
  addEvidenceCommands(program);
  addClawsigCommands(program, () => `${stateDir()}/keys`);
  return program;
}

export async function main(argv: string[]): Promise<number> {
  try {
    await buildProgram().parseAsync(argv, { from: 'user' });
    return 0;
  } catch (error) {
    if (error instanceof CommanderError) return error.exitCode;
    if (error instanceof ClawgateError) {
      process.stderr.write(`clawgate: ${error.message}\n`);
      return 1;
    }
    process.stderr.write(
      `clawgate: internal error: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`,
    );
    return 2;
  }
}

if (import.meta.main) {
  process.exitCode = await main(process.argv.slice(2));
  // A command that failed while starting services may leave a handle open (Temporal's native
  // runtime keeps the process alive): its error is printed, so it ends instead of hanging.
  if (process.exitCode !== 0) setTimeout(() => process.exit(), 1000).unref();
}
