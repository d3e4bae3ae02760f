// `nbd-mirror serve` with NBD_MIRROR_SPLICE=1 (large READ replies spliced leg -> pipe -> socket): the
// served volume's chain (VolumeExport, the leg pool's shared legs, --read-only's wrapper) passes the splice
// through. Legs on tmpfs (FileLeg splices on memory file systems only); a reader that stalls keeps the
// server's pipes busy (seen in /proc/PID/fd), then every byte compares with the leg; after the client is
// gone the server holds no pipe more than before. The addon is required under CI (scripts/build-native.sh).
import { exec } from 'node:child_process';
import { existsSync, readdirSync, readlinkSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadSpliceIo } from '../../src/nbd/server/splice.js';
import { run } from '../helpers/run.js';
import { startServer, stopAllServers } from '../helpers/server.js';
import { linearTable, mirrorTable } from '../helpers/tables.js';
import { MiB } from '../helpers/tmp.js';
import { IN_CI, requireTools } from '../helpers/tools.js';
import { pattern } from '../nbd/harness.js';

const sh = promisify(exec);
const io = loadSpliceIo();
const ok = requireTools('nbdcopy', 'cmp');
const SIZE = 16 * MiB;

it('the splice addon is built (required under CI)', () => {
  if (IN_CI) expect(io, 'native/splice not built: run scripts/build-native.sh').not.toBeNull();
});

function pipeFds(pid: number): number {
  let n = 0;
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    try {
      if (readlinkSync(`/proc/${pid}/fd/${fd}`).startsWith('pipe:')) n++;
    } catch {
      // closed meanwhile
    }
  }
  return n;
}

describe.skipIf(io === null || !ok || !existsSync('/dev/shm'))('serve with spliced READ replies', () => {
  let dir: string;
  let a: string;
  beforeAll(async () => {
    dir = await mkdtemp('/dev/shm/nbdm-splice-serve-');
    a = join(dir, 'a.img');
    const data = pattern(SIZE, 3);
    await writeFile(a, data);
    await writeFile(join(dir, 'b.img'), data);
  });
  afterAll(async () => {
    try {
      await stopAllServers();
    } finally {
      if (dir !== undefined) await rm(dir, { recursive: true, force: true });
    }
  });

  for (const kind of ['mirror', 'linear --read-only'] as const) {
    it(`${kind}: a stalled reader holds spliced replies in pipes; all bytes arrive, no pipe left`, async () => {
      const table = kind === 'mirror' ? mirrorTable({ sizeBytes: SIZE, legs: [a, join(dir, 'b.img')], sync: 'nosync' }) : linearTable(a, SIZE);
      const server = await startServer({ dir, label: kind === 'mirror' ? 'm' : 'l', tables: [{ table, name: 'volume' }], readOnly: kind !== 'mirror', env: { NBD_MIRROR_SPLICE: '1' } });
      const before = pipeFds(server.pid);
      const out = join(dir, `${server.pid}.out`);
      let busy = 0;
      const t = setInterval(() => (busy = Math.max(busy, pipeFds(server.pid) - before)), 20);
      try {
        await sh(`nbdcopy --request-size=1048576 '${server.uri('volume')}' - | (sleep 1; cat > '${out}')`);
      } finally {
        clearInterval(t);
      }
      await run('cmp', [out, a]);
      expect(busy).toBeGreaterThanOrEqual(2); // a pipe (two fds) held a reply while the reader stalled
      await new Promise((r) => setTimeout(r, 200));
      expect(pipeFds(server.pid)).toBe(before);
      await server.stop();
    });
  }
});
