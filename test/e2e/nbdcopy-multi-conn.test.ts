// Multi-conn: the export advertises it and nbdcopy --connections=4 really opens 4 connections, writing
// and reading in parallel; data round-trips unchanged. (nbdcopy caps connections at --threads, which
// defaults to the number of cores, so --threads=4 is given too.)
import { randomFillSync } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { serveLinear, useTempDir } from '../helpers/e2e.js';
import { run } from '../helpers/run.js';
import { MiB } from '../helpers/tmp.js';
import { requireTools } from '../helpers/tools.js';

const ok = requireTools('nbdcopy', 'nbdinfo', 'cmp');
const dir = useTempDir('multiconn');
const SIZE = 32 * MiB;

function transmissionsLogged(output: string): Set<number> {
  const conns = new Set<number>();
  for (const line of output.split('\n')) {
    if (!line.startsWith('{')) continue;
    try {
      const rec = JSON.parse(line) as { msg?: string; conn?: number };
      if (rec.msg === 'transmission' && typeof rec.conn === 'number') conns.add(rec.conn);
    } catch {
      // not a log line
    }
  }
  return conns;
}

describe.skipIf(!ok)('nbdcopy --connections=4', () => {
  it('uses 4 connections and copies unchanged', async () => {
    const src = join(dir(), 'src.img');
    await writeFile(src, randomFillSync(Buffer.alloc(SIZE)));
    const { server, file } = await serveLinear(dir(), SIZE, { extraArgs: ['--log-level', 'debug'] });
    const info = JSON.parse((await run('nbdinfo', ['--json', server.uri()])).stdout);
    expect(info.exports[0].can_multi_conn).toBe(true);

    const before = transmissionsLogged(server.output()).size;
    await run('nbdcopy', ['--connections=4', '--threads=4', '--requests=16', '--flush', src, server.uri()]);
    const afterWrite = transmissionsLogged(server.output()).size;
    expect(afterWrite - before).toBeGreaterThanOrEqual(4);

    const out = join(dir(), 'out.img');
    await run('nbdcopy', ['--connections=4', '--threads=4', server.uri(), out]);
    expect(transmissionsLogged(server.output()).size - afterWrite).toBeGreaterThanOrEqual(4);
    await run('cmp', [src, out]);
    await server.stop();
    await run('cmp', [src, file]);
  });
});
