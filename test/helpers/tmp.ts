// Temporary directories and sparse files for tests: everything lives under os.tmpdir() in a fresh
// mkdtemp directory that the test removes in its cleanup.
import { mkdtemp, open, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export async function makeTempDir(prefix = 'nbd-mirror-'): Promise<string> {
  return mkdtemp(join(tmpdir(), prefix));
}

export async function removeTempDir(dir: string): Promise<void> {
  await rm(dir, { recursive: true, force: true });
}

/** A sparse file of exactly sizeBytes (all zeros, nothing allocated). */
export async function createSparseFile(path: string, sizeBytes: number): Promise<string> {
  const fh = await open(path, 'w');
  try {
    await fh.truncate(sizeBytes);
  } finally {
    await fh.close();
  }
  return path;
}

export const MiB = 1024 * 1024;
export const SECTOR_BYTES = 512;
export function sectorsOf(sizeBytes: number): number {
  if (sizeBytes % SECTOR_BYTES !== 0) throw new RangeError(`${sizeBytes} is not a whole number of sectors`);
  return sizeBytes / SECTOR_BYTES;
}
