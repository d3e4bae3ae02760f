// qemu-io pattern writes and reads through the real server, checked again on the backing file.
import { open } from 'node:fs/promises';
import { describe, expect, it } from 'vitest';
import { serveLinear, useTempDir } from '../helpers/e2e.js';
import { run } from '../helpers/run.js';
import { MiB } from '../helpers/tmp.js';
import { requireTool } from '../helpers/tools.js';

const ok = requireTool('qemu-io');
const dir = useTempDir('qemu-io');

async function fileBytes(path: string, offset: number, length: number): Promise<Buffer> {
  const fh = await open(path, 'r');
  try {
    const buf = Buffer.alloc(length);
    await fh.read(buf, 0, length, offset);
    return buf;
  } finally {
    await fh.close();
  }
}

describe.skipIf(!ok)('qemu-io', () => {
  it('pattern writes read back through NBD and land on the backing file', async () => {
    const { server, file } = await serveLinear(dir(), 16 * MiB);
    // qemu-io exits 1 when a `read -P` finds other bytes, so each call below asserts its patterns.
    const io = (...cmds: string[]) => run('qemu-io', ['-f', 'raw', ...cmds.flatMap((c) => ['-c', c]), server.uri()], { allowFailure: true }).then((r) => {
      if (r.code !== 0 || /verification failed/.test(r.stdout)) throw new Error(`qemu-io ${cmds.join('; ')}:\n${r.stdout}${r.stderr}`);
      return r;
    });
    await io('write -P 0xab 0 1M', 'read -P 0xab 0 1M');
    // Unaligned offsets and lengths, a FUA write, and a read that crosses written and unwritten data.
    await io('write -P 0x11 1536 3000', 'write -f -P 0x22 8M 65536', 'flush');
    const r = await io('read -P 0xab 0 1536', 'read -P 0x11 1536 3000', 'read -P 0xab 4536 1044040', 'read -P 0 1M 7M', 'read -P 0x22 8M 65536', 'read -P 0 15M 1M');
    expect(r.stdout).not.toMatch(/Pattern verification failed/);
    // A wrong expectation must fail: qemu-io reports the mismatch.
    const bad = await run('qemu-io', ['-f', 'raw', '-c', 'read -P 0xac 0 4096', server.uri()], { allowFailure: true });
    expect(bad.code).toBe(1);
    expect(bad.stdout).toMatch(/Pattern verification failed/);
    // Zeroing (WRITE_ZEROES) reads back as zero; discard (TRIM) succeeds (its contents are unspecified
    // by the NBD spec until rewritten, so only the zeroed range is checked).
    await io('write -z 2M 65536', 'discard 8M 65536');
    await io('read -P 0 2M 65536', 'read -P 0xab 0 1536');
    await server.stop();

    expect((await fileBytes(file, 65536, 4096)).every((b) => b === 0xab)).toBe(true);
    expect((await fileBytes(file, 1536, 3000)).every((b) => b === 0x11)).toBe(true);
    expect((await fileBytes(file, 2 * MiB, 65536)).every((b) => b === 0)).toBe(true);
  });
});
