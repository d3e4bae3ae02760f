// Time and randomness for the mirror engine, injected so the simulator can drive the same code.
// Owns: the Scheduler and RandomSource interfaces, and systemScheduler/systemRandom — the ONLY place in
// src/mirror that touches Date.now, setTimeout or Math.random. Tests pass a tick clock instead.

export interface Scheduler {
  /** Monotonic milliseconds. */
  nowMs(): number;
  /** Run fn once after delayMs; returns a cancel function. Must not run fn synchronously. */
  after(delayMs: number, fn: () => void): () => void;
}

/** Uniform in [0, 1). */
export type RandomSource = () => number;

export const systemScheduler: Scheduler = {
  nowMs: () => performance.now(),
  after(delayMs, fn) {
    const t = setTimeout(fn, delayMs);
    t.unref?.();
    return () => clearTimeout(t);
  },
};

export const systemRandom: RandomSource = () => Math.random();

/**
 * A scheduler driven by hand: time moves only in advance(). For tests and the simulator.
 * Timers due at the same time fire in the order they were set.
 */
export class ManualScheduler implements Scheduler {
  private nowMsValue = 0;
  private seq = 0;
  private readonly timers = new Map<number, { dueMs: number; fn: () => void }>();

  nowMs(): number {
    return this.nowMsValue;
  }

  after(delayMs: number, fn: () => void): () => void {
    const id = this.seq++;
    this.timers.set(id, { dueMs: this.nowMsValue + Math.max(0, delayMs), fn });
    return () => void this.timers.delete(id);
  }

  /** Number of timers waiting. */
  pendingTimers(): number {
    return this.timers.size;
  }

  /** Move time forward by ms, firing due timers in order (each fire may set new timers). */
  advance(ms: number): void {
    const endMs = this.nowMsValue + ms;
    for (;;) {
      let nextId = -1;
      let nextDue = Infinity;
      for (const [id, t] of this.timers) {
        if (t.dueMs <= endMs && (t.dueMs < nextDue || (t.dueMs === nextDue && id < nextId))) {
          nextId = id;
          nextDue = t.dueMs;
        }
      }
      if (nextId < 0) break;
      const t = this.timers.get(nextId)!;
      this.timers.delete(nextId);
      this.nowMsValue = Math.max(this.nowMsValue, t.dueMs);
      t.fn();
    }
    this.nowMsValue = endMs;
  }
}
