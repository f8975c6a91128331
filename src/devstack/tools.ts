// Where the dev stack (tests, `npm start`) finds the real servers' binaries: the manifest that `npm run bootstrap`
// writes in the cache folder, with environment overrides for machines that bring their own.
import { readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';

export interface ToolPaths {
  temporal: string;
  synapsePython: string;
  bwrap: string;
}

export function cacheDir(): string {
  return (
    process.env['CLAWGATE_CACHE_DIR'] ??
    join(process.env['XDG_CACHE_HOME'] ?? join(homedir(), '.cache'), 'clawgate')
  );
}

interface Manifest {
  temporal?: string;
  synapse?: { python?: string };
  bwrap?: string;
  chromium?: string;
}

function readManifest(manifestPath: string): Manifest {
  try {
    return JSON.parse(readFileSync(manifestPath, 'utf8')) as Manifest;
  } catch {
    // Environment overrides may still name every tool.
    return {};
  }
}

/** Reads the bootstrap manifest; throws a message that says what to run when a tool is missing. */
export function toolPaths(): ToolPaths {
  const manifestPath = join(cacheDir(), 'tools.json');
  const manifest = readManifest(manifestPath);
  const temporal = process.env['TEMPORAL_CLI_PATH'] ?? manifest.temporal;
  const synapsePython = process.env['SYNAPSE_PYTHON'] ?? manifest.synapse?.python;
  const bwrap = process.env['BWRAP_PATH'] ?? manifest.bwrap;
  const missing = [
    !temporal && 'the Temporal CLI (TEMPORAL_CLI_PATH)',
    !synapsePython && 'Synapse (SYNAPSE_PYTHON)',
    !bwrap && 'bubblewrap (BWRAP_PATH)',
  ].filter(Boolean);
  if (!temporal || !synapsePython || !bwrap) {
    throw new Error(
      `clawgate's dev stack needs ${missing.join(', ')}, and ${manifestPath} does not name them. ` +
        'Run `npm run bootstrap` first, or set the environment variables in parentheses.',
    );
  }
  return { temporal, synapsePython, bwrap };
}

/**
 * The headless browser the tests open pages in (`CHROMIUM_PATH`, or the one the bootstrap
 * installed); throws a message that says what to run when there is none.
 */
export function chromiumPath(): string {
  const manifestPath = join(cacheDir(), 'tools.json');
  const chromium = process.env['CHROMIUM_PATH'] || readManifest(manifestPath).chromium;
  if (!chromium) {
    throw new Error(
      `no Chromium: ${manifestPath} names none and CHROMIUM_PATH is not set. ` +
        'Run `npm run bootstrap` (it installs the Debian package chromium), or set CHROMIUM_PATH.',
    );
  }
  return chromium;
}
