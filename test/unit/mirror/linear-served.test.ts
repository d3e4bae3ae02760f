// A linear table served for real: openTable -> LinearExport over a temp file, NbdServer on a unix
// socket, qemu-io and nbdinfo as the clients. Proves the export's capabilities and data path end to end.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Export } from '../../../src/nbd/export.js';
import { NbdServer } from '../../../src/nbd/server/server.js';
import { openTable } from '../../../src/mirror/open.js';
import { parseTable } from '../../../src/mirror/table.js';
import { run } from '../../helpers/run.js';
import { createSparseFile, makeTempDir, removeTempDir } from '../../helpers/tmp.js';
import { requireTools } from '../../helpers/tools.js';

const haveTools = requireTools('qemu-io', 'nbdinfo');

describe.skipIf(!haveTools)('linear table served over NBD', () => {
  let dir: string;
  let file: string;
  let server: NbdServer;
  let exp: Export;
  let uri: string;
  const OFFSET_SECTORS = 16;
  const LENGTH_SECTORS = 8192; // 4 MiB

  beforeAll(async () => {
    dir = await makeTempDir('nbd-mirror-linear-');
    file = await createSparseFile(join(dir, 'leg.img'), (OFFSET_SECTORS + LENGTH_SECTORS) * 512);
    exp = await openTable(parseTable(`0 ${LENGTH_SECTORS} linear ${file} ${OFFSET_SECTORS}`));
    server = new NbdServer({ exports: new Map([['lin', { export: exp }]]) });
    const sock = join(dir, 'nbd.sock');
    await server.listen({ kind: 'unix', path: sock });
    uri = `nbd+unix:///lin?socket=${sock}`;
  });

  afterAll(async () => {
    await server?.close();
    await exp?.close();
    if (dir) await removeTempDir(dir);
  });

  it('nbdinfo sees the table length and the capabilities', async () => {
    const { stdout } = await run('nbdinfo', ['--json', uri]);
    const info = JSON.parse(stdout) as { exports: Array<Record<string, unknown>> };
    const e = info.exports[0] as Record<string, unknown>;
    expect(e['export-size']).toBe(LENGTH_SECTORS * 512);
    expect(e['can_flush']).toBe(true);
    expect(e['can_fua']).toBe(true);
    expect(e['can_multi_conn']).toBe(true);
    expect(e['is_read_only']).toBe(false);
  });

  it('qemu-io writes land at the table offset and read back', async () => {
    await run('qemu-io', ['-f', 'raw', uri, '-c', 'write -P 0xab 65536 131072', '-c', 'write -z 65536 4096', '-c', 'flush']);
    const { stdout } = await run('qemu-io', ['-f', 'raw', uri, '-c', 'read -P 0xab 69632 126976', '-c', 'read -P 0 65536 4096']);
    expect(stdout).not.toMatch(/Pattern verification failed/);
    const bytes = await readFile(file);
    const base = OFFSET_SECTORS * 512;
    expect(bytes.subarray(0, base + 65536).every((b) => b === 0)).toBe(true);
    expect(bytes.subarray(base + 65536, base + 69632).every((b) => b === 0)).toBe(true);
    expect(bytes.subarray(base + 69632, base + 196608).every((b) => b === 0xab)).toBe(true);
    expect(bytes.subarray(base + 196608).every((b) => b === 0)).toBe(true);
  });
});
