// Fault scenario (issue item 4): a 3-leg mirror loses 2 legs during a filesystem workload. Legs b and c
// are nbdkit exports (error filter over a delay filter); with handle_errors + --repair-policy remove the
// volume is repaired (one or two passes) down to a linear table on a. The workload — mkfs.ext4 on
// nbdfuse + loop, mount, write files, umount — sees no error; fsck.ext4 -n is clean, the files read
// back equal after a remount, and leg a's file on its own holds a clean filesystem.
import { createHash, randomFillSync } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { useTempDir } from '../helpers/e2e.js';
import { checksums, FuseLoops } from '../helpers/fuse-loop.js';
import { run } from '../helpers/run.js';
import { createSparseFile, MiB, sectorsOf } from '../helpers/tmp.js';
import { requireFuseAndLoop, requireTools } from '../helpers/tools.js';
import { ControlClient } from '../../src/control/client.js';
import { startFaultLeg, type FaultLeg } from './faults-legs.js';
import { sleep, startWithControl, waitFor } from './control-helpers.js';

const SIZE = 64 * MiB;
const SECTORS = sectorsOf(SIZE);
const dir = useTempDir('faults-mkfs');
const haveTools =
  requireTools('nbdkit', 'nbdfuse', 'fusermount3', 'losetup', 'mkfs.ext4', 'fsck.ext4', 'mount', 'umount') && requireFuseAndLoop();
const nbdkits: FaultLeg[] = [];
const fl = new FuseLoops();

// Registered after useTempDir's hook, so it runs first: unmount before the directory goes.
afterAll(() => fl.detachAll());
afterEach(async () => {
  await fl.detachAll();
  for (const n of nbdkits.splice(0)) await n.stop();
});

describe.skipIf(!haveTools)('a 3-leg mirror loses 2 legs during mkfs', () => {
  it('repairs to linear on the survivor; mkfs and the file writes see no error; fsck clean; files equal', async () => {
    const d = join(dir(), 'mkfs');
    await mkdir(d);
    const a = await createSparseFile(join(d, 'a.img'), SIZE);
    const b = await startFaultLeg(d, 'b', SIZE, { delayWriteMs: 5 });
    nbdkits.push(b);
    const c3 = await startFaultLeg(d, 'c', SIZE, { delayWriteMs: 5 });
    nbdkits.push(c3);
    const table = `0 ${SECTORS} mirror core 2 1024 nosync 3 ${a} 0 ${b.uri} 0 ${c3.uri} 0 1 handle_errors`;
    const c = await startWithControl(d, { tables: [{ table, name: 'vol' }], controlArgs: ['--repair-policy', 'remove'] });
    const events: Record<string, unknown>[] = [];
    const ws = await new ControlClient({ kind: 'unix', path: c.controlPath }).events('vol', (ev) => events.push(ev));
    let passed = false;
    const failedDevices = () => new Set(events.filter((e) => e.kind === 'leg-failed').map((e) => String((e.data as { device?: string } | undefined)?.device)));
    try {
      const loop = await fl.attach(c.server.uri('vol'), join(d, 'fuse'));
      // mkfs runs; b dies part-way, c dies once b's failure was seen (or mkfs ended).
      const mkfs = run('mkfs.ext4', ['-F', '-L', 'faults', loop], { allowFailure: true, timeoutMs: 30_000 });
      await sleep(150);
      await b.arm();
      await Promise.race([waitFor('b failed', async () => failedDevices().size >= 1), mkfs]);
      await c3.arm();
      const made = await mkfs;
      expect(made.code, made.stdout + made.stderr).toBe(0);
      const mnt = join(d, 'mnt');
      await fl.mount(loop, mnt);
      const expected: Record<string, string> = {};
      for (let i = 0; i < 16; i++) {
        const data = randomFillSync(Buffer.alloc(((i * 37) % 11) * 50_000 + 4097));
        await writeFile(join(mnt, `f${i}`), data);
        expected[`f${i}`] = createHash('sha256').update(data).digest('hex');
      }
      await run('sync', [], { timeoutMs: 30_000 });
      await fl.umount();
      await waitFor('repair to linear', async () => (await c.status('vol')) === `0 ${SECTORS} linear\n`, 30_000);
      expect((await c.ctl('table', 'vol')).stdout).toBe(`0 ${SECTORS} linear ${a} 0\n`);
      const k = events.map((e) => e.kind);
      expect(k.filter((x) => x === 'leg-failed').length).toBeGreaterThanOrEqual(2);
      expect(k).toContain('repair-done');
      expect((await c.info('vol')).heldWrites).toBe(0);
      const fsck = await run('fsck.ext4', ['-n', '-f', loop], { allowFailure: true });
      expect(fsck.code, fsck.stdout + fsck.stderr).toBe(0);
      await fl.mount(loop, mnt, ['-o', 'ro']);
      expect(await checksums(mnt, Object.keys(expected))).toEqual(expected);
      await fl.detachAll();
      passed = true;
    } finally {
      if (!passed) console.error('faults-mkfs events:', JSON.stringify(events.map((e) => [e.kind, e.data])), await c.status('vol').catch(String));
      ws.close();
      await fl.detachAll();
      await c.server.stop();
    }
    const direct = await run('fsck.ext4', ['-n', '-f', a], { allowFailure: true });
    expect(direct.code, direct.stdout + direct.stderr).toBe(0);
  });
});
