// Crash with a disk log: kill -9 the server during heavy fio writes, restart with the same table and log.
// Checks:
// - only the regions the on-disk log has dirty are resynced: a difference planted (while the server is
//   down) in a region the log says is clean survives the resync, and is the ONLY difference between legs;
//   the dirty regions lie in the range fio was writing and are a small fraction of the volume;
// - writes acknowledged before a completed FLUSH are on every leg after the crash and resync;
// - the mirror reports in sync with every leg alive, and the legs are otherwise byte-identical.
import { describe, expect, it } from 'vitest';
import { useTempDir } from '../helpers/e2e.js';
import { differingOffsets, readRange, startHeavyWrites, writeRange } from '../helpers/crash.js';
import { diskLogDirtyRegions, waitInSync } from '../helpers/mirror.js';
import { run } from '../helpers/run.js';
import { startServer } from '../helpers/server.js';
import { makeMirrorFiles, mirrorTable } from '../helpers/tables.js';
import { MiB } from '../helpers/tmp.js';
import { requireTools } from '../helpers/tools.js';

const ok = requireTools('fio', 'qemu-io', 'cmp');
const dir = useTempDir('crash-disk');
const SIZE = 256 * MiB;
const REGION_SECTORS = 1024; // 512 KiB
const REGION_BYTES = REGION_SECTORS * 512;
const PATTERN = { offsetBytes: 8 * MiB, lengthBytes: 4 * MiB, byte: 0x5a };
const HEAVY = { offsetBytes: 128 * MiB, lengthBytes: 32 * MiB };
const PLANT_OFFSET = 200 * MiB + 12345; // outside everything written

describe.skipIf(!ok)('crash with a disk log', () => {
  it('resyncs only dirty regions; flushed writes survive; legs identical', async () => {
    const files = await makeMirrorFiles(dir(), 2, SIZE);
    const table = mirrorTable({ legs: files.legs, sizeBytes: SIZE, logFile: files.logFile, regionSectors: REGION_SECTORS });
    const first = await startServer({ dir: dir(), tables: [{ table }] });
    await waitInSync(first); // a new log: the first activation resyncs everything (zeros)

    // Acknowledged and flushed before the crash.
    await run('qemu-io', ['-f', 'raw', '-c', `write -P 0x${PATTERN.byte.toString(16)} ${PATTERN.offsetBytes} ${PATTERN.lengthBytes}`, '-c', 'flush', first.uri()]);
    const heavy = await startHeavyWrites({ uri: first.uri(), dir: dir(), ...HEAVY, runtimeSec: 60 });
    await heavy.started;
    await new Promise((r) => setTimeout(r, 1500));
    const crash = await first.crash();
    expect(crash.signal).toBe('SIGKILL');
    await heavy.stop();

    // What the server persisted: dirty regions, all inside the range fio was writing (the pattern's
    // regions were cleaned long before, after their flush; cleaning is lazy, about a second).
    const log = await diskLogDirtyRegions(files.logFile);
    expect(log.regionCount).toBe(SIZE / REGION_BYTES);
    expect(log.dirty.length).toBeGreaterThan(0);
    const heavyFirst = HEAVY.offsetBytes / REGION_BYTES;
    const heavyEnd = (HEAVY.offsetBytes + HEAVY.lengthBytes) / REGION_BYTES;
    const patternFirst = PATTERN.offsetBytes / REGION_BYTES;
    const patternEnd = (PATTERN.offsetBytes + PATTERN.lengthBytes) / REGION_BYTES;
    for (const r of log.dirty) expect((r >= heavyFirst && r < heavyEnd) || (r >= patternFirst && r < patternEnd), `dirty region ${r}`).toBe(true);
    const resyncBytes = log.dirty.length * REGION_BYTES;
    console.log(
      `crash-disk: ${log.dirty.length}/${log.regionCount} regions dirty at the crash -> resync ${resyncBytes / MiB} MiB of ${SIZE / MiB} MiB (${((100 * resyncBytes) / SIZE).toFixed(1)}%)`,
    );
    expect(resyncBytes).toBeLessThanOrEqual(HEAVY.lengthBytes + PATTERN.lengthBytes);

    // Plant a difference on leg 1 in a region the log says is clean.
    const plantRegion = Math.floor(PLANT_OFFSET / REGION_BYTES);
    expect(log.dirty).not.toContain(plantRegion);
    await writeRange(files.legs[1]!, PLANT_OFFSET, Buffer.from([0xff]));

    const second = await startServer({ dir: dir(), label: 'restart', tables: [{ table }] });
    const status = await waitInSync(second);
    expect(status.health).toBe('AA');
    await second.stop();

    // Only the planted byte differs: the clean region was not copied, every dirty one was.
    expect(await differingOffsets(files.legs[0]!, files.legs[1]!)).toEqual([PLANT_OFFSET]);
    for (const leg of files.legs) {
      const p = await readRange(leg, PATTERN.offsetBytes, PATTERN.lengthBytes);
      expect(p.every((b) => b === PATTERN.byte), `flushed pattern intact on ${leg}`).toBe(true);
    }
  });
});
