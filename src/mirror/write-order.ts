// WriteOrder: conflicting (overlapping) writes reach the legs one after another, as DRBD does with
// conflicting requests. Owns: per region, the write/zero/trim pieces in flight on the legs and the pieces
// waiting behind an overlapping one, in arrival order; nothing else (no I/O, no timers).
//
// Why: two overlapping writes in flight at once (NBD lets a client pipeline them) go to every leg, and each
// leg may complete them in its own order (libuv thread pool, a remote NBD server). Leg A could end with the
// first, leg B with the second, while the region counts as in sync: balanced reads would then return either
// version. Here a piece that overlaps a piece in flight (or an earlier waiting one) waits until that one
// completed on every leg; a piece that overlaps nothing starts at once. Among overlapping pieces the order
// is FIFO (admission order). Pieces never span regions (the mirror splits at region edges), so the check
// looks only at the few pieces of one region.
//
// Memory: one slot per region with pieces in flight or waiting; the waiting pieces are requests the server
// already counts in its in-flight limits. Deadlock-free: a piece waits only on pieces already issued to legs.
// Reentrancy: start() may complete the piece synchronously (synchronous leg fast path) and call done() on
// this stack; released pieces are started from one loop (a trampoline), never recursively.
//
// Hot path: a piece alone in its region is not put in the map at admission; the caller issues it and then
// calls issued(), which records it only if it is still in flight. A piece the legs completed synchronously
// (page-cached 4 KiB writes) thus costs one map lookup and no map insert/delete.

import { strict as assert } from 'node:assert';

/** A write piece: one region, [offsetBytes, offsetBytes + lengthBytes), lengthBytes > 0. */
export interface OrderedOp {
  readonly region: number;
  readonly offsetBytes: number;
  readonly lengthBytes: number;
}

interface Slot<T> {
  /** Issued to the legs, not yet completed on every leg. Pairwise non-overlapping. */
  readonly active: T[];
  /** Waiting behind an overlapping active or earlier waiting piece, in admission order, from waitHead. */
  readonly waiting: T[];
  waitHead: number;
}

/** Slots kept for reuse (a region's slot comes and goes with each isolated write). */
const FREE_SLOTS_MAX = 64;

function overlaps(a: OrderedOp, b: OrderedOp): boolean {
  return a.offsetBytes < b.offsetBytes + b.lengthBytes && b.offsetBytes < a.offsetBytes + a.lengthBytes;
}

function overlapsAny(op: OrderedOp, list: readonly OrderedOp[], from: number, to: number): boolean {
  for (let i = from; i < to; i++) if (overlaps(op, list[i]!)) return true;
  return false;
}

/** a holds all of b's range: every piece overlapping b overlaps a. */
function covers(a: OrderedOp, b: OrderedOp): boolean {
  return a.offsetBytes <= b.offsetBytes && a.offsetBytes + a.lengthBytes >= b.offsetBytes + b.lengthBytes;
}

export class WriteOrder<T extends OrderedOp> {
  private readonly slots = new Map<number, Slot<T>>();
  private readonly freeSlots: Slot<T>[] = [];
  /** Pieces released by done(), to start from the trampoline loop. */
  private readonly ready: T[] = [];
  private starting = false;
  private activeCount = 0;
  private waitingCount = 0;
  /** Admitted alone in its region and being issued; not in the map yet (see issued()). */
  private pending: T | null = null;

  /** start(op): issue a released piece to the legs (it was waiting; admit() returned false for it). */
  constructor(private readonly start: (op: T) => void) {}

  /**
   * Admission of a piece about to be issued. True: in flight; the caller issues it now, then calls
   * issued(op). False: it waits behind an overlapping piece; start(op) is called once every earlier overlapping piece
   * has completed (done()).
   */
  admit(op: T): boolean {
    if (this.pending !== null) this.record(); // admitted while another is being issued (reentrant): record it first
    const slot = this.slots.get(op.region);
    if (slot === undefined) {
      this.pending = op;
      this.activeCount++;
      return true;
    }
    const w = slot.waiting;
    if (overlapsAny(op, w, slot.waitHead, w.length) || overlapsAny(op, slot.active, 0, slot.active.length)) {
      w.push(op);
      this.waitingCount++;
      return false;
    }
    slot.active.push(op);
    this.activeCount++;
    return true;
  }

