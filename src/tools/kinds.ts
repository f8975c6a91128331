// Which tools may run when. Deterministic data only: the workflow, the tokens and the tool layer
// read the same lists.

/** Tools that only read the job's workspace: they may run during planning, under the planning token. */
export const PLANNING_TOOLS: readonly string[] = ['read', 'search'];

/** The http methods the agent loop lets through (they change nothing on a server that keeps to HTTP's rules). */
export const SAFE_HTTP_METHODS: readonly string[] = ['GET', 'HEAD'];

/** Whether a call changes anything outside the job: `read` (no) or `write` (yes). */
export type EffectClass = 'read' | 'write';
/** When a call needs a person's approval of that exact call. */
export type Gate = 'never' | 'when_tainted' | 'always';

/** What of the policy the effect and gate of a call depend on (the WPC's execution block). */
export interface GateRules {
  workspaceAccess: 'none' | 'ro' | 'rw';
  effects?: Record<string, EffectClass>;
  httpEffects?: Record<string, EffectClass>;
  approval?: Record<string, Gate>;
}

/**
 * A call's effect class: the policy's own word for the tool first; else read and search read,
 * http by its method (GET and HEAD read), exec with a writable workspace writes, anything else
 * writes (an unknown tool is assumed to have side effects).
 */
export function effectOf(tool: string, args: unknown, rules: GateRules): EffectClass {
  if (tool === 'http') {
    const method = (args as { method?: unknown } | null)?.method;
    const m = typeof method === 'string' ? method.toUpperCase() : '';
    const own = rules.httpEffects?.[m];
    if (own) return own;
    if (rules.effects?.['http']) return rules.effects['http'];
    return SAFE_HTTP_METHODS.includes(m) ? 'read' : 'write';
  }
  const own = rules.effects?.[tool];
  if (own) return own;
  if (tool === 'read' || tool === 'search') return 'read';
  if (tool === 'exec') return rules.workspaceAccess === 'rw' ? 'write' : 'read';
  return 'write';
}

/** A call's gate: the policy's rule for the tool, else never for reads and when_tainted for writes. */
export function gateOf(tool: string, effect: EffectClass, rules: GateRules): Gate {
  return rules.approval?.[tool] ?? (effect === 'read' ? 'never' : 'when_tainted');
}

/**
 * The shape of a call's arguments: their structure with every leaf replaced by its type, so that
 * "allow for this job" covers later calls of the same kind, not calls of any kind.
 */
export function argumentShape(args: unknown): unknown {
  if (Array.isArray(args)) return args.length === 0 ? [] : [argumentShape(args[0])];
  if (typeof args === 'object' && args !== null) {
    return Object.fromEntries(
      Object.keys(args)
        .sort()
        .map((k) => [k, argumentShape((args as Record<string, unknown>)[k])]),
    );
  }
  return args === null ? 'null' : typeof args;
}
