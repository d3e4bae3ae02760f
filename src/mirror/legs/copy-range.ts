// copy_file_range(2) for resync between file / block-device legs, from the optional N-API addon in
// native/copy-range/ (built by scripts/build-native.sh). Owns: finding and loading the addon, and the
// one call it offers. Without the addon (not built, another OS) copyRangeAvailable() is false and resync
// reads and writes through Node as before. NBD_MIRROR_COPY_RANGE=0 disables it;
// NBDM_COPY_RANGE_ADDON=PATH says where it is.
// Where the addon is looked for: src/native-addon.ts.

import { loadOptionalAddon } from '../../native-addon.js';

interface CopyRangeAddon {
  copyRange(fdIn: number, offIn: number, fdOut: number, offOut: number, length: number): Promise<number>;
}

let addon: CopyRangeAddon | null | undefined;

function load(): CopyRangeAddon | null {
  if (addon !== undefined) return addon;
  addon = null;
  if (process.env.NBD_MIRROR_COPY_RANGE === '0' || process.platform !== 'linux') return addon;
  addon = loadOptionalAddon<CopyRangeAddon>(import.meta.url, ['copy-range', 'build', 'Release', 'nbdm_copy_range.node'], process.env.NBDM_COPY_RANGE_ADDON);
  return addon;
}

export function copyRangeAvailable(): boolean {
  return load() !== null;
}

/**
 * Copy `length` bytes from fdIn at offIn to fdOut at offOut in the kernel, on libuv's thread pool.
 * Resolves with the bytes copied (fewer only at the source's end of file); rejects with an Error whose
 * `code` is the errno name. Call only when copyRangeAvailable().
 */
export function copyRange(fdIn: number, offIn: number, fdOut: number, offOut: number, length: number): Promise<number> {
  const a = load();
  if (a === null) return Promise.reject(new Error('copy_file_range addon not loaded'));
  return a.copyRange(fdIn, offIn, fdOut, offOut, length);
}
