// Appends records to an append-only log from a separate process, for the concurrency test:
// argv: <log path> <writer name> <count>.
import { z } from 'zod';
import { ERROR_CODES } from '../../../src/errors.ts';
import { AppendLog } from '../../../src/storage/append-log.ts';

const [path, writer, count] = process.argv.slice(2) as [string, string, string];
const log = new AppendLog(path, {
  what: 'test log',
  schema: z.object({ writer: z.string(), n: z.number(), pad: z.string() }).strict(),
  corruptCode: ERROR_CODES.revocationsCorrupt,
});
for (let n = 0; n < Number(count); n++) log.append({ writer, n, pad: 'x'.repeat(n * 7) });
