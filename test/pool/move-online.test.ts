// Scenario: pvmove of SERVED volumes while fio writes and verifies through NBD on both of them:
//  - a linear volume moves off a.img online (temporary 2-leg mirror, resync, reload without the source);
//    the command is killed -9 right after the final reload: the next `pool move` keeps the change (the
//    server serves it) and moves the mirror's disk log off a.img too; a.img, now empty, leaves the pool;
//  - a leg of a 2-leg mirror (disk log) moves off b.img; the command is killed -9 right after the temporary
//    leg was added: the metadata records the move in progress, the server serves the 3-leg mirror, and the
//    next `pool move` finishes it.
// Every fio verify run passes; the untouched half of each volume still holds the data written first; the
// mirror's legs end identical; the moved runs are on other devices.
import { randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseTable } from '../../src/mirror/table.js';
import { fioVerifyJob } from '../helpers/fio.js';
import { readRange } from '../helpers/crash.js';
import { waitInSync } from '../helpers/mirror.js';
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
let devs: string[];
let server: ServerHandle;

beforeAll(async () => {
  ({ dir, env } = await poolDir('pool-move-online-'));
  devs = await createPool(
    dir,
    env,
    'p',
    ['a.img', 'b.img', 'c.img', 'd.img', 'e.img'],
    [
      ['p/l', '--size', '4M', '--mirrors', '0'], // on a.img (all equal: the first)
      ['p/m', '--size', '4M', '--mirrors', '1', '--region-size', '256K'], // legs b, c; log a
    ],
    { sizeBytes: 16 * MiB, poolArgs: ['--extent-size', '1M'] },
  );
});
afterAll(() => removePoolDir(dir));

/** fio verify runs back to back on [0, 2 MiB) of an export until stopped. */
function fioLoop(name: string) {
  const runs: { code: number | null; error: number; writtenBytes: number; stderr: string }[] = [];
  let stop = false;
  const job = join(dir, `verify-${name}.fio`);
  const done = (async () => {
    await writeFile(job, fioVerifyJob({ uri: server.uri(name), dir, numJobs: 1, sliceBytes: 2 * MiB, iodepth: 8 }).replace('[global]', '[global]\nloops=3'));
    while (!stop) {
      const r = await run('fio', ['--output-format=json', `--output=${job}.json`, job], { timeoutMs: 120_000, cwd: dir, allowFailure: true });
      const text = await readFile(`${job}.json`, 'utf8').catch(() => '');
      try {
        const rep = JSON.parse(text) as { jobs: { error: number; write: { io_bytes: number } }[] };
        runs.push({ code: r.code, error: rep.jobs[0]!.error, writtenBytes: rep.jobs[0]!.write.io_bytes, stderr: r.stderr });
      } catch {
        runs.push({ code: r.code, error: -1, writtenBytes: 0, stderr: `${r.stderr}${text.slice(0, 2000)}` });
      }
    }
  })();
  return {
    runs,
    stop: async () => {
      stop = true;
      await done;
    },
  };
}

// Queries in-process (the same code as `table`/`pool show`, without a node start per question); the changes
// themselves go through the real CLI.
const table = async (v: string): Promise<string> => (await volumeTableLine(`p/${v}`, undefined, { devices: [dir] })).table;
const served = async (v: string): Promise<string> => (await new ControlClient({ kind: 'unix', path: server.controlPath }).get<{ table: string }>(`/v1/volumes/${v}/table`)).table;
const show = () => poolShow('p', { devices: [dir] });

