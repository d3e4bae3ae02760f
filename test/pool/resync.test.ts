// `nbd-mirror resync` (lvchange --resync) on pool volumes:
// - a lost source: the first leg fails (reads) while the new volume's first resync copies from it, so the
//   disk log records it as the lost source with regions out of sync; `serve --pool` then refuses, naming
//   the leg; `resync --source <other leg>` accepts the loss and the next serve copies every region from
//   that leg (the legs end identical, holding its bytes);
// - a full resync from a chosen leg of a synced volume: bytes planted on leg 2 in a clean region are copied
//   onto leg 1 (every region is recopied, from leg 2);
// - refusals: a --source that is not a leg, a linear volume, a served volume; nothing changes.
import { randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FaultyLeg } from '../../src/mirror/legs/faulty.js';
import { defaultLegOpener, openTable } from '../../src/mirror/open.js';
import { parseTable, type MirrorTableSpec } from '../../src/mirror/table.js';
import type { MirrorExport } from '../../src/mirror/mirror.js';
import { readRange, writeRange } from '../helpers/crash.js';
import { mirrorStatus, waitInSync } from '../helpers/mirror.js';
import { DISK_LOG_BITMAP_OFFSET_BYTES, DISK_LOG_MAGIC } from '../../src/mirror/log/disk.js';
import { run } from '../helpers/run.js';
import { startServer } from '../helpers/server.js';
import { requireTools } from '../helpers/tools.js';
import { MiB } from '../helpers/tmp.js';
import { areaHashes, cli, createPool, ok, poolDir, removePoolDir } from './pool-cli.js';

const haveTools = requireTools('nbdcopy');
const SIZE = 8 * MiB;
let dir: string;
let env: NodeJS.ProcessEnv;
let devices: string[];

beforeAll(async () => {
  ({ dir, env } = await poolDir('pool-resync-'));
  devices = await createPool(dir, env, 'p', ['a.img', 'b.img', 'c.img'], [
    ['p/lost', '--size', '8M', '--mirrors', '1', '--region-size', '512K'],
    ['p/v', '--size', '8M', '--mirrors', '1', '--region-size', '512K'],
    ['p/lin', '--size', '4M', '--mirrors', '0'],
    ['p/ns', '--size', '4M', '--mirrors', '1', '--region-size', '512K', '--nosync'],
  ]);
});
afterAll(() => removePoolDir(dir));

async function mirrorSpec(volume: string): Promise<MirrorTableSpec> {
  const spec = parseTable((await ok<string>(['table', `p/${volume}`], env)).trim());
  if (spec.kind !== 'mirror') throw new Error('not a mirror');
  return spec;
}

async function legBytes(spec: MirrorTableSpec, leg: number): Promise<Buffer> {
  const l = spec.legs[leg]!;
  return readRange(l.device, l.offsetSectors * 512, SIZE);
}

