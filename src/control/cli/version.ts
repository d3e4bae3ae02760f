// The version `nbd-mirror --version` prints: package.json's, found from this module's directory upwards
// (dist/control/cli -> the package root, also from a copied build under .cache/ inside the repository),
// else through a build's node_modules link to the repository (the benchmark's private copies).
// Read synchronously at start-up: one small file, no import of JSON modules (outside rootDir).
import { readFileSync, realpathSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const PACKAGE_NAME = 'nbd-mirror';

function versionIn(dir: string): string | undefined {
  try {
    const pkg = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as { name?: unknown; version?: unknown };
    return pkg.name === PACKAGE_NAME && typeof pkg.version === 'string' ? pkg.version : undefined;
  } catch {
    return undefined;
  }
}

/** package.json's version, or 'unknown' when no nbd-mirror package.json is found. */
export function cliVersion(from: string = dirname(fileURLToPath(import.meta.url))): string {
  for (let dir = from; ; dir = dirname(dir)) {
    const v = versionIn(dir);
    if (v !== undefined) return v;
    try {
      // A build copied elsewhere links node_modules to the repository's: package.json sits beside it.
      const linked = versionIn(dirname(realpathSync(join(dir, 'node_modules'))));
      if (linked !== undefined) return linked;
    } catch {
      // no node_modules here
    }
    if (dirname(dir) === dir) return 'unknown';
  }
}
