// Fault scenario (issue item 9): the default (source) leg dies while the mirror is out of sync. Leg a
// (nbdkit error filter over a delay filter) holds the data; leg b starts empty and is being resynced
// (slowed, then frozen part-way). Once a fails: reads of regions not yet in sync fail with EIO (b's
// zeros are never returned), regions in sync still read the right data from b, and fio verify on the
// in-sync range passes. `repair` refuses to drop a (and serve b's stale regions) unless --force.
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { useTempDir } from '../helpers/e2e.js';
import { runFioVerify } from '../helpers/fio.js';
import { createSparseFile, MiB, sectorsOf } from '../helpers/tmp.js';
import { requireTools } from '../helpers/tools.js';
import { ExportError } from '../../src/nbd/export.js';
import { patternBlock, readVia, startFaultLeg, type FaultLeg } from './faults-legs.js';
import { sleep, startWithControl, waitFor } from './control-helpers.js';

const SIZE = 16 * MiB;
const SECTORS = sectorsOf(SIZE);
const REGION_BYTES = 512 * 1024;
const REGIONS = SIZE / REGION_BYTES;
const dir = useTempDir('faults-default-leg');
const haveTools = requireTools('nbdkit', 'fio');
const nbdkits: FaultLeg[] = [];

afterEach(async () => {
  for (const n of nbdkits.splice(0)) await n.stop();
});

const syncCount = (status: string) => Number(new RegExp(`(\\d+)/${REGIONS} 1 `).exec(status)?.[1] ?? NaN);

describe.skipIf(!haveTools)('the default leg dies while out of sync', () => {
  it('unsynced regions read EIO (never stale data), synced regions still read, fio verify passes on them', async () => {
    const d = join(dir(), 'default');
    await mkdir(d);
    const good = await startFaultLeg(d, 'a', SIZE, { delayReadMs: 600 });
    nbdkits.push(good);
    const original = patternBlock(0, SIZE, 0x5d);
    await writeFile(good.file, original);
    const stale = await createSparseFile(join(d, 'b.img'), SIZE);
    const table = `0 ${SECTORS} mirror core 1 1024 2 ${good.uri} 0 ${stale} 0`;
    const c = await startWithControl(d, { tables: [{ table, name: 'vol' }] });
    const uri = c.server.uri('vol');
    try {
      expect((await c.ctl('message', 'vol', 'resync_rate', String(MiB))).code).toBe(0);
      await waitFor('3 regions in sync', async () => syncCount(await c.status('vol')) >= 3);
      expect((await c.ctl('message', 'vol', 'frozen')).code).toBe(0);
      // Frozen: the count settles (an in-flight region is aborted or completes).
      let n = syncCount(await c.status('vol'));
      for (;;) {
        await sleep(400);
        const m = syncCount(await c.status('vol'));
        if (m === n) break;
        n = m;
      }
      expect(n).toBeGreaterThanOrEqual(3);
      expect(n).toBeLessThan(REGIONS);
      await good.arm();

      const ok: number[] = [];
      const failed: number[] = [];
      for (let r = 0; r < REGIONS; r++) {
        const got = await readVia(uri, r * REGION_BYTES, REGION_BYTES);
        if (got instanceof Error) {
          expect(got).toBeInstanceOf(ExportError);
          expect((got as ExportError).errno).toBe('EIO');
          failed.push(r);
        } else {
          // Never b's zeros: a region that reads, reads the data.
          expect(got.equals(original.subarray(r * REGION_BYTES, (r + 1) * REGION_BYTES)), `region ${r}`).toBe(true);
          ok.push(r);
        }
      }
      expect(ok.length).toBe(n);
      expect(failed.length).toBe(REGIONS - n);
      expect((await c.status('vol'))).toMatch(/ \d+\/32 1 [DRSFU]A 1 core\n$/);

      // The volume stays usable on the synced range: writes go to b, verify reads them back.
      const first = ok[0]!;
      expect(ok.slice(0, 2)).toEqual([first, first + 1]);
      const fio = await runFioVerify({ uri, dir: d, numJobs: 1, sliceBytes: 2 * REGION_BYTES, iodepth: 4, bs: '4k' });
      expect(fio.errors).toBe(0);

      // Repair would drop the only copy of the unsynced regions and serve b's stale data: refused, with the
      // reason, and nothing changed; `repair --force` accepts the loss (the table becomes linear on b).
      const tableBefore = (await c.ctl('table', 'vol')).stdout;
      const refused = await c.ctl('repair', 'vol');
      expect(refused.code, refused.stdout + refused.stderr).not.toBe(0);
      expect(refused.stderr).toMatch(/default leg failed while the mirror was out of sync/);
      expect(refused.stderr).toContain('repair --force');
      expect((await c.ctl('table', 'vol')).stdout).toBe(tableBefore);
      expect(await readVia(uri, failed[0]! * REGION_BYTES, REGION_BYTES)).toBeInstanceOf(ExportError);
      const forced = await c.ctl('repair', 'vol', '--force');
      expect(forced.code, forced.stdout + forced.stderr).toBe(0);
      expect((await c.ctl('table', 'vol')).stdout).toBe(`0 ${SECTORS} linear ${stale} 0\n`);
    } finally {
      await c.server.stop();
    }
  });
});
