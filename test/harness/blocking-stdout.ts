// Preloaded into every test process (`--import`, see package.json). With --test-force-exit, a
// test file's process exits as soon as its tests end; its report to the runner goes through a
// pipe, and writes that found the pipe full were still queued, so the runner lost the last
// verdicts of a busy file and printed a smaller count with no error (Node issue #64833; seen
// here: 8 tests of one file missing from a passing `npm test`). A blocking stdout writes every
// report before the process can exit.
const handle = (process.stdout as unknown as { _handle?: { setBlocking?: (on: boolean) => unknown } })
  ._handle;
if (typeof handle?.setBlocking === 'function') handle.setBlocking(true);
