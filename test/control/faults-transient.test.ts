// Fault scenario (issue item 5): a transient leg failure that comes back. handle_errors, no repair
// policy: leg b fails, a write is held; by hand the table drops b (suspend --noflush, reload a linear
// table on a, resume: the held write completes) and new data is written while b is out. b comes back
// (disarmed; reload the two-leg mirror): b is not known up to date, so every region is resynced from a and b
// is never a read source — reads during the resync never return b's old data, fio verify runs during
// the resync, and at the end b is byte-identical to a.
import { spawn } from 'node:child_process';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { useTempDir } from '../helpers/e2e.js';
import { runFioVerify } from '../helpers/fio.js';
import { MiB, sectorsOf } from '../helpers/tmp.js';
import { requireTools } from '../helpers/tools.js';
import { NbdClient } from '../../src/nbd/client/client.js';
import { patternBlock, startFaultLeg, type FaultLeg } from './faults-legs.js';
import { startWithControl, waitFor } from './control-helpers.js';

const SIZE = 16 * MiB;
const SECTORS = sectorsOf(SIZE);
const REGIONS = 32;
const OUT_OFF = 8 * MiB; // written while b is out; fio verify uses [0, 8 MiB) during the resync
const dir = useTempDir('faults-transient');
const haveTools = requireTools('nbdkit', 'fio', 'qemu-io');
const nbdkits: FaultLeg[] = [];

afterEach(async () => {
  for (const n of nbdkits.splice(0)) await n.stop();
});

const syncCount = (status: string) => Number(new RegExp(`(\\d+)/${REGIONS} 1 `).exec(status)?.[1] ?? NaN);

describe.skipIf(!haveTools)('a transient leg failure that comes back', () => {
  it('the returning leg is fully resynced, never read from while stale, and ends identical', async () => {
    const d = join(dir(), 'transient');
    await mkdir(d);
    const fileLeg = join(d, 'a.img');
    const gen1 = patternBlock(0, SIZE, 0x01);
    await writeFile(fileLeg, gen1);
    const b = await startFaultLeg(d, 'b', SIZE, { delayWriteMs: 300 });
    nbdkits.push(b);
    await writeFile(b.file, gen1); // in sync at the start (nosync)
    const two = `0 ${SECTORS} mirror core 2 1024 nosync 2 ${fileLeg} 0 ${b.uri} 0 1 handle_errors`;
    const oneLeg = `0 ${SECTORS} linear ${fileLeg} 0`;
    const back = `0 ${SECTORS} mirror core 1 1024 2 ${fileLeg} 0 ${b.uri} 0 1 handle_errors`;
    const c = await startWithControl(d, { tables: [{ table: two, name: 'vol' }] });
    const uri = c.server.uri('vol');
    try {
      expect(await c.status('vol')).toMatch(/ 32\/32 1 AA 1 core\n$/);
      // 1. b fails: the write is held.
      await b.arm();
      const child = spawn('qemu-io', ['-f', 'raw', '-c', `write -P 0x22 ${OUT_OFF} 64k`, uri], { stdio: 'ignore' });
      const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
      await waitFor('a held write', async () => (await c.info('vol')).heldWrites >= 1);
      expect(await c.status('vol')).toMatch(/ 1 A[DF] 1 core\n$/);
      // 2. Drop b by hand; the held write completes on a.
      expect((await c.ctl('suspend', '--noflush', 'vol')).code).toBe(0);
      const r1 = await c.ctl('reload', 'vol', oneLeg);
      expect(r1.code, r1.stderr).toBe(0);
      expect((await c.ctl('resume', 'vol')).code).toBe(0);
      expect(await exited).toBe(0);
      // 3. New data while b is out (gen 2 over [8, 16) MiB).
      const gen2 = patternBlock(OUT_OFF, SIZE - OUT_OFF, 0x02);
      const client = await NbdClient.connect(uri);
      for (let o = 0; o < gen2.length; o += MiB) await client.write(gen2.subarray(o, o + MiB), OUT_OFF + o, { fua: false });
      await client.flush();
      // 4. b comes back: disarmed, reloaded with both legs. It is stale: every region is out of sync.
      await b.disarm();
      expect((await c.ctl('suspend', 'vol')).code).toBe(0);
      const r2 = await c.ctl('reload', 'vol', back);
      expect(r2.code, r2.stderr).toBe(0);
      expect((await c.ctl('resume', 'vol')).code).toBe(0);
      expect((await c.ctl('message', 'vol', 'resync_rate', String(2 * MiB))).code).toBe(0);
      const started = syncCount(await c.status('vol'));
      expect(started).toBeLessThan(REGIONS);
      // 5. During the resync: fio verify on [0, 8 MiB), and reads of [8, 16) MiB always return gen 2.
      const fio = runFioVerify({ uri, dir: d, numJobs: 2, sliceBytes: 4 * MiB, iodepth: 4 });
      let passes = 0;
      let sawPartial = false;
      while (syncCount(await c.status('vol')) < REGIONS || passes < 2) {
        const got = Buffer.alloc(SIZE - OUT_OFF);
        const n = syncCount(await c.status('vol'));
        if (n < REGIONS) sawPartial = true;
        for (let o = 0; o < got.length; o += 512 * 1024) await client.read(got.subarray(o, o + 512 * 1024), OUT_OFF + o);
        expect(got.equals(gen2), `pass ${passes}: stale data read while b resyncs`).toBe(true);
        passes++;
        if (passes > 200) break;
      }
      expect(sawPartial).toBe(true);
      const f = await fio;
      expect(f.errors).toBe(0);
      expect(f.readBytes).toBe(f.writtenBytes);
      await client.close();
      await waitFor('in sync', async () => / 32\/32 1 AA 1 core\n$/.test(await c.status('vol')), 60_000);
    } finally {
      await c.server.stop();
    }
    const [a, bb] = await Promise.all([readFile(fileLeg), readFile(b.file)]);
    expect(a.subarray(OUT_OFF).equals(patternBlock(OUT_OFF, SIZE - OUT_OFF, 0x02))).toBe(true);
    expect(bb.equals(a)).toBe(true);
  });
});
