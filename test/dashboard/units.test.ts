// Pure parts of the dashboard and logging: the 2-bit region map encoding (against an independent
// decoder written here), the histogram quantile, the metered export's counting, and event log fields.
import { describe, expect, it } from 'vitest';
import { clusterViewOf, onClusterMembership } from '../../src/control/dashboard/cluster-view.js';
import { encodeRegionMap, REGION_CODES } from '../../src/control/dashboard/region-map.js';
import type { DirtyLog } from '../../src/mirror/log/dirty-log.js';
import { eventLevel, eventLogFields } from '../../src/control/logging.js';
import { bucketQuantileMs, IoCounters, LATENCY_BUCKETS_SEC, MeteredExport } from '../../src/control/metrics.js';
import { ExportError, SETTLED_OK, type Export } from '../../src/nbd/export.js';
import type { VolumeEvent } from '../../src/control/volumes.js';
import type { RegionStateName } from '../../src/mirror/regions.js';

const STATES: RegionStateName[] = ['clean', 'dirty', 'nosync', 'recovering'];

describe('region map', () => {
  it('packs four regions per byte, region i at bits 2*(i%4), for every count 0..9', () => {
    for (let count = 0; count < 10; count++) {
      const stateOf = (r: number) => STATES[(r * 7 + count) % 4]!;
      const map = encodeRegionMap(count, stateOf);
      expect(map.length).toBe(Math.ceil(count / 4));
      for (let r = 0; r < count; r++) {
        // Independent decoder: the byte as a base-4 string, least significant digit first.
        const digits = map[Math.floor(r / 4)]!.toString(4).padStart(4, '0').split('').reverse();
        expect(Number(digits[r % 4])).toBe(REGION_CODES[stateOf(r)]);
      }
    }
  });

  it('a million regions: 256 KiB, encoded in well under a second', () => {
    const count = 1 << 20;
    const t0 = performance.now();
    const map = encodeRegionMap(count, (r) => (r % 1000 === 0 ? 'nosync' : 'clean'));
    const ms = performance.now() - t0;
    expect(map.length).toBe(256 * 1024);
    expect(map[0]).toBe(2); // region 0 nosync
    expect(map[1]).toBe(0);
    // Tolerance: ~10-30 ms on a quiet core; 1 s leaves room for a heavily shared CI machine.
    expect(ms).toBeLessThan(1000);
  });
});

describe('metrics counters', () => {
  it('the quantile is the upper bound of the bucket holding it; null without samples', () => {
    const counts = new Float64Array(LATENCY_BUCKETS_SEC.length + 1);
    expect(bucketQuantileMs(counts, 0.99)).toBeNull();
    counts[0] = 98; // <= 0.1 ms
    counts[5] = 2; // <= 5 ms
    expect(bucketQuantileMs(counts, 0.5)).toBe(0.1);
    expect(bucketQuantileMs(counts, 0.99)).toBe(5);
    counts[LATENCY_BUCKETS_SEC.length] = 100;
    expect(bucketQuantileMs(counts, 0.99)).toBe(Infinity);
  });

  it('MeteredExport counts requests, bytes and errors per command and passes errors through', async () => {
    let fail = false;
    const inner = {
      capabilities: () => ({ sizeBytes: 1 << 20 }),
      read: async () => undefined,
      write: async () => {
        if (fail) throw new ExportError('EIO', 'injected');
      },
      flush: async () => undefined,
      trim: async () => undefined,
      zero: async () => undefined,
      cache: async () => undefined,
      blockStatus: async () => [{ lengthBytes: 4096, flags: 0 }],
      close: async () => undefined,
    } as unknown as Export;
    const c = new IoCounters();
    const m = new MeteredExport(inner, c);
    await m.write(Buffer.alloc(4096), 0, { fua: false });
    await m.read(Buffer.alloc(512), 0);
    fail = true;
    await expect(m.write(Buffer.alloc(1000), 0, { fua: false })).rejects.toThrow('injected');
    expect(await m.blockStatus(0, 4096)).toEqual([{ lengthBytes: 4096, flags: 0 }]);
    expect(c.requests[1]).toBe(2); // write
    expect(c.errors[1]).toBe(1);
    expect(c.bytes[1]).toBe(4096); // failed writes move no bytes
    expect(c.bytes[0]).toBe(512);
    expect(c.requests[6]).toBe(1); // block_status
    const total = c.bucketTotals(['read', 'write']).reduce((a, b) => a + b, 0);
    expect(total).toBe(3);
  });

  it('MeteredExport passes a write done before returning (SETTLED_OK) on as is, counted, its synchronous time included', async () => {
    const SYNC_MS = 3;
    const inner = {
      write: () => {
        const until = performance.now() + SYNC_MS; // a write done on the caller's stack (page-cached legs)
        while (performance.now() < until);
        return SETTLED_OK;
      },
    } as unknown as Export;
    const c = new IoCounters();
    const m = new MeteredExport(inner, c);
    const p = m.write(Buffer.alloc(4096), 0, { fua: false });
    expect(p, 'the server can still answer it at once').toBe(SETTLED_OK);
    expect(c.requests[1], 'counted before any promise reaction').toBe(1);
    expect(c.bytes[1]).toBe(4096);
    expect(c.latencySumMs[1]).toBeGreaterThanOrEqual(SYNC_MS);
    await p;
  });
});

describe('event log lines', () => {
  const ev = (kind: string, data: Record<string, unknown>): VolumeEvent => ({ volume: 'vol', kind, eventNr: 3, time: new Date().toISOString(), counted: true, data });

  it('a leg failure names volume, leg and reason, at error level', () => {
    const e = ev('leg-failed', { legIndex: 1, device: '/dev/b', kind: 'write', message: 'EIO', healthChar: 'D' });
    expect(eventLogFields(e)).toMatchObject({ volume: 'vol', leg: '/dev/b', reason: 'EIO', event: 'leg-failed', eventNr: 3, healthChar: 'D' });
    expect(eventLevel(e)).toBe('error');
  });

  it('only the first held write warns; a repair names the removed leg', () => {
    expect(eventLevel(ev('write-held', { heldCount: 1 }))).toBe('warn');
    expect(eventLevel(ev('write-held', { heldCount: 2 }))).toBe('debug');
    expect(eventLogFields(ev('repair-start', { trigger: 'policy remove', removed: ['/dev/b'] }))).toMatchObject({ leg: '/dev/b', reason: 'policy remove' });
  });
});

describe('cluster view', () => {
  it('a core/disk log is single node; a cluster log reports members and log server as they change', () => {
    expect(clusterViewOf({ type: 'core' } as unknown as DirtyLog)).toBeNull();
    let push: ((m: { members: { nodeId: number; pid: number }[]; server: { nodeId: number; pid: number } | undefined }) => void) | undefined;
    const log = { type: 'clustered-core', server: undefined as { nodeId: number; pid: number } | undefined, onMembership: (fn: typeof push) => ((push = fn), () => undefined) };
    const seen: unknown[] = [];
    const off = onClusterMembership((_l, v) => seen.push(v));
    expect(clusterViewOf(log as unknown as DirtyLog)).toEqual({ members: [], server: null });
    const a = { nodeId: 1, pid: 10 };
    const b = { nodeId: 2, pid: 20 };
    log.server = a;
    push!({ members: [a, b], server: a });
    expect(clusterViewOf(log as unknown as DirtyLog)).toEqual({ members: [a, b], server: a });
    expect(seen).toEqual([{ members: [a, b], server: a }]);
    off();
  });
});
