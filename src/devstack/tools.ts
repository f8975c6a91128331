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
}

/** Reads the bootstrap manifest; throws a message that says what to run when a tool is missing. */
export function toolPaths(): ToolPaths {
  const manifestPath = join(cacheDir(), 'tools.json');
  let manifest: Manifest = {};
  try {
    manifest = JSON.parse(readFileSync(manifestPath, 'utf8')) as Manifest;
  } catch {
    // Fall through: environment overrides may still name every tool.
  }
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
