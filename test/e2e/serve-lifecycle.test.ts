// The serve command's life cycle with a real client: several exports from a table file, "" = the first,
// --read-only refuses writes, SIGTERM flushes and exits 0 removing socket and pid file.
import { existsSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { useTempDir } from '../helpers/e2e.js';
import { run } from '../helpers/run.js';
import { startServer } from '../helpers/server.js';
import { linearTable } from '../helpers/tables.js';
import { createSparseFile, MiB } from '../helpers/tmp.js';
import { requireTools } from '../helpers/tools.js';

const ok = requireTools('nbdinfo', 'qemu-io');
const dir = useTempDir('lifecycle');

describe.skipIf(!ok)('serve life cycle', () => {
  it('serves every export of a table file; "" is the first; SIGTERM exits 0 and cleans up', async () => {
    const a = await createSparseFile(join(dir(), 'a.img'), 8 * MiB);
    const b = await createSparseFile(join(dir(), 'b.img'), 4 * MiB);
    const conf = join(dir(), 'tables.conf');
    await writeFile(conf, `# test exports\nalpha: ${linearTable(a, 8 * MiB)}\n\nbeta: ${linearTable(b, 4 * MiB)}\n`);
    const server = await startServer({ dir: dir(), tableFile: conf });
    expect(server.output()).toContain('export "alpha" (default: also served as "")');

    const list = JSON.parse((await run('nbdinfo', ['--list', '--json', server.uri()])).stdout);
    const names = list.exports.map((e: { 'export-name': string }) => e['export-name']).sort();
    expect(names).toEqual(['alpha', 'beta']);
    const def = JSON.parse((await run('nbdinfo', ['--json', server.uri('')])).stdout);
    expect(def.exports[0]['export-size']).toBe(8 * MiB);
    const beta = JSON.parse((await run('nbdinfo', ['--json', server.uri('beta')])).stdout);
    expect(beta.exports[0]['export-size']).toBe(4 * MiB);
    const unknown = await run('nbdinfo', [server.uri('gamma')], { allowFailure: true });
    expect(unknown.code).not.toBe(0);

    await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 4096 65536', server.uri('beta')]);
    await server.stop(); // asserts exit code 0 within the timeout
    expect(existsSync(server.socketPath)).toBe(false);
    expect(existsSync(join(dir(), 'nbd.pid'))).toBe(false);
    const bytes = (await readFile(b)).subarray(4096, 4096 + 65536);
    expect(bytes.every((x) => x === 0x5a)).toBe(true);
    expect(server.output()).toContain('closed cleanly');
  });

  it('tcp:127.0.0.1:0 listens on a free port and prints it', async () => {
    const f = await createSparseFile(join(dir(), 'tcp.img'), 4 * MiB);
    const server = await startServer({ dir: dir(), label: 'tcp', tables: [{ table: linearTable(f, 4 * MiB) }], extraArgs: ['--listen', 'tcp:127.0.0.1:0'] });
    const m = /listening on tcp:127\.0\.0\.1:(\d+)/.exec(server.output());
    expect(m, server.output()).not.toBeNull();
    const port = Number(m![1]);
    expect(port).toBeGreaterThan(0);
    expect(server.output()).toContain(`nbdinfo nbd://127.0.0.1:${port}/volume`);
    const info = JSON.parse((await run('nbdinfo', ['--json', `nbd://127.0.0.1:${port}/`])).stdout);
    expect(info.exports[0]['export-name']).toBe('volume');
    expect(info.exports[0]['export-size']).toBe(4 * MiB);
    await server.stop();
  });

  it('--read-only advertises read-only and refuses writes', async () => {
    const f = await createSparseFile(join(dir(), 'ro.img'), 4 * MiB);
    const server = await startServer({ dir: dir(), label: 'ro', tables: [{ table: linearTable(f, 4 * MiB) }], readOnly: true });
    const info = JSON.parse((await run('nbdinfo', ['--json', server.uri()])).stdout);
    expect(info.exports[0].is_read_only).toBe(true);
    const w = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x11 0 4096', server.uri()], { allowFailure: true });
    expect(`${w.stdout}${w.stderr}`).toMatch(/read-only|Permission denied|not permitted/i);
    expect((await readFile(f)).subarray(0, 4096).every((x) => x === 0)).toBe(true);
    await server.stop();
  });
});
