// Pool metadata on real files: commit, scan, assemble; torn newest slot, a lost device, a crash in the
// middle of a commit (each device holds the old or the new commit; the newest wins), labels from other pools.
import { open, readFile, truncate } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { slotIndexFor, slotOffsetBytes } from '../../src/pool/format.js';
import { createPool, createVolume, extendPool } from '../../src/pool/ops.js';
import { assemblePools, commit, findPool, scanAll, SimulatedCrash, type LoadedPool } from '../../src/pool/store.js';
import { createSparseFile, makeTempDir, MiB, removeTempDir } from '../helpers/tmp.js';

let dir: string;
let devs: string[];

beforeEach(async () => {
  dir = await makeTempDir('pool-store-');
  devs = [];
  for (const n of ['a', 'b', 'c', 'd']) devs.push(await createSparseFile(join(dir, `${n}.img`), 64 * MiB));
});
afterEach(async () => {
  await removeTempDir(dir);
});

async function load(paths = devs): Promise<LoadedPool[]> {
  return assemblePools(await scanAll(paths));
}

async function newPool(): Promise<LoadedPool> {
  const md = createPool({ name: 'p1', devices: devs.slice(0, 3).map((path) => ({ path, sizeBytes: 64 * MiB })) });
  await commit(null, md, { join: md.devices.map((d) => ({ path: d.path, uuid: d.uuid })) });
  return findPool(await load(), 'p1', 'test');
}

async function garble(path: string, offset: number): Promise<void> {
  const fh = await open(path, 'r+');
  await fh.write(Buffer.from('garbage!'), 0, 8, offset + 100);
  await fh.close();
}

describe('pool store', () => {
  it('a created pool is found again from its devices alone, with every device holding a full copy', async () => {
    const p = await newPool();
    expect(p.md.seqno).toBe(1);
    expect(p.md.devices.map((d) => d.extentCount)).toEqual([15, 15, 15]); // (64 MiB - 1 MiB) / 4 MiB
    expect([...p.paths.values()].sort()).toEqual(devs.slice(0, 3).sort());
    for (const dev of devs.slice(0, 3)) {
      const alone = await load([dev]);
      expect(alone).toHaveLength(1);
      expect(alone[0]!.md).toEqual(p.md);
      expect(alone[0]!.missing).toHaveLength(2);
    }
    expect(await load([devs[3]!])).toEqual([]); // unlabelled device: no pool
  });

  it('seqno ordering: each commit goes to the older slot; the reader takes the highest valid seqno', async () => {
    let p = await newPool();
    for (let i = 0; i < 3; i++) {
      const { md } = createVolume(p.md, { name: `v${i}`, sizeBytes: 4 * MiB, mirrors: 0 });
      await commit(p, md);
      p = findPool(await load(), 'p1', 'test');
      expect(p.md.seqno).toBe(i + 2);
      expect(p.md.volumes.map((v) => v.name)).toContain(`v${i}`);
    }
    // Slot (seqno % 2) holds the newest, the other slot the one before.
    const bytes = await readFile(devs[0]!);
    const newest = JSON.parse(bytes.toString('utf8', slotOffsetBytes(slotIndexFor(4)) + 64).split('\0')[0]!);
    const older = JSON.parse(bytes.toString('utf8', slotOffsetBytes(slotIndexFor(3)) + 64).split('\0')[0]!);
    expect([newest.seqno, older.seqno]).toEqual([4, 3]);
  });

  it('a torn newest slot on every device: the older commit is used', async () => {
    const p = await newPool();
    const { md } = createVolume(p.md, { name: 'v', sizeBytes: 4 * MiB, mirrors: 1, log: 'core' });
    await commit(p, md);
    for (const dev of devs.slice(0, 3)) await garble(dev, slotOffsetBytes(slotIndexFor(2)));
    const again = findPool(await load(), 'p1', 'test');
    expect(again.md.seqno).toBe(1);
    expect(again.md.volumes).toEqual([]);
  });

  it('a torn newest slot on one device: the newest commit from the others wins', async () => {
    const p = await newPool();
    const { md } = createVolume(p.md, { name: 'v', sizeBytes: 4 * MiB, mirrors: 1, log: 'core' });
    await commit(p, md);
    await garble(devs[1]!, slotOffsetBytes(slotIndexFor(2)));
    expect(findPool(await load(), 'p1', 'test').md.seqno).toBe(2);
  });

  it('a lost device (truncated to nothing, or absent): the pool still opens from the others and names what is missing', async () => {
    const p = await newPool();
    const { md } = createVolume(p.md, { name: 'v', sizeBytes: 8 * MiB, mirrors: 1, log: 'disk' });
    await commit(p, md);
    await truncate(devs[0]!, 0);
    const again = findPool(await load(), 'p1', 'test');
    expect(again.md).toEqual(md);
    expect(again.missing.map((d) => d.path)).toEqual([devs[0]]);
    // Changing a pool with a device missing is refused before anything is written.
    const { md: md3 } = createVolume(again.md, { name: 'w', sizeBytes: 4 * MiB, mirrors: 0 });
    await expect(commit(again, md3)).rejects.toThrow(/is missing/);
  });

  it('a crash in the middle of a commit leaves every device with the old or the new commit; the new one wins', async () => {
    const p = await newPool();
    const { md } = createVolume(p.md, { name: 'v', sizeBytes: 4 * MiB, mirrors: 0 });
    await expect(commit(p, md, { crashAfterWrites: 1 })).rejects.toBeInstanceOf(SimulatedCrash);
    const seqnos = [];
    for (const dev of devs.slice(0, 3)) seqnos.push(findPool(await load([dev]), 'p1', dev).md.seqno);
    expect(seqnos.sort()).toEqual([1, 1, 2]);
    expect(findPool(await load(), 'p1', 'test').md.seqno).toBe(2);
  });

  it('extend: a crash after the new device got its label but before the others: scanning without it shows the old pool', async () => {
    const p = await newPool();
    const { md, added } = extendPool(p.md, [{ path: devs[3]!, sizeBytes: 64 * MiB }]);
    await expect(commit(p, md, { join: added.map((d) => ({ path: d.path, uuid: d.uuid })), crashAfterWrites: 2 })).rejects.toBeInstanceOf(SimulatedCrash);
    expect(findPool(await load(devs.slice(0, 3)), 'p1', 'test').md.devices).toHaveLength(3);
    const all = findPool(await load(), 'p1', 'test');
    expect(all.md.devices).toHaveLength(4); // the new device holds the newer commit, which lists it
    expect(all.missing).toHaveLength(0);
  });
});
