// cluster-verify.test.ts — verify --repair on a clustered mirror while another node writes the region it
// repairs. The hold verify takes is local: it does not stop the other node. Writing the source's bytes
// over the differing leg could land the old bytes after the other node's newer write, so the repair goes
// through the group's recovery instead (the region out of sync: every node's writes wait for the copy).
// Two real engines (openTable) over shared memory legs on the in-memory bus; the first write to leg b in
// the region are paused once (whichever node makes it), and node 2 writes the region during that pause.
import { afterEach, describe, expect, it } from 'vitest';
import { MemoryBus } from '../../src/cluster/memory-bus.js';
import { MemoryLeg } from '../../src/mirror/legs/memory.js';
import type { MirrorExport } from '../../src/mirror/mirror.js';
import { verifyMirror } from '../../src/mirror/verify.js';
import { LegWritePause, memoryNode, seededBytes, sharedLeg, until } from './memory-engines.js';
import { sleep } from '../helpers/time.js';

const SIZE_BYTES = 4 * 1024 * 1024;
const REGION_BYTES = 128 * 1024;
const R = 3;
const R_OFF = R * REGION_BYTES;
const TABLE = `0 ${SIZE_BYTES / 512} mirror userspace 4 LVM-verify clustered-core ${REGION_BYTES / 512} nosync 2 a 0 b 0`;

let nodes: { exp: MirrorExport }[] = [];
let pause: LegWritePause | undefined;
afterEach(async () => {
  pause?.letGo();
  for (const n of nodes) await n.exp.close().catch(() => undefined);
  nodes = [];
});

describe('verify --repair on a clustered mirror', () => {
  it('repairs a mismatch through the group: a write another node makes meanwhile is never overwritten', async () => {
    const bus = new MemoryBus();
    const legs = new Map(['a', 'b'].map((d) => [d, new MemoryLeg({ device: d, sizeBytes: SIZE_BYTES })]));
    pause = new LegWritePause(R_OFF, R_OFF + REGION_BYTES);
    const p = pause;
    const n1 = await memoryNode(bus, 1, TABLE, (d) => (d === 'b' ? p.wrap(sharedLeg(legs.get(d)!)) : sharedLeg(legs.get(d)!)));
    const n2 = await memoryNode(bus, 2, TABLE, (d) => (d === 'b' ? p.wrap(sharedLeg(legs.get(d)!)) : sharedLeg(legs.get(d)!)));
    nodes = [n1, n2];
    await until(() => n1.log.members.length === 2 && n2.log.members.length === 2, 5000, 'two members');
    await n2.exp.write(seededBytes(1, REGION_BYTES), R_OFF, { fua: false });
    legs.get('b')!.bytes.fill(0xee, R_OFF + 4096, R_OFF + 8192); // leg b went bad under the mirror
    p.armed = true;
    const run = verifyMirror(n1.exp, { repair: true, firstRegion: R, regionCount: 1 });
    // The first write of leg b in R after the write above: node 1's repair, or the recovery copy of whichever
    // node the group handed R to.
    await until(() => p.paused, 5000, 'a write of leg b in R');
    const last = seededBytes(2, REGION_BYTES);
    const w = n2.exp.write(last, R_OFF, { fua: false });
    await sleep(100);
    p.letGo();
    await w;
    const r = await run;
    expect(r.mismatches.map((m) => [m.region, m.legIndexes, m.repaired])).toEqual([[R, [1], true]]);
    await until(() => n1.log.syncCount() === n1.log.regionCount && n2.log.syncCount() === n2.log.regionCount, 5000, 'in sync');
    const a = legs.get('a')!.bytes;
    const b = legs.get('b')!.bytes;
    expect(a.subarray(R_OFF, R_OFF + REGION_BYTES).equals(last)).toBe(true);
    expect(b.subarray(R_OFF, R_OFF + REGION_BYTES).equals(last), 'leg b holds node 2\'s write').toBe(true);
    expect(a.equals(b)).toBe(true);
    // A second pass finds nothing.
    const again = await verifyMirror(n1.exp, { repair: false });
    expect(again.mismatches).toEqual([]);
    expect(again.regionsChecked).toBe(n1.log.regionCount);
  });
});
