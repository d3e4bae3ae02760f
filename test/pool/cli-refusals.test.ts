// Bad input to the pool commands (real CLI): each refusal names the problem, exits 2, prints
// {"error":{code,message}} with --json, and leaves every device's metadata area byte-identical.
import { existsSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeTempDir, removeTempDir } from '../helpers/tmp.js';
import { areaHashes, cli, makeDevices, ok } from './pool-cli.js';

let dir: string;
let devs: string[];
let all: string[];

beforeAll(async () => {
  dir = await makeTempDir('pool-refusals-');
  devs = await makeDevices(dir, ['a.img', 'b.img', 'c.img', 'd.img']);
  all = [...devs, ...(await makeDevices(dir, ['tiny.img'], 3 * 1024 * 1024))];
  await ok(['pool', 'create', 'p1', devs[0]!, devs[1]!, devs[2]!]);
  await ok(['create', 'p1/v', '--size', '20M', '--mirrors', '1', '--devices', dir]);
});
afterAll(async () => {
  await removeTempDir(dir);
});

const cases: { what: string; args: () => string[]; code: string; message: RegExp }[] = [
  { what: 'device already in another pool', args: () => ['pool', 'create', 'p2', devs[3]!, devs[0]!, '--devices', dir], code: 'EBUSY', message: /a\.img already belongs to pool p1/ },
  { what: 'pool name in use', args: () => ['pool', 'create', 'p1', devs[3]!, '--devices', dir], code: 'EEXIST', message: /pool name p1 is in use/ },
  { what: 'device too small', args: () => ['pool', 'create', 'p3', join(dir, 'tiny.img')], code: 'ENOSPC', message: /tiny\.img is too small: 3145728 bytes/ },
  { what: 'same device twice', args: () => ['pool', 'create', 'p3', devs[3]!, devs[3]!], code: 'EINVAL', message: /given twice/ },
  { what: 'no such device', args: () => ['pool', 'create', 'p3', join(dir, 'nope.img')], code: 'ENODEV', message: /nope\.img.*no such file/ },
  { what: 'reduce a device holding extents', args: () => ['pool', 'reduce', 'p1', devs[0]!, '--devices', dir], code: 'EBUSY', message: /holds 5 used extents \(volumes: v\)/ },
  { what: 'extend with a device of the pool', args: () => ['pool', 'extend', 'p1', devs[1]!, '--devices', dir], code: 'EBUSY', message: /already belongs to pool p1/ },
  { what: 'volume too big', args: () => ['create', 'p1/w', '--size', '1G', '--devices', dir], code: 'ENOSPC', message: /cannot place volume "w".*needs 2 more leg\(s\) of 256 extents.*largest free run 14 extents/ },
  { what: 'too many legs', args: () => ['create', 'w', '--pool', 'p1', '--size', '4M', '--mirrors', '3', '--devices', dir], code: 'ENOSPC', message: /found room for 3/ },
  { what: 'volume name in use', args: () => ['create', 'p1/v', '--size', '4M', '--devices', dir], code: 'EEXIST', message: /already exists/ },
  { what: 'shrink', args: () => ['resize', 'p1/v', '--size', '4M', '--devices', dir], code: 'EINVAL', message: /only growing/ },
  { what: 'unknown pool', args: () => ['list', 'nope', '--devices', dir], code: 'ENOENT', message: /no pool named "nope"/ },
  { what: 'unknown volume', args: () => ['remove', 'p1/nope', '--devices', dir], code: 'ENOENT', message: /no volume "nope" in pool p1/ },
  { what: 'no devices given', args: () => ['list'], code: 'EINVAL', message: /give --devices DEV\|DIR\.\.\. or set NBD_MIRROR_DEVICES/ },
  { what: 'bad size', args: () => ['create', 'p1/w', '--size', '12Q', '--devices', dir], code: 'EINVAL', message: /--size 12Q/ },
  { what: 'resize to the same size', args: () => ['resize', 'p1/v', '--size', '20M', '--devices', dir], code: 'EINVAL', message: /resize v: the volume already has 20971520 bytes/ },
  { what: 'resize to zero', args: () => ['resize', 'p1/v', '--size', '0', '--devices', dir], code: 'EINVAL', message: /--size 0: out of range/ },
  { what: 'resize beyond the room after a leg', args: () => ['resize', 'p1/v', '--size', '1G', '--devices', dir], code: 'ENOSPC', message: /resize v: the leg on .*a\.img cannot grow in place: needs 251 free extents after extent 4, has 10/ },
  { what: 'move onto the source', args: () => ['pool', 'move', 'p1', devs[0]!, '--to', devs[0]!, '--devices', dir], code: 'EINVAL', message: /move: source and destination are the same device/ },
  { what: 'move onto a device outside the pool', args: () => ['pool', 'move', 'p1', devs[0]!, '--to', devs[3]!, '--devices', dir], code: 'ENOENT', message: /d\.img is not a device of pool p1/ },
  { what: 'move a device outside the pool', args: () => ['pool', 'move', 'p1', devs[3]!, '--devices', dir], code: 'ENOENT', message: /d\.img is not a device of pool p1/ },
  { what: 'move with nowhere to go', args: () => ['pool', 'move', 'p1', devs[0]!, '--devices', dir], code: 'ENOSPC', message: /move: no device has 5 free contiguous extents for the leg of v outside the devices it already uses/ },
  { what: 'move onto a device the volume already uses', args: () => ['pool', 'move', 'p1', devs[0]!, '--to', devs[1]!, '--devices', dir], code: 'ENOSPC', message: /move: no device \(of the one given\) has 5 free contiguous extents for the leg of v/ },
];

