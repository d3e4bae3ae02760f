// LinearExport: the `linear` target — one leg served as an NBD export, nothing in between.
// Owns: the capabilities of a linear volume and the mapping of Export calls onto the Leg. The server
// validates ranges and flags at the edge; we assert. FUA on trim/zero becomes a flush after the
// operation (a Leg has FUA only on write).

import { strict as assert } from 'node:assert';
import { ExportError, type Export, type ExportCapabilities, type Extent, type SplicePipe, type WriteFlags, type ZeroFlags } from '../nbd/export.js';
import type { Leg } from './legs/leg.js';

export const LINEAR_BLOCK_SIZE_MIN = 1;
export const LINEAR_BLOCK_SIZE_PREFERRED = 4096;
export const LINEAR_BLOCK_SIZE_MAX = 32 * 1024 * 1024;

export interface LinearExportOptions {
  /** The table length in bytes; the leg must hold at least this much. */
  readonly lengthBytes: number;
  readonly readOnly?: boolean;
  readonly description?: string;
}

export class LinearExport implements Export {
  private readonly caps: ExportCapabilities;
  private closed = false;

  constructor(
    readonly leg: Leg,
    opts: LinearExportOptions,
  ) {
    assert(Number.isSafeInteger(opts.lengthBytes) && opts.lengthBytes > 0, 'lengthBytes');
    assert(leg.sizeBytes >= opts.lengthBytes, `leg ${leg.device} holds ${leg.sizeBytes} bytes, table needs ${opts.lengthBytes}`);
    const readOnly = opts.readOnly ?? false;
    this.caps = Object.freeze({
      sizeBytes: opts.lengthBytes,
      readOnly,
      canFlush: true,
      canFua: !readOnly,
      canTrim: !readOnly,
      canZero: !readOnly,
      canFastZero: false,
      canCache: true,
      canMultiConn: true,
      blockSizeMin: LINEAR_BLOCK_SIZE_MIN,
      blockSizePreferred: LINEAR_BLOCK_SIZE_PREFERRED,
      blockSizeMax: LINEAR_BLOCK_SIZE_MAX,
      ...(opts.description !== undefined ? { description: opts.description } : {}),
    });
  }

  capabilities(): ExportCapabilities {
    return this.caps;
  }

  /** Programmer errors (a range the server should have refused) assert; a closed export rejects. */
  private check(offsetBytes: number, lengthBytes: number): void {
    if (this.closed) throw new ExportError('ESHUTDOWN', 'export is closed');
    assert(offsetBytes >= 0 && lengthBytes >= 0 && offsetBytes + lengthBytes <= this.caps.sizeBytes, 'range beyond export');
  }

  // read/write/flush are not `async` (one promise fewer on the hot path), so they must never throw
  // synchronously: a closed export becomes a rejected promise.
  read(target: Buffer, offsetBytes: number): Promise<void> {
    if (this.closed) return closedRejection();
    this.check(offsetBytes, target.length);
    return this.leg.read(target, offsetBytes);
  }

  /** Export.spliceRead: the leg fills the pipe if it can; else (or closed) declined. */
  spliceRead(pipe: SplicePipe, offsetBytes: number, lengthBytes: number): boolean {
    if (this.closed) return false;
    const leg = this.leg;
    return leg.spliceNow !== undefined && leg.spliceNow(pipe, offsetBytes, lengthBytes);
  }

  write(data: Buffer, offsetBytes: number, flags: WriteFlags): Promise<void> {
    if (this.closed) return closedRejection();
    this.check(offsetBytes, data.length);
    if (this.caps.readOnly) return Promise.reject(new ExportError('EPERM', 'export is read-only'));
    return this.leg.write(data, offsetBytes, flags);
  }

  flush(): Promise<void> {
    if (this.closed) return closedRejection();
    return this.leg.flush();
  }

  async trim(offsetBytes: number, lengthBytes: number, flags: WriteFlags): Promise<void> {
    this.check(offsetBytes, lengthBytes);
    if (this.caps.readOnly) throw new ExportError('EPERM', 'export is read-only');
    await this.leg.trim(offsetBytes, lengthBytes);
    if (flags.fua) await this.leg.flush();
  }

  async zero(offsetBytes: number, lengthBytes: number, flags: ZeroFlags): Promise<void> {
    this.check(offsetBytes, lengthBytes);
    if (this.caps.readOnly) throw new ExportError('EPERM', 'export is read-only');
    // We cannot tell cheaply whether zeroing is fast (canFastZero is false), so FAST_ZERO is refused.
    if (flags.fastZero) throw new ExportError('ENOTSUP', 'fast zero is not supported');
    await this.leg.zero(offsetBytes, lengthBytes, { mayTrim: flags.mayTrim });
    if (flags.fua) await this.leg.flush();
  }

  async cache(offsetBytes: number, lengthBytes: number): Promise<void> {
    // Advisory; the page cache (or the remote server) does its own read-ahead.
    this.check(offsetBytes, lengthBytes);
  }

  async blockStatus(offsetBytes: number, lengthBytes: number): Promise<Extent[]> {
    this.check(offsetBytes, lengthBytes);
    // Everything is reported as allocated data: always true enough, and costs nothing.
    return [{ lengthBytes, flags: 0 }];
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.leg.close();
  }
}

function closedRejection(): Promise<never> {
  return Promise.reject(new ExportError('ESHUTDOWN', 'export is closed'));
}
