// A fixed-size bitmap shared by the core and disk logs (dm-log.c's log_test_bit/log_set_bit + memweight).
// Owns: bit storage in dm's on-disk order (bit i = byte i/8, bit i%8, LSB first), a maintained population
// count, and next-set/next-clear search. Storage length is rounded up to 8 bytes (the disk format's unit).
// Pure memory; no I/O. Bits past `bitCount` are kept zero so population() and the disk bytes agree.

import { strict as assert } from 'node:assert';

export class Bitmap {
  readonly bytes: Uint8Array;
  private populationValue = 0;

  constructor(readonly bitCount: number) {
    assert(Number.isSafeInteger(bitCount) && bitCount >= 0, 'bitCount must be a non-negative integer');
    this.bytes = new Uint8Array(Bitmap.storageBytes(bitCount));
  }

  /** Bytes needed for bitCount bits, rounded up to 8. */
  static storageBytes(bitCount: number): number {
    return Math.ceil(bitCount / 64) * 8;
  }

  get(i: number): boolean {
    assert(i >= 0 && i < this.bitCount, 'bit out of range');
    return (this.bytes[i >>> 3]! & (1 << (i & 7))) !== 0;
  }

  /** Sets bit i to v; returns true when that changed it. */
  set(i: number, v: boolean): boolean {
    assert(i >= 0 && i < this.bitCount, 'bit out of range');
    const byteIndex = i >>> 3;
    const mask = 1 << (i & 7);
    const old = this.bytes[byteIndex]!;
    if (((old & mask) !== 0) === v) return false;
    this.bytes[byteIndex] = v ? old | mask : old & ~mask;
    this.populationValue += v ? 1 : -1;
    return true;
  }

  fill(v: boolean): void {
    this.bytes.fill(0);
    this.populationValue = 0;
    if (!v) return;
    const fullBytes = this.bitCount >>> 3;
    this.bytes.fill(0xff, 0, fullBytes);
    const rest = this.bitCount & 7;
    if (rest) this.bytes[fullBytes] = (1 << rest) - 1;
    this.populationValue = this.bitCount;
  }

  /** Number of set bits. */
  population(): number {
    return this.populationValue;
  }

  /** Copy the bits of another bitmap of the same size. */
  copyFrom(other: Bitmap): void {
    assert.equal(other.bitCount, this.bitCount, 'bitmap sizes differ');
    this.bytes.set(other.bytes);
    this.populationValue = other.populationValue;
  }

  /** Load from stored bytes (e.g. the disk log); bits past bitCount are ignored and zeroed. */
  load(src: Uint8Array): void {
    assert(src.length >= this.bytes.length, 'source too short');
    this.bytes.set(src.subarray(0, this.bytes.length));
    const rest = this.bitCount & 7;
    const lastByte = this.bitCount >>> 3;
    if (lastByte < this.bytes.length) {
      this.bytes[lastByte] = rest ? this.bytes[lastByte]! & ((1 << rest) - 1) : 0;
      this.bytes.fill(0, lastByte + 1);
    }
    this.populationValue = Bitmap.countBits(this.bytes);
  }

  static countBits(bytes: Uint8Array): number {
    let n = 0;
    for (let i = 0; i < bytes.length; i++) {
      let b = bytes[i]!;
      while (b) {
        b &= b - 1;
        n++;
      }
    }
    return n;
  }

  /** Every index whose bit equals v, ascending. */
  indexesOf(v: boolean): number[] {
    const out: number[] = [];
    for (let i = this.findNext(v); i >= 0; i = this.findNext(v, i + 1)) out.push(i);
    return out;
  }

  /** First index >= from whose bit equals v, or -1. Skips whole bytes of the other value. */
  findNext(v: boolean, from = 0): number {
    const skipByte = v ? 0x00 : 0xff;
    let i = Math.max(0, from);
    while (i < this.bitCount) {
      if ((i & 7) === 0 && this.bytes[i >>> 3] === skipByte) {
        i += 8;
        continue;
      }
      if (this.get(i) === v) return i;
      i++;
    }
    return -1;
  }
}
