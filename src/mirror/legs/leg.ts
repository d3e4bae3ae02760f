// A leg: one copy of the volume's data (a file, a block device, a remote NBD export), already
// positioned at its table offset: offsets here are relative to the start of the mirror's data on it.
// Legs report failures by rejecting with ExportError (errno name); the mirror decides what a failure
// means (fail the leg, hold the write, retry a read elsewhere). Legs never retry on their own.

import type { SplicePipe } from '../../nbd/export.js';

export interface LegWriteFlags {
  readonly fua: boolean;
}

export interface Leg {
  /** The device as the table names it (path or URI); used in status and table output. */
  readonly device: string;
  /** Usable bytes from the table offset to the end of the device. */
  readonly sizeBytes: number;
  read(target: Buffer, offsetBytes: number): Promise<void>;
  write(data: Buffer, offsetBytes: number, flags: LegWriteFlags): Promise<void>;
  flush(): Promise<void>;
  trim(offsetBytes: number, lengthBytes: number): Promise<void>;
  /** mayTrim=false: the zeroed range must stay allocated. */
  zero(offsetBytes: number, lengthBytes: number, opts: { mayTrim: boolean }): Promise<void>;
  close(): Promise<void>;
  /**
   * Optional resync fast path: copy [offsetBytes, offsetBytes + lengthBytes) of this leg to the same range
   * of `target` without a user-space buffer (FileLeg: copy_file_range). Resolves false whenever it did not
   * copy everything (another kind of leg, not supported, any error): the caller then reads and writes the
   * range, which reports an error against the right leg. Never rejects.
   */
  /**
   * Optional synchronous fast paths (FileLeg on a page-cached file): do the I/O now, on the caller's stack.
   * Return null when done, an Error (ExportError) when it failed, or undefined when the leg does not do
   * this request synchronously right now (the caller then uses read() / write()). Never throw. A write
   * here has no FUA (FUA writes go through write()).
   */
  readNow?(target: Buffer, offsetBytes: number): Error | null | undefined;
  writeNow?(data: Buffer, offsetBytes: number): Error | null | undefined;
  copyRangeTo?(target: Leg, offsetBytes: number, lengthBytes: number): Promise<boolean>;
  /**
   * Optional (FileLeg on a memory file system): splice the range into `pipe` (empty) now, on the caller's
   * stack (Export.spliceRead). true: the pipe holds exactly lengthBytes bytes; false: declined or failed
   * (the caller discards the pipe and reads through read(), which reports any error). Never throws.
   */
  spliceNow?(pipe: SplicePipe, offsetBytes: number, lengthBytes: number): boolean;
}
