// fio's nbd engine with verify=crc32c at QD32 on 4 jobs (4 connections) against a linear export.
import { describe, expect, it } from 'vitest';
import { serveLinear, useTempDir } from '../helpers/e2e.js';
import { runFioVerify } from '../helpers/fio.js';
import { MiB } from '../helpers/tmp.js';
import { requireTool } from '../helpers/tools.js';

const ok = requireTool('fio');
const dir = useTempDir('fio');

describe.skipIf(!ok)('fio verify', () => {
  it('4 jobs x QD32 random writes all verify (crc32c)', async () => {
    const numJobs = 4;
    const sliceBytes = 16 * MiB;
    const { server } = await serveLinear(dir(), numJobs * sliceBytes);
    const fio = await runFioVerify({ uri: server.uri(), dir: dir(), numJobs, sliceBytes, iodepth: 32 });
    expect(fio.errors).toBe(0);
    // With mixed block sizes the last blocks of a slice may not fit, so fio writes slightly less than the
    // slice; what matters is that it wrote most of it and verified every byte it wrote.
    expect(fio.writtenBytes).toBeGreaterThan(0.7 * numJobs * sliceBytes);
    expect(fio.readBytes).toBe(fio.writtenBytes);
    await server.stop();
  });
});
