// Fault scenario (issue item 4): a 3-leg mirror loses 2 legs during a filesystem workload. Legs b and c
// are nbdkit exports (error filter over a delay filter); with handle_errors + --repair-policy remove the
// volume is repaired (one or two passes) down to a linear table on a. The workload — mkfs.ext4 on
// nbdfuse + loop, mount, write files, umount — sees no error; fsck.ext4 -n is clean, the files read
// back equal after a remount, and leg a's file on its own holds a clean filesystem.
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomFillSync } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { useTempDir } from '../helpers/e2e.js';
import { run } from '../helpers/run.js';
import { createSparseFile, MiB, sectorsOf } from '../helpers/tmp.js';
import { requireFuseAndLoop, requireTools } from '../helpers/tools.js';
import { ControlClient } from '../../src/control/client.js';
import { startFaultLeg, type FaultLeg } from './faults-legs.js';
import { sleep, startWithControl, waitFor } from './control-helpers.js';

const SIZE = 64 * MiB;
const SECTORS = sectorsOf(SIZE);
const NBDFUSE_READY_MS = 10_000;
const dir = useTempDir('faults-mkfs');
const haveTools =
  requireTools('nbdkit', 'nbdfuse', 'fusermount3', 'losetup', 'mkfs.ext4', 'fsck.ext4', 'mount', 'umount') && requireFuseAndLoop();
const nbdkits: FaultLeg[] = [];
const mounted: string[] = [];
const loops: string[] = [];
const fuses: { mountpoint: string; child: ChildProcess }[] = [];

async function attach(uri: string, where: string): Promise<string> {
  await mkdir(where, { recursive: true });
  const child = spawn('nbdfuse', [where, uri], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (c) => (stderr += c));
  fuses.push({ mountpoint: where, child });
  const file = join(where, 'nbd');
  const deadline = Date.now() + NBDFUSE_READY_MS;
  while (!existsSync(file)) {
    if (child.exitCode !== null || Date.now() > deadline) throw new Error(`nbdfuse did not expose ${file}: ${stderr}`);
    await sleep(50);
  }
  const loop = (await run('losetup', ['-f', '--show', file])).stdout.trim();
  loops.push(loop);
  return loop;
}

/** Cleanup steps are bounded: a stuck device must fail the test, not hang it. */
const CLEANUP_STEP_MS = 15_000;
const quietly = (cmd: string, args: string[]) => run(cmd, args, { allowFailure: true, timeoutMs: CLEANUP_STEP_MS }).catch(() => undefined);

async function detachAll(): Promise<void> {
  while (mounted.length > 0) await quietly('umount', [mounted.pop()!]);
  while (loops.length > 0) await quietly('losetup', ['-d', loops.pop()!]);
  while (fuses.length > 0) {
    const f = fuses.pop()!;
    await quietly('fusermount3', ['-u', f.mountpoint]);
    if (f.child.exitCode === null) {
      const exited = new Promise((r) => f.child.once('exit', r));
      const timer = setTimeout(() => f.child.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(timer);
    }
  }
}

// Registered after useTempDir's hook, so it runs first: unmount before the directory goes.
afterAll(detachAll);
afterEach(async () => {
  await detachAll();
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
      const loop = await attach(c.server.uri('vol'), join(d, 'fuse'));
      // mkfs runs; b dies part-way, c dies once b's failure was seen (or mkfs ended).
      const mkfs = run('mkfs.ext4', ['-F', '-L', 'faults', loop], { allowFailure: true, timeoutMs: 30_000 });
      await sleep(150);
      await b.arm();
      await Promise.race([waitFor('b failed', async () => failedDevices().size >= 1), mkfs]);
      await c3.arm();
      const made = await mkfs;
      expect(made.code, made.stdout + made.stderr).toBe(0);
      const mnt = join(d, 'mnt');
      await mkdir(mnt);
      await run('mount', [loop, mnt], { timeoutMs: 30_000 });
      mounted.push(mnt);
      const expected: Record<string, string> = {};
      for (let i = 0; i < 16; i++) {
        const data = randomFillSync(Buffer.alloc(((i * 37) % 11) * 50_000 + 4097));
        await writeFile(join(mnt, `f${i}`), data);
        expected[`f${i}`] = createHash('sha256').update(data).digest('hex');
      }
      await run('sync', [], { timeoutMs: 30_000 });
      await run('umount', [mounted.pop()!], { timeoutMs: 30_000 });
      await waitFor('repair to linear', async () => (await c.status('vol')) === `0 ${SECTORS} linear\n`, 30_000);
      expect((await c.ctl('table', 'vol')).stdout).toBe(`0 ${SECTORS} linear ${a} 0\n`);
      const k = events.map((e) => e.kind);
      expect(k.filter((x) => x === 'leg-failed').length).toBeGreaterThanOrEqual(2);
      expect(k).toContain('repair-done');
      expect((await c.info('vol')).heldWrites).toBe(0);
      const fsck = await run('fsck.ext4', ['-n', '-f', loop], { allowFailure: true });
      expect(fsck.code, fsck.stdout + fsck.stderr).toBe(0);
      await run('mount', ['-o', 'ro', loop, mnt]);
      mounted.push(mnt);
      for (const [name, sum] of Object.entries(expected)) {
        expect(createHash('sha256').update(await readFile(join(mnt, name))).digest('hex'), name).toBe(sum);
      }
      await detachAll();
      passed = true;
    } finally {
      if (!passed) console.error('faults-mkfs events:', JSON.stringify(events.map((e) => [e.kind, e.data])), await c.status('vol').catch(String));
      ws.close();
      await detachAll();
      await c.server.stop();
    }
    const direct = await run('fsck.ext4', ['-n', '-f', a], { allowFailure: true });
    expect(direct.code, direct.stdout + direct.stderr).toBe(0);
  });
});
