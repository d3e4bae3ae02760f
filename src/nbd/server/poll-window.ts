// How long an idle connection spins for its next request (idle-poll.ts): qemu's AioContext adaptive
// polling rule (util/aio-posix.c, poll-max-ns / poll-grow / poll-shrink 0), as a pure class.
//
// The gap is the time from the last reply leaving to the next input arriving.
//   - caught by the spin: the window stays as it is;
//   - it had to wait (the window was too short, or 0) and came within the max: the window grows
//     (x POLL_GROW, from POLL_GROW_START_NS), capped at the max;
//   - it came later than the max (an idle or slow client): the window drops to 0, and stays there until
//     gaps are short again. So an idle connection costs one spin of at most the max, then nothing.

/** First non-zero window (qemu: 4 us). */
export const POLL_GROW_START_NS = 4_000;
export const POLL_GROW = 2;

export class PollWindow {
  /** Current spin window in ns (0: do not spin). */
  windowNs = 0;

  constructor(readonly maxNs: number) {}

  /** The next input arrived gapNs after the last reply without being caught by a spin. */
  waited(gapNs: number): void {
    if (gapNs > this.maxNs) this.windowNs = 0;
    else if (gapNs > this.windowNs) this.windowNs = this.windowNs === 0 ? Math.min(POLL_GROW_START_NS, this.maxNs) : Math.min(this.windowNs * POLL_GROW, this.maxNs);
  }
}
