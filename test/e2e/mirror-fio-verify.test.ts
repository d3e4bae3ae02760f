// fio verify (crc32c, 4 jobs x QD32) on 2- and 3-leg mirrors with core and disk logs, while the initial
// resync runs; then wait for in-sync, stop cleanly and compare the legs byte for byte.
import { describe, expect, it } from 'vitest';
import { useTempDir } from '../helpers/e2e.js';
import { runFioVerify } from '../helpers/fio.js';
import { waitInSync } from '../helpers/mirror.js';
import { run } from '../helpers/run.js';
import { startServer } from '../helpers/server.js';
import { makeMirrorFiles, mirrorTable } from '../helpers/tables.js';
import { MiB } from '../helpers/tmp.js';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { requireTools } from '../helpers/tools.js';

const ok = requireTools('fio', 'cmp');
const dir = useTempDir('mirror-fio');
const NUM_JOBS = 4;
const SLICE_BYTES = 8 * MiB;
const SIZE = NUM_JOBS * SLICE_BYTES;

describe.skipIf(!ok)('fio verify on mirrors', () => {
  for (const [legCount, log] of [
    [2, 'core'],
    [2, 'disk'],
    [3, 'core'],
    [3, 'disk'],
  ] as const) {
    it(`${legCount} legs, ${log} log: fio verifies, legs identical`, async () => {
      const d = join(dir(), `${legCount}-${log}`);
      await mkdir(d);
      const files = await makeMirrorFiles(d, legCount, SIZE);
      // A distinct first leg, so the initial resync really copies something while fio runs.
      await run('fio', ['--name=seed', '--filename', files.legs[0]!, '--rw=write', '--bs=1m', `--size=${SIZE}`, '--buffer_pattern=0x3c', '--output=/dev/null'], { cwd: d });
      const table = mirrorTable({ legs: files.legs, sizeBytes: SIZE, regionSectors: 256, ...(log === 'disk' ? { logFile: files.logFile } : {}) });
      const server = await startServer({ dir: d, tables: [{ table }] });
      const fio = await runFioVerify({ uri: server.uri(), dir: d, numJobs: NUM_JOBS, sliceBytes: SLICE_BYTES, iodepth: 32 });
      expect(fio.errors).toBe(0);
      expect(fio.readBytes).toBe(fio.writtenBytes);
      expect(fio.writtenBytes).toBeGreaterThan(0.7 * SIZE);
      const status = await waitInSync(server);
      expect(status.health).toBe('A'.repeat(legCount));
      await server.stop();
      for (let i = 1; i < legCount; i++) await run('cmp', [files.legs[0]!, files.legs[i]!]);
    });
  }
});
