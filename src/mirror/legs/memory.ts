// MemoryLeg: a Leg held in one Buffer, for tests and the simulator. Owns: the bytes, an optional
// "volatile cache" model (writes are visible at once but only become durable on flush or FUA), and the
// crash operation that drops what was not durable. Completes every operation on a later microtask (never
// synchronously); put a DelayedLeg over it for latency and reordering, a FaultyLeg for errors.
//
// Trim is a no-op by default (like FileLeg, so mirrors of mixed legs stay identical); `trimZeroes: true`
// makes it zero the range instead (a thin device that reads back zeros after a discard).

import { strict as assert } from 'node:assert';
import { ExportError } from '../../nbd/export.js';
import type { Leg, LegWriteFlags } from './leg.js';

export interface MemoryLegOptions {
  readonly device?: string;
  readonly sizeBytes: number;
  /** Initial contents (copied); shorter than sizeBytes is padded with zeros. */
  readonly initial?: Uint8Array;
  /** Trim zeroes the range (default false: trim is a no-op). */
  readonly trimZeroes?: boolean;
  /**
   * Model a volatile write cache: `bytes` always shows the latest data, `durableBytes` only what was
   * flushed or written with FUA; crash() rolls the leg back to the durable image. Default false.
   */
  readonly volatileCache?: boolean;
}

let memoryLegCount = 0;

export class MemoryLeg implements Leg {
  readonly device: string;
  readonly sizeBytes: number;
  /** The current contents (what a read returns). Tests may inspect it; writing it bypasses the leg. */
  readonly bytes: Buffer;
  /** With volatileCache: what survives a crash. Null without it (everything is durable at once). */
  readonly durableBytes: Buffer | null;
  private readonly trimZeroes: boolean;
  private closed = false;
  /** Operations performed, by kind (a cheap observation point for tests). */
  readonly counts = { read: 0, write: 0, flush: 0, trim: 0, zero: 0 };

  constructor(opts: MemoryLegOptions) {
    assert(Number.isSafeInteger(opts.sizeBytes) && opts.sizeBytes >= 0, 'sizeBytes');
    this.device = opts.device ?? `memory:${memoryLegCount++}`;
    this.sizeBytes = opts.sizeBytes;
    this.bytes = Buffer.alloc(opts.sizeBytes);
    if (opts.initial) this.bytes.set(opts.initial.subarray(0, opts.sizeBytes));
    this.durableBytes = opts.volatileCache ? Buffer.from(this.bytes) : null;
    this.trimZeroes = opts.trimZeroes ?? false;
  }

  get isClosed(): boolean {
    return this.closed;
  }

  private check(offsetBytes: number, lengthBytes: number): void {
    if (this.closed) throw new ExportError('EIO', `${this.device}: leg is closed`);
    assert(Number.isSafeInteger(offsetBytes) && offsetBytes >= 0, 'offsetBytes');
    assert(Number.isSafeInteger(lengthBytes) && lengthBytes >= 0, 'lengthBytes');
    assert(offsetBytes + lengthBytes <= this.sizeBytes, `range ${offsetBytes}+${lengthBytes} beyond leg size ${this.sizeBytes}`);
  }

  async read(target: Buffer, offsetBytes: number): Promise<void> {
    this.check(offsetBytes, target.length);
    this.counts.read++;
    this.bytes.copy(target, 0, offsetBytes, offsetBytes + target.length);
  }

  async write(data: Buffer, offsetBytes: number, flags: LegWriteFlags): Promise<void> {
    this.check(offsetBytes, data.length);
    this.counts.write++;
    data.copy(this.bytes, offsetBytes);
    if (flags.fua && this.durableBytes) data.copy(this.durableBytes, offsetBytes);
  }

  async flush(): Promise<void> {
    if (this.closed) throw new ExportError('EIO', `${this.device}: leg is closed`);
    this.counts.flush++;
    if (this.durableBytes) this.bytes.copy(this.durableBytes);
  }

  async trim(offsetBytes: number, lengthBytes: number): Promise<void> {
    this.check(offsetBytes, lengthBytes);
    this.counts.trim++;
    if (this.trimZeroes) this.bytes.fill(0, offsetBytes, offsetBytes + lengthBytes);
  }

  async zero(offsetBytes: number, lengthBytes: number, _opts: { mayTrim: boolean }): Promise<void> {
    this.check(offsetBytes, lengthBytes);
    this.counts.zero++;
    this.bytes.fill(0, offsetBytes, offsetBytes + lengthBytes);
  }

  /** Simulated power loss: unflushed writes are lost (only with volatileCache), and the leg reopens. */
  crash(): void {
    if (this.durableBytes) this.durableBytes.copy(this.bytes);
    this.closed = false;
  }

  /** Reopen after close() (a restart of the process that keeps the "disk"). */
  reopen(): void {
    this.closed = false;
  }

  async close(): Promise<void> {
    this.closed = true;
  }
}
