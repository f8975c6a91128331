// The job id people type: `j` and nine base32 characters of the SHA-256 of
// `job:<room>:<request event id>` (45 bits). The gateway computes it when it starts a job,
// passes it in the request (the workflow shows it in its messages) and sets it as the
// ClawgateJobId search attribute, so `!approve j4k2...` outside a job's thread finds the job
// through Temporal's visibility.
//
// A job's workflow id is `clawgate-<job id>`, short enough to read in the Temporal UI and in
// logs. It is still a function of the room and the request event, so a redelivered event maps
// to the same id and Temporal refuses a second start. Jobs started before this form run under
// `job:<room>:<event id>` (legacyJobWorkflowId), whose hash is the same job id; whatever finds
// a job from a room and an event tries the short id first, then that one.
import { createHash } from 'node:crypto';
import { legacyJobWorkflowId } from '../temporal/job-contract.ts';

const BASE32 = 'abcdefghijklmnopqrstuvwxyz234567';
export const SHORT_JOB_ID = /^j[a-z2-7]{9}$/;

const SHORT_WORKFLOW_ID = /^clawgate-(j[a-z2-7]{9})$/;

/** The workflow id of a new job: `clawgate-` and its job id. */
export function jobWorkflowId(roomId: string, eventId: string): string {
  return `clawgate-${shortJobId(legacyJobWorkflowId(roomId, eventId))}`;
}

/** The ids a job of this room and request event may run under, the current form first. */
export function jobWorkflowIds(roomId: string, eventId: string): { workflowId: string; legacy: string } {
  return { workflowId: jobWorkflowId(roomId, eventId), legacy: legacyJobWorkflowId(roomId, eventId) };
}

/** The job id of a workflow id of either form (a short one carries it, an old one is hashed). */
export function shortJobId(workflowId: string): string {
  const carried = SHORT_WORKFLOW_ID.exec(workflowId);
  if (carried) return carried[1]!;
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

/** Whether a word is a whole job workflow id, of either form. */
export function isJobWorkflowId(word: string): boolean {
  return SHORT_WORKFLOW_ID.test(word) || /^job:\S{1,500}$/.test(word);
}

/** Whether a word names a job: a short id, a request event id, or a whole workflow id. */
export function isJobRef(word: string): boolean {
  return SHORT_JOB_ID.test(word) || /^\$[^\s]{1,255}$/.test(word) || isJobWorkflowId(word);
}
