// Leg error vocabulary. Owns: LegOpenError (a device could not be opened or is unusable; names the
// device) and toExportError (turns a Node/system error from leg I/O into the ExportError the mirror and
// the NBD server understand, keeping the device and the operation in the message).

import { type Errno, ExportError } from '../../nbd/export.js';

/** Opening a leg (or the log device) failed. Carries the device as written in the table. */
export class LegOpenError extends Error {
  constructor(
    readonly device: string,
    message: string,
    /** The system error code (ENOENT, EACCES, ...) when there was one. */
    readonly code?: string,
  ) {
    super(message);
    this.name = 'LegOpenError';
  }
}

const PASSED_THROUGH: ReadonlySet<string> = new Set<Errno>([
  'EPERM',
  'EIO',
  'ENOMEM',
  'EINVAL',
  'ENOSPC',
  'EOVERFLOW',
  'ENOTSUP',
  'ESHUTDOWN',
]);

/** The errno name an NBD client should see for a system error code; anything unknown is EIO. */
export function errnoFor(code: unknown): Errno {
  if (typeof code !== 'string') return 'EIO';
  if (PASSED_THROUGH.has(code)) return code as Errno;
  if (code === 'EDQUOT' || code === 'EFBIG') return 'ENOSPC';
  if (code === 'EOPNOTSUPP') return 'ENOTSUP';
  if (code === 'EACCES' || code === 'EROFS') return 'EPERM';
  return 'EIO';
}

/** Wrap any error from leg I/O as an ExportError that names the device and the operation. */
export function toExportError(err: unknown, device: string, what: string): ExportError {
  if (err instanceof ExportError) return err;
  const code = (err as { code?: unknown } | null)?.code;
  const detail = err instanceof Error ? err.message : String(err);
  return new ExportError(errnoFor(code), `${device}: ${what}: ${detail}`);
}
