// The on/off environment switches of the data path, checked when `serve` starts: a value other than 0 or 1
// (NBD_MIRROR_SPLICE=yes, NBD_MIRROR_SYNC_IO=off) is refused naming the variable, instead of being read as
// "not the one value that changes something" deep in a leg or connection, with no word to the user.

import { UsageError } from './usage-error.js';

/** Variable -> what it switches (src/nbd/server/splice.ts, fast-io.ts, src/mirror/legs/file.ts, copy-range.ts). */
export const ENV_SWITCHES: Readonly<Record<string, string>> = Object.freeze({
  NBD_MIRROR_SPLICE: 'READ replies spliced leg -> pipe -> socket (1 = on; default off)',
  NBD_MIRROR_FAST_IO: 'the fast-io addon for socket and leg I/O (0 = off; default on)',
  NBD_MIRROR_SYNC_IO: 'small leg reads and writes done synchronously while cheap (0 = off; default on)',
  NBD_MIRROR_COPY_RANGE: 'resync between file legs with copy_file_range (0 = off; default on)',
});

/** Throws a UsageError naming the first switch set to anything but 0 or 1 (empty counts as unset). */
export function checkEnvSwitches(env: NodeJS.ProcessEnv = process.env): void {
  for (const [name, what] of Object.entries(ENV_SWITCHES)) {
    const v = env[name];
    if (v === undefined || v === '' || v === '0' || v === '1') continue;
    throw new UsageError(`${name}=${v}: expected 0 or 1 (${what})`);
  }
}
