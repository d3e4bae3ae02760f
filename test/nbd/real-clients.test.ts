// The server against real NBD clients: nbdinfo (--json, --list, --map, --content), qemu-io,
// qemu-img, nbdcopy. If our server were wrong, these libnbd/qemu implementations would say so.
// A missing tool fails under CI=true (requireTools), skips loudly otherwise.

import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { requireTools } from '../helpers/tools.js';
import { run } from '../helpers/run.js';
import { type Harness, MiB, pattern, startHarness } from './harness.js';

const ok = requireTools('nbdinfo', 'nbdcopy', 'qemu-io', 'qemu-img');

describe.skipIf(!ok)('real NBD clients against NbdServer', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness(
      {
        disk: { sizeBytes: 16 * MiB, description: 'test disk' },
        ro: { sizeBytes: 1 * MiB, readOnly: true, description: 'read-only disk' },
        aligned: { sizeBytes: 1 * MiB, blockSizeMin: 512, blockSizeMax: 256 * 1024 },
      },
      { defaultExportName: 'disk' },
    );
  });
  afterAll(async () => h?.close());

  it('nbdinfo --json reports size, capabilities, contexts and block sizes', async () => {
    const r = await run('nbdinfo', ['--json', h.uri('aligned')]);
    const j = JSON.parse(r.stdout) as { protocol: string; exports: Record<string, unknown>[] };
    expect(j.protocol).toBe('newstyle-fixed');
    const e = j.exports[0]!;
    expect(e['export-name']).toBe('aligned');
    expect(e['export-size']).toBe(MiB);
    expect(e['contexts']).toEqual(['base:allocation']);
    expect(e['is_read_only']).toBe(false);
    for (const k of ['can_flush', 'can_fua', 'can_trim', 'can_zero', 'can_fast_zero', 'can_cache', 'can_df', 'can_multi_conn']) expect(e[k]).toBe(true);
    expect(e['block_size_minimum']).toBe(512);
    expect(e['block_size_maximum']).toBe(256 * 1024);
  });

  it('nbdinfo --list names every export with its description', async () => {
    const r = await run('nbdinfo', ['--list', '--json', h.uri()]);
    const j = JSON.parse(r.stdout) as { exports: { 'export-name': string; description?: string; 'is_read_only': boolean }[] };
    const byName = Object.fromEntries(j.exports.map((e) => [e['export-name'], e]));
    expect(Object.keys(byName).sort()).toEqual(['aligned', 'disk', 'ro']);
    expect(byName['disk']!.description).toBe('test disk');
    expect(byName['ro']!.is_read_only).toBe(true);
  });

  it('qemu-io writes, reads back with pattern checks, zeroes and discards, with many AIO requests in flight', async () => {
    const uri = h.uri('disk');
    const cmds = ['-c', 'write -P 0xa5 0 1M', '-c', 'read -P 0xa5 0 1M', '-c', 'write -z 4096 4096', '-c', 'read -P 0 4096 4096'];
    for (let i = 0; i < 32; i++) cmds.push('-c', `aio_write -P ${i + 1} ${2 * MiB + i * 65536} 64k`);
    cmds.push('-c', 'aio_flush');
    for (let i = 0; i < 32; i++) cmds.push('-c', `aio_read -P ${i + 1} ${2 * MiB + i * 65536} 64k`);
    cmds.push('-c', 'aio_flush', '-c', 'discard 8M 1M', '-c', 'flush');
    const r = await run('qemu-io', ['-f', 'raw', ...cmds, uri]);
    expect(r.stdout).not.toMatch(/Pattern verification failed|error|failed/i);
    expect(r.stdout.match(/^read /gm)?.length).toBe(2 + 32);
    const m = await run('nbdinfo', ['--map', '--json', uri]);
    const map = JSON.parse(m.stdout) as { offset: number; length: number; type: number }[];
    const at = (off: number) => map.find((e) => e.offset <= off && off < e.offset + e.length)!;
    expect(at(0).type).toBe(0); // data
    expect(at(8 * MiB).type).toBe(3); // discarded: hole,zero
    expect(at(15 * MiB).type).toBe(3); // never written
  });

  it('qemu-io on a read-only export: reads work, writes fail', async () => {
    const r = await run('qemu-io', ['-f', 'raw', '-r', '-c', 'read -P 0 0 4k', h.uri('ro')]);
    expect(r.stdout).toMatch(/read 4096\/4096/);
    const w = await run('qemu-io', ['-f', 'raw', '-c', 'write 0 4k', h.uri('ro')], { allowFailure: true });
    expect(`${w.stdout}${w.stderr}`).toMatch(/read-only|Operation not permitted|not permitted|Permission denied/i);
  });

  it('qemu-img info sees a raw image of the right size; nbdinfo --content probes data', async () => {
    const r = await run('qemu-img', ['info', '--output=json', h.uri('disk')]);
    const j = JSON.parse(r.stdout) as { 'virtual-size': number; format: string };
    expect(j['virtual-size']).toBe(16 * MiB);
    const c = await run('nbdinfo', ['--content', h.uri('disk')]);
    expect(c.stdout.trim().length).toBeGreaterThan(0);
  });

  it('nbdcopy copies a file in and out again (multi-connection, many requests in flight)', async () => {
    const src = join(h.dir, 'src.img');
    const back = join(h.dir, 'back.img');
    const data = Buffer.concat([pattern(6 * MiB, 3), Buffer.alloc(4 * MiB), pattern(6 * MiB, 4)]);
    await writeFile(src, data);
    await run('nbdcopy', ['--connections=4', '--requests=16', src, h.uri('disk')]);
    await run('nbdcopy', [h.uri('disk'), back]);
    expect((await readFile(back)).equals(data)).toBe(true);
    const c = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', src, h.uri('disk')]);
    expect(c.stdout).toMatch(/Images are identical/);
  });
});
