// The clawgate command line, run as a person runs it: exit codes, one-line errors naming what
// was wrong (never a stack trace), and the policy and key workflow end to end.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
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
