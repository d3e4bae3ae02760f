// Scenario: a pool of 3 file devices, a 2-leg mirror with a disk log and a linear volume, served with
// `serve --pool` (real server, real clients). nbdinfo lists both under their names; nbdcopy writes random
// data; the mirror syncs; `list` shows Copy% and health from the control socket while served and Copy% from
// the disk log when not; both legs hold exactly the written bytes at the offsets `table` gives; `remove` is
// refused while the volume is served.
import { createHash, randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseTable } from '../../src/mirror/table.js';
import { readRange } from '../helpers/crash.js';
import { waitInSync } from '../helpers/mirror.js';
import { run } from '../helpers/run.js';
import { startServer, type ServerHandle } from '../helpers/server.js';
import { requireTools } from '../helpers/tools.js';
import { MiB } from '../helpers/tmp.js';
import { cli, ok, createPool, poolDir, removePoolDir } from './pool-cli.js';

const haveTools = requireTools('nbdinfo', 'nbdcopy');
let dir: string;
let env: NodeJS.ProcessEnv;
let server: ServerHandle;
const DATA_BYTES = 12 * MiB;

beforeAll(async () => {
  ({ dir, env } = await poolDir('pool-serve-'));
  await createPool(dir, env, 'tank', ['a.img', 'b.img', 'c.img'], [
    ['mir', '--pool', 'tank', '--size', '16M', '--mirrors', '1', '--region-size', '256K'],
    ['tank/lin', '--size', '8M', '--mirrors', '0'],
  ]);
});
afterAll(() => removePoolDir(dir));

describe.runIf(haveTools)('serve --pool', () => {
  it('serves every volume under its name', async () => {
    server = await startServer({ dir, tables: [], extraArgs: ['--pool', 'tank', '--devices', dir] });
    const r = await run('nbdinfo', ['--list', '--json', server.uri('')]);
    const exports = (JSON.parse(r.stdout) as { exports: { 'export-name': string; 'export-size': number }[] }).exports;
    expect(exports.map((e) => [e['export-name'], e['export-size']]).sort()).toEqual([
      ['lin', 8 * MiB],
      ['mir', 16 * MiB],
    ]);
  });

  it('writes through nbdcopy land on both legs at the offsets of the generated table', async () => {
    const data = randomBytes(DATA_BYTES);
    const src = join(dir, 'data.bin');
    await writeFile(src, data);
    await run('nbdcopy', [src, server.uri('mir')]);
    await run('nbdcopy', [src, server.uri('lin')], { allowFailure: true }); // 12 MiB into 8 MiB: refused, ignore
    const s = await waitInSync(server, 'mir');
    expect(s.health).toBe('AA');
    const listed = await ok<{ volumes: { name: string; copyPercent: number; health: string; source: string }[] }>(['list', '--json', '--control', server.controlPath], env);
    expect(listed.volumes.find((v) => v.name === 'mir')).toMatchObject({ copyPercent: 100, health: 'AA', source: 'server' });
    await run('nbdcopy', ['--flush', server.uri('mir'), join(dir, 'back.bin')]);
    const table = (await ok(['table', 'tank/mir'], env)).trim();
    const spec = parseTable(table);
    if (spec.kind !== 'mirror') throw new Error(table);
    expect(spec.log.kind).toBe('disk');
    const digest = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
    for (const leg of spec.legs) {
      const onLeg = await readRange(leg.device, leg.offsetSectors * 512, DATA_BYTES);
      expect(digest(onLeg), leg.device).toBe(digest(data));
    }
  });

  it('remove is refused while the volume is served', async () => {
    const r = await cli(['remove', 'tank/mir', '--control', server.controlPath, '--json'], env);
    expect(r.code).toBe(2);
    expect(JSON.parse(r.stdout).error).toMatchObject({ code: 'EBUSY', message: expect.stringMatching(/being served/) });
  });

  it('after a clean stop, list reads Copy% from the disk log', async () => {
    await server.stop();
    const listed = await ok<{ volumes: { name: string; copyPercent: number | null; source: string; log: string }[] }>(['list', 'tank', '--json', '--control', join(dir, 'no-server.sock')], env);
    expect(listed.volumes.find((v) => v.name === 'mir')).toMatchObject({ copyPercent: 100, source: 'disk-log', log: 'disk' });
    expect(listed.volumes.find((v) => v.name === 'lin')).toMatchObject({ log: 'linear' });
    const text = await ok(['list', '--control', join(dir, 'no-server.sock')], env);
    expect(text).toMatch(/^Volume\s+Pool\s+Size\s+Legs\s+Copy%\s+Health\s+Log\s+Clustered\n/);
    expect(text).toMatch(/mir\s+tank\s+16MiB\s+2\s+100\.00\s+-\s+disk\s+no/);
    await ok(['remove', 'tank/lin', '--control', join(dir, 'no-server.sock')], env);
    expect((await ok<{ volumes: string[] }>(['pool', 'show', 'tank', '--json'], env)).volumes).toEqual(['mir']);
  });
});
