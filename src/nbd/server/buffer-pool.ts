// Reuse of large payload buffers per connection. A fresh multi-megabyte Buffer is an mmap plus a
// page fault per 4 KiB on first touch; for 1 MiB sequential I/O that costs more than the copy.
// Only sizes in [pooledBytesMin, pooledBytesMax] are kept, at most heldBytesMax in total, so an
// idle connection holds a bounded amount. Small buffers are left to the allocator.
//
// Contract: a buffer is released only when nothing references it any more: write payloads after
// Export.write() settled (exports must not keep `data` past that), read replies after the socket
// reported the write done.

export class BufferPool {
  private readonly free = new Map<number, Buffer[]>();
  private heldBytes = 0;

  constructor(
    private readonly pooledBytesMin = 128 * 1024,
    private readonly pooledBytesMax = 4 * 1024 * 1024,
    // 8 MiB of payload plus room for reply headers: QD8 of 1 MiB read replies (1 MiB + 28 bytes each)
    // stays pooled instead of one fresh 1 MiB allocation (mmap + page faults) per round.
    private readonly heldBytesMax = 8 * 1024 * 1024 + 64 * 1024,
  ) {}

  /** A buffer of exactly `bytes` (contents undefined). */
  take(bytes: number): Buffer {
    if (bytes >= this.pooledBytesMin && bytes <= this.pooledBytesMax) {
      const list = this.free.get(bytes);
      const b = list?.pop();
      if (b !== undefined) {
        this.heldBytes -= bytes;
        return b;
      }
    }
    return Buffer.allocUnsafeSlow(bytes);
  }

  pooled(bytes: number): boolean {
    return bytes >= this.pooledBytesMin && bytes <= this.pooledBytesMax;
  }

  /** Give back a buffer obtained from take(); ignored when full or not a pooled size. */
  release(b: Buffer): void {
    const bytes = b.length;
    if (!this.pooled(bytes) || this.heldBytes + bytes > this.heldBytesMax) return;
    let list = this.free.get(bytes);
    if (list === undefined) {
      list = [];
      this.free.set(bytes, list);
    }
    list.push(b);
    this.heldBytes += bytes;
  }

  clear(): void {
    this.free.clear();
    this.heldBytes = 0;
  }
}
