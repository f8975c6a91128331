// The activities a clawgate worker hosts: everything that talks to the world on a workflow's
// behalf (model calls, tools, tokens, sealing).

/** Does nothing; a placeholder until the job activities exist. */
export async function noop(): Promise<void> {}
