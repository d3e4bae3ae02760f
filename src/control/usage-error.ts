// UsageError: the user's input (arguments, table text, files it names, addresses) is wrong. The CLI prints
// its message alone, without a stack, and exits with EXIT_USAGE before anything listens.

export const EXIT_OK = 0;
/** A runtime failure after start-up (an export failed to close cleanly, a crash). */
export const EXIT_FAILURE = 1;
/** Bad input: nothing was served. */
export const EXIT_USAGE = 2;

export class UsageError extends Error {
  override readonly name = 'UsageError';
}
