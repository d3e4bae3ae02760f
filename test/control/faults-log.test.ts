// Fault scenario (issue item 7): the disk log device dies. The log lives on an nbdkit export with the
// error filter; two file legs, handle_errors. Once the log fails: a log-failed event is raised, and a write
// that needs a new mark is held and NOT written to any leg (no write without a durable mark) while fio
// verify runs on the volume. Repair by hand replaces the log with a core log (suspend --noflush, reload,
// resume): the held writes complete, fio verify passes, and the legs are resynced to identical.
import { spawn } from 'node:child_process';
import { mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { useTempDir } from '../helpers/e2e.js';
import { runFioVerify } from '../helpers/fio.js';
import { createSparseFile, MiB, sectorsOf } from '../helpers/tmp.js';
import { requireTools } from '../helpers/tools.js';
import { ControlClient } from '../../src/control/client.js';
import { startFaultLeg, type FaultLeg } from './faults-legs.js';
import { sleep, startWithControl, waitFor } from './control-helpers.js';

const SIZE = 16 * MiB;
const SECTORS = sectorsOf(SIZE);
const PROBE_OFF = 12 * MiB; // a clean region outside fio's [0, 8 MiB)
const dir = useTempDir('faults-log');
const haveTools = requireTools('nbdkit', 'fio', 'qemu-io');
const nbdkits: FaultLeg[] = [];

afterEach(async () => {
  for (const n of nbdkits.splice(0)) await n.stop();
});

describe.skipIf(!haveTools)('the disk log device dies', () => {
  it('raises log-failed, holds writes without a durable mark, and a core-log reload completes them', async () => {
    const d = join(dir(), 'log');
    await mkdir(d);
    const a = await createSparseFile(join(d, 'a.img'), SIZE);
    const b = await createSparseFile(join(d, 'b.img'), SIZE);
    const log = await startFaultLeg(d, 'log', MiB);
    nbdkits.push(log);
    const table = `0 ${SECTORS} mirror disk 2 ${log.uri} 1024 2 ${a} 0 ${b} 0 1 handle_errors`;
    const c = await startWithControl(d, { tables: [{ table, name: 'vol' }] });
    const uri = c.server.uri('vol');
    const events: Record<string, unknown>[] = [];
    const ws = await new ControlClient({ kind: 'unix', path: c.controlPath }).events('vol', (ev) => events.push(ev));
    let child: ReturnType<typeof spawn> | undefined;
    try {
      await waitFor('in sync', async () => / 32\/32 1 AA 3 disk \S+ A\n$/.test(await c.status('vol')));
      const before = (await c.info('vol')).eventNr;
      await log.arm();
      const fio = runFioVerify({ uri, dir: d, numJobs: 2, sliceBytes: 4 * MiB, iodepth: 4 });
      child = spawn('qemu-io', ['-f', 'raw', '-c', `write -P 0x4e ${PROBE_OFF} 64k`, uri], { stdio: 'ignore' });
      let probeExit: number | null | undefined;
      const probeDone = new Promise<number | null>((r) => child!.on('exit', (code) => r((probeExit = code))));
      await waitFor('log-failed', async () => events.some((e) => e.kind === 'log-failed'));
      await waitFor('held writes', async () => (await c.info('vol')).heldWrites >= 2);
      expect((await c.info('vol')).eventNr).toBeGreaterThan(before);
      expect(await c.status('vol')).toMatch(/ 3 disk \S+ [DF]\n$/);
      await sleep(300);
      expect(probeExit, 'a write without a durable mark must not complete').toBeUndefined();
      // ... and it reached no leg.
      for (const leg of [a, b]) {
        const bytes = await readFile(leg);
        expect(bytes.subarray(PROBE_OFF, PROBE_OFF + 64 * 1024).some((x) => x !== 0), `${leg} got an unmarked write`).toBe(false);
      }
      // Repair: replace the log with a core log.
      expect((await c.ctl('suspend', '--noflush', 'vol')).code).toBe(0);
      const core = `0 ${SECTORS} mirror core 1 1024 2 ${a} 0 ${b} 0 1 handle_errors`;
      const r = await c.ctl('reload', 'vol', core);
      expect(r.code, r.stderr).toBe(0);
      const resumed = await c.json<{ swapped: boolean; heldWritesReissued: number }>('resume', 'vol');
      expect(resumed.swapped).toBe(true);
      expect(resumed.heldWritesReissued).toBeGreaterThanOrEqual(2);
      expect(await probeDone).toBe(0);
      const f = await fio;
      expect(f.errors).toBe(0);
      expect(f.readBytes).toBe(f.writtenBytes);
      expect((await c.ctl('table', 'vol')).stdout).toBe(`${core}\n`);
      await waitFor('in sync on the core log', async () => / 32\/32 1 AA 1 core\n$/.test(await c.status('vol')), 60_000);
      expect((await c.info('vol')).heldWrites).toBe(0);
    } finally {
      child?.kill('SIGKILL');
      ws.close();
      await c.server.stop();
    }
    const [ba, bb] = await Promise.all([readFile(a), readFile(b)]);
    expect(ba.subarray(PROBE_OFF, PROBE_OFF + 64 * 1024).every((x) => x === 0x4e)).toBe(true);
    expect(ba.equals(bb)).toBe(true);
  });
});
