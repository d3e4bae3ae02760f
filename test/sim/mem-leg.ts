// In-test memory leg with controllable completion: used by the engine's unit tests and the simulator.
// Owns nothing in src: legs/memory.ts (TABLE helper) is the product one; this one adds failure switches,
// optional manual completion (to hold I/O in flight) and a volatile write cache for crash tests.

import { ExportError } from '../../src/nbd/export.js';
import type { Leg, LegWriteFlags } from '../../src/mirror/legs/leg.js';

export interface MemLegOptions {
  /** When true, writes land in a volatile cache; flush() or FUA makes them durable; crash() drops the cache. */
  volatileCache?: boolean;
}

export class MemLeg implements Leg {
  readonly durable: Buffer;
  private readonly cache = new Map<number, number>(); // byte offset -> value, only with volatileCache
  failReads = false;
  failWrites = false;
  failFlush = false;
  /** If set, every op awaits this gate before completing (tests park I/O in flight). */
  gate: (() => Promise<void>) | null = null;
  ops = { read: 0, write: 0, flush: 0, trim: 0, zero: 0 };

  constructor(
    readonly device: string,
    readonly sizeBytes: number,
    private readonly opts: MemLegOptions = {},
  ) {
    this.durable = Buffer.alloc(sizeBytes);
  }

  private check(off: number, len: number): void {
    if (off < 0 || off + len > this.sizeBytes) throw new ExportError('EINVAL', `${this.device}: out of range ${off}+${len}`);
  }

  /** Current content as a reader sees it (cache over durable). */
  view(): Buffer {
    const out = Buffer.from(this.durable);
    for (const [o, v] of this.cache) out[o] = v;
    return out;
  }

  async read(target: Buffer, offsetBytes: number): Promise<void> {
    this.ops.read++;
    if (this.gate) await this.gate();
    this.check(offsetBytes, target.length);
    if (this.failReads) throw new ExportError('EIO', `${this.device}: injected read error`);
    this.durable.copy(target, 0, offsetBytes, offsetBytes + target.length);
    if (this.cache.size) for (let i = 0; i < target.length; i++) {
      const v = this.cache.get(offsetBytes + i);
      if (v !== undefined) target[i] = v;
    }
  }

  async write(data: Buffer, offsetBytes: number, flags: LegWriteFlags): Promise<void> {
    this.ops.write++;
    if (this.gate) await this.gate();
    this.check(offsetBytes, data.length);
    if (this.failWrites) throw new ExportError('EIO', `${this.device}: injected write error`);
    if (this.opts.volatileCache && !flags.fua) {
      for (let i = 0; i < data.length; i++) this.cache.set(offsetBytes + i, data[i]!);
    } else {
      data.copy(this.durable, offsetBytes);
      if (this.cache.size) for (let i = 0; i < data.length; i++) this.cache.delete(offsetBytes + i);
    }
  }

  async flush(): Promise<void> {
    this.ops.flush++;
    if (this.gate) await this.gate();
    if (this.failFlush) throw new ExportError('EIO', `${this.device}: injected flush error`);
    for (const [o, v] of this.cache) this.durable[o] = v;
    this.cache.clear();
  }

  async trim(offsetBytes: number, lengthBytes: number): Promise<void> {
    this.ops.trim++;
    await this.zero(offsetBytes, lengthBytes, { mayTrim: true });
    this.ops.zero--;
  }

  async zero(offsetBytes: number, lengthBytes: number, _opts: { mayTrim: boolean }): Promise<void> {
    this.ops.zero++;
    if (this.gate) await this.gate();
    this.check(offsetBytes, lengthBytes);
    if (this.failWrites) throw new ExportError('EIO', `${this.device}: injected write error`);
    if (this.opts.volatileCache) {
      for (let i = 0; i < lengthBytes; i++) this.cache.set(offsetBytes + i, 0);
    } else {
      this.durable.fill(0, offsetBytes, offsetBytes + lengthBytes);
    }
  }

  /** Power loss: the volatile cache is gone. */
  crash(): void {
    this.cache.clear();
  }

  async close(): Promise<void> {}
}
