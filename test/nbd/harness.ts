// Shared setup for protocol tests: a real NbdServer on a unix socket in a fresh temp dir, serving
// MemoryExports; cleanup closes the server and removes the directory.

import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { NbdServer, type ServerOptions } from '../../src/nbd/server/server.js';
import { MemoryExport, type MemoryExportOptions } from '../helpers/memory-export.js';

export interface Harness {
  readonly dir: string;
  readonly socketPath: string;
  readonly server: NbdServer;
  readonly exports: Map<string, MemoryExport>;
  uri(name?: string): string;
  close(): Promise<void>;
}

export async function startHarness(
  exportsSpec: Record<string, MemoryExportOptions & { description?: string }>,
  opts: Omit<ServerOptions, 'exports'> = {},
): Promise<Harness> {
  const dir = await mkdtemp(join(tmpdir(), 'nbd-proto-'));
  const socketPath = join(dir, 'nbd.sock');
  const exports = new Map<string, MemoryExport>();
  const registry = new Map<string, { export: MemoryExport; description?: string }>();
  for (const [name, spec] of Object.entries(exportsSpec)) {
    const e = new MemoryExport(spec);
    exports.set(name, e);
    registry.set(name, { export: e, description: spec.description });
  }
  const server = new NbdServer({ exports: registry, ...opts });
  await server.listen({ kind: 'unix', path: socketPath });
  return {
    dir,
    socketPath,
    server,
    exports,
    uri: (name = '') => `nbd+unix:///${encodeURIComponent(name)}?socket=${socketPath}`,
    close: async () => {
      await server.close();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

export const MiB = 1024 * 1024;

/** Deterministic pattern bytes (seeded), for write/read-back checks. */
export function pattern(lengthBytes: number, seed: number): Buffer {
  const b = Buffer.allocUnsafe(lengthBytes);
  let x = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < lengthBytes; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    b[i] = x & 0xff;
  }
  return b;
}
