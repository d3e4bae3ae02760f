// nbdcopy round trip: a random file copied into the export and back out, compared byte for byte, and
// the backing file compared after a clean shutdown.
import { randomFillSync } from 'node:crypto';
import { open, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { serveLinear, useTempDir } from '../helpers/e2e.js';
import { run } from '../helpers/run.js';
import { MiB } from '../helpers/tmp.js';
import { requireTools } from '../helpers/tools.js';

const ok = requireTools('nbdcopy', 'cmp');
const dir = useTempDir('nbdcopy');
const SIZE = 24 * MiB;

describe.skipIf(!ok)('nbdcopy', () => {
  it('copies a file in and out unchanged', async () => {
    const src = join(dir(), 'src.img');
    const data = randomFillSync(Buffer.alloc(SIZE));
    data.fill(0, 4 * MiB, 6 * MiB); // a zero run: nbdcopy may send it as WRITE_ZEROES
    await writeFile(src, data);
    const { server, file } = await serveLinear(dir(), SIZE);
    await run('nbdcopy', ['--flush', src, server.uri()]);
    const out = join(dir(), 'out.img');
    await run('nbdcopy', [server.uri(), out]);
    await run('cmp', [src, out]);
    await server.stop();
    await run('cmp', [src, file]);
    // The comparison can fail: one flipped byte in the copy is found.
    const fh = await open(out, 'r+');
    await fh.write(Buffer.from([data[SIZE - 1]! ^ 0xff]), 0, 1, SIZE - 1);
    await fh.close();
    const changed = await run('cmp', [src, out], { allowFailure: true });
    expect(changed.code).toBe(1);
  });
});
