// A process's wall clock, moved by a test: `Date` (and `Date.now`) read the machine's clock plus
// an offset the test sets, as a clock stepped by NTP or a machine resumed after a day would
// read. Monotonic time (timers, performance.now) is left alone, as it is in a real jump. Import
// it before anything else that reads the clock.
const RealDate = Date;
let offsetMs = 0;

class SteppedDate extends RealDate {
  constructor(...args: unknown[]) {
    if (args.length === 0) super(RealDate.now() + offsetMs);
    else super(...(args as [number]));
  }

  static override now(): number {
    return RealDate.now() + offsetMs;
  }
}

globalThis.Date = SteppedDate as DateConstructor;

/** Sets how far ahead of the machine's clock this process's clock reads. */
export function setClockOffset(ms: number): void {
  offsetMs = ms;
}
