// serve's send buffer on unix-socket connections (src/nbd/server/send-buffer.ts), seen from outside: the
// kernel's own account of the server's end of each connection (`ss -xm`: tb = SO_SNDBUF), through the real
// CLI on a 2-leg mirror, while 1 MiB reads go through it byte-exact. By default it is 1 MiB asked (the
// kernel keeps twice that, capped at net.core.wmem_max); --send-buffer-bytes / NBD_MIRROR_SEND_BUFFER_BYTES
// change it; 0 leaves the system default. The session-7 TLS-only variable stops serve with its new name.
import { readFileSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { NbdClient } from '../../src/nbd/client/client.js';
import { useTempDir } from '../helpers/e2e.js';
import { run } from '../helpers/run.js';
import { startServer, stopAllServers } from '../helpers/server.js';
import { makeMirrorFiles, mirrorTable } from '../helpers/tables.js';
import { MiB } from '../helpers/tmp.js';
import { requireTools } from '../helpers/tools.js';

const ok = requireTools('ss');
const dir = useTempDir('send-buffer-cli');
const SIZE = 8 * MiB;
const sysctl = (name: string): number => Number(readFileSync(`/proc/sys/net/core/${name}`, 'utf8').trim());

afterEach(async () => stopAllServers());

/** SO_SNDBUF the kernel keeps after asking for `bytes` on a fresh unix socket (fast_io.c setSendBuffer). */
function expectedSendBuffer(bytes: number): number {
  const initial = sysctl('wmem_default');
  if (bytes === 0 || initial / 2 >= bytes) return initial;
  return 2 * Math.min(bytes, sysctl('wmem_max'));
}

/** tb of every connected socket whose local address is the server's socket path (the server's ends). */
async function serverSendBuffers(socketPath: string): Promise<number[]> {
  const { stdout } = await run('ss', ['-xmH', 'state', 'connected', 'src', socketPath]);
  return [...stdout.matchAll(/\btb(\d+)/g)].map((m) => Number(m[1]));
}

describe.skipIf(!ok)('serve: send buffer of unix-socket connections', () => {
  for (const [label, args, env, bytes] of [
    ['default', [], {}, 1024 * 1024],
    ['--send-buffer-bytes 0', ['--send-buffer-bytes', '0'], {}, 0],
    ['NBD_MIRROR_SEND_BUFFER_BYTES=524288', [], { NBD_MIRROR_SEND_BUFFER_BYTES: '524288' }, 524288],
  ] as const) {
    it(`${label}: each connection's socket has it while 1 MiB reads come back byte-exact`, async () => {
      const d = join(dir(), label.replace(/\W+/g, '-'));
      await mkdir(d);
      const files = await makeMirrorFiles(d, 2, SIZE);
      const data = Buffer.alloc(SIZE);
      for (let i = 0; i < SIZE; i += 4) data.writeUInt32LE((i * 2654435761) >>> 0, i);
      for (const leg of files.legs) await writeFile(leg, data);
      const table = mirrorTable({ legs: files.legs, sizeBytes: SIZE, sync: 'nosync' });
      const server = await startServer({ dir: d, tables: [{ table }], extraArgs: [...args], env: { ...process.env, ...env } });
      const clients = [await NbdClient.connect(server.uri()), await NbdClient.connect(server.uri())];
      try {
        const reads = [];
        for (let k = 0; k < 16; k++) {
          const buf = Buffer.alloc(MiB);
          const off = (k % 7) * MiB;
          reads.push(clients[k % 2]!.read(buf, off).then(() => expect(buf.equals(data.subarray(off, off + MiB)), `read at ${off}`).toBe(true)));
        }
        await Promise.all(reads);
        const tb = await serverSendBuffers(server.socketPath);
        expect(tb).toEqual([expectedSendBuffer(bytes), expectedSendBuffer(bytes)]);
        if (bytes > 0 && sysctl('wmem_max') >= bytes) expect(tb[0]).toBeGreaterThan(sysctl('wmem_default'));
      } finally {
        for (const c of clients) await c.close();
      }
      await server.stop();
      expect((await readFile(files.legs[0]!)).equals(data)).toBe(true);
    });
  }

  it('a bad value, or the old TLS-only variable, stops serve with an error naming it', async () => {
    const d = join(dir(), 'bad');
    await mkdir(d);
    const files = await makeMirrorFiles(d, 2, SIZE);
    const table = mirrorTable({ legs: files.legs, sizeBytes: SIZE, sync: 'nosync' });
    await expect(startServer({ dir: d, tables: [{ table }], extraArgs: ['--send-buffer-bytes', '2M'] })).rejects.toThrow(
      /--send-buffer-bytes 2M: expected a non-negative integer up to 67108864/,
    );
    await expect(startServer({ dir: d, tables: [{ table }], env: { ...process.env, NBD_MIRROR_TLS_SEND_BUFFER_BYTES: '1048576' } })).rejects.toThrow(
      /NBD_MIRROR_TLS_SEND_BUFFER_BYTES was renamed NBD_MIRROR_SEND_BUFFER_BYTES/,
    );
  });
});
