// The one configuration: defaults with no file, environment overrides, errors that name the
// path or the variable, the sample that `clawgate config sample` prints, and the audit.
import assert from 'node:assert/strict';
import { chmodSync, mkdirSync, mkdtempSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { parse } from 'yaml';
import { applyModeFixes, audit } from '../../../src/config/audit.ts';
import { applyEnv, loadConfig, parseConfig, statePaths } from '../../../src/config/config.ts';
import { SAMPLE_CONFIG } from '../../../src/config/sample.ts';
import { ClawgateError, ERROR_CODES } from '../../../src/errors.ts';
import { generateKeyring } from '../../../src/keys/keyring.ts';

const fresh = () => mkdtempSync(join(tmpdir(), 'clawgate-config-'));

test('no file at all: embedded defaults, everything on loopback', () => {
  const config = parseConfig({}, { baseDir: '/srv' });
  assert.equal(config.stateDir, '/srv/state');
  assert.equal(config.temporal.address, undefined);
  assert.equal(config.matrix.homeserverUrl, undefined);
  assert.equal(config.proxy.upstreams, undefined);
  assert.equal(config.proxy.listen.host, '127.0.0.1');
  assert.equal(statePaths(config).registry, '/srv/state/policy-registry');
  // Fail closed by default: token checks refuse once the shared control state is 30 s unread.
  assert.equal(config.temporal.controlStaleAfterSeconds, 30);
});

test("an upstream's CA file: relative to the config file, and for https:// upstreams only", () => {
  const upstream = { name: 'internal', baseUrl: 'https://vllm.internal:8000/v1', models: ['m'] };
  const config = parseConfig(
    { proxy: { upstreams: [{ ...upstream, caFile: 'internal-ca.pem' }] } },
    { baseDir: '/srv' },
  );
  assert.equal(config.proxy.upstreams?.[0]?.caFile, '/srv/internal-ca.pem');
  assert.throws(
    () =>
      parseConfig({
        proxy: { upstreams: [{ ...upstream, baseUrl: 'http://vllm.internal:8000/v1', caFile: 'ca.pem' }] },
      }),
    /proxy\.upstreams\[0\]\.caFile: a CA file is for an https:\/\/ upstream/,
  );
});

test('the staleness limit of the shared control state: seconds, or null to keep serving', () => {
  assert.equal(
    parseConfig({ temporal: { controlStaleAfterSeconds: null } }).temporal.controlStaleAfterSeconds,
    null,
  );
  assert.equal(
    parseConfig({ temporal: { controlStaleAfterSeconds: 120 } }).temporal.controlStaleAfterSeconds,
    120,
  );
  for (const bad of [0, 1, 1.5, '30', 86_401]) {
    assert.throws(
      () => parseConfig({ temporal: { controlStaleAfterSeconds: bad } }),
      /temporal\.controlStaleAfterSeconds: /,
      `refused: ${JSON.stringify(bad)}`,
    );
  }
});

test("the supervisor's hang threshold: whole seconds, 5 to 3600, 60 by default; a bad value is named", () => {
  assert.equal(parseConfig({}).supervisor.hungAfterSeconds, 60);
  assert.equal(parseConfig({ supervisor: { hungAfterSeconds: 8 } }).supervisor.hungAfterSeconds, 8);
  for (const bad of [0, 4, 2.5, '60', 3_601, null]) {
    assert.throws(
      () => parseConfig({ supervisor: { hungAfterSeconds: bad } }),
      /: invalid configuration:\n {2}supervisor\.hungAfterSeconds: /,
      `refused: ${JSON.stringify(bad)}`,
    );
  }
  assert.throws(
    () => parseConfig({ supervisor: { hungAfter: 60 } }),
    /supervisor: Unrecognized key: "hungAfter"/,
  );
});

test('the sample printed by `clawgate config sample` is valid and spells the defaults', () => {
  const sample = parseConfig(parse(SAMPLE_CONFIG), { baseDir: '/srv' });
  assert.deepEqual(sample, parseConfig({}, { baseDir: '/srv' }));
});

test('environment overrides, and secrets by name', () => {
  const merged = applyEnv(
    {
      gateway: { accounts: [{ id: 'ops-bot', userId: '@b:x' }] },
      proxy: { upstreams: [{ name: 'openrouter', baseUrl: 'https://openrouter.ai/api/v1', models: ['m'] }] },
    },
    {
      CLAWGATE_TEMPORAL_ADDRESS: 'temporal:7233',
      CLAWGATE_TEMPORAL_TLS: 'true',
      CLAWGATE_PROXY_PORT: '9000',
      CLAWGATE_ACCOUNT_OPS_BOT_PASSWORD: 'pw',
      CLAWGATE_ACCOUNT_OPS_BOT_RECOVERY_KEY: 'EsTc recovery',
      CLAWGATE_UPSTREAM_OPENROUTER_API_KEY: 'sk-or-1',
    },
  );
  assert.deepEqual(merged['temporal'], { address: 'temporal:7233', tls: true });
  assert.deepEqual((merged['proxy'] as { listen: unknown }).listen, { port: 9000 });
  const account = (merged['gateway'] as { accounts: Array<{ password: string; recoveryKey: string }> })
    .accounts[0];
  assert.equal(account?.password, 'pw');
  assert.equal(account?.recoveryKey, 'EsTc recovery');
  assert.equal((merged['proxy'] as { upstreams: Array<{ apiKey: string }> }).upstreams[0]?.apiKey, 'sk-or-1');
  const model = applyEnv(
    {},
    { CLAWGATE_MODEL_BASE_URL: 'http://127.0.0.1:11434/v1', CLAWGATE_MODEL: 'llama3' },
  );
  assert.deepEqual((model['proxy'] as { upstreams: unknown }).upstreams, [
    { name: 'env', baseUrl: 'http://127.0.0.1:11434/v1', models: ['llama3'] },
  ]);
  // Named, as receipts name it.
  const named = applyEnv(
    {},
    {
      CLAWGATE_MODEL_BASE_URL: 'http://127.0.0.1:11434/v1',
      CLAWGATE_MODEL: 'llama3',
      CLAWGATE_MODEL_UPSTREAM: 'ollama',
    },
  );
  assert.equal((named['proxy'] as { upstreams: Array<{ name: string }> }).upstreams[0]?.name, 'ollama');
});

test('errors name the variable or the path', () => {
  assert.throws(
    () => applyEnv({}, { CLAWGATE_SYNAPSE_PORT: '70000' }),
    /CLAWGATE_SYNAPSE_PORT=70000: not a TCP port/,
  );
  assert.throws(
    () => applyEnv({}, { CLAWGATE_TEMPORAL_TLS: 'yes' }),
    /CLAWGATE_TEMPORAL_TLS=yes: true or false/,
  );
  assert.throws(() => applyEnv({}, { CLAWGATE_MODEL_BASE_URL: 'http://x/v1' }), /CLAWGATE_MODEL is not/);
  const dir = fresh();
  const file = join(dir, 'clawgate.yaml');
  writeFileSync(file, 'proxy:\n  listen: { port: "80" }\ngateway:\n  accounts: []\nlogs: {}\n');
  assert.throws(
    () => loadConfig(file, {}),
    (error: unknown) => {
      assert.ok(error instanceof ClawgateError && error.code === ERROR_CODES.configInvalid);
      assert.match(error.message, /^invalid configuration in .*clawgate\.yaml:/);
      assert.match(error.message, /proxy\.listen\.port: Invalid input: expected number/);
      assert.match(error.message, /gateway\.accounts: Too small/);
      assert.match(error.message, /\(root\): Unrecognized key: "logs"/);
      return true;
    },
  );
  writeFileSync(file, 'stateDir: [unclosed\n');
  assert.throws(() => loadConfig(file, {}), /clawgate\.yaml at line \d+, column \d+: Flow sequence/);
  assert.throws(
    () => loadConfig(join(dir, 'missing.yaml'), {}),
    /cannot read the configuration .*missing\.yaml: ENOENT/,
  );
});

test('security audit: loose modes, open listeners, Temporal without TLS, plain-HTTP homeserver; --fix tightens modes', async () => {
  const dir = fresh();
  const config = parseConfig(
    {
      stateDir: 'state',
      temporal: { address: 'temporal.internal:7233' },
      proxy: { listen: { host: '0.0.0.0' } },
      gateway: {
        accounts: [
          {
            id: 'main',
            homeserverUrl: 'http://matrix.example.org',
            userId: '@b:example.org',
            accessToken: 'sk-abcdefghijklmnop',
            rooms: ['!r:example.org'],
          },
        ],
      },
    },
    { baseDir: dir },
  );
  const paths = statePaths(config);
  mkdirSync(config.stateDir, { recursive: true });
  await generateKeyring(paths.keys, 'token');
  const keyFile = join(paths.keys, 'token', 'keyring.json');
  chmodSync(keyFile, 0o644);
  chmodSync(config.stateDir, 0o755);
  const configFile = join(dir, 'clawgate.yaml');
  writeFileSync(configFile, 'password: x\n', { mode: 0o644 });
  const findings = audit(config, { configFile });
  const high = findings.filter((f) => f.severity === 'high').map((f) => f.what);
  for (const expected of [
    /key file .*keyring\.json is readable by group or others \(mode 644\)/,
    /the configuration \(it holds secrets\) .*\(mode 644\)/,
    /gateway\.accounts\[0\]\.accessToken looks like a model provider key/,
    /proxy\.listen\.host is 0\.0\.0\.0/,
    /Temporal at temporal\.internal:7233 is reached without TLS/,
    /homeserver http:\/\/matrix\.example\.org is reached over plain HTTP/,
  ]) {
    assert.ok(
      high.some((w) => expected.test(w)),
      `${expected} in:\n${high.join('\n')}`,
    );
  }
  assert.ok(findings.every((f) => f.fix.length > 0));
  assert.ok(findings.some((f) => f.severity === 'medium' && /no policy is active/.test(f.what)));
  const fixed = applyModeFixes(findings);
  assert.ok(fixed.includes(`chmod 600 ${keyFile}`));
  assert.equal(statSync(keyFile).mode & 0o777, 0o600);
  assert.equal(statSync(config.stateDir).mode & 0o777, 0o700);
  assert.equal(audit(config, { configFile }).filter((f) => f.chmod).length, 0);
});
