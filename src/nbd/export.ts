// The one narrow interface between the NBD server core and what it serves, as nbdkit's plugin API.
// The server validates every request at the edge (range, flags, negotiated features) before calling
// an export, so an export may assert rather than re-check. Capabilities are read once at open.
//
// Errors: an export rejects with an ExportError carrying an errno name; the server maps it to the
// NBD error code in one place. Any other thrown value is treated as EIO.

export type Errno = 'EPERM' | 'EIO' | 'ENOMEM' | 'EINVAL' | 'ENOSPC' | 'EOVERFLOW' | 'ENOTSUP' | 'ESHUTDOWN';

export class ExportError extends Error {
  constructor(
    readonly errno: Errno,
    message: string,
  ) {
    super(message);
    this.name = 'ExportError';
  }
}

/**
 * A read or write (or zero, trim, flush) may return this very promise when the request completed before the call
 * returned (page-cached file legs): the server then answers at once, with no promise reaction per request.
 * Any other promise is awaited as usual.
 */
export const SETTLED_OK: Promise<void> = Promise.resolve();

/** An empty pipe the server owns, which an export may fill with a READ's bytes (Export.spliceRead). */
export interface SplicePipe {
  /** Its write end. */
  readonly writeFd: number;
  /** Bytes it holds when filled with whole pages (one page per slot: an unaligned range needs a page more). */
  readonly capacityBytes: number;
}

export interface ExportCapabilities {
  readonly sizeBytes: number;
  readonly readOnly: boolean;
  readonly canFlush: boolean;
  readonly canFua: boolean;
  readonly canTrim: boolean;
  readonly canZero: boolean;
  /** WRITE_ZEROES with FAST_ZERO: the export can tell cheaply whether zeroing is fast. */
  readonly canFastZero: boolean;
  readonly canCache: boolean;
  /** Every connection sees the same data and a FLUSH on one connection covers writes completed on all. */
  readonly canMultiConn: boolean;
  readonly blockSizeMin: number;
  readonly blockSizePreferred: number;
  readonly blockSizeMax: number;
  readonly description?: string;
}

export const EXTENT_HOLE = 1;
export const EXTENT_ZERO = 2;

export interface Extent {
  readonly lengthBytes: number;
  /** EXTENT_HOLE | EXTENT_ZERO bits, as base:allocation defines them. */
  readonly flags: number;
}

export interface WriteFlags {
  readonly fua: boolean;
}

export interface ZeroFlags {
  readonly fua: boolean;
  /** false when the client sent NO_HOLE: the export must allocate. */
  readonly mayTrim: boolean;
  /** FAST_ZERO: fail with ENOTSUP rather than zero slowly. */
  readonly fastZero: boolean;
}

export interface Export {
  capabilities(): ExportCapabilities;
  /** Fill `target` completely with the bytes at offsetBytes. */
  read(target: Buffer, offsetBytes: number): Promise<void>;
  /**
   * Optional, for large READs: put the bytes read() would read into `pipe` with splice(2), now, on the caller's
   * stack, from the leg read() would pick (same checks; an export that would wait, or whose leg cannot splice,
   * declines). true: the pipe holds exactly those `lengthBytes` bytes. false: declined or failed, the pipe
   * may hold part of them (the server discards it) and the server calls read(), which judges any error (a
   * failed splice fails no leg). Never throws.
   */
  spliceRead?(pipe: SplicePipe, offsetBytes: number, lengthBytes: number): boolean;
  write(data: Buffer, offsetBytes: number, flags: WriteFlags): Promise<void>;
  flush(): Promise<void>;
  trim(offsetBytes: number, lengthBytes: number, flags: WriteFlags): Promise<void>;
  zero(offsetBytes: number, lengthBytes: number, flags: ZeroFlags): Promise<void>;
  cache(offsetBytes: number, lengthBytes: number): Promise<void>;
  /** Extents covering at least the first byte of the range; their lengths sum to <= lengthBytes. */
  blockStatus(offsetBytes: number, lengthBytes: number): Promise<Extent[]>;
  close(): Promise<void>;
}
