// Scenario: pvmove. A synced 2-leg mirror (disk log) and a linear volume share device a.img; `pool move p
// a.img` copies their runs elsewhere and commits; the pool can then drop a.img (`pool reduce`), and the
// volumes serve the same bytes from their new places. (Served volumes move online: move-online.test.ts.)
import { randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseTable } from '../../src/mirror/table.js';
import { readRange } from '../helpers/crash.js';
import { waitInSync } from '../helpers/mirror.js';
import { run } from '../helpers/run.js';
import { startServer } from '../helpers/server.js';
import { requireTools } from '../helpers/tools.js';
import { MiB } from '../helpers/tmp.js';
import { makeDevices, ok, createPool, poolDir, removePoolDir } from './pool-cli.js';

const haveTools = requireTools('nbdcopy');
let dir: string;
let env: NodeJS.ProcessEnv;
let devs: string[];

beforeAll(async () => {
  ({ dir, env } = await poolDir('pool-move-'));
  devs = await createPool(dir, env, 'p', ['a.img', 'b.img', 'c.img'], [
    ['p/m', '--size', '8M', '--mirrors', '1'],
    ['p/l', '--size', '4M', '--mirrors', '0'],
  ]);
  devs.push(...(await makeDevices(dir, ['d.img'])));
  await ok(['pool', 'extend', 'p', devs[3]!], env);
});
afterAll(() => removePoolDir(dir));

describe.runIf(haveTools)('pool move', () => {
  it('moves every run off a device, which can then leave the pool', async () => {
    const mData = randomBytes(8 * MiB);
    const lData = randomBytes(4 * MiB);
    await writeFile(join(dir, 'm.bin'), mData);
    await writeFile(join(dir, 'l.bin'), lData);
    let server = await startServer({ dir, tables: [], extraArgs: ['--pool', 'p'], env });
    await run('nbdcopy', ['--flush', join(dir, 'm.bin'), server.uri('m')]);
    await run('nbdcopy', ['--flush', join(dir, 'l.bin'), server.uri('l')]);
    await waitInSync(server, 'm');
    await server.stop(); // offline move (online: move-online.test.ts)

    const show = await ok<{ devices: { path: string; freeExtents: number; extents: number }[] }>(['pool', 'show', 'p', '--json'], env);
    expect(show.devices.find((d) => d.path === devs[0])!.freeExtents).toBeLessThan(15);
    const out = await ok<{ moves: unknown[]; bytes: number }>(['pool', 'move', 'p', devs[0]!, '--json', '--control', join(dir, 'none.sock')], env);
    expect(out.moves.length).toBeGreaterThanOrEqual(1);
    for (const t of [await ok(['table', 'p/m'], env), await ok(['table', 'p/l'], env)]) expect(t).not.toContain(devs[0]!);
    await ok(['pool', 'reduce', 'p', devs[0]!], env);

    // The moved runs hold the data before anything is served again.
    const spec = parseTable((await ok(['table', 'p/m'], env)).trim());
    if (spec.kind !== 'mirror') throw new Error('not a mirror');
    for (const leg of spec.legs) expect((await readRange(leg.device, leg.offsetSectors * 512, 8 * MiB)).equals(mData), leg.device).toBe(true);

    server = await startServer({ dir, tables: [], extraArgs: ['--pool', 'p'], env });
    await run('nbdcopy', [server.uri('l'), join(dir, 'l.back')]);
    expect((await readFile(join(dir, 'l.back'))).equals(lData)).toBe(true);
    await waitInSync(server, 'm');
    await run('nbdcopy', [server.uri('m'), join(dir, 'm.back')]);
    expect((await readFile(join(dir, 'm.back'))).equals(mData)).toBe(true);
    await server.stop();
    expect((await ok<{ devices: string[] }>(['pool', 'show', 'p', '--json'], env)).devices).toHaveLength(3);
  });
});
