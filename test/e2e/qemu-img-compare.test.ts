// qemu-img compare between the served export and its backing file: equal after writes through NBD; and a
// copy taken through NBD differs from the export after one more write, at exactly the written offset.
import { describe, expect, it } from 'vitest';
import { serveLinear, useTempDir } from '../helpers/e2e.js';
import { run } from '../helpers/run.js';
import { MiB } from '../helpers/tmp.js';
import { requireTools } from '../helpers/tools.js';

const ok = requireTools('qemu-img', 'qemu-io');
const dir = useTempDir('qemu-img');

describe.skipIf(!ok)('qemu-img compare', () => {
  it('export equals its backing file; a difference is detected', async () => {
    const { server, file } = await serveLinear(dir(), 16 * MiB);
    await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5c 0 3M', '-c', 'write -P 0x7e 10M 512', '-c', 'flush', server.uri()]);
    const same = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', file, server.uri()]);
    expect(same.stdout).toContain('Images are identical');

    const info = JSON.parse((await run('qemu-img', ['info', '--output=json', server.uri()])).stdout);
    expect(info['virtual-size']).toBe(16 * MiB);

    // A copy taken through NBD, then a write through NBD: compare must find exactly that offset.
    await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x99 5M 4096', server.uri()]);
    const copy = `${file}.copy`;
    await run('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', server.uri(), copy]);
    await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x98 5M 4096', server.uri()]);
    const mismatch = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', copy, server.uri()], { allowFailure: true });
    expect(mismatch.code).toBe(1);
    expect(mismatch.stdout).toMatch(/Content mismatch at offset 5242880/);
    await server.stop();
  });
});
