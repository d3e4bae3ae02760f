// A kernel filesystem on the export without the nbd kernel module: nbdfuse exposes the export as a file,
// losetup makes it a block device, then mkfs.ext4 -> mount -> write files -> umount -> fsck.ext4 -n clean
// -> remount -> checksums equal. Finally the server is stopped and the BACKING FILE itself is checked
// (fsck -n and the same checksums through a fresh server), so the data really went through NBD.
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomFillSync } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { serveLinear, useTempDir } from '../helpers/e2e.js';
import { run } from '../helpers/run.js';
import { startServer, type ServerHandle } from '../helpers/server.js';
import { linearTable } from '../helpers/tables.js';
import { MiB } from '../helpers/tmp.js';
import { requireFuseAndLoop, requireTools } from '../helpers/tools.js';

const ok = requireTools('nbdfuse', 'fusermount3', 'losetup', 'mkfs.ext4', 'fsck.ext4', 'mount', 'umount') && requireFuseAndLoop();
const dir = useTempDir('ext4');
const SIZE = 64 * MiB;
const NBDFUSE_READY_MS = 10_000;

/** Everything attached, so cleanup can undo it in reverse order even after a failure. */
const mounted: string[] = [];
const loops: string[] = [];
const fuses: { mountpoint: string; child: ChildProcess }[] = [];

async function attach(server: ServerHandle, name: string): Promise<string> {
  const fuseDir = join(dir(), `fuse-${name}`);
  await mkdir(fuseDir, { recursive: true });
  const child = spawn('nbdfuse', [fuseDir, server.uri()], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (c) => (stderr += c));
  fuses.push({ mountpoint: fuseDir, child });
  const file = join(fuseDir, 'nbd');
  const deadline = Date.now() + NBDFUSE_READY_MS;
  while (!existsSync(file)) {
    if (child.exitCode !== null || Date.now() > deadline) throw new Error(`nbdfuse did not expose ${file}: ${stderr}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  const loop = (await run('losetup', ['-f', '--show', file])).stdout.trim();
  loops.push(loop);
  return loop;
}

async function detachAll(): Promise<void> {
  while (mounted.length > 0) await run('umount', [mounted.pop()!], { allowFailure: true });
  while (loops.length > 0) await run('losetup', ['-d', loops.pop()!], { allowFailure: true });
  while (fuses.length > 0) {
    const f = fuses.pop()!;
    // A detached loop device lets go of the FUSE file a moment later (busy machine): retry the unmount,
    // then unmount lazily, so no stale FUSE mount is left to block removing the temp dir.
    let unmounted = false;
    for (let i = 0; i < 25 && !unmounted; i++) {
      unmounted = (await run('fusermount3', ['-u', f.mountpoint], { allowFailure: true })).code === 0;
      if (!unmounted) await new Promise((r) => setTimeout(r, 200));
    }
    if (!unmounted) await run('fusermount3', ['-u', '-z', f.mountpoint], { allowFailure: true });
    if (f.child.exitCode === null) {
      const exited = new Promise((r) => f.child.once('exit', r));
      const timer = setTimeout(() => f.child.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(timer);
    }
  }
}

// Registered before useTempDir's afterAll runs? vitest runs afterAll hooks in reverse order of
// registration, so this one (registered later) runs first: unmount before servers stop and dirs go.
afterAll(detachAll);

async function mount(device: string, where: string, opts: string[] = []): Promise<void> {
  await mkdir(where, { recursive: true });
  await run('mount', [...opts, device, where]);
  mounted.push(where);
}

async function umount(): Promise<void> {
  await run('umount', [mounted.pop()!]);
}

async function checksums(root: string, names: string[]): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const n of names) out[n] = createHash('sha256').update(await readFile(join(root, n))).digest('hex');
  return out;
}

describe.skipIf(!ok)('ext4 on nbdfuse + loop', () => {
  it('mkfs, write, fsck clean, remount, checksums equal; backing file checks too', async () => {
    const { server, file } = await serveLinear(dir(), SIZE);
    const loop = await attach(server, 'a');
    await run('mkfs.ext4', ['-q', '-F', '-L', 'nbdmirror', loop]);
    const mnt = join(dir(), 'mnt');
    await mount(loop, mnt);
    const names: string[] = [];
    const expected: Record<string, string> = {};
    await mkdir(join(mnt, 'sub'));
    for (let i = 0; i < 24; i++) {
      const name = i % 3 === 0 ? `sub/file${i}` : `file${i}`;
      const data = randomFillSync(Buffer.alloc(((i * 37) % 11) * 100_000 + 4097));
      await writeFile(join(mnt, name), data);
      names.push(name);
      expected[name] = createHash('sha256').update(data).digest('hex');
    }
    await run('sync', []);
    await umount();
    const fsck = await run('fsck.ext4', ['-n', '-f', loop], { allowFailure: true });
    expect(fsck.code, fsck.stdout + fsck.stderr).toBe(0);
    await mount(loop, mnt);
    expect(await checksums(mnt, names)).toEqual(expected);
    await umount();
    await detachAll();
    await server.stop();

    // The backing file on its own: clean filesystem...
    const direct = await run('fsck.ext4', ['-n', '-f', file], { allowFailure: true });
    expect(direct.code, direct.stdout + direct.stderr).toBe(0);
    // ...holding the same files, read back through a fresh server, nbdfuse and a read-only mount.
    const again = await startServer({ dir: dir(), label: 'again', tables: [{ table: linearTable(file, SIZE) }] });
    const loop2 = await attach(again, 'b');
    await mount(loop2, join(dir(), 'mnt2'), ['-o', 'ro']);
    expect(await checksums(join(dir(), 'mnt2'), names)).toEqual(expected);
    await detachAll();
    await again.stop();
  });
});
