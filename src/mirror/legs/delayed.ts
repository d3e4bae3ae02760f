// DelayedLeg: a Leg wrapper that delays each operation before passing it on, like nbdkit's delay filter
// (filters/delay/delay.c). Owns: the per-operation latency setting, changeable while I/O runs. Time comes
// from an injected Scheduler (ManualScheduler in tests and the simulator), never from setTimeout here.
// With a latency function that draws from a seeded random source, operations reach the inner leg (and
// complete) in a reproducible shuffled order.

import { strict as assert } from 'node:assert';
import type { Scheduler } from '../scheduler.js';
import { LegFilter, type LegOp } from './filter.js';
import type { Leg } from './leg.js';

/** A fixed latency, per-operation latencies, or a function of the operation (called once per operation). */
export type Latency = number | Partial<Record<LegOp, number>> | ((op: LegOp, offsetBytes: number, lengthBytes: number) => number);

export interface DelayedLegOptions {
  readonly scheduler: Scheduler;
  readonly latencyMs: Latency;
}

export class DelayedLeg extends LegFilter {
  private latency: Latency;
  private readonly scheduler: Scheduler;

  constructor(inner: Leg, opts: DelayedLegOptions) {
    super(inner);
    this.scheduler = opts.scheduler;
    this.latency = opts.latencyMs;
  }

  /** Change the latency; operations already waiting keep theirs. */
  setLatency(latencyMs: Latency): void {
    this.latency = latencyMs;
  }

  private delayOf(op: LegOp, offsetBytes: number, lengthBytes: number): number {
    const l = this.latency;
    const ms = typeof l === 'number' ? l : typeof l === 'function' ? l(op, offsetBytes, lengthBytes) : (l[op] ?? 0);
    assert(Number.isFinite(ms) && ms >= 0, `latency must be a finite non-negative number, not ${ms}`);
    return ms;
  }

  protected async run(op: LegOp, offsetBytes: number, lengthBytes: number, call: () => Promise<void>): Promise<void> {
    const ms = this.delayOf(op, offsetBytes, lengthBytes);
    if (ms > 0) await new Promise<void>((resolve) => this.scheduler.after(ms, resolve));
    return call();
  }
}
