// Glue most e2e files share: a temp dir per test file, a served linear volume on a sparse file, and
// cleanup that stops every server (failing the file if one ignores SIGTERM), then removes the dir.
import { afterAll, beforeAll } from 'vitest';
import { join } from 'node:path';
import { startServer, stopAllServers, type ServerHandle, type StartOptions } from './server.js';
import { linearTable } from './tables.js';
import { createSparseFile, makeTempDir, removeTempDir } from './tmp.js';

/** Registers beforeAll/afterAll; returns a getter for this file's temp dir. */
export function useTempDir(prefix: string): () => string {
  let dir: string | undefined;
  beforeAll(async () => {
    dir = await makeTempDir(`nbd-mirror-${prefix}-`);
  });
  afterAll(async () => {
    try {
      await stopAllServers();
    } finally {
      if (dir !== undefined) await removeTempDir(dir);
    }
  });
  return () => {
    if (dir === undefined) throw new Error('temp dir used before beforeAll ran');
    return dir;
  };
}

export interface LinearVolume {
  readonly file: string;
  readonly sizeBytes: number;
  readonly server: ServerHandle;
}

/** A sparse backing file of sizeBytes in dir, served as a linear volume named `name` (default "volume"). */
export async function serveLinear(
  dir: string,
  sizeBytes: number,
  opts: { name?: string; fileName?: string } & Omit<StartOptions, 'tables' | 'dir'> = {},
): Promise<LinearVolume> {
  const file = await createSparseFile(join(dir, opts.fileName ?? 'backing.img'), sizeBytes);
  const server = await startServer({ ...opts, dir, tables: [{ table: linearTable(file, sizeBytes), name: opts.name }] });
  return { file, sizeBytes, server };
}
