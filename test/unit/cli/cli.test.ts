// The clawgate command line, run as a person runs it: exit codes, one-line errors naming what
// was wrong (never a stack trace), and the policy and key workflow end to end.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { test } from 'node:test';

const root = resolve(import.meta.dirname, '../../..');
const run = async (state: string, ...args: string[]) => {
  try {
    const { stdout, stderr } = await promisify(execFile)(join(root, 'bin/clawgate'), args, {
      env: { ...process.env, CLAWGATE_STATE_DIR: state },
      encoding: 'utf8',
    });
    return { code: 0, stdout, stderr };
  } catch (error) {
    const e = error as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
};

test('policy: validate, sign, register, activate, rollback, show, with keys generated first', async () => {
  const state = mkdtempSync(join(tmpdir(), 'clawgate-cli-'));
  assert.equal((await run(state, 'keys', 'generate')).code, 0);
  const hash = (await run(state, 'policy', 'hash', 'examples/policy.json')).stdout.trim();
  assert.match(hash, /^[0-9a-f]{64}$/);
  const v2 = join(state, 'v2.json');
  writeFileSync(
    v2,
    JSON.stringify({
      ...JSON.parse(
        await (await import('node:fs/promises')).readFile(join(root, 'examples/policy.json'), 'utf8'),
      ),
      description: 'v2',
    }),
  );
  const hash2 = (await run(state, 'policy', 'hash', v2)).stdout.trim();
  for (const [file, signed] of [
    ['examples/policy.json', join(state, 's1.json')],
    [v2, join(state, 's2.json')],
  ] as const) {
    assert.equal((await run(state, 'policy', 'sign', file, '--out', signed)).code, 0);
    assert.match((await run(state, 'policy', 'register', signed)).stdout, /^registered [0-9a-f]{64}/);
  }
  assert.equal((await run(state, 'policy', 'activate', hash, '--channel', 'matrix')).code, 0);
  assert.equal((await run(state, 'policy', 'activate', hash2, '--channel', 'matrix')).code, 0);
  const rollback = await run(
    state,
    'policy',
    'rollback',
    hash,
    '--channel',
    'matrix',
    '--reason',
    'incident',
  );
  assert.match(rollback.stdout, new RegExp(`active policy ${hash} \\(was ${hash2}\\)`));
  const show = await run(state, 'policy', 'show', '--channel', 'matrix');
  assert.match(show.stdout, new RegExp(`active ${hash}`));
  assert.equal(show.stdout.trim().split('\n').length, 4, 'the history has every activation');
  assert.match((await run(state, 'policy', 'show', hash)).stdout, /"wpc_version": "1"/);
  const jwks = JSON.parse((await run(state, 'keys', 'jwks', '--purpose', 'policy')).stdout) as {
    keys: unknown[];
  };
  assert.equal(jwks.keys.length, 1);
});

test('bad input: one clear line on stderr, exit 1, no stack trace', async () => {
  const state = mkdtempSync(join(tmpdir(), 'clawgate-cli-'));
  const bad = join(state, 'bad.json');
  writeFileSync(bad, '{"wpc_version": "1", "wpc_version": "1"}');
  const cases: Array<[string[], RegExp]> = [
    [['policy', 'validate', bad], /clawgate: policy at line 1, column 22: a key appears twice/],
    [
      ['policy', 'validate', join(state, 'missing.json')],
      /clawgate: cannot read policy .*missing\.json: ENOENT/,
    ],
    [
      ['policy', 'sign', 'examples/policy.json'],
      /clawgate: no policy keyring in .*clawgate keys generate --purpose policy/,
    ],
    [['policy', 'activate', 'f'.repeat(64), '--channel', 'matrix'], /is not registered/],
  ];
  for (const [args, message] of cases) {
    const result = await run(state, ...args);
    assert.equal(result.code, 1, `${args.join(' ')}: ${result.stderr}`);
    assert.match(result.stderr, message);
    assert.doesNotMatch(result.stderr, /\n\s+at /, 'no stack trace');
  }
  const usage = await run(state, 'policy', 'activate', 'abc');
  assert.notEqual(usage.code, 0);
  assert.match(usage.stderr, /required option '--channel <name>'/);
});

test('receipts: list a job and show one, each verified with the receipt keyring', async () => {
  const state = mkdtempSync(join(tmpdir(), 'clawgate-cli-'));
  assert.equal((await run(state, 'keys', 'generate', '--purpose', 'receipt')).code, 0);
  const { loadSigner } = await import('../../../src/keys/keyring.ts');
  const { ReceiptStore } = await import('../../../src/proxy/receipt-store.ts');
  const { signReceipt } = await import('../../../src/proxy/receipts.ts');
  const signer = loadSigner(join(state, 'keys'), 'receipt');
  const store = await ReceiptStore.open(join(state, 'proxy', 'receipts.log'));
  let prev: string | null = null;
  for (const id of ['r-1', 'r-2']) {
    const signed = signReceipt(
      {
        v: 1,
        receipt_id: id,
        proxy_id: 'p',
        job: { workflow_id: 'job-1', run_id: 'run' },
        token_id: 't',
        policy_hash: null,
        model: 'demo-echo',
        upstream: null,
        stream: false,
        status: 'ok',
        http_status: 200,
        refusal: null,
        error: null,
        request_sha256: null,
        response_sha256: null,
        request_bytes: 0,
        response_bytes: 0,
        usage: null,
        started_at: '2026-01-01T00:00:00.000Z',
        ended_at: '2026-01-01T00:00:00.000Z',
        prev_receipt_sha256: prev,
      },
      signer,
    );
    prev = signed.payloadSha256;
    await store.append(signed);
  }
  await store.close();
  const list = await run(state, 'receipts', 'list', '--job', 'job-1');
  assert.equal(list.code, 0, list.stderr);
  assert.deepEqual(
    list.stdout
      .trim()
      .split('\n')
      .map((line) => line.split(/\s+/)[1]),
    ['r-1', 'r-2'],
  );
  const first = JSON.parse((await run(state, 'receipts', 'show', 'r-1')).stdout) as { receipt_id: string };
  const second = JSON.parse((await run(state, 'receipts', 'show', 'r-2')).stdout) as {
    prev_receipt_sha256: string;
  };
  assert.equal(first.receipt_id, 'r-1');
  assert.match(second.prev_receipt_sha256, /^[0-9a-f]{64}$/);
  const missing = await run(state, 'receipts', 'show', 'r-9');
  assert.equal(missing.code, 1);
  assert.match(missing.stderr, /no receipt r-9/);
});

test('revoke: a token or a whole job, durable, with a reason; one of the two is required', async () => {
  const state = mkdtempSync(join(tmpdir(), 'clawgate-cli-'));
  assert.match(
    (await run(state, 'revoke', '--job', 'job:1', '--reason', 'incident')).stdout,
    /every token of job job:1/,
  );
  assert.match(
    (await run(state, 'revoke', '--token', 'jti-1', '--reason', 'leaked')).stdout,
    /revoked token jti-1/,
  );
  const { FileRevocationStore } = await import('../../../src/tokens/revocations.ts');
  const store = new FileRevocationStore(join(state, 'revocations.log'));
  assert.ok(store.isRevoked('any', 'job:1') && store.isRevoked('jti-1', 'job:2'));
  const both = await run(state, 'revoke', '--reason', 'x');
  assert.equal(both.code, 1);
  assert.match(both.stderr, /give exactly one of --token or --job/);
});

test('--help works on every command and subcommand, and says what the command does', async () => {
  const { buildProgram, main } = await import('../../../src/cli/main.ts');
  const paths: string[][] = [];
  const walk = (command: ReturnType<typeof buildProgram>, path: string[]): void => {
    for (const sub of command.commands) {
      paths.push([...path, sub.name()]);
      walk(sub, [...path, sub.name()]);
    }
  };
  walk(buildProgram(), []);
  assert.ok(paths.length >= 15, `${paths.length} commands`);
  for (const expected of ['validate', 'hash', 'sign', 'register', 'activate', 'rollback', 'show', 'list']) {
    assert.ok(
      paths.some((p) => p.join(' ') === `policy ${expected}`),
      `policy ${expected}`,
    );
  }
  for (const expected of ['generate', 'jwks', 'rotate']) {
    assert.ok(
      paths.some((p) => p.join(' ') === `keys ${expected}`),
      `keys ${expected}`,
    );
  }
  const write = process.stdout.write.bind(process.stdout);
  for (const path of paths) {
    let printed = '';
    process.stdout.write = (chunk: string | Uint8Array) => {
      printed += String(chunk);
      return true;
    };
    let code: number;
    try {
      code = await main([...path, '--help']);
    } finally {
      process.stdout.write = write;
    }
    assert.equal(code, 0, path.join(' '));
    assert.match(printed, new RegExp(`^Usage: clawgate ${path.join(' ')}`), path.join(' '));
    assert.match(printed, /Options:/);
  }
});

test('a revocation and a rollback made on the command line reach a verifier that is already running', async () => {
  const state = mkdtempSync(join(tmpdir(), 'clawgate-cli-'));
  const { FileRevocationStore } = await import('../../../src/tokens/revocations.ts');
  const { FilePolicyRegistry } = await import('../../../src/policy/registry.ts');
  const running = new FileRevocationStore(join(state, 'revocations.log'));
  const registry = new FilePolicyRegistry(join(state, 'policy-registry'));
  assert.equal(running.isRevoked('jti-7', 'job-7'), false);
  assert.equal((await run(state, 'revoke', '--token', 'jti-7', '--reason', 'leaked', '--by', 'bob')).code, 0);
  assert.equal(running.isRevoked('jti-7', 'job-7'), true);
  assert.equal(running.list()[0]?.by, 'bob');

  assert.equal((await run(state, 'keys', 'generate', '--purpose', 'policy')).code, 0);
  const v2 = join(state, 'v2.json');
  writeFileSync(
    v2,
    JSON.stringify({
      ...JSON.parse(readFileSync(join(root, 'examples/policy.json'), 'utf8')),
      description: 'v2',
    }),
  );
  const hashes: string[] = [];
  for (const file of ['examples/policy.json', v2]) {
    const signed = join(state, `${hashes.length}.signed.json`);
    assert.equal((await run(state, 'policy', 'sign', file, '--out', signed)).code, 0);
    hashes.push((await run(state, 'policy', 'register', signed)).stdout.trim().split(' ').at(-1) ?? '');
  }
  const [first, second] = hashes as [string, string];
  assert.equal((await run(state, 'policy', 'activate', first, '--channel', 'matrix')).code, 0);
  assert.equal(registry.activeHash('matrix'), first);
  assert.equal((await run(state, 'policy', 'activate', second, '--channel', 'matrix')).code, 0);
  assert.equal(registry.activeHash('matrix'), second);
  assert.equal(
    (await run(state, 'policy', 'rollback', first, '--channel', 'matrix', '--reason', 'regression')).code,
    0,
  );
  assert.equal(registry.activeHash('matrix'), first);
  const list = (await run(state, 'policy', 'list')).stdout;
  assert.match(list, new RegExp(`${first} .* active on matrix`));
  assert.doesNotMatch(list, new RegExp(`${second} .* active on`));
});

test('damaged or forged input on the command line: one line naming the problem, exit 1, never a stack trace', async () => {
  const state = mkdtempSync(join(tmpdir(), 'clawgate-cli-'));
  assert.equal((await run(state, 'keys', 'generate')).code, 0);
  const again = await run(state, 'keys', 'generate');
  assert.equal(again.code, 0, 'generating every missing keyring again is a no-op');
  assert.match(again.stdout, /token: exists, left as it is/);
  const forged = join(state, 'forged.json');
  writeFileSync(forged, JSON.stringify({ hash: 'a'.repeat(64), jws: 'e30.e30.AAAA' }));
  const garbage = join(state, 'garbage.json');
  writeFileSync(garbage, '[1, 2, 3]');
  const policyWithBoth = join(state, 'both.json');
  const example = JSON.parse(readFileSync(join(root, 'examples/policy.json'), 'utf8'));
  example.execution.tools.allow.push('exec');
  writeFileSync(policyWithBoth, JSON.stringify(example));
  const cases: Array<[string[], RegExp]> = [
    [['policy', 'register', forged], /clawgate: the policy signature does not verify/],
    [['policy', 'register', garbage], /clawgate: not a signed policy/],
    [['policy', 'show', '../../etc/passwd'], /is not a policy hash/],
    [['policy', 'rollback', 'b'.repeat(64), '--channel', 'matrix'], /was never active on channel matrix/],
    [['policy', 'activate', 'c'.repeat(64), '--channel', 'Not A Channel'], /channel "Not A Channel"/],
    [['revoke', '--job', 'job-1', '--reason', ''], /cannot revoke: reason/],
    [['keys', 'generate', '--purpose', 'token'], /a token keyring already exists/],
  ];
  for (const [args, message] of cases) {
    const result = await run(state, ...args);
    assert.equal(result.code, 1, `${args.join(' ')}: ${result.stderr}`);
    assert.match(result.stderr, message, args.join(' '));
    assert.doesNotMatch(result.stderr, /\n\s+at /, 'no stack trace');
  }
  const both = await run(state, 'policy', 'validate', policyWithBoth);
  assert.equal(both.code, 0);
  assert.match(both.stdout, /note: exec on both the allow and the deny list: deny wins/);
  writeFileSync(join(state, 'keys', 'token', 'keyring.json'), '{');
  const damaged = await run(state, 'keys', 'jwks');
  assert.equal(damaged.code, 1);
  assert.match(damaged.stderr, /token\/keyring\.json cannot be read as JSON/);
});
