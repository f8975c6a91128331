// The job id people type. A workflow id (`job:<room>:<event id>`) is too long to type, so the
// room shows a short one: `j` and nine base32 characters of the SHA-256 of the workflow id
// (45 bits). The gateway computes it when it starts a job, passes it in the request (the
// workflow shows it in its messages) and sets it as the ClawgateJobId search attribute, so
// `!approve j4k2...` outside a job's thread finds the job through Temporal's visibility.
import { createHash } from 'node:crypto';

const BASE32 = 'abcdefghijklmnopqrstuvwxyz234567';
export const SHORT_JOB_ID = /^j[a-z2-7]{9}$/;

export function shortJobId(workflowId: string): string {
  const digest = createHash('sha256').update(workflowId, 'utf8').digest();
  let out = 'j';
  let value = 0;
  let bits = 0;
  for (const byte of digest) {
    value = ((value << 8) | byte) & 0xffff;
    bits += 8;
    while (bits >= 5 && out.length < 10) {
      bits -= 5;
      out += BASE32[(value >> bits) & 31];
    }
    if (out.length === 10) break;
  }
  return out;
}

/** Whether a word names a job: a short id, a request event id, or a whole workflow id. */
export function isJobRef(word: string): boolean {
  return SHORT_JOB_ID.test(word) || /^\$[^\s]{1,255}$/.test(word) || /^job:\S{1,500}$/.test(word);
}
