// Scenario: grow a SERVED 2-leg mirror (disk log) while fio writes and verifies through NBD: 8 MiB -> 16 MiB
// online; then 16 -> 24 MiB with the resizing command killed -9 after its intent (the next command drops
// the change: the server still serves 16 MiB), and again killed after the reload (the next command keeps
// it: 24 MiB). fio sees no error; new connections see the new size; only the new part is resynced (a
// difference planted in a clean region of the old part survives, the new part ends equal on both legs).
import { randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseTable, type MirrorTableSpec } from '../../src/mirror/table.js';
import { NbdClient } from '../../src/nbd/client/client.js';
import { fioVerifyJob } from '../helpers/fio.js';
import { readRange, writeRange } from '../helpers/crash.js';
import { mirrorStatus, waitInSync } from '../helpers/mirror.js';
import { run } from '../helpers/run.js';
import { startServer, type ServerHandle } from '../helpers/server.js';
import { requireTools } from '../helpers/tools.js';
import { MiB } from '../helpers/tmp.js';
import { cli, ok, createPool, poolDir, removePoolDir } from './pool-cli.js';
import { ControlClient } from '../../src/control/client.js';
import { poolShow, volumeTableLine } from '../../src/pool/service.js';

const haveTools = requireTools('nbdcopy', 'fio');
let dir: string;
let env: NodeJS.ProcessEnv;
let server: ServerHandle;

beforeAll(async () => {
  ({ dir, env } = await poolDir('pool-resize-online-'));
  await createPool(dir, env, 'p', ['a.img', 'b.img', 'c.img'], [['p/v', '--size', '8M', '--mirrors', '1', '--region-size', '512K']]);
});
afterAll(() => removePoolDir(dir));

// Queries in-process (the same code as `pool show` / `table`); the changes go through the real CLI.
async function metadata(): Promise<{ seqno: number; pending: boolean; sizeBytes: number }> {
  const s = await poolShow('p', { devices: [dir] });
  return { seqno: s.seqno, pending: s.metadata.pending !== undefined, sizeBytes: s.metadata.volumes.find((v) => v.name === 'v')!.sizeBytes };
}

const servedTable = async (): Promise<string> => (await new ControlClient({ kind: 'unix', path: server.controlPath }).get<{ table: string }>('/v1/volumes/v/table')).table;
async function servedLengthBytes(): Promise<number> {
  return parseTable(await servedTable()).lengthSectors * 512;
}

describe.runIf(haveTools)('resize online', () => {
  it('grows a served mirror under fio verify, crash-safe at each step; only the new part resyncs', async () => {
    server = await startServer({ dir, tables: [], extraArgs: ['--pool', 'p'], env });
    await writeFile(join(dir, 'data.bin'), randomBytes(8 * MiB));
    await run('nbdcopy', ['--flush', join(dir, 'data.bin'), server.uri('v')]);
    await waitInSync(server, 'v');
    const spec0 = parseTable((await ok(['table', 'p/v'], env)).trim()) as MirrorTableSpec;
    const [l1, l2] = spec0.legs;
    // A difference in a clean region of the old part, outside fio's slice: a resync of it would erase it.
    const plantedAt = 6 * MiB + 1234;
    const planted = Buffer.from('planted-in-a-clean-region');
    await writeRange(l2!.device, l2!.offsetSectors * 512 + plantedAt, planted);

    // fio: writes + crc32c verify of [0, 4 MiB) through NBD, run after run until every step is done.
    const job = join(dir, 'verify.fio');
    await writeFile(job, fioVerifyJob({ uri: server.uri('v'), dir, numJobs: 1, sliceBytes: 4 * MiB, iodepth: 8 }).replace('[global]', '[global]\nloops=10'));
    const fioRuns: { code: number | null; error: number; writtenBytes: number; stderr: string }[] = [];
    let stopFio = false;
    const fio = (async () => {
      while (!stopFio) {
        const r = await run('fio', ['--output-format=json', `--output=${job}.json`, job], { timeoutMs: 120_000, cwd: dir, allowFailure: true });
        const text = await readFile(`${job}.json`, 'utf8').catch(() => '');
        try {
          const rep = JSON.parse(text) as { jobs: { error: number; write: { io_bytes: number } }[] };
          fioRuns.push({ code: r.code, error: rep.jobs[0]!.error, writtenBytes: rep.jobs[0]!.write.io_bytes, stderr: r.stderr });
        } catch {
          fioRuns.push({ code: r.code, error: -1, writtenBytes: 0, stderr: `${r.stderr}${text.slice(0, 2000)}` });
        }
      }
    })();
    await new Promise((r) => setTimeout(r, 300));
    const ctl = ['--control', server.controlPath];

    const m0 = await metadata();
    const out = await ok(['resize', 'p/v', '--size', '16M', ...ctl], env);
    expect(out).toContain('resized from 8MiB to 16MiB (reloaded online; NBD clients see the new size when they reconnect)');
    expect(await metadata()).toEqual({ seqno: m0.seqno + 2, pending: false, sizeBytes: 16 * MiB });
    expect(await servedLengthBytes()).toBe(16 * MiB);

    const crash1 = await cli(['resize', 'p/v', '--size', '24M', ...ctl], { ...env, NBD_MIRROR_POOL_CRASH_AT: 'after-intent' });
    expect(crash1.code).toBeNull(); // SIGKILL
    expect((await metadata()).pending).toBe(true);
    expect(await servedLengthBytes()).toBe(16 * MiB); // before
    const crash2 = await cli(['resize', 'p/v', '--size', '24M', ...ctl], { ...env, NBD_MIRROR_POOL_CRASH_AT: 'after-resume' });
    expect(crash2.code).toBeNull(); // it first settled the previous intent (dropped), then died after the reload
    expect((await metadata()).pending).toBe(true);
    expect(await servedLengthBytes()).toBe(24 * MiB); // after
    await ok(['create', 'p/other', '--size', '4M', '--mirrors', '0', ...ctl], env); // settles: keeps it
    expect(await metadata()).toMatchObject({ pending: false, sizeBytes: 24 * MiB });
    expect((await volumeTableLine('p/v', undefined, { devices: [dir] })).table).toBe(await servedTable());

    stopFio = true;
    await fio;
    expect(fioRuns.length).toBeGreaterThanOrEqual(2);
    for (const r of fioRuns) expect(r, r.stderr).toMatchObject({ code: 0, error: 0 });
    console.log(`resize online: ${fioRuns.length} fio verify runs, ${fioRuns.reduce((a, r) => a + r.writtenBytes, 0) / MiB} MiB written and verified during the steps`);

    const c = await NbdClient.connect(server.uri('v'));
    expect(c.sizeBytes).toBe(24 * MiB); // a new connection sees the new size
    await c.close();
    const st = await waitInSync(server, 'v');
    expect(st.regionCount).toBe(48);
    expect((await mirrorStatus(server, 'v')).inSyncRegions).toBe(48);
    await server.stop();
    expect((await readRange(l2!.device, l2!.offsetSectors * 512 + plantedAt, planted.length)).equals(planted)).toBe(true);
    const a = await readRange(l1!.device, l1!.offsetSectors * 512 + 8 * MiB, 16 * MiB);
    const b = await readRange(l2!.device, l2!.offsetSectors * 512 + 8 * MiB, 16 * MiB);
    expect(a.equals(b)).toBe(true);
    expect((await readRange(l1!.device, l1!.offsetSectors * 512, 4 * MiB)).equals(await readRange(l2!.device, l2!.offsetSectors * 512, 4 * MiB))).toBe(true);
  }, 240_000);
});
