// The search attributes clawgate puts on every job, so operators can find jobs in the Temporal
// Web UI ("ClawgateStatus = 'awaiting_approval' AND ClawgateRoom = '!ops:example.com'").
// The dev server started by the test harness and by `npm start` registers these; on a cluster
// an operator registers them once (README: existing servers).
import { defineSearchAttributeKey, SearchAttributeType, type SearchAttributePair } from '@temporalio/common';

export const JOB_STATUS = defineSearchAttributeKey('ClawgateStatus', SearchAttributeType.KEYWORD);
export const JOB_ROOM = defineSearchAttributeKey('ClawgateRoom', SearchAttributeType.KEYWORD);
export const JOB_REQUESTER = defineSearchAttributeKey('ClawgateRequester', SearchAttributeType.KEYWORD);
export const JOB_APPROVERS = defineSearchAttributeKey('ClawgateApprovers', SearchAttributeType.KEYWORD_LIST);
export const JOB_POLICY_HASH = defineSearchAttributeKey('ClawgatePolicyHash', SearchAttributeType.KEYWORD);
/** The short job id people type in the room (set by the gateway when it starts the job). */
export const JOB_ID = defineSearchAttributeKey('ClawgateJobId', SearchAttributeType.KEYWORD);

export const CLAWGATE_SEARCH_ATTRIBUTES = [
  JOB_STATUS,
  JOB_ROOM,
  JOB_REQUESTER,
  JOB_APPROVERS,
  JOB_POLICY_HASH,
  JOB_ID,
] as const;

/**
 * The search attributes a job starts with (the gateway's, a scheduled run's child): its job id,
 * room and requester, and the status `planning`; the job sets the others as it goes.
 */
export function startingSearchAttributes(job: {
  jobId: string;
  roomId: string;
  requester: string;
}): SearchAttributePair[] {
  return [
    { key: JOB_ID, value: job.jobId },
    { key: JOB_ROOM, value: job.roomId },
    { key: JOB_REQUESTER, value: job.requester },
    { key: JOB_STATUS, value: 'planning' },
  ];
}

/** The Temporal CLI's name for each search attribute type (`--search-attribute Name=Type`). */
const CLI_TYPE_NAMES: Record<SearchAttributeType, string> = {
  [SearchAttributeType.TEXT]: 'Text',
  [SearchAttributeType.KEYWORD]: 'Keyword',
  [SearchAttributeType.INT]: 'Int',
  [SearchAttributeType.DOUBLE]: 'Double',
  [SearchAttributeType.BOOL]: 'Bool',
  [SearchAttributeType.DATETIME]: 'Datetime',
  [SearchAttributeType.KEYWORD_LIST]: 'KeywordList',
};

/** Arguments for `temporal server start-dev` that register clawgate's search attributes. */
export function devServerSearchAttributeArgs(): string[] {
  return CLAWGATE_SEARCH_ATTRIBUTES.flatMap((key) => [
    '--search-attribute',
    `${key.name}=${CLI_TYPE_NAMES[key.type]}`,
  ]);
}
