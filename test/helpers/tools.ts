// Tool requirements for real-client tests. A missing tool FAILS the test file under CI=true (the
// project's rule: never skip silently in CI); locally it skips with a loud message saying what to install.
// Use at collection time:  const ok = requireTool('nbdinfo');  describe.skipIf(!ok)(...)
import { accessSync, constants, existsSync } from 'node:fs';
import { delimiter, join } from 'node:path';

export const IN_CI = process.env.CI === 'true';

export function findTool(name: string): string | undefined {
  for (const dir of (process.env.PATH ?? '').split(delimiter).concat(['/usr/sbin', '/sbin'])) {
    if (dir.length === 0) continue;
    const candidate = join(dir, name);
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not here; keep looking
    }
  }
  return undefined;
}

/** A requirement that is not met: throws under CI, warns loudly and returns false otherwise. */
export function unmet(what: string, hint: string): false {
  const message = `MISSING: ${what} (${hint})`;
  if (IN_CI) throw new Error(`${message}; CI=true, so this test fails instead of skipping`);
  const bar = '!'.repeat(Math.min(100, message.length + 8));
  console.warn(`\n${bar}\n!!! ${message} — SKIPPING these tests locally; they FAIL under CI=true\n${bar}\n`);
  return false;
}

const PACKAGE_HINTS: Record<string, string> = {
  nbdinfo: 'apt-get install libnbd-bin',
  nbdcopy: 'apt-get install libnbd-bin',
  nbdfuse: 'apt-get install libnbd-bin (Debian 12; a separate nbdfuse package on newer releases)',
  file: 'apt-get install file',
  nbdkit: 'apt-get install nbdkit',
  'qemu-io': 'apt-get install qemu-utils',
  'qemu-img': 'apt-get install qemu-utils',
  'qemu-nbd': 'apt-get install qemu-utils',
  fio: 'apt-get install fio',
  'mkfs.ext4': 'apt-get install e2fsprogs',
  'fsck.ext4': 'apt-get install e2fsprogs',
  losetup: 'apt-get install util-linux',
};

export function requireTool(name: string): boolean {
  if (findTool(name) !== undefined) return true;
  return unmet(`tool "${name}"`, PACKAGE_HINTS[name] ?? 'see scripts/install-deps.sh');
}

export function requireTools(...names: string[]): boolean {
  // Check all, so the message lists every missing one (and CI fails on the first).
  return names.map(requireTool).every(Boolean);
}

/** Root, /dev/fuse and loop devices: what nbdfuse + losetup + mount need. */
export function requireFuseAndLoop(): boolean {
  if (process.getuid?.() !== 0) return unmet('root (for losetup and mount)', 'run the tests as root');
  if (!existsSync('/dev/fuse')) return unmet('/dev/fuse', 'modprobe fuse, or run the container with --device /dev/fuse');
  if (!existsSync('/dev/loop-control')) return unmet('/dev/loop-control', 'modprobe loop, or give the container loop devices');
  return true;
}
