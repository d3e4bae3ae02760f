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

/** Two connections with input this close together are both busy. */
export const SHARED_GAP_MS = 1;

/**
 * Input times of the process's polling connections: once two different ones had input within SHARED_GAP_MS of
 * each other, none may spin until SHARED_GAP_MS after the latest such pair. (qemu polls every handler of its
 * AioContext at once; we spin on one socket, and another busy client's requests would wait behind the spin.)
 */
export class SharedInput {
  private lastAtMs = -Infinity;
  private lastBy: unknown = null;
  private sharedUntilMs = -Infinity;

  /** Connection `by` had input at nowMs. */
  note(by: unknown, nowMs: number): void {
    if (this.lastBy !== by && nowMs - this.lastAtMs < SHARED_GAP_MS) this.sharedUntilMs = nowMs + SHARED_GAP_MS;
    this.lastBy = by;
    this.lastAtMs = nowMs;
  }

  /** No other connection is busy: a spin holds nobody up. */
  alone(nowMs: number): boolean {
    return nowMs >= this.sharedUntilMs;
  }
}
