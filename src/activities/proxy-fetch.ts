// Calls from activities to the model proxy that outlast a proxy restart. A proxy being
// restarted refuses connections, or cuts the ones it had, for a few seconds; an activity that
// failed at once would spend one of its few attempts on each such second, and a job whose
// attempts ran out while the proxy came back would fail without its bundle. So a call that got
// no answer at all (the connection refused, or closed before a response came) is sent again
// after a short pause, while `patienceMs` lasts; an answer, whatever its status, is returned
// as it is, and an abort (the caller's own timeout) is not retried. Sending a call again is
// what Temporal's retry of the activity would do: a model turn is asked again, a seal asks
// again for the same receipts. One answer is waited out too: a 503 REVOCATION_CHECK_FAILED, the
// proxy's "I cannot check revocations now" (its mirror of the shared control state unread, as
// after a Temporal outage, for some seconds after it is back): the call is refused before
// anything goes upstream, so it is sent again after the Retry-After, while `patienceMs` lasts.

import { ERROR_CODES } from '../errors.ts';

/** Whether an error from fetch means the server gave no answer at all (nothing to read back). */
function noAnswer(error: unknown): boolean {
  if (!(error instanceof TypeError) || error.message !== 'fetch failed') return false;
  const cause = (error as TypeError & { cause?: { code?: unknown; name?: unknown } }).cause;
  // undici's errors for a connection refused, reset or closed before the response.
  return (
    typeof cause?.code === 'string' &&
    ['ECONNREFUSED', 'ECONNRESET', 'EPIPE', 'UND_ERR_SOCKET', 'UND_ERR_CLOSED'].includes(cause.code)
  );
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export async function fetchProxy(
  url: string | URL,
  init: RequestInit = {},
  opts: { patienceMs?: number } = {},
): Promise<Response> {
  const deadline = Date.now() + (opts.patienceMs ?? 60_000);
  for (let attempt = 0; ; attempt++) {
    let pause = Math.min(2_000, 250 * 2 ** Math.min(attempt, 3));
    try {
      const response = await fetch(url, init);
      if (response.status !== 503 || init.signal?.aborted || Date.now() >= deadline) return response;
      const text = await response.text();
      if (!cannotCheckRevocations(text)) {
        return new Response(text, { status: response.status, headers: response.headers });
      }
      const after = Number(response.headers.get('retry-after'));
      pause = Number.isFinite(after) && after > 0 ? Math.min(after * 1000, 10_000) : 2_000;
    } catch (error) {
      if (!noAnswer(error) || init.signal?.aborted || Date.now() >= deadline) throw error;
    }
    await sleep(pause);
  }
}

/** Whether a proxy's error answer is REVOCATION_CHECK_FAILED. */
function cannotCheckRevocations(text: string): boolean {
  try {
    const body = JSON.parse(text) as { error?: { code?: unknown } };
    return body.error?.code === ERROR_CODES.revocationCheckFailed;
  } catch {
    return false;
  }
}
