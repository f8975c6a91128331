// Which tools may run when. Deterministic data only: the workflow, the tokens and the tool layer
// read the same lists.

/** Tools that only read the job's workspace: they may run during planning, under the planning token. */
export const PLANNING_TOOLS: readonly string[] = ['read', 'search'];

/**
 * Tools without side effects, the only ones the agent loop offers until calls with side effects
 * are approved one at a time: the workspace readers, and http for GET and HEAD only.
 */
export const SIDE_EFFECT_FREE_TOOLS: readonly string[] = ['read', 'search', 'http'];

/** The http methods the agent loop lets through (they change nothing on a server that keeps to HTTP's rules). */
export const SAFE_HTTP_METHODS: readonly string[] = ['GET', 'HEAD'];