describe('pool command refusals write nothing', () => {
  for (const c of cases) {
    it(c.what, async () => {
      const before = await areaHashes(all);
      const r = await cli([...c.args(), '--json'], { NBD_MIRROR_DEVICES: '' });
      expect(r.code, r.stderr).toBe(2);
      const j = JSON.parse(r.stdout) as { error: { code: string; message: string } };
      expect(j.error.code).toBe(c.code);
      expect(j.error.message).toMatch(c.message);
      expect(r.stderr).toMatch(/^nbd-mirror: error: /);
      expect(await areaHashes(all)).toEqual(before);
    });
  }

  it('a change while another live process holds the pool lock; a stale lock is taken over', async () => {
    const uuid = (await ok<{ uuid: string }>(['pool', 'show', 'p1', '--json'], { NBD_MIRROR_DEVICES: dir })).uuid;
    const locks = join(dir, 'locks');
    await mkdir(locks);
    await writeFile(join(locks, `${uuid}.lock`), `${process.pid}\n`); // this test process: alive
    const before = await areaHashes(all);
    const r = await cli(['create', 'p1/w', '--size', '4M', '--mirrors', '0', '--json'], { NBD_MIRROR_DEVICES: dir, NBD_MIRROR_LOCK_DIR: locks });
    expect(r.code).toBe(2);
    expect(JSON.parse(r.stdout).error).toMatchObject({ code: 'EBUSY', message: expect.stringMatching(`being changed by process ${process.pid}`) });
    expect(await areaHashes(all)).toEqual(before);
    await writeFile(join(locks, `${uuid}.lock`), '2147483646\n'); // no such process
    await ok(['create', 'p1/w', '--size', '4M', '--mirrors', '0'], { NBD_MIRROR_DEVICES: dir, NBD_MIRROR_LOCK_DIR: locks });
    expect(existsSync(join(locks, `${uuid}.lock`))).toBe(false); // released at exit
    await ok(['remove', 'p1/w', '--control', join(dir, 'none.sock')], { NBD_MIRROR_DEVICES: dir, NBD_MIRROR_LOCK_DIR: locks });
  });

  it('the pool is unchanged but for the lock test: seqno 4, one volume', async () => {
    const j = await ok<{ pools: { name: string; seqno: number; volumes: string[] }[] }>(['pool', 'list', '--json'], { NBD_MIRROR_DEVICES: dir });
    expect(j.pools).toEqual([expect.objectContaining({ name: 'p1', seqno: 4, volumes: ['v'] })]);
  });
});