describe.runIf(haveTools)('pool move online', () => {
  it('moves a linear volume and a mirror leg while fio verifies, crash-safe at each step', async () => {
    expect(await table('l')).toContain(devs[0]!);
    expect(await table('m')).toContain(devs[1]!);
    server = await startServer({ dir, tables: [], extraArgs: ['--pool', 'p'], env });
    const data = { l: randomBytes(4 * MiB), m: randomBytes(4 * MiB) };
    for (const v of ['l', 'm'] as const) {
      await writeFile(join(dir, `${v}.bin`), data[v]);
      await run('nbdcopy', ['--flush', join(dir, `${v}.bin`), server.uri(v)]);
    }
    await waitInSync(server, 'm');
    const fios = [fioLoop('l'), fioLoop('m')];
    await new Promise((r) => setTimeout(r, 300));
    const ctl = ['--control', server.controlPath];

    // Linear off a.img, killed right after the final reload.
    const k1 = await cli(['pool', 'move', 'p', devs[0]!, '--to', devs[4]!, ...ctl], { ...env, NBD_MIRROR_POOL_CRASH_AT: 'move-drop-after-resume' });
    expect(k1.code, k1.stderr).toBeNull(); // SIGKILL
    let s = await show();
    expect(s.metadata.pending).toBeDefined();
    expect(parseTable(await served('l')).kind).toBe('linear');
    expect(await served('l')).toContain(devs[4]!);
    // The next move settles (keeps l's change: the server serves it), then moves m's disk log off a.img in
    // one online step (the new log starts empty: m resyncs); a.img is then empty and leaves the pool.
    expect(await ok(['pool', 'move', 'p', devs[0]!, '--to', devs[4]!, ...ctl], env)).toContain('m (online)');
    expect(await served('m')).not.toContain(devs[0]!);
    await ok(['pool', 'reduce', 'p', devs[0]!, ...ctl], env);
    s = await show();
    expect(s.metadata.pending).toBeUndefined();
    expect(s.devices.map((d) => d.path)).not.toContain(devs[0]!);
    expect(await table('l')).toBe(await served('l'));

    // Mirror leg off b.img, killed right after the temporary leg was added.
    const k2 = await cli(['pool', 'move', 'p', devs[1]!, ...ctl], { ...env, NBD_MIRROR_POOL_CRASH_AT: 'move-added' });
    expect(k2.code, k2.stderr).toBeNull();
    s = await show();
    expect(s.metadata.pending).toBeUndefined();
    expect(s.metadata.volumes.find((v) => v.name === 'm')).toMatchObject({ moving: expect.anything(), legs: { length: 3 } });
    const mid = parseTable(await served('m'));
    expect(mid.kind === 'mirror' && mid.legs.length).toBe(3);
    const out = await ok(['pool', 'move', 'p', devs[1]!, ...ctl], env); // finishes the move in progress
    expect(out).toContain('m (online)');
    s = await show();
    expect(s.metadata.volumes.find((v) => v.name === 'm')).not.toHaveProperty('moving');
    const fin = parseTable(await served('m'));
    expect(fin.kind === 'mirror' && fin.legs.length).toBe(2);
    expect(await served('m')).not.toContain(devs[1]!);
    expect(await table('m')).toBe(await served('m'));

    for (const f of fios) await f.stop();
    for (const f of fios) {
      expect(f.runs.length).toBeGreaterThanOrEqual(2);
      for (const r of f.runs) expect(r, r.stderr).toMatchObject({ code: 0, error: 0 });
    }
    console.log(`move online: fio verify runs l ${fios[0]!.runs.length}, m ${fios[1]!.runs.length}; ${fios.flatMap((f) => f.runs).reduce((a, r) => a + r.writtenBytes, 0) / MiB} MiB written and verified`);

    await waitInSync(server, 'm');
    for (const v of ['l', 'm'] as const) {
      await run('nbdcopy', [server.uri(v), join(dir, `${v}.back`)]);
      expect((await readFile(join(dir, `${v}.back`))).subarray(2 * MiB).equals(data[v].subarray(2 * MiB)), v).toBe(true);
    }
    await server.stop();
    const spec = parseTable(await table('m'));
    if (spec.kind !== 'mirror') throw new Error('not a mirror');
    const [x, y] = spec.legs.map((l) => readRange(l.device, l.offsetSectors * 512, 4 * MiB));
    expect((await x!).equals(await y!)).toBe(true);
    await ok(['pool', 'reduce', 'p', devs[1]!], env);
  }, 240_000);
});
