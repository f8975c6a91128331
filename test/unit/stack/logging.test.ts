// Secrets never reach a log line, wherever they sit in what is logged (up to two levels down).
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { test } from 'node:test';
import { createLogger, REDACTED_KEYS } from '../../../src/stack/logging.ts';

function capture() {
  const lines: string[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _enc, done) {
      lines.push(chunk.toString());
      done();
    },
  });
  return { lines, stream };
}

test('every secret key is redacted at the top level, one level down and two levels down', () => {
  const { lines, stream } = capture();
  const logger = createLogger('t', 'info', stream);
  for (const key of REDACTED_KEYS) {
    const secret = `s3cret-${key}`;
    logger.info({ [key]: secret, account: { [key]: secret }, req: { headers: { [key]: secret } } }, 'x');
  }
  assert.equal(lines.length, REDACTED_KEYS.length);
  for (const [i, line] of lines.entries()) {
    const key = REDACTED_KEYS[i] as string;
    assert.doesNotMatch(line, /s3cret-/, `${key} leaked: ${line}`);
    const parsed = JSON.parse(line) as Record<string, unknown>;
    assert.equal(parsed[key], '[secret]');
  }
});

test('what is not a secret is kept', () => {
  const { lines, stream } = capture();
  createLogger('t', 'info', stream).info({ account: 'ops', deviceId: 'ABC' }, 'logged in');
  const parsed = JSON.parse(lines[0] as string) as Record<string, unknown>;
  assert.equal(parsed['account'], 'ops');
  assert.equal(parsed['deviceId'], 'ABC');
});
