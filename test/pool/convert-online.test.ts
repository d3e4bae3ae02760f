// Scenario: online conversions of a served volume through the control socket, with real clients:
// linear -> 2 legs -> 3 legs -> linear while the data stays readable and every leg ends identical; then
// the converting command is killed (SIGKILL) after the intent and after the reload: the next command
// settles the metadata to what the server really serves (before, resp. after).
import { randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
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

const haveTools = requireTools('nbdcopy');
const SIZE = 8 * MiB;
let dir: string;
let env: NodeJS.ProcessEnv;
let server: ServerHandle;
let data: Buffer;

beforeAll(async () => {
  ({ dir, env } = await poolDir('pool-convert-'));
  await createPool(dir, env, 'p', ['a.img', 'b.img', 'c.img', 'd.img'], [['p/v', '--size', '8M', '--mirrors', '0']]);
});
afterAll(() => removePoolDir(dir));

async function served(): Promise<string> {
  const r = await ok<{ table: string }>(['table', 'v', '--control', server.controlPath, '--json'], env);
  return r.table;
}

async function seqno(): Promise<{ seqno: number; pending: boolean }> {
  const s = await ok<{ seqno: number; metadata: { pending?: unknown } }>(['pool', 'show', 'p', '--json'], env);
  return { seqno: s.seqno, pending: s.metadata.pending !== undefined };
}

async function legsHoldData(): Promise<void> {
  const spec = parseTable((await ok(['table', 'p/v'], env)).trim());
  const legs = spec.kind === 'linear' ? [spec.leg] : spec.legs;
  for (const l of legs) expect((await readRange(l.device, l.offsetSectors * 512, SIZE)).equals(data), l.device).toBe(true);
}

describe.runIf(haveTools)('convert online', () => {
  it('linear -> 2 legs -> 3 legs -> linear on a served volume', async () => {
    server = await startServer({ dir, tables: [], extraArgs: ['--pool', 'p'], env });
    data = randomBytes(SIZE);
    await writeFile(join(dir, 'data.bin'), data);
    await run('nbdcopy', ['--flush', join(dir, 'data.bin'), server.uri('v')]);
    const ctl = ['--control', server.controlPath];
    for (const mirrors of [1, 2]) {
      const before = await seqno();
      const out = await ok(['convert', 'p/v', '--mirrors', String(mirrors), ...ctl], env);
      expect(out).toMatch(new RegExp(`now has ${mirrors + 1} leg\\(s\\) \\(reloaded online\\)`));
      expect(await seqno()).toEqual({ seqno: before.seqno + 2, pending: false }); // intent + commit
      expect(parseTable(await served())).toMatchObject({ kind: 'mirror', legs: { length: mirrors + 1 } });
      await waitInSync(server, 'v');
      await legsHoldData();
    }
    await ok(['convert', 'p/v', '--mirrors', '0', ...ctl], env);
    expect(parseTable(await served()).kind).toBe('linear');
    await run('nbdcopy', [server.uri('v'), join(dir, 'back.bin')]);
    expect((await readFile(join(dir, 'back.bin'))).equals(data)).toBe(true);
  });

  it('killed after the intent: the server kept the old table, the next command drops the change', async () => {
    const ctl = ['--control', server.controlPath];
    const r = await cli(['convert', 'p/v', '--mirrors', '1', ...ctl], { ...env, NBD_MIRROR_POOL_CRASH_AT: 'after-intent' });
    expect(r.code).toBeNull(); // SIGKILL
    expect((await seqno()).pending).toBe(true);
    expect(parseTable(await served()).kind).toBe('linear');
    await ok(['create', 'p/other', '--size', '4M', '--mirrors', '0', ...ctl], env);
    expect((await seqno()).pending).toBe(false);
    expect(parseTable((await ok(['table', 'p/v'], env)).trim()).kind).toBe('linear');
  });

  it('killed after the reload: the server serves the new table, the next command keeps the change', async () => {
    const ctl = ['--control', server.controlPath];
    const r = await cli(['convert', 'p/v', '--mirrors', '1', ...ctl], { ...env, NBD_MIRROR_POOL_CRASH_AT: 'after-resume' });
    expect(r.code).toBeNull();
    expect((await seqno()).pending).toBe(true);
    const live = await served();
    expect(parseTable(live).kind).toBe('mirror');
    await ok(['remove', 'p/other', ...ctl], env);
    expect((await seqno()).pending).toBe(false);
    expect((await ok(['table', 'p/v'], env)).trim()).toBe(live);
    await waitInSync(server, 'v');
    await legsHoldData();
    await server.stop();
  });
});
