// An in-memory Export for protocol tests. Applies each operation when called (then waits delayMs,
// if set), so pipelined requests see each other in arrival order. Sparse (64 KiB blocks allocated on first write), so
// blockStatus reports holes; capabilities configurable; counts calls so tests can assert what
// reached the export. Not used in production.

import { type Export, type ExportCapabilities, ExportError, type Extent, EXTENT_HOLE, EXTENT_ZERO, type WriteFlags, type ZeroFlags } from '../../src/nbd/export.js';

export const MEMORY_BLOCK_BYTES = 64 * 1024;

export interface MemoryExportOptions extends Partial<ExportCapabilities> {
  readonly sizeBytes: number;
  /** Delay every operation by this many ms (lets tests hold requests in flight). */
  readonly delayMs?: number;
}

export class MemoryExport implements Export {
  private readonly blocks = new Map<number, Buffer>();
  private readonly caps: ExportCapabilities;
  readonly calls = { read: 0, write: 0, flush: 0, trim: 0, zero: 0, cache: 0, blockStatus: 0 };
  closed = false;

  constructor(private readonly opts: MemoryExportOptions) {
    this.caps = {
      readOnly: false,
      canFlush: true,
      canFua: true,
      canTrim: true,
      canZero: true,
      canFastZero: true,
      canCache: true,
      canMultiConn: true,
      blockSizeMin: 1,
      blockSizePreferred: 4096,
      blockSizeMax: 32 * 1024 * 1024,
      ...opts,
    };
  }

  capabilities(): ExportCapabilities {
    return this.caps;
  }

  get allocatedBlocks(): number {
    return this.blocks.size;
  }

  private async delay(): Promise<void> {
    if (this.opts.delayMs !== undefined) await new Promise((r) => setTimeout(r, this.opts.delayMs));
  }

  private check(off: number, len: number): void {
    if (off < 0 || len < 0 || off + len > this.caps.sizeBytes) throw new Error(`memory export: range ${off}+${len} out of bounds`);
  }

  async read(target: Buffer, offsetBytes: number): Promise<void> {
    this.calls.read++;
    this.check(offsetBytes, target.length);
    this.forEachBlock(offsetBytes, target.length, (block, inBlock, n, done) => {
      if (block === undefined) target.fill(0, done, done + n);
      else block.copy(target, done, inBlock, inBlock + n);
    });
    await this.delay();
  }

  async write(data: Buffer, offsetBytes: number, _flags: WriteFlags): Promise<void> {
    this.calls.write++;
    this.check(offsetBytes, data.length);
    this.forEachBlock(offsetBytes, data.length, (_b, inBlock, n, done, index) => {
      data.copy(this.allocate(index), inBlock, done, done + n);
    });
    await this.delay();
  }

  async flush(): Promise<void> {
    this.calls.flush++;
    await this.delay();
  }

  async trim(offsetBytes: number, lengthBytes: number, _flags: WriteFlags): Promise<void> {
    this.calls.trim++;
    this.check(offsetBytes, lengthBytes);
    this.clear(offsetBytes, lengthBytes, true);
    await this.delay();
  }

  async zero(offsetBytes: number, lengthBytes: number, flags: ZeroFlags): Promise<void> {
    this.calls.zero++;
    this.check(offsetBytes, lengthBytes);
    if (flags.fastZero && !flags.mayTrim) throw new ExportError('ENOTSUP', 'fast zero needs mayTrim here');
    this.clear(offsetBytes, lengthBytes, flags.mayTrim);
    await this.delay();
  }

  async cache(offsetBytes: number, lengthBytes: number): Promise<void> {
    this.calls.cache++;
    this.check(offsetBytes, lengthBytes);
  }

  async blockStatus(offsetBytes: number, lengthBytes: number): Promise<Extent[]> {
    this.calls.blockStatus++;
    this.check(offsetBytes, lengthBytes);
    const out: { lengthBytes: number; flags: number }[] = [];
    this.forEachBlock(offsetBytes, lengthBytes, (block, _i, n) => {
      const flags = block === undefined ? EXTENT_HOLE | EXTENT_ZERO : 0;
      const last = out[out.length - 1];
      if (last !== undefined && last.flags === flags) last.lengthBytes += n;
      else out.push({ lengthBytes: n, flags });
    });
    return out;
  }

  async close(): Promise<void> {
    this.closed = true;
  }

  private allocate(index: number): Buffer {
    let b = this.blocks.get(index);
    if (b === undefined) {
      b = Buffer.alloc(MEMORY_BLOCK_BYTES);
      this.blocks.set(index, b);
    }
    return b;
  }

  private clear(offsetBytes: number, lengthBytes: number, mayDeallocate: boolean): void {
    this.forEachBlock(offsetBytes, lengthBytes, (block, inBlock, n, _done, index) => {
      if (mayDeallocate && n === MEMORY_BLOCK_BYTES) this.blocks.delete(index);
      else if (block !== undefined) block.fill(0, inBlock, inBlock + n);
      else if (!mayDeallocate) this.allocate(index);
    });
  }

  private forEachBlock(
    offsetBytes: number,
    lengthBytes: number,
    fn: (block: Buffer | undefined, inBlock: number, n: number, done: number, index: number) => void,
  ): void {
    let done = 0;
    while (done < lengthBytes) {
      const pos = offsetBytes + done;
      const index = Math.floor(pos / MEMORY_BLOCK_BYTES);
      const inBlock = pos % MEMORY_BLOCK_BYTES;
      const n = Math.min(MEMORY_BLOCK_BYTES - inBlock, lengthBytes - done);
      fn(this.blocks.get(index), inBlock, n, done, index);
      done += n;
    }
  }
}
