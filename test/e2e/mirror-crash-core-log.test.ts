// Crash with a core log: kill -9 during heavy writes, restart with the same table. A core log keeps no
// state, so the whole volume resyncs: a difference planted anywhere on leg 1 while the server is down is
// overwritten, and the legs end up byte-identical; writes flushed before the crash survive.
import { describe, expect, it } from 'vitest';
import { useTempDir } from '../helpers/e2e.js';
import { differingOffsets, readRange, startHeavyWrites, writeRange } from '../helpers/crash.js';
import { mirrorStatus, waitInSync } from '../helpers/mirror.js';
import { run } from '../helpers/run.js';
import { startServer } from '../helpers/server.js';
import { makeMirrorFiles, mirrorTable } from '../helpers/tables.js';
import { MiB } from '../helpers/tmp.js';
import { requireTools } from '../helpers/tools.js';

const ok = requireTools('fio', 'qemu-io', 'cmp');
const dir = useTempDir('crash-core');
const SIZE = 128 * MiB;
const PATTERN = { offsetBytes: 4 * MiB, lengthBytes: 2 * MiB, byte: 0xa5 };
const HEAVY = { offsetBytes: 64 * MiB, lengthBytes: 16 * MiB };
const PLANT_OFFSETS = [100 * MiB + 7, 127 * MiB + 4095];

describe.skipIf(!ok)('crash with a core log', () => {
  it('resyncs the whole volume after a restart; flushed writes survive', async () => {
    const files = await makeMirrorFiles(dir(), 2, SIZE);
    const table = mirrorTable({ legs: files.legs, sizeBytes: SIZE });
    const first = await startServer({ dir: dir(), tables: [{ table }] });
    await waitInSync(first);
    await run('qemu-io', ['-f', 'raw', '-c', `write -P 0x${PATTERN.byte.toString(16)} ${PATTERN.offsetBytes} ${PATTERN.lengthBytes}`, '-c', 'flush', first.uri()]);
    const heavy = await startHeavyWrites({ uri: first.uri(), dir: dir(), ...HEAVY, runtimeSec: 60 });
    await heavy.started;
    await new Promise((r) => setTimeout(r, 1000));
    expect((await first.crash()).signal).toBe('SIGKILL');
    await heavy.stop();

    for (const off of PLANT_OFFSETS) await writeRange(files.legs[1]!, off, Buffer.from([0xff]));
    expect((await differingOffsets(files.legs[0]!, files.legs[1]!)).length).toBeGreaterThanOrEqual(PLANT_OFFSETS.length);

    const second = await startServer({ dir: dir(), label: 'restart', tables: [{ table }], extraArgs: [] });
    const early = await mirrorStatus(second);
    console.log(`crash-core: status right after restart: ${early.raw}`);
    const status = await waitInSync(second);
    expect(status.health).toBe('AA');
    await second.stop();
    expect(await differingOffsets(files.legs[0]!, files.legs[1]!)).toEqual([]);
    for (const leg of files.legs) {
      const p = await readRange(leg, PATTERN.offsetBytes, PATTERN.lengthBytes);
      expect(p.every((b) => b === PATTERN.byte), `flushed pattern intact on ${leg}`).toBe(true);
    }
  });
});