  /** Call after issuing a piece admit() accepted: records it unless it already completed (done()). */
  issued(op: T): void {
    if (this.pending === op) this.record();
  }

  private record(): void {
    const op = this.pending!;
    this.pending = null;
    const s = this.freeSlots.pop();
    if (s !== undefined) {
      s.active.push(op);
      this.slots.set(op.region, s);
    } else {
      this.slots.set(op.region, { active: [op], waiting: [], waitHead: 0 });
    }
  }

  /** The piece completed on every leg it was issued to: release the pieces it held back, in order. */
  done(op: T): void {
    if (op === this.pending) {
      // Completed while being issued: nobody could have queued behind it.
      this.pending = null;
      this.activeCount--;
      return;
    }
    const slot = this.slots.get(op.region);
    assert(slot !== undefined, 'write-order: done() for a region with nothing in flight');
    const active = slot.active;
    const i = active.indexOf(op);
    assert(i >= 0, 'write-order: done() for a piece not in flight');
    const last = active.pop()!;
    if (i < active.length) active[i] = last;
    this.activeCount--;
    if (slot.waitHead < slot.waiting.length) this.release(slot, op);
    if (active.length === 0 && slot.waitHead === slot.waiting.length) {
      slot.waiting.length = 0;
      slot.waitHead = 0;
      this.slots.delete(op.region);
      if (this.freeSlots.length < FREE_SLOTS_MAX) this.freeSlots.push(slot);
    }
    if (this.ready.length > 0 && !this.starting) this.startReady();
  }

  /**
   * `ended` completed: start the waiting pieces it alone held back. A waiter that did not overlap it is
   * still held by whatever held it; one that did starts unless it overlaps an active or an earlier waiting
   * piece. The scan stops at the first waiter covering `ended`'s whole range (every later waiter that
   * overlaps `ended` overlaps that one), so a queue of same-range writes costs O(1) per completion.
   */
  private release(slot: Slot<T>, ended: T): void {
    const w = slot.waiting;
    const active = slot.active;
    const head = slot.waitHead;
    // Waiters kept are compacted in place into w[head, keep); released ones leave the queue.
    let keep = head;
    let k = head;
    while (k < w.length) {
      const x = w[k++]!;
      if (overlaps(x, ended) && !overlapsAny(x, w, head, keep) && !overlapsAny(x, active, 0, active.length)) {
        active.push(x);
        this.activeCount++;
        this.waitingCount--;
        this.ready.push(x);
      } else {
        w[keep++] = x;
      }
      if (covers(x, ended)) break;
    }
    if (k === w.length) {
      w.length = keep;
    } else {
      // Stopped early: shift the kept ones next to the unscanned rest instead of moving the rest.
      const kept = keep - head;
      for (let j = 1; j <= kept; j++) w[k - j] = w[keep - j]!;
      slot.waitHead = k - kept;
      if (slot.waitHead >= 64 && slot.waitHead * 2 >= w.length) {
        w.splice(0, slot.waitHead); // amortised: at least half the array is dead
        slot.waitHead = 0;
      }
    }
  }

  private startReady(): void {
    this.starting = true;
    try {
      // start() may call done() (synchronous completion), which appends here: the loop picks those up.
      for (let k = 0; k < this.ready.length; k++) this.start(this.ready[k]!);
    } finally {
      this.ready.length = 0;
      this.starting = false;
    }
  }

  /** Pieces in flight on the legs (admitted, not done). */
  get inFlight(): number {
    return this.activeCount;
  }

  /** Pieces waiting behind an overlapping one. */
  get waiting(): number {
    return this.waitingCount;
  }

  /** Regions with pieces in flight or waiting. */
  get regionCount(): number {
    return this.slots.size + (this.pending !== null ? 1 : 0);
  }
}
