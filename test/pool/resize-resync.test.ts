// Scenario: grow a synced 2-leg mirror (disk log) from 8 MiB to 16 MiB offline, then serve it. Only the
// new part is resynced: a difference planted on leg 2 inside the OLD part (a clean region) survives the
// resync, while garbage planted on leg 2 inside the NEW part is overwritten with leg 1's bytes.
import { randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseTable, type MirrorTableSpec } from '../../src/mirror/table.js';
import { readRange, writeRange } from '../helpers/crash.js';
import { mirrorStatus, waitInSync } from '../helpers/mirror.js';
import { run } from '../helpers/run.js';
import { startServer } from '../helpers/server.js';
import { requireTools } from '../helpers/tools.js';
import { MiB } from '../helpers/tmp.js';
import { ok, createPool, poolDir, removePoolDir } from './pool-cli.js';

const haveTools = requireTools('nbdcopy');
let dir: string;
let env: NodeJS.ProcessEnv;

beforeAll(async () => {
  ({ dir, env } = await poolDir('pool-resize-'));
  await createPool(dir, env, 'p', ['a.img', 'b.img', 'c.img'], [['p/v', '--size', '8M', '--mirrors', '1', '--region-size', '512K']]);
});
afterAll(() => removePoolDir(dir));

async function mirrorSpec(): Promise<MirrorTableSpec> {
  const spec = parseTable((await ok(['table', 'p/v'], env)).trim());
  if (spec.kind !== 'mirror') throw new Error('not a mirror');
  return spec;
}

describe.runIf(haveTools)('resize', () => {
  it('grows in place and resyncs only the new part', async () => {
    // Fill and sync at 8 MiB, then stop cleanly (every region clean in the disk log).
    let server = await startServer({ dir, tables: [], extraArgs: ['--pool', 'p'], env });
    await writeFile(join(dir, 'data.bin'), randomBytes(8 * MiB));
    await run('nbdcopy', ['--flush', join(dir, 'data.bin'), server.uri('v')]);
    await waitInSync(server, 'v');
    await server.stop();

    const before = await mirrorSpec();
    const out = await ok<{ volume: { sizeBytes: number; legs: { startExtent: number }[] } }>(['resize', 'p/v', '--size', '16M', '--json'], env);
    expect(out.volume.sizeBytes).toBe(16 * MiB);
    const after = await mirrorSpec();
    expect(after.lengthSectors).toBe(2 * before.lengthSectors);
    expect(after.legs).toEqual(before.legs); // grown in place: same devices, same offsets

    // Plant: leg 2 differs inside old region 3, and holds garbage in the new part (region 20).
    const [l1, l2] = after.legs;
    const oldAt = 3 * 512 * 1024 + 100;
    const newAt = 10 * MiB + 4096;
    const planted = Buffer.from('planted-in-a-clean-region');
    await writeRange(l2!.device, l2!.offsetSectors * 512 + oldAt, planted);
    await writeRange(l2!.device, l2!.offsetSectors * 512 + newAt, randomBytes(4096));

    server = await startServer({ dir, tables: [], extraArgs: ['--pool', 'p'], env });
    const first = await mirrorStatus(server, 'v');
    expect(first.regionCount).toBe(32);
    expect(first.inSyncRegions).toBeGreaterThanOrEqual(16); // the old half is in sync from the start
    await waitInSync(server, 'v');
    await server.stop();

    expect((await readRange(l2!.device, l2!.offsetSectors * 512 + oldAt, planted.length)).equals(planted)).toBe(true);
    const a = await readRange(l1!.device, l1!.offsetSectors * 512 + 8 * MiB, 8 * MiB);
    const b = await readRange(l2!.device, l2!.offsetSectors * 512 + 8 * MiB, 8 * MiB);
    expect(a.equals(b)).toBe(true);
  });
});
