// matrix-js-sdk's global logger, as the gateway sets it up: the routine "Couldn't find timeline
// for thread ID" warning (once per thread message) goes to the sink (the gateway's log at debug
// level), not to the console; any other warning still reaches the console.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { logger as sdkGlobalLogger } from 'matrix-js-sdk/lib/logger.js';
import {
  foldingRoutineWarnings,
  isRoutineSdkWarning,
  quietMatrixSdkLogging,
  routeRoutineSdkWarnings,
} from '../../../src/ingress/sdk-logging.ts';

test('the thread-timeline warning is routine; other warnings are not', () => {
  assert.equal(isRoutineSdkWarning(["Couldn't find timeline for thread ID $abc in room !r:x"]), true);
  assert.equal(isRoutineSdkWarning(['Some other warning', "Couldn't find timeline for thread ID"]), false);
  assert.equal(isRoutineSdkWarning([new Error('x')]), false);
  assert.equal(isRoutineSdkWarning([]), false);
});

test('a folding warn method hands routine warnings to the sink and passes the rest on, with its this', () => {
  const passed: unknown[][] = [];
  const sunk: string[] = [];
  routeRoutineSdkWarnings((m) => sunk.push(m));
  try {
    const owner = {
      prefix: 'p',
      warn: foldingRoutineWarnings(function (this: { prefix: string }, ...args: unknown[]) {
        passed.push([this.prefix, ...args]);
      }),
    };
    owner.warn("Couldn't find timeline for thread ID $t in room !r:x");
    owner.warn('keys are missing', 3);
    assert.deepEqual(sunk, ["Couldn't find timeline for thread ID $t in room !r:x"]);
    assert.deepEqual(passed, [['p', 'keys are missing', 3]]);
  } finally {
    routeRoutineSdkWarnings(undefined);
  }
});

test("through the SDK's own logger: the routine warning goes to the sink, not the console", (t) => {
  const console_: unknown[][] = [];
  t.mock.method(console, 'warn', (...args: unknown[]) => console_.push(args));
  const sunk: string[] = [];
  quietMatrixSdkLogging();
  routeRoutineSdkWarnings((m) => sunk.push(m));
  try {
    // The SDK's exact words (matrix-js-sdk's models/room.ts, when a receipt names a thread).
    for (let i = 0; i < 50; i++) {
      sdkGlobalLogger.warn(`Couldn't find timeline for thread ID $thread${i} in room !room:example.org`);
    }
    sdkGlobalLogger.warn('a warning that matters');
    sdkGlobalLogger.info('chatter');
    assert.equal(sunk.length, 50);
    assert.deepEqual(console_, [['a warning that matters']]);
  } finally {
    routeRoutineSdkWarnings(undefined);
  }
});
