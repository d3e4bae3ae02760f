// Leg failures and held writes (dm-raid1.c fail_mirror / hold_bio / device_status_char).
// Owns: per-leg health (which error kinds a leg has seen; any error fails the leg), the status health
// characters, the event counter, one 'leg-failed' event per (leg, kind), and the bounded list of writes
// held under handle_errors until suspend/reload/resume.
//
// Completion callbacks only RECORD here (fail()); the mirror's failure pass decides what a request gets
// (EIO, hold, or success). Nothing here blocks or does I/O.

import { strict as assert } from 'node:assert';
import type { LegErrorKind, MirrorEventMap, MirrorEventName } from './options.js';

const ERROR_BIT: Record<LegErrorKind, number> = { read: 1, sync: 2, write: 4, flush: 8 };

export type Emit = <K extends MirrorEventName>(name: K, payload: MirrorEventMap[K]) => void;

export interface LegHealthEntry {
  readonly device: string;
  errorBits: number;
  errorCount: number;
}

export class LegHealth {
  private readonly legs: LegHealthEntry[];

  constructor(
    devices: readonly string[],
    private readonly emit: Emit,
  ) {
    this.legs = devices.map((device) => ({ device, errorBits: 0, errorCount: 0 }));
  }

  get count(): number {
    return this.legs.length;
  }

  device(i: number): string {
    return this.legs[i]!.device;
  }

  isFailed(i: number): boolean {
    return this.legs[i]!.errorCount > 0;
  }

  /**
   * Record an error on leg i. Returns true when this failed a leg that was healthy until now.
   * Emits 'leg-failed' once per (leg, kind), like dm's test_and_set_bit(error_type).
   */
  fail(i: number, kind: LegErrorKind, message: string): boolean {
    const l = this.legs[i];
    assert(l !== undefined, 'leg index out of range');
    const newlyFailed = l.errorCount === 0;
    l.errorCount++;
    const bit = ERROR_BIT[kind];
    if ((l.errorBits & bit) === 0) {
      l.errorBits |= bit;
      this.emit('leg-failed', { legIndex: i, device: l.device, kind, message, healthChar: this.healthChar(i) });
    }
    return newlyFailed;
  }

  /**
   * Whether writes still go to leg i: dm's do_write maps every leg; only a leg that failed a write or a
   * flush is skipped (a leg failed by a read or a resync copy keeps taking writes: if it cannot, the write
   * error marks it D, which the repair policy acts on; skipping it would hold every write forever).
   */
  takesWrites(i: number): boolean {
    return (this.legs[i]!.errorBits & (ERROR_BIT.write | ERROR_BIT.flush)) === 0;
  }

  /** dm's device_status_char: A, else the worst error kind seen: F > D > S > R, else U. */
  healthChar(i: number): string {
    const l = this.legs[i]!;
    if (l.errorCount === 0) return 'A';
    if (l.errorBits & ERROR_BIT.flush) return 'F';
    if (l.errorBits & ERROR_BIT.write) return 'D';
    if (l.errorBits & ERROR_BIT.sync) return 'S';
    if (l.errorBits & ERROR_BIT.read) return 'R';
    return 'U';
  }

  chars(): string {
    return this.legs.map((_, i) => this.healthChar(i)).join('');
  }

  healthyCount(): number {
    return this.legs.filter((l) => l.errorCount === 0).length;
  }

  /** Health of a leg by device name, to carry across a reload that keeps the leg. */
  entryFor(device: string): LegHealthEntry | undefined {
    return this.legs.find((l) => l.device === device);
  }

  /** Rebuild for a new leg set; legs kept by name keep their history (a reload does not heal a leg). */
  static carriedOver(devices: readonly string[], old: LegHealth, emit: Emit): LegHealth {
    const h = new LegHealth(devices, emit);
    devices.forEach((d, i) => {
      const prev = old.entryFor(d);
      if (prev) {
        h.legs[i]!.errorBits = prev.errorBits;
        h.legs[i]!.errorCount = prev.errorCount;
      }
    });
    return h;
  }
}

/** A write held under handle_errors: re-issued on resume after a reload, or failed (flushing suspend). */
export interface HeldWrite {
  readonly kind: 'write' | 'zero' | 'trim' | 'flush';
  readonly data: Buffer | null;
  readonly offsetBytes: number;
  readonly lengthBytes: number;
  readonly fua: boolean;
  readonly mayTrim: boolean;
  readonly resolve: () => void;
  readonly reject: (err: Error) => void;
}

export class HeldWrites {
  private items: HeldWrite[] = [];
  private bytes = 0;

  constructor(readonly heldBytesMax: number) {}

  get count(): number {
    return this.items.length;
  }

  get heldBytes(): number {
    return this.bytes;
  }

  /** false when the limit would be exceeded (the caller fails the write with EIO instead). */
  add(h: HeldWrite): boolean {
    if (this.bytes + h.lengthBytes > this.heldBytesMax && this.items.length > 0) return false;
    this.items.push(h);
    this.bytes += h.lengthBytes;
    return true;
  }

  takeAll(): HeldWrite[] {
    const out = this.items;
    this.items = [];
    this.bytes = 0;
    return out;
  }
}
