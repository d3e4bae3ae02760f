// A kernel filesystem on the export without the nbd kernel module: nbdfuse exposes the export as a file,
// losetup makes it a block device, then mkfs.ext4 -> mount -> write files -> umount -> fsck.ext4 -n clean
// -> remount -> checksums equal. Finally the server is stopped and the BACKING FILE itself is checked
// (fsck -n and the same checksums through a fresh server), so the data really went through NBD.
import { createHash, randomFillSync } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { serveLinear, useTempDir } from '../helpers/e2e.js';
import { checksums, FuseLoops } from '../helpers/fuse-loop.js';
import { run } from '../helpers/run.js';
import { startServer, type ServerHandle } from '../helpers/server.js';
import { linearTable } from '../helpers/tables.js';
import { MiB } from '../helpers/tmp.js';
import { requireFuseAndLoop, requireTools } from '../helpers/tools.js';

const ok = requireTools('nbdfuse', 'fusermount3', 'losetup', 'mkfs.ext4', 'fsck.ext4', 'mount', 'umount') && requireFuseAndLoop();
const dir = useTempDir('ext4');
const SIZE = 64 * MiB;

const fl = new FuseLoops();
const attach = (server: ServerHandle, name: string) => fl.attach(server.uri(), join(dir(), `fuse-${name}`));

// vitest runs afterAll hooks in reverse order of registration, so this one (registered after useTempDir's)
// runs first: unmount before servers stop and dirs go.
afterAll(() => fl.detachAll());

describe.skipIf(!ok)('ext4 on nbdfuse + loop', () => {
  it('mkfs, write, fsck clean, remount, checksums equal; backing file checks too', async () => {
    const { server, file } = await serveLinear(dir(), SIZE);
    const loop = await attach(server, 'a');
    await run('mkfs.ext4', ['-q', '-F', '-L', 'nbdmirror', loop]);
    const mnt = join(dir(), 'mnt');
    await fl.mount(loop, mnt);
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
    await fl.umount();
    const fsck = await run('fsck.ext4', ['-n', '-f', loop], { allowFailure: true });
    expect(fsck.code, fsck.stdout + fsck.stderr).toBe(0);
    await fl.mount(loop, mnt);
    expect(await checksums(mnt, names)).toEqual(expected);
    await fl.umount();
    await fl.detachAll();
    await server.stop();

    // The backing file on its own: clean filesystem...
    const direct = await run('fsck.ext4', ['-n', '-f', file], { allowFailure: true });
    expect(direct.code, direct.stdout + direct.stderr).toBe(0);
    // ...holding the same files, read back through a fresh server, nbdfuse and a read-only mount.
    const again = await startServer({ dir: dir(), label: 'again', tables: [{ table: linearTable(file, SIZE) }] });
    const loop2 = await attach(again, 'b');
    await fl.mount(loop2, join(dir(), 'mnt2'), ['-o', 'ro']);
    expect(await checksums(join(dir(), 'mnt2'), names)).toEqual(expected);
    await fl.detachAll();
    await again.stop();
  });
});