describe.runIf(haveTools)('resync (lvchange --resync)', () => {
  it('accepts a lost source: serve refuses, resync --source the other leg, then everything is copied from it', async () => {
    const spec = await mirrorSpec('lost');
    const [l1, l2] = spec.legs;
    const second = randomBytes(SIZE);
    await writeRange(l2!.device, l2!.offsetSectors * 512, second);
    // The new volume's first activation: every region out of sync, leg 1 the source. Leg 1's reads fail, so
    // the first resync copy fails it while regions are out of sync: the log records it as the lost source.
    const opener = defaultLegOpener();
    const exp = (await openTable(parseTable((await ok<string>(['table', 'p/lost'], env)).trim()), {
      openLeg: async (device, offsetBytes, opts) => {
        const leg = await opener(device, offsetBytes, opts);
        return device === l1!.device && offsetBytes === l1!.offsetSectors * 512 ? new FaultyLeg(leg, { rules: { read: { errno: 'EIO' } } }) : leg;
      },
    })) as MirrorExport;
    const deadline = Date.now() + 10_000;
    while (exp.status().legs[0]!.health === 'A' && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    expect(exp.status().legs[0]!.health).not.toBe('A');
    await exp.close();

    const refused = await cli(['serve', '--pool', 'p', '--listen', `unix:${join(dir, 'refused.sock')}`, '--control', join(dir, 'refused.ctl'), '--dashboard', '0'], env);
    expect(refused.code).not.toBe(0);
    expect(refused.stderr).toMatch(new RegExp(`leg ${l1!.device.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} was the mirror's source`));
    expect(refused.stderr).toMatch(/region\(s\) dirty in the log/);

    const out = await ok<{ source: string }>(['resync', 'p/lost', '--source', l2!.device, '--json'], env);
    expect(out.source).toBe(l2!.device);

    const server = await startServer({ dir, tables: [], extraArgs: ['--pool', 'p'], env });
    await waitInSync(server, 'lost');
    await server.stop();
    expect((await legBytes(spec, 0)).equals(second)).toBe(true);
    expect((await legBytes(spec, 1)).equals(second)).toBe(true);
  });

  it('recopies every region of a synced volume from the chosen leg', async () => {
    let server = await startServer({ dir, tables: [], extraArgs: ['--pool', 'p'], env });
    await writeFile(join(dir, 'data.bin'), randomBytes(SIZE));
    await run('nbdcopy', ['--flush', join(dir, 'data.bin'), server.uri('v')]);
    await waitInSync(server, 'v');
    await server.stop();

    const spec = await mirrorSpec('v');
    const l2 = spec.legs[1]!;
    const at = 3 * 512 * 1024 + 100; // inside region 3, clean in the log
    const planted = Buffer.from('planted-on-leg-2-in-a-clean-region');
    await writeRange(l2.device, l2.offsetSectors * 512 + at, planted);

    const logArea = async (): Promise<Buffer> => {
      const [, path, offsetSectors] = /^(.*)@(\d+)s$/.exec(spec.log.device!)!;
      return readRange(path!, Number(offsetSectors) * 512, DISK_LOG_BITMAP_OFFSET_BYTES + 2);
    };
    expect((await logArea()).readUInt16LE(DISK_LOG_BITMAP_OFFSET_BYTES)).toBe(0xffff); // 16 regions, all clean
    await ok(['resync', 'v', '--pool', 'p', '--source', l2.device], env);
    const area = await logArea();
    expect(area.readUInt32LE(0)).toBe(DISK_LOG_MAGIC);
    expect(area.readUInt16LE(DISK_LOG_BITMAP_OFFSET_BYTES)).toBe(0); // every region out of sync
    server = await startServer({ dir, tables: [], extraArgs: ['--pool', 'p'], env });
    await waitInSync(server, 'v');
    await server.stop();
    const a = await legBytes(spec, 0);
    expect(a.subarray(at, at + planted.length).equals(planted)).toBe(true);
    expect(a.equals(await legBytes(spec, 1))).toBe(true);
  });

  it('drops the nosync flag (a nosync table would declare every region in sync again)', async () => {
    expect((await ok<string>(['table', 'p/ns'], env)).trim()).toMatch(/ nosync /);
    await ok(['resync', 'p/ns'], env);
    expect((await ok<string>(['table', 'p/ns'], env)).trim()).not.toMatch(/nosync/);
  });

  it('refuses a --source that is not a leg, a linear volume and a served volume, changing nothing', async () => {
    const before = await areaHashes(devices);
    const notLeg = await cli(['resync', 'p/v', '--source', join(dir, 'nope.img')], env);
    expect(notLeg.code).toBe(2);
    expect(notLeg.stderr).toMatch(/--source .*nope\.img is not a leg of the volume \(legs: /);
    const linear = await cli(['resync', 'p/lin'], env);
    expect(linear.code).toBe(2);
    expect(linear.stderr).toMatch(/a linear volume \(one leg\) has nothing to resync/);
    expect(await areaHashes(devices)).toEqual(before);

    const server = await startServer({ dir, tables: [], extraArgs: ['--pool', 'p'], env, label: 'served' });
    try {
      await waitInSync(server, 'v');
      const served = await cli(['resync', 'p/v', '--control', server.controlPath], env);
      expect(served.code).toBe(2);
      expect(served.stderr).toMatch(/volume v is being served/);
      expect((await mirrorStatus(server, 'v')).inSyncRegions).toBe(16);
    } finally {
      await server.stop();
    }
  });
});
