// The one place an errno name becomes an NBD error value and back (cf. nbdkit's nbd_errno).
// Pure. The server maps whatever an export threw through errorToNbd; the client maps NBD error
// values back to the Errno names ExportError carries.

import type { Errno } from '../export.js';
import {
  NBD_EINVAL,
  NBD_EIO,
  NBD_ENOMEM,
  NBD_ENOSPC,
  NBD_ENOTSUP,
  NBD_EOVERFLOW,
  NBD_EPERM,
  NBD_ESHUTDOWN,
} from './constants.js';

const ERRNO_TO_NBD: Readonly<Record<string, number>> = {
  EPERM: NBD_EPERM,
  EACCES: NBD_EPERM,
  EROFS: NBD_EPERM,
  EIO: NBD_EIO,
  ENOMEM: NBD_ENOMEM,
  EINVAL: NBD_EINVAL,
  ENOSPC: NBD_ENOSPC,
  EDQUOT: NBD_ENOSPC, // the spec asks EDQUOT and EFBIG to be reported as ENOSPC
  EFBIG: NBD_ENOSPC,
  EOVERFLOW: NBD_EOVERFLOW,
  ENOTSUP: NBD_ENOTSUP,
  EOPNOTSUPP: NBD_ENOTSUP,
  ESHUTDOWN: NBD_ESHUTDOWN,
};

/** Errno name (ExportError.errno, or a Node system error's `code`) -> NBD error; unknown -> EIO. */
export function errnoToNbd(errno: string): number {
  return ERRNO_TO_NBD[errno] ?? NBD_EIO;
}

/** Whatever an export rejected with -> NBD error value. Never returns 0. */
export function errorToNbd(err: unknown): number {
  if (typeof err === 'object' && err !== null) {
    const e = err as { errno?: unknown; code?: unknown };
    if (typeof e.errno === 'string') return errnoToNbd(e.errno);
    if (typeof e.code === 'string') return errnoToNbd(e.code);
  }
  return NBD_EIO;
}

/** NBD error value -> Errno name; values outside the spec's list become EIO (the spec says so). */
export function nbdToErrno(value: number): Errno {
  switch (value) {
    case NBD_EPERM:
      return 'EPERM';
    case NBD_ENOMEM:
      return 'ENOMEM';
    case NBD_EINVAL:
      return 'EINVAL';
    case NBD_ENOSPC:
      return 'ENOSPC';
    case NBD_EOVERFLOW:
      return 'EOVERFLOW';
    case NBD_ENOTSUP:
      return 'ENOTSUP';
    case NBD_ESHUTDOWN:
      return 'ESHUTDOWN';
    default:
      return 'EIO';
  }
}
