// copy_file_range(2) for resync between file / block-device legs, from the optional N-API addon in
// native/copy-range/ (built by scripts/build-native.sh). Owns: finding and loading the addon, and the
// one call it offers. Without the addon (not built, another OS) copyRangeAvailable() is false and resync
// reads and writes through Node as before. NBD_MIRROR_COPY_RANGE=0 disables it;
// NBDM_COPY_RANGE_ADDON=PATH says where it is.
//
// Where the addon is looked for: from this file up (src/, dist/ or a private build under .cache/e2e/),
// and from the repository that node_modules resolves to (a benchmark's copied build links node_modules
// back to the repository).

import { createRequire } from 'node:module';
import { realpathSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';

interface CopyRangeAddon {
  copyRange(fdIn: number, offIn: number, fdOut: number, offOut: number, length: number): Promise<number>;
}

const ADDON_RELATIVE_PATH = join('native', 'copy-range', 'build', 'Release', 'nbdm_copy_range.node');
/** Directory levels walked up from this file when looking for the repository's native/ directory. */
const SEARCH_LEVELS_MAX = 8;

let addon: CopyRangeAddon | null | undefined;

function load(): CopyRangeAddon | null {
  if (addon !== undefined) return addon;
  addon = null;
  if (process.env.NBD_MIRROR_COPY_RANGE === '0' || process.platform !== 'linux') return addon;
  const require = createRequire(import.meta.url);
  const candidates: string[] = [];
  if (process.env.NBDM_COPY_RANGE_ADDON !== undefined) candidates.push(process.env.NBDM_COPY_RANGE_ADDON);
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < SEARCH_LEVELS_MAX; i++) {
    candidates.push(join(dir, ADDON_RELATIVE_PATH));
    try {
      // <build>/node_modules -> <repository>/node_modules: the repository holds native/.
      candidates.push(join(dirname(realpathSync(join(dir, 'node_modules'))), ADDON_RELATIVE_PATH));
    } catch {
      // no node_modules at this level
    }
    dir = dirname(dir);
  }
  for (const path of candidates) {
    try {
      addon = require(path) as CopyRangeAddon;
      break;
    } catch {
      // not built there; try the next location
    }
  }
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
