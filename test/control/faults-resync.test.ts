// Fault scenario (issue item 3): a leg dies while the mirror is resyncing it. Leg a holds data, leg b
// (nbdkit: error filter over a delay filter) is out of sync and being copied to slowly (resync_rate);
// b is armed while fio verify runs. With handle_errors + --repair-policy remove the volume is repaired
// to a linear table on a: fio sees no error and its verify passes; a's data outside fio's slices is intact.
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { useTempDir } from '../helpers/e2e.js';
import { runFioVerify } from '../helpers/fio.js';
import { MiB, sectorsOf } from '../helpers/tmp.js';
import { requireTools } from '../helpers/tools.js';
import { ControlClient } from '../../src/control/client.js';
import { patternBlock, startFaultLeg, type FaultLeg } from './faults-legs.js';
import { startWithControl, waitFor } from './control-helpers.js';

const SIZE = 16 * MiB;
const SECTORS = sectorsOf(SIZE);
const REGIONS = 32; // 1024-sector regions
const dir = useTempDir('faults-resync');
const haveTools = requireTools('nbdkit', 'fio');
const nbdkits: FaultLeg[] = [];

afterEach(async () => {
  for (const n of nbdkits.splice(0)) await n.stop();
});

const syncCount = (status: string) => Number(new RegExp(`(\\d+)/${REGIONS} 1 `).exec(status)?.[1] ?? NaN);

describe.skipIf(!haveTools)('a leg dies during resync', () => {
  it('is repaired (policy remove) with no error to the client; fio verify passes; the source is intact', async () => {
    const d = join(dir(), 'resync');
    await mkdir(d);
    const fileLeg = join(d, 'a.img');
    const original = patternBlock(0, SIZE, 0xa1);
    await writeFile(fileLeg, original);
    const bad = await startFaultLeg(d, 'b', SIZE, { delayWriteMs: 600 });
    nbdkits.push(bad);
    const table = `0 ${SECTORS} mirror core 1 1024 2 ${fileLeg} 0 ${bad.uri} 0 1 handle_errors`;
    const c = await startWithControl(d, { tables: [{ table, name: 'vol' }], controlArgs: ['--repair-policy', 'remove'] });
    const events: Record<string, unknown>[] = [];
    const ws = await new ControlClient({ kind: 'unix', path: c.controlPath }).events('vol', (ev) => events.push(ev));
    try {
      expect((await c.ctl('message', 'vol', 'resync_rate', String(MiB))).code).toBe(0);
      // The resync is running (some regions copied) and not finished when the leg dies.
      const before = await waitFor('resync under way', async () => {
        const n = syncCount(await c.status('vol'));
        return n >= 1 ? n : undefined;
      });
      expect(before).toBeLessThan(REGIONS);
      await bad.arm();
      const fio = await runFioVerify({ uri: c.server.uri('vol'), dir: d, numJobs: 2, sliceBytes: 4 * MiB, iodepth: 8 });
      expect(fio.errors).toBe(0);
      expect(fio.writtenBytes).toBeGreaterThan(4 * MiB);
      expect(fio.readBytes).toBe(fio.writtenBytes);
      await waitFor('repair to linear', async () => (await c.status('vol')) === `0 ${SECTORS} linear\n`);
      expect((await c.ctl('table', 'vol')).stdout).toBe(`0 ${SECTORS} linear ${fileLeg} 0\n`);
      const k = events.map((e) => e.kind);
      expect(k).toContain('leg-failed');
      expect(k.indexOf('leg-failed')).toBeLessThan(k.indexOf('repair-done'));
      expect((await c.info('vol')).heldWrites).toBe(0);
    } finally {
      ws.close();
      await c.server.stop();
    }
    // fio wrote [0, 8 MiB); the rest of the source leg is untouched by the failed resync.
    const after = await readFile(fileLeg);
    expect(after.subarray(8 * MiB).equals(original.subarray(8 * MiB))).toBe(true);
  });
});
