// Scenario: a pool device disappears. The pool is still found from the remaining devices (each holds a full
// copy of the metadata): pool list marks it partial, pool show names the missing device, list still lists
// the volumes; every change is refused (ENODEV, nothing written); once the device is back all is normal.
import { mkdir, rename } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeTempDir, removeTempDir } from '../helpers/tmp.js';
import { areaHashes, cli, makeDevices, ok } from './pool-cli.js';

let dir: string;
let devs: string[];
let env: NodeJS.ProcessEnv;

beforeAll(async () => {
  dir = await makeTempDir('pool-lost-');
  await mkdir(join(dir, 'devs'));
  devs = await makeDevices(join(dir, 'devs'), ['a.img', 'b.img', 'c.img']);
  env = { NBD_MIRROR_DEVICES: join(dir, 'devs') };
  await ok(['pool', 'create', 'p', ...devs], env);
  await ok(['create', 'p/v', '--size', '8M', '--mirrors', '1'], env);
});
afterAll(async () => {
  await removeTempDir(dir);
});

describe('a lost device', () => {
  it('the pool opens from the others, shows what is missing and refuses changes', async () => {
    const away = join(dir, 'lost.img');
    await rename(devs[2]!, away); // out of the scanned directory
    try {
      expect(await ok(['pool', 'list'], env)).toMatch(/^p\s+3\s+1\s+wz--p-/m);
      const show = await ok<{ devices: { path: string | null; missing: boolean }[] }>(['pool', 'show', 'p', '--json'], env);
      expect(show.devices.filter((d) => d.missing)).toHaveLength(1);
      expect(await ok(['pool', 'show', 'p'], env)).toMatch(/\[missing, was .*c\.img\]/);
      const listed = await ok<{ volumes: { name: string }[] }>(['list', '--json'], env);
      expect(listed.volumes.map((v) => v.name)).toEqual(['v']);
      const before = await areaHashes(devs.slice(0, 2));
      const r = await cli(['create', 'p/w', '--size', '4M', '--mirrors', '0', '--json'], env);
      expect(r.code).toBe(2);
      expect(JSON.parse(r.stdout).error).toMatchObject({ code: 'ENODEV', message: expect.stringMatching(/is missing .*c\.img/) });
      expect(await areaHashes(devs.slice(0, 2))).toEqual(before);
    } finally {
      await rename(away, devs[2]!);
    }
    await ok(['create', 'p/w', '--size', '4M', '--mirrors', '0'], env);
    expect(await ok(['pool', 'list'], env)).toMatch(/^p\s+3\s+2\s+wz----/m);
  });
});
