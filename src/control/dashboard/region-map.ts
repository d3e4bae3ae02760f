// The region map as the dashboard fetches it: 2 bits per region, four regions per byte, region i in bits
// (i % 4) * 2 .. +1 of byte i >> 2. Codes: 0 clean, 1 dirty (writes pending or waiting for the lazy
// clear), 2 out of sync (nosync: the legs may differ), 3 recovering (resync or verify holds it).
// A million regions is 256 KiB; the page draws it on a canvas from these bytes.
//
// Owns: the encoding (pure) and a per-mirror cache so a page polling fast cannot make us walk the region
// hash more than once per REGION_MAP_REFRESH_MS. Reads the engine through its read-only verifyAccess().
import type { Export } from '../../nbd/export.js';
import { MirrorExport } from '../../mirror/mirror.js';
import type { RegionStateName } from '../../mirror/regions.js';

export const REGION_CODES = { clean: 0, dirty: 1, nosync: 2, recovering: 3 } as const satisfies Record<RegionStateName, number>;
/** A map is rebuilt at most this often per mirror, however many pages ask. */
export const REGION_MAP_REFRESH_MS = 250;

/** Pack `count` region states (given by `stateOf`) into 2 bits each. */
export function encodeRegionMap(count: number, stateOf: (region: number) => RegionStateName): Buffer {
  const out = Buffer.alloc((count + 3) >> 2);
  for (let r = 0; r < count; r++) {
    const code = REGION_CODES[stateOf(r)];
    if (code !== 0) out[r >> 2]! |= code << ((r & 3) * 2);
  }
  return out;
}

/** Inverse of encodeRegionMap (tests; the page has its own copy in app.js). */
export function decodeRegion(map: Buffer, region: number): number {
  return (map[region >> 2]! >> ((region & 3) * 2)) & 3;
}

export interface RegionMap {
  readonly regionCount: number;
  readonly regionSizeBytes: number;
  readonly bits: Buffer;
}

const cache = new WeakMap<MirrorExport, { atMs: number; map: RegionMap }>();

/** The current map of a mirror export (cached for REGION_MAP_REFRESH_MS); null for a linear target. */
export function regionMapOf(e: Export, nowMs = Date.now()): RegionMap | null {
  if (!(e instanceof MirrorExport)) return null;
  const hit = cache.get(e);
  if (hit !== undefined && nowMs - hit.atMs < REGION_MAP_REFRESH_MS) return hit.map;
  const { regions } = e.verifyAccess();
  const map = { regionCount: regions.regionCount, regionSizeBytes: regions.regionSizeBytes, bits: encodeRegionMap(regions.regionCount, (r) => regions.state(r)) };
  cache.set(e, { atMs: nowMs, map });
  return map;
}
