// nbdinfo against the real CLI server: --list, --json, --map (base:allocation) and --content.
import { describe, expect, it } from 'vitest';
import { serveLinear, useTempDir } from '../helpers/e2e.js';
import { run } from '../helpers/run.js';
import { startServer } from '../helpers/server.js';
import { linearTable } from '../helpers/tables.js';
import { MiB } from '../helpers/tmp.js';
import { requireTools } from '../helpers/tools.js';

const ok = requireTools('nbdinfo', 'qemu-io', 'mkfs.ext4', 'file');
const dir = useTempDir('nbdinfo');
const SIZE = 32 * MiB;

interface MapEntry {
  offset: number;
  length: number;
  type: number;
  description: string;
}

describe.skipIf(!ok)('nbdinfo', () => {
  it('--list and --json show the export, its size and flags', async () => {
    const { server } = await serveLinear(dir(), SIZE, { name: 'disk1', label: 'json', fileName: 'json.img' });
    const list = await run('nbdinfo', ['--list', server.uri()]);
    expect(list.stdout).toContain('export="disk1"');
    const info = JSON.parse((await run('nbdinfo', ['--json', server.uri('disk1')])).stdout);
    const e = info.exports[0];
    expect(e['export-size']).toBe(SIZE);
    expect(e.is_read_only).toBe(false);
    expect(e.can_flush).toBe(true);
    expect(e.contexts).toContain('base:allocation');
    await server.stop();
  });

  it('--map covers the whole export and reports written data as allocated', async () => {
    const { server } = await serveLinear(dir(), SIZE, { label: 'map', fileName: 'map.img' });
    await run('qemu-io', ['-f', 'raw', '-c', `write -P 0xcd ${4 * MiB} ${1 * MiB}`, server.uri()]);
    const map = JSON.parse((await run('nbdinfo', ['--map', '--json', server.uri()])).stdout) as MapEntry[];
    expect(map.length).toBeGreaterThan(0);
    expect(map[0]!.offset).toBe(0);
    let end = 0;
    for (const m of map) {
      expect(m.offset).toBe(end); // contiguous, no gap or overlap
      end = m.offset + m.length;
    }
    expect(end).toBe(SIZE);
    // The written MiB must not be reported as a hole (type bit 1) or as zero (type bit 2).
    const covering = map.filter((m) => m.offset < 5 * MiB && m.offset + m.length > 4 * MiB);
    for (const m of covering) expect(m.type & 3).toBe(0);
    await server.stop();
  });

  it('--content recognises an ext4 filesystem made on the backing file', async () => {
    const { server, file } = await serveLinear(dir(), SIZE, { label: 'content', fileName: 'content.img' });
    await server.stop();
    await run('mkfs.ext4', ['-q', '-F', '-L', 'e2etest', file]);
    const again = await startServer({ dir: dir(), label: 'content2', tables: [{ table: linearTable(file, SIZE) }] });
    const content = await run('nbdinfo', ['--content', again.uri()]);
    expect(content.stdout).toMatch(/ext4 filesystem/);
    await again.stop();
  });
});
