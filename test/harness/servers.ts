// What a test file knows of the servers the global set-up started for this run. Test files
// run in their own processes; the set-up hands the addresses over in environment variables.
import { registerWithSharedSecret, type RegisteredUser } from '../../src/devstack/synapse.ts';

export interface TestServers {
  /** Folder of this run's server logs and data (kept after the run). */
  runDir: string;
  temporal: { address: string; namespace: string };
  synapse: { baseUrl: string; serverName: string; registrationSharedSecret: string };
  bwrap: string;
  /**
   * The keys folder of the run's payload keyring (payload/): every Temporal client and worker
   * of the run, clawgate processes the tests start included, encrypts and decrypts with it.
   */
  payloadKeys: string;
}

export const ENV = {
  runDir: 'CLAWGATE_TEST_RUN_DIR',
  temporalAddress: 'CLAWGATE_TEST_TEMPORAL_ADDRESS',
  temporalNamespace: 'CLAWGATE_TEST_TEMPORAL_NAMESPACE',
  synapseUrl: 'CLAWGATE_TEST_SYNAPSE_URL',
  synapseServerName: 'CLAWGATE_TEST_SYNAPSE_SERVER_NAME',
  synapseSecret: 'CLAWGATE_TEST_SYNAPSE_SECRET',
  bwrap: 'CLAWGATE_TEST_BWRAP',
  // clawgate's own variable (codec.keysDir), so the clawgate processes a test starts use it too.
  payloadKeys: 'CLAWGATE_PAYLOAD_KEYS_DIR',
} as const;

function required(name: string): string {
  const value = process.env[name];
  if (!value) {
    throw new Error(
      `${name} is not set: this test needs the servers that test/harness/global-setup.ts starts. ` +
        'Run it with `npm test` (or pass --test-global-setup=test/harness/global-setup.ts).',
    );
  }
  return value;
}

export function testServers(): TestServers {
  return {
    runDir: required(ENV.runDir),
    temporal: { address: required(ENV.temporalAddress), namespace: required(ENV.temporalNamespace) },
    synapse: {
      baseUrl: required(ENV.synapseUrl),
      serverName: required(ENV.synapseServerName),
      registrationSharedSecret: required(ENV.synapseSecret),
    },
    bwrap: required(ENV.bwrap),
    payloadKeys: required(ENV.payloadKeys),
  };
}

let counter = 0;
/** An id no other test of this run uses: a prefix, the process id, a counter and randomness. */
export function uniqueId(prefix: string): string {
  counter += 1;
  return `${prefix}-${process.pid}-${counter}-${Math.random().toString(36).slice(2, 8)}`;
}

/** Registers a fresh user on the run's Synapse; the localpart gets a unique suffix. */
export async function registerTestUser(name: string): Promise<RegisteredUser> {
  const { synapse } = testServers();
  const localpart = uniqueId(name).toLowerCase();
  return await registerWithSharedSecret(synapse.baseUrl, synapse.registrationSharedSecret, localpart);
}
