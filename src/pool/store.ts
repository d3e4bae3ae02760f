// Reads and writes pool metadata areas on real devices (files, block devices, NBD URIs through the same
// Leg openers the mirror uses) and assembles pools from what the devices hold. No config database: a pool
// is whatever set of labelled devices agree on a pool uuid; its metadata is the valid slot with the highest
// seqno on any of them.
//
// Commit protocol (one commit = one seqno): the new metadata goes to slot (seqno % 2) of every present
// device — new devices first (label + slot), then the others — each write FUA and followed by a flush;
// devices that leave the pool have their label wiped last. A crash at any point leaves every device with
// either the old or the new commit readable, and the reader picks the newest.
import { realpath, readdir, stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import type { Leg } from '../mirror/legs/leg.js';
import { defaultLegOpener } from '../mirror/open.js';
import {
  decodeArea,
  encodeLabel,
  encodeSlot,
  LABEL_BYTES,
  METADATA_AREA_BYTES,
  slotIndexFor,
  slotOffsetBytes,
  type Label,
  type Slot,
} from './format.js';
import { MetadataError, parseMetadata, type PoolDevice, type PoolMetadata } from './metadata.js';
import { PoolError } from './errors.js';

export interface DeviceScan {
  readonly path: string;
  readonly sizeBytes: number;
  readonly label: Label | null;
  /** Valid slots, newest first. */
  readonly slots: readonly Slot[];
  /** Why the device could not be read (then label is null). */
  readonly error?: string;
}

export interface LoadedPool {
  readonly md: PoolMetadata;
  /** device uuid -> path where its label was found. */
  readonly paths: ReadonlyMap<string, string>;
  /** Devices the metadata lists but no scanned path holds. */
  readonly missing: readonly PoolDevice[];
  /** Paths labelled for this pool that the newest metadata does not list (left over from a crash). */
  readonly orphans: readonly string[];
}

const openDevice = defaultLegOpener();

async function withDevice<T>(path: string, readOnly: boolean, body: (leg: Leg) => Promise<T>): Promise<T> {
  const leg = await openDevice(path, 0, { readOnly });
  try {
    return await body(leg);
  } finally {
    await leg.close().catch(() => undefined);
  }
}

export async function scanDevice(path: string): Promise<DeviceScan> {
  try {
    return await withDevice(path, true, async (leg) => {
      if (leg.sizeBytes < METADATA_AREA_BYTES) return { path, sizeBytes: leg.sizeBytes, label: null, slots: [] };
      const area = Buffer.alloc(METADATA_AREA_BYTES);
      await leg.read(area, 0);
      const { label, slots } = decodeArea(area);
      const valid = slots.filter((s): s is Slot => s !== null).sort((a, b) => b.seqno - a.seqno);
      return { path, sizeBytes: leg.sizeBytes, label, slots: valid };
    });
  } catch (e) {
    return { path, sizeBytes: 0, label: null, slots: [], error: (e as Error).message };
  }
}

/**
 * Where to look for devices: each entry is a device (path or NBD URI) or a directory whose regular files
 * and block devices are all candidates (not recursive). Duplicates (same real path) are dropped.
 */
export async function expandDevicePaths(entries: readonly string[]): Promise<string[]> {
  const out: string[] = [];
  const seen = new Set<string>();
  const add = async (p: string): Promise<void> => {
    let key = p;
    if (!/^nbd(\+unix|s)?:/.test(p)) key = await realpath(p).catch(() => p);
    if (seen.has(key)) return;
    seen.add(key);
    out.push(p);
  };
  for (const given of entries) {
    const e = /^nbd(\+unix|s)?:/.test(given) ? given : resolve(given);
    const st = /^nbd(\+unix|s)?:/.test(e) ? undefined : await stat(e).catch(() => undefined);
    if (st?.isDirectory()) {
      for (const f of (await readdir(e)).sort()) {
        const p = join(e, f);
        const s = await stat(p).catch(() => undefined);
        if (s !== undefined && (s.isFile() || s.isBlockDevice())) await add(p);
      }
    } else {
      await add(e);
    }
  }
  return out;
}

export async function scanAll(paths: readonly string[]): Promise<DeviceScan[]> {
  const scans: DeviceScan[] = [];
  for (const p of paths) scans.push(await scanDevice(p));
  return scans;
}

/** Group scanned devices by pool uuid and build each pool from its newest readable metadata. */
export function assemblePools(scans: readonly DeviceScan[]): LoadedPool[] {
  const groups = new Map<string, DeviceScan[]>();
  for (const s of scans) {
    if (s.label === null) continue;
    const g = groups.get(s.label.poolUuid) ?? [];
    g.push(s);
    groups.set(s.label.poolUuid, g);
  }
  const pools: LoadedPool[] = [];
  for (const [uuid, members] of groups) {
    const candidates = members.flatMap((m) => m.slots).sort((a, b) => b.seqno - a.seqno);
    let md: PoolMetadata | undefined;
    for (const slot of candidates) {
      try {
        const parsed = parseMetadata(slot.text);
        if (parsed.uuid === uuid && parsed.seqno === slot.seqno) {
          md = parsed;
          break;
        }
      } catch (e) {
        if (!(e instanceof MetadataError)) throw e;
      }
    }
    if (md === undefined) continue; // labelled, but no commit ever completed: not a pool
    const paths = new Map<string, string>();
    const orphans: string[] = [];
    for (const m of members) {
      const listed = md.devices.some((d) => d.uuid === m.label!.deviceUuid);
      if (listed && !paths.has(m.label!.deviceUuid)) paths.set(m.label!.deviceUuid, m.path);
      else if (!listed) orphans.push(m.path);
    }
    const missing = md.devices.filter((d) => !paths.has(d.uuid));
    pools.push({ md, paths, missing, orphans });
  }
  return pools.sort((a, b) => a.md.name.localeCompare(b.md.name));
}

export function findPool(pools: readonly LoadedPool[], name: string, where: string): LoadedPool {
  const found = pools.filter((p) => p.md.name === name);
  if (found.length === 0) {
    const known = pools.map((p) => p.md.name).join(', ') || 'none';
    throw new PoolError('ENOENT', `no pool named "${name}" on ${where} (pools found: ${known})`);
  }
  if (found.length > 1) {
    throw new PoolError('EINVAL', `${found.length} pools are named "${name}" (uuids ${found.map((p) => p.md.uuid).join(', ')}): give only one pool's devices`);
  }
  return found[0]!;
}

export interface CommitPlan {
  /** Devices joining the pool: they get a label before their slot. */
  readonly join?: readonly { readonly path: string; readonly uuid: string }[];
  /** Paths leaving the pool: label and slots wiped after the commit. */
  readonly leave?: readonly string[];
  /** Test hook: stop after this many device writes (simulates a crash in the middle of a commit). */
  readonly crashAfterWrites?: number;
}

export class SimulatedCrash extends Error {}

/** Write `next` (seqno = previous + 1) to every device of `next`. See the header for the order. */
export async function commit(pool: Pick<LoadedPool, 'paths'> | null, next: PoolMetadata, plan: CommitPlan = {}): Promise<void> {
  const slot = encodeSlot({ seqno: next.seqno, text: JSON.stringify(next) });
  const slotOffset = slotOffsetBytes(slotIndexFor(next.seqno));
  let writes = 0;
  const step = (): void => {
    writes++;
    if (plan.crashAfterWrites !== undefined && writes > plan.crashAfterWrites) throw new SimulatedCrash(`simulated crash before write ${writes}`);
  };
  const joinUuids = new Set((plan.join ?? []).map((j) => j.uuid));
  for (const j of plan.join ?? []) {
    await withDevice(j.path, false, async (leg) => {
      step();
      // A joining device holds no older commit: fill the other slot too, so both are valid.
      await leg.write(slot, slotOffset, { fua: true });
      await leg.write(Buffer.alloc(512), slotOffsetBytes(slotIndexFor(next.seqno + 1)), { fua: true });
      step();
      await leg.write(encodeLabel({ poolUuid: next.uuid, deviceUuid: j.uuid }), 0, { fua: true });
      await leg.flush();
    });
  }
  for (const d of next.devices) {
    if (joinUuids.has(d.uuid)) continue;
    const path = pool?.paths.get(d.uuid);
    if (path === undefined) throw new PoolError('ENODEV', `device ${d.uuid} (last seen at ${d.path}) is missing: the pool cannot be changed without it`);
    await withDevice(path, false, async (leg) => {
      step();
      await leg.write(slot, slotOffset, { fua: true });
      await leg.flush();
    });
  }
  for (const path of plan.leave ?? []) {
    await withDevice(path, false, async (leg) => {
      step();
      await leg.write(Buffer.alloc(LABEL_BYTES), 0, { fua: true });
      await leg.write(Buffer.alloc(512), slotOffsetBytes(0), { fua: true });
      await leg.write(Buffer.alloc(512), slotOffsetBytes(1), { fua: true });
      await leg.flush();
    });
  }
}
