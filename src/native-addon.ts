// Finding and loading an optional N-API addon of native/ (peer uid, copy_file_range). Looked for at an
// explicit path (an environment variable), then from the calling module up (src/, dist/ or a private build
// under .cache/e2e/<hash>/dist) and from the repository that a level's node_modules resolves to (a copied
// build links node_modules back to the repository). Not found anywhere: null, and the caller goes on
// without it.
import { realpathSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** Directory levels walked up from the calling module when looking for the repository's native/ directory. */
const SEARCH_LEVELS_MAX = 8;

/**
 * Load `native/<relativePath>` (e.g. ['peercred', 'build', 'Release', 'nbdm_peercred.node']) for the
 * module at `fromUrl` (its import.meta.url); `explicitPath` is tried first when given.
 */
export function loadOptionalAddon<T>(fromUrl: string, relativePath: readonly string[], explicitPath: string | undefined): T | null {
  const require = createRequire(fromUrl);
  const inRepository = join('native', ...relativePath);
  const candidates: string[] = [];
  if (explicitPath !== undefined) candidates.push(explicitPath);
  let dir = dirname(fileURLToPath(fromUrl));
  for (let i = 0; i < SEARCH_LEVELS_MAX; i++) {
    candidates.push(join(dir, inRepository));
    try {
      // <build>/node_modules -> <repository>/node_modules: the repository holds native/.
      candidates.push(join(dirname(realpathSync(join(dir, 'node_modules'))), inRepository));
    } catch {
      // no node_modules at this level
    }
    dir = dirname(dir);
  }
  for (const path of candidates) {
    try {
      return require(path) as T;
    } catch {
      // not built there; try the next location
    }
  }
  return null;
}
