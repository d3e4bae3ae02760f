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
  /** Volatile cache, only with volatileCache: sector index -> sector content (a crash drops whole sectors). */
  private readonly cache = new Map<number, Buffer>();
  static readonly SECTOR = 512;
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
    for (const [sec, b] of this.cache) b.copy(out, sec * MemLeg.SECTOR);
    return out;
  }

  private cachedSector(sec: number): Buffer {
    let b = this.cache.get(sec);
    if (!b) {
      const off = sec * MemLeg.SECTOR;
      b = Buffer.from(this.durable.subarray(off, Math.min(off + MemLeg.SECTOR, this.sizeBytes)));
      this.cache.set(sec, b);
    }
    return b;
  }

  /** Apply bytes to the cache (volatile) or straight to durable. */
  private apply(src: Buffer | null, offsetBytes: number, lengthBytes: number, durable: boolean): void {
    const S = MemLeg.SECTOR;
    if (durable) {
      if (src) src.copy(this.durable, offsetBytes);
      else this.durable.fill(0, offsetBytes, offsetBytes + lengthBytes);
    }
    if (!durable || this.cache.size) {
      for (let sec = Math.floor(offsetBytes / S); sec * S < offsetBytes + lengthBytes; sec++) {
        if (durable && !this.cache.has(sec)) continue;
        const b = this.cachedSector(sec);
        const from = Math.max(offsetBytes, sec * S);
        const to = Math.min(offsetBytes + lengthBytes, sec * S + b.length);
        if (src) src.copy(b, from - sec * S, from - offsetBytes, to - offsetBytes);
        else b.fill(0, from - sec * S, to - sec * S);
      }
    }
  }

  async read(target: Buffer, offsetBytes: number): Promise<void> {
    this.ops.read++;
    if (this.gate) await this.gate();
    this.check(offsetBytes, target.length);
    if (this.failReads) throw new ExportError('EIO', `${this.device}: injected read error`);
    this.durable.copy(target, 0, offsetBytes, offsetBytes + target.length);
    if (this.cache.size) {
      const S = MemLeg.SECTOR;
      for (let sec = Math.floor(offsetBytes / S); sec * S < offsetBytes + target.length; sec++) {
        const b = this.cache.get(sec);
        if (!b) continue;
        const from = Math.max(offsetBytes, sec * S);
        const to = Math.min(offsetBytes + target.length, sec * S + b.length);
        b.copy(target, from - offsetBytes, from - sec * S, to - sec * S);
      }
    }
  }

  /** The synchronous forms (a leg offering Leg.readNow / writeNow): null when done, else the error. */
  readSync(target: Buffer, offsetBytes: number): Error | null {
    this.ops.read++;
    if (offsetBytes < 0 || offsetBytes + target.length > this.sizeBytes) return new ExportError('EINVAL', `${this.device}: out of range`);
    if (this.failReads) return new ExportError('EIO', `${this.device}: injected read error`);
    this.durable.copy(target, 0, offsetBytes, offsetBytes + target.length);
    const S = MemLeg.SECTOR;
    for (let sec = Math.floor(offsetBytes / S); this.cache.size && sec * S < offsetBytes + target.length; sec++) {
      const b = this.cache.get(sec);
      if (!b) continue;
      const from = Math.max(offsetBytes, sec * S);
      const to = Math.min(offsetBytes + target.length, sec * S + b.length);
      b.copy(target, from - offsetBytes, from - sec * S, to - sec * S);
    }
    return null;
  }

  writeSync(data: Buffer, offsetBytes: number): Error | null {
    this.ops.write++;
    if (offsetBytes < 0 || offsetBytes + data.length > this.sizeBytes) return new ExportError('EINVAL', `${this.device}: out of range`);
    if (this.failWrites) return new ExportError('EIO', `${this.device}: injected write error`);
    this.apply(data, offsetBytes, data.length, !this.opts.volatileCache);
    return null;
  }

  async write(data: Buffer, offsetBytes: number, flags: LegWriteFlags): Promise<void> {
    this.ops.write++;
    if (this.gate) await this.gate();
    this.check(offsetBytes, data.length);
    if (this.failWrites) throw new ExportError('EIO', `${this.device}: injected write error`);
    this.apply(data, offsetBytes, data.length, !this.opts.volatileCache || flags.fua);
  }

  async flush(): Promise<void> {
    this.ops.flush++;
    if (this.gate) await this.gate();
    if (this.failFlush) throw new ExportError('EIO', `${this.device}: injected flush error`);
    for (const [sec, b] of this.cache) b.copy(this.durable, sec * MemLeg.SECTOR);
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
    this.apply(null, offsetBytes, lengthBytes, !this.opts.volatileCache);
  }

  /** Power loss: the volatile cache is gone. */
  crash(): void {
    this.cache.clear();
  }

  async close(): Promise<void> {}
}
