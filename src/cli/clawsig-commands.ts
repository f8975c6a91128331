// `clawgate export clawsig` and `clawgate clawsig verify`: a sealed bundle in the Clawsig v1
// form the public Clawsig verifier reads, and clawgate's own offline check of such a file.
import { readFileSync } from 'node:fs';
import type { Command } from 'commander';
import { ClawgateError, ERROR_CODES } from '../errors.ts';
import { checkClawsigExport } from '../evidence/clawsig-check.ts';
import { exportSealedBundle, gatewayDids } from '../evidence/seal.ts';
import { KEY_PURPOSES, publicJwks } from '../keys/keyring.ts';
import { parseStrict } from '../policy/canonical.ts';
import { writeFileAtomic } from '../storage/files.ts';

const out = (text: string): void => void process.stdout.write(`${text}\n`);

function readJson(path: string, what: string): unknown {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (error) {
    throw new ClawgateError(
      ERROR_CODES.fileUnreadable,
      `cannot read ${what} ${path}: ${(error as NodeJS.ErrnoException).code ?? String(error)}`,
    );
  }
  return parseStrict(text, what);
}

export function addClawsigCommands(program: Command, defaultKeys: () => string): void {
  const exporting = program.command('export').description('sealed evidence in other formats');
  exporting
    .command('clawsig <bundle>')
    .description(
      'write the Clawsig v1 proof bundle envelope of a sealed bundle (the public Clawsig verifier reads it)',
    )
    .option(
      '--out <file>',
      'where to write it (default: beside the bundle, <name>.clawsig.json; - for stdout)',
    )
    .option('--keys <dir>', 'keyring folder (the bundle key signs the export)')
    .action(async (file: string, opts: { out?: string; keys?: string }) => {
      const keys = opts.keys ?? defaultKeys();
      const bundle = readJson(file, 'bundle');
      const made = await exportSealedBundle(bundle, keys, publicJwks(keys, KEY_PURPOSES));
      const target = opts.out ?? file.replace(/(\.json)?$/, '.clawsig.json');
      if (target === '-') {
        process.stdout.write(made.text);
        return;
      }
      writeFileAtomic(target, made.text, 0o644);
      out(
        `wrote ${target}: ${(made.envelope.payload as { event_chain: unknown[] }).event_chain.length} events, ${made.gatewayReceipts} gateway receipts; agent ${made.envelope.signer_did}`,
      );
    });

  program
    .command('clawsig')
    .description('Clawsig v1 proof bundles')
    .command('verify <file>')
    .description(
      'check a Clawsig v1 proof bundle offline by the reference verifier rules: hashes, chain, signatures, bindings, spans',
    )
    .option('--gateway-did <did...>', "allowed gateway DIDs (default: this state folder's receipt keys)")
    .option('--agent-did <did>', 'the agent DID you pinned')
    .option('--bundle <file>', 'the clawgate bundle it was made from: each event must name its entry')
    .option('--keys <dir>', 'keyring folder (for the default gateway DIDs)')
    .action(
      (file: string, opts: { gatewayDid?: string[]; agentDid?: string; bundle?: string; keys?: string }) => {
        const envelope = readJson(file, 'Clawsig bundle');
        const bundle = opts.bundle ? readJson(opts.bundle, 'bundle') : undefined;
        const result = checkClawsigExport(envelope, {
          gatewayDids: opts.gatewayDid ?? gatewayDids(opts.keys ?? defaultKeys()),
          ...(opts.agentDid ? { agentDid: opts.agentDid } : {}),
          ...(bundle ? { bundle: bundle as { entries: Array<{ type: string; body: unknown }> } } : {}),
        });
        if (result.ok) {
          out(`PASS: tier ${result.tier ?? '-'}; agent ${result.agentDid ?? '-'}`);
          return;
        }
        for (const p of result.problems) out(`${p.code} ${p.field}: ${p.problem}`);
        throw new ClawgateError(ERROR_CODES.bundleInvalid, `FAIL: ${result.problems.length} problem(s)`);
      },
    );
}
