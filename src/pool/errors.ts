// PoolError: a refused pool operation. `code` is stable (errno-style, as ControlError's) so the CLI maps it
// to an exit status and --json prints it; the message names the problem (device, sizes, names).
export type PoolErrorCode = 'EINVAL' | 'ENOENT' | 'EEXIST' | 'ENOSPC' | 'ENODEV' | 'EBUSY' | 'EIO';

export class PoolError extends Error {
  override name = 'PoolError';
  constructor(
    readonly code: PoolErrorCode,
    message: string,
  ) {
    super(message);
  }
}
