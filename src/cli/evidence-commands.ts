// `clawgate evidence`: a sealed proof bundle as a page a reviewer reads. `evidence html` writes
// one self-contained HTML file (verified as it is made); `evidence serve` serves the pages of a
// bundle folder, read-only, as `clawgate start` does on evidence.listen.
import { readFileSync } from 'node:fs';
import { basename } from 'node:path';
import type { Command } from 'commander';
import type { JWK } from 'jose';
import { ClawgateError, ERROR_CODES } from '../errors.ts';
import { KEY_PURPOSES, publicJwks } from '../keys/keyring.ts';
import { parseStrict } from '../policy/canonical.ts';
import { writeFileAtomic } from '../storage/files.ts';

const out = (text: string): void => void process.stdout.write(`${text}\n`);
const note = (text: string): void => void process.stderr.write(`${text}\n`);
const DIGEST_FILE = /^([0-9a-f]{64})\.json$/;

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

/** The public keys to verify against, and how the page names where they came from. */
function keysFrom(opts: { jwks?: string; keys: string }): { jwks: () => { keys: JWK[] }; source: string } {
  const file = opts.jwks;
  if (file) {
    const jwks = parseStrict(readText(file, 'JWKS'), 'JWKS') as { keys: JWK[] };
    return { jwks: () => jwks, source: `the public keys in ${basename(file)}` };
  }
  return {
    jwks: () => publicJwks(opts.keys, KEY_PURPOSES),
    source: "the public keys of this clawgate's keyrings",
  };
}

async function load(configPath: string | undefined) {
  const { loadConfig, statePaths } = await import('../config/config.ts');
  const config = loadConfig(configPath);
  return { config, paths: statePaths(config) };
}

export function addEvidenceCommands(program: Command): void {
  const evidence = program
    .command('evidence')
    .description('sealed proof bundles as pages for reviewers: one HTML file, or served read-only');

  evidence
    .command('html <bundle>')
    .description(
      'write the page of a bundle: one self-contained HTML file (no script, nothing fetched), verified as it is made',
    )
    .option('--out <file>', 'where to write the page (default: stdout)')
    .option('--jwks <file>', 'public keys to verify against (default: the local keyrings)')
    .option('--keys <dir>', 'keyring folder (default: <stateDir>/keys)')
    .option('--config <file>', 'configuration file (for the state folder)')
    .action(async (file: string, opts: { out?: string; jwks?: string; keys?: string; config?: string }) => {
      const { renderBundlePage, verifyBundleText } = await import('../evidence/html.ts');
      const keysDir = opts.keys ?? (opts.jwks ? '' : (await load(opts.config)).paths.keys);
      const keys = keysFrom({ keys: keysDir, ...(opts.jwks ? { jwks: opts.jwks } : {}) });
      const jwks = keys.jwks();
      const storedAs = DIGEST_FILE.exec(basename(file))?.[1] ?? null;
      const { input, verification } = await verifyBundleText(readText(file, 'bundle'), jwks, storedAs);
      const page = renderBundlePage(input, verification, {
        generatedAt: new Date(),
        keys: { source: keys.source, kids: jwks.keys.flatMap((k) => (k.kid ? [k.kid] : [])) },
        storedAs,
      });
      const verdict = verification.ok
        ? `verified (bundle digest ${verification.digest ?? ''})`
        : `verification FAILED (${verification.problems.length} problem(s); the page lists them)`;
      if (opts.out) {
        writeFileAtomic(opts.out, page);
        out(`page written to ${opts.out}: ${verdict}`);
      } else {
        process.stdout.write(page);
        note(`clawgate: ${verdict}`);
      }
    });

  evidence
    .command('serve')
    .description(
      'serve the pages of a bundle folder, read-only: /bundles/<digest>, <digest>.json, <digest>.clawsig.json (Ctrl-C stops)',
    )
    .option('--host <host>', 'address to listen on (default: evidence.listen.host, 127.0.0.1)')
    .option('--port <port>', 'port (default: evidence.listen.port, 8792; 0 picks a free one)')
    .option('--bundles <dir>', 'the bundle folder (default: <stateDir>/bundles)')
    .option('--jwks <file>', 'public keys to verify against (default: the local keyrings)')
    .option('--keys <dir>', 'keyring folder (default: <stateDir>/keys)')
    .option('--config <file>', 'configuration file')
    .action(
      async (opts: {
        host?: string;
        port?: string;
        bundles?: string;
        jwks?: string;
        keys?: string;
        config?: string;
      }) => {
        const { config, paths } = await load(opts.config);
        const port = opts.port === undefined ? config.evidence.listen.port : Number(opts.port);
        if (!Number.isInteger(port) || port < 0 || port > 65_535) {
          throw new ClawgateError(
            ERROR_CODES.usage,
            `--port ${opts.port ?? ''}: not a TCP port (0 to 65535)`,
          );
        }
        const keys = keysFrom({ keys: opts.keys ?? paths.keys, ...(opts.jwks ? { jwks: opts.jwks } : {}) });
        const { createLogger } = await import('../stack/logging.ts');
        const logger = createLogger('clawgate-evidence', config.log.level);
        const { evidenceBaseUrl } = await import('../evidence/server.ts');
        const { runEvidenceServer } = await import('../stack/components.ts');
        const server = await runEvidenceServer(config, logger, {
          port,
          jwks: keys.jwks,
          keysSource: keys.source,
          ...(opts.host ? { host: opts.host } : {}),
          ...(opts.bundles ? { bundleDir: opts.bundles } : {}),
        });
        if (config.evidence.baseUrl) {
          logger.info({ pages: `${evidenceBaseUrl(config.evidence)}/bundles/<digest>` }, 'reviewers open');
        }
        await new Promise<void>((resolve) => {
          process.once('SIGINT', () => resolve());
          process.once('SIGTERM', () => resolve());
        });
        await server.close();
      },
    );
}
