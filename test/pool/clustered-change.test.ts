// Scenario: a synced 2-leg mirror in a plain pool; `pool change --clustered y` switches every volume to the
// cluster log form (userspace clustered-disk, uuid = volume uuid) on the SAME disk log extent, so the sync
// state is kept: after y and back to n, a difference planted in a clean region survives serving
// (0 bytes resynced). (Serving the clustered form itself needs corosync: the CLUSTER helper's log.) A pool created --clustered gives its volumes the cluster log without being asked.
import { randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { formatTable, parseTable } from '../../src/mirror/table.js';
import { readRange, writeRange } from '../helpers/crash.js';
import { mirrorStatus, waitInSync } from '../helpers/mirror.js';
import { run } from '../helpers/run.js';
import { startServer } from '../helpers/server.js';
import { requireTools } from '../helpers/tools.js';
import { MiB } from '../helpers/tmp.js';
import { areaHashes, cli, makeDevices, ok, createPool, poolDir, removePoolDir } from './pool-cli.js';

const haveTools = requireTools('nbdcopy');
let dir: string;
let env: NodeJS.ProcessEnv;

beforeAll(async () => {
  // No corosync in this namespace: changing a clustered pool goes without the cluster lock (the refusal
  // without this override is tested below; the lock itself in cluster-lock.test.ts).
  ({ dir, env } = await poolDir('pool-clustered-', { NBD_MIRROR_POOL_LOCK: 'local' }));
  await createPool(dir, env, 'p', ['a.img', 'b.img', 'c.img'], [['p/v', '--size', '8M', '--mirrors', '1']]);
});
afterAll(() => removePoolDir(dir));

describe.runIf(haveTools)('pool change --clustered', () => {
  it('keeps the disk log and its sync state: nothing is resynced', async () => {
    let server = await startServer({ dir, tables: [], extraArgs: ['--pool', 'p'], env });
    await writeFile(join(dir, 'data.bin'), randomBytes(8 * MiB));
    await run('nbdcopy', ['--flush', join(dir, 'data.bin'), server.uri('v')]);
    await waitInSync(server, 'v');
    await server.stop();
    const plain = parseTable((await ok(['table', 'p/v'], env)).trim());

    const changed = await ok<{ clustered: boolean; seqno: number }>(['pool', 'change', 'p', '--clustered', 'y', '--json'], env);
    expect(changed.clustered).toBe(true);
    const line = (await ok(['table', 'v', '--pool', 'p'], env)).trim();
    const show = await ok<{ metadata: { volumes: { uuid: string }[] } }>(['pool', 'show', 'p', '--json'], env);
    expect(line).toContain(`mirror userspace 5 ${show.metadata.volumes[0]!.uuid} integrated_flush clustered-disk `);
    const clustered = parseTable(line);
    if (clustered.kind !== 'mirror' || plain.kind !== 'mirror') throw new Error('not mirrors');
    expect(clustered.log.device).toBe(plain.log.device);
    expect(clustered.legs).toEqual(plain.legs);

    // Serving the clustered table needs corosync (the CLUSTER helper's log); here the pool goes back to
    // plain and the sync state must have survived the round trip untouched: nothing resynced.
    await ok(['pool', 'change', 'p', '--clustered', 'n'], env);
    expect((await ok(['table', 'p/v'], env)).trim()).toBe(formatTable(plain));
    const leg2 = plain.legs[1]!;
    const planted = Buffer.from('planted-in-a-clean-region');
    const at = leg2.offsetSectors * 512 + 5 * 512 * 1024 + 7;
    await writeRange(leg2.device, at, planted);
    server = await startServer({ dir, tables: [], extraArgs: ['--pool', 'p'], env });
    const s = await mirrorStatus(server, 'v');
    expect(s.inSyncRegions).toBe(s.regionCount);
    await server.stop();
    expect((await readRange(leg2.device, at, planted.length)).equals(planted)).toBe(true);
    await ok(['pool', 'change', 'p', '--clustered', 'y'], env);

    const list = await ok<{ volumes: { clustered: boolean; copyPercent: number }[] }>(['list', '--json', '--control', join(dir, 'none.sock')], env);
    expect(list.volumes[0]).toMatchObject({ clustered: true, copyPercent: 100 });
  });

  it('a pool created --clustered gives every mirror the cluster log without being asked', async () => {
    const devs = await makeDevices(dir, ['d.img', 'e.img']);
    await ok(['pool', 'create', 'cp', '--clustered', ...devs], env);
    await ok(['create', 'cp/w', '--size', '4M', '--mirrors', '1', '--log', 'core'], env);
    expect((await ok(['table', 'cp/w'], env)).trim()).toMatch(/^0 8192 mirror userspace 4 [0-9a-f-]{36} integrated_flush clustered-core 1024 2 /);
    expect((await ok(['pool', 'list'], env))).toMatch(/cp\s+2\s+1\s+wz---c/);
  });

  it('without corosync a clustered pool is neither changed nor served: the refusal names the cluster lock and the way out', async () => {
    const devs = [join(dir, 'd.img'), join(dir, 'e.img')];
    const before = await areaHashes(devs);
    const r = await cli(['create', 'cp/x', '--size', '4M', '--mirrors', '0'], { ...env, NBD_MIRROR_POOL_LOCK: '' });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/pool cp is clustered: changing it takes the cluster-wide metadata lock, which needs corosync on this node \(.*\)\. Start corosync, or set NBD_MIRROR_POOL_LOCK=local/);
    expect(await areaHashes(devs)).toEqual(before);
    const serve = await cli(['serve', '--pool', 'cp', '--listen', `unix:${join(dir, 'cp.sock')}`, '--control', join(dir, 'cp.ctl'), '--dashboard', '0'], { ...env, NBD_MIRROR_POOL_LOCK: '' });
    expect(serve.code).toBe(2);
    expect(serve.stderr).toMatch(/--pool cp is clustered: cannot join its corosync group to follow metadata changes: .*\(set NBD_MIRROR_POOL_LOCK=local if no other node uses the pool\)/);
    const bad = await cli(['create', 'cp/x', '--size', '4M'], { ...env, NBD_MIRROR_POOL_LOCK: 'sometimes' });
    expect(bad.stderr).toContain('NBD_MIRROR_POOL_LOCK=sometimes: expected cluster or local');
    expect(await areaHashes(devs)).toEqual(before);
  });
});
