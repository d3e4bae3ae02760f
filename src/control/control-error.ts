// ControlError: an operation on a volume was refused (bad argument, bad table, wrong state, unknown
// volume). `code` is stable and travels over the control socket; the message names the problem. The
// control server maps codes to HTTP statuses in one place (server.ts), the CLI prints the message and
// exits non-zero. Nothing was changed when a ControlError is thrown.

export const CONTROL_ERROR_CODES = {
  /** Bad argument or table text. */
  EINVAL: 400,
  /** No such volume. */
  ENOENT: 404,
  /** The volume is not in a state that allows it (e.g. resume with nothing to resume). */
  EBUSY: 409,
  /** The new table's size differs from the live one (resize is not supported). */
  ESIZE: 409,
  /** A device named by the table could not be opened. */
  ENODEV: 422,
  /** The target does not implement the operation (e.g. message on a linear target). */
  ENOTSUP: 501,
  /** An operation gave up waiting. */
  ETIMEDOUT: 504,
  /** Authentication failed (TCP listener token). */
  EACCES: 401,
  /** Something failed at run time (the engine threw). */
  EIO: 500,
} as const;

export type ControlErrorCode = keyof typeof CONTROL_ERROR_CODES;

export class ControlError extends Error {
  override readonly name = 'ControlError';
  constructor(
    readonly code: ControlErrorCode,
    message: string,
  ) {
    super(message);
  }
}

export function isControlErrorCode(s: unknown): s is ControlErrorCode {
  return typeof s === 'string' && Object.hasOwn(CONTROL_ERROR_CODES, s);
}
