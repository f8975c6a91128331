// The append-only log under the policy registry and the revocations: durable, private, shared
// between processes, tolerant of a torn last line only, and loud about any other damage.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import {
  appendFileSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  truncateSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { promisify } from 'node:util';
import fc from 'fast-check';
import { z } from 'zod';
import { ClawgateError, ERROR_CODES } from '../../../src/errors.ts';
import { AppendLog, TORN_LINE_MARK } from '../../../src/storage/append-log.ts';
import { writeFileAtomic } from '../../../src/storage/files.ts';

const schema = z.object({ id: z.string(), n: z.number() }).strict();
type Entry = z.infer<typeof schema>;
const CORRUPT = ERROR_CODES.revocationsCorrupt;
const open = (path: string) => new AppendLog<Entry>(path, { what: 'test log', schema, corruptCode: CORRUPT });
const freshPath = () => join(mkdtempSync(join(tmpdir(), 'clawgate-log-')), 'state', 'test.log');

const isCorrupt = (message: RegExp) => (error: unknown) => {
  assert.ok(error instanceof ClawgateError, String(error));
  assert.equal(error.code, CORRUPT);
  assert.match(error.message, message);
  return true;
};

test('records survive a reopen, in order; the folder is 0700 and the file 0600', () => {
  const path = freshPath();
  const log = open(path);
  log.append({ id: 'a', n: 1 });
  log.append({ id: 'b', n: 2 });
  assert.deepEqual(open(path).records(), [
    { id: 'a', n: 1 },
    { id: 'b', n: 2 },
  ]);
  assert.equal(statSync(path).mode & 0o777, 0o600);
  assert.equal(statSync(join(path, '..')).mode & 0o777, 0o700);
});

test('what another process appends is seen at the next look, without reopening', () => {
  const path = freshPath();
  const reader = open(path);
  assert.deepEqual(reader.records(), []);
  open(path).append({ id: 'from-elsewhere', n: 1 });
  assert.deepEqual(reader.records(), [{ id: 'from-elsewhere', n: 1 }]);
  assert.deepEqual(reader.refresh(), [], 'nothing new the second time');
});

test('a record that does not fit the schema is never written', () => {
  const path = freshPath();
  const log = open(path);
  assert.throws(() => log.append({ id: 'a', n: 'one' } as unknown as Entry));
  assert.deepEqual(open(path).records(), []);
});

test('a torn last line is left unread, then closed by the next append, and the log stays readable', () => {
  const path = freshPath();
  const log = open(path);
  log.append({ id: 'a', n: 1 });
  appendFileSync(path, '{"id":"half-writ'); // a crash in the middle of an append
  assert.deepEqual(open(path).records(), [{ id: 'a', n: 1 }], 'opens despite the torn line');
  const after = open(path);
  after.append({ id: 'b', n: 2 });
  assert.deepEqual(open(path).records(), [
    { id: 'a', n: 1 },
    { id: 'b', n: 2 },
  ]);
  assert.match(readFileSync(path, 'utf8'), new RegExp(`"half-writ${TORN_LINE_MARK}\\n\\{"id":"b"`));
  assert.deepEqual(log.records().at(-1), { id: 'b', n: 2 }, 'the first instance reads past it too');
});

test('a damaged line that is not the last is an error naming the line, never skipped', () => {
  const path = freshPath();
  const log = open(path);
  log.append({ id: 'a', n: 1 });
  appendFileSync(path, 'garbage\n{"id":"c","n":3}\n');
  assert.throws(() => open(path), isCorrupt(/test log .* line 2 is not a valid record/));
  assert.throws(() => log.records(), isCorrupt(/line 2/));
});

test('a log that shrank, was replaced or was removed is an error for every open instance', () => {
  for (const damage of [
    (path: string) => truncateSync(path, 5),
    (path: string) => {
      writeFileSync(`${path}.new`, readFileSync(path));
      renameSync(`${path}.new`, path);
    },
    (path: string) => rmSync(path),
  ]) {
    const path = freshPath();
    const log = open(path);
    log.append({ id: 'a', n: 1 });
    damage(path);
    assert.throws(() => log.records(), isCorrupt(/shrank|replaced|removed/));
    assert.throws(() => log.append({ id: 'b', n: 2 }), isCorrupt(/shrank|replaced|removed/));
  }
});

test('four processes appending at once lose and mix nothing', async () => {
  const path = freshPath();
  open(path); // creates the folder
  const child = join(import.meta.dirname, 'append-child.ts');
  await Promise.all(
    ['w1', 'w2', 'w3', 'w4'].map((writer) =>
      promisify(execFile)(process.execPath, [child, path, writer, '60']),
    ),
  );
  const records = new AppendLog(path, {
    what: 'test log',
    schema: z.object({ writer: z.string(), n: z.number(), pad: z.string() }).strict(),
    corruptCode: CORRUPT,
  }).records();
  assert.equal(records.length, 240);
  for (const writer of ['w1', 'w2', 'w3', 'w4']) {
    assert.deepEqual(
      records.filter((r) => r.writer === writer).map((r) => r.n),
      Array.from({ length: 60 }, (_, i) => i),
      `${writer}'s records, in its order`,
    );
  }
});

test('property: appends interleaved with torn fragments read back as exactly the appended records', () => {
  const entry = fc.record({ id: fc.string(), n: fc.integer() });
  fc.assert(
    fc.property(
      fc.array(
        fc.oneof(
          entry.map((e) => ({ append: e })),
          fc.nat(40).map((cut) => ({ tear: cut })),
        ),
        {
          maxLength: 12,
        },
      ),
      (steps) => {
        const path = freshPath();
        open(path);
        const appended: Entry[] = [];
        for (const step of steps) {
          if ('append' in step) {
            const record = { ...step.append }; // a plain object, as callers pass
            open(path).append(record);
            appended.push(record);
          } else {
            // A crash mid-append: a prefix (without its newline) of a record's line.
            appendFileSync(path, JSON.stringify({ id: 'torn', n: 0 }).slice(0, step.tear + 1));
          }
        }
        assert.deepEqual(open(path).records(), appended);
      },
    ),
    { numRuns: 150 },
  );
});

test('writeFileAtomic replaces a file whole, with the mode asked for, and leaves no temporary file', () => {
  const dir = mkdtempSync(join(tmpdir(), 'clawgate-atomic-'));
  const path = join(dir, 'doc.json');
  writeFileAtomic(path, 'one');
  writeFileAtomic(path, 'two', 0o600);
  assert.equal(readFileSync(path, 'utf8'), 'two');
  assert.equal(statSync(path).mode & 0o777, 0o600);
  assert.deepEqual(readdirSync(dir), ['doc.json']);
});
