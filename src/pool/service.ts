// Pool operations end to end: locate the pool on its devices, check every input, compute the next metadata
// (ops.ts, pure), then commit it (store.ts). Every refusal happens before the first write. Used by the CLI
// commands and by tests.
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { realpath } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { FileLeg } from '../mirror/legs/file.js';
import { join, resolve } from 'node:path';
import { ControlClient, resolveControlTarget } from '../control/client.js';
import { PoolError } from './errors.js';
import { locate, locatePool, volumeRef, type LocateFlags } from './locate.js';
import { checkMetadata, extentOffsetBytes, parseMetadata, type ExtentRun, type PoolMetadata, type PoolVolume, type LogKind } from './metadata.js';
import * as ops from './ops.js';
import { diskLogState, servedTableOf, serverState, servesVolume, tableIsVolume, type VolumeState } from './status.js';
import type { MetadataLock } from '../cluster/metadata-lock.js';
import { commit, expandDevicePaths, scanDevice, type CommitPlan, type DeviceScan, type LoadedPool } from './store.js';
import { announceCommitted, heldClusterLock, LOCK_MODE_ENV, takeClusterLock } from './cluster-lock.js';
import { volumeTable, volumeTableSpec } from './tables.js';

export interface ControlFlag {
  control?: string;
}

/** The pool (uuid, name) a scanned device belongs to, when its own metadata lists it. */
function membership(scan: DeviceScan): { name: string; uuid: string } | null {
  if (scan.label === null) return null;
  for (const slot of scan.slots) {
    try {
      const md = parseMetadata(slot.text);
      if (md.uuid === scan.label.poolUuid && md.devices.some((d) => d.uuid === scan.label!.deviceUuid)) return { name: md.name, uuid: md.uuid };
    } catch {
      // a damaged slot says nothing
    }
  }
  return null;
}

/** Scan devices about to join a pool; refuse unreadable, duplicated or already used ones. */
async function newDevices(paths: readonly string[]): Promise<{ path: string; sizeBytes: number }[]> {
  if (paths.length === 0) throw new PoolError('EINVAL', 'give at least one device');
  const seen = new Map<string, string>();
  const out: { path: string; sizeBytes: number }[] = [];
  for (const given of paths) {
    const p = /^nbd/.test(given) ? given : resolve(given);
    const key = /^nbd/.test(p) ? p : await realpath(p).catch(() => p);
    if (seen.has(key)) throw new PoolError('EINVAL', `device ${p} is given twice (same as ${seen.get(key)})`);
    seen.set(key, p);
    const scan = await scanDevice(p);
    if (scan.error !== undefined) throw new PoolError('ENODEV', scan.error);
    const owner = membership(scan);
    if (owner !== null) throw new PoolError('EBUSY', `device ${p} already belongs to pool ${owner.name} (uuid ${owner.uuid})`);
    out.push({ path: p, sizeBytes: scan.sizeBytes });
  }
  return out;
}

function requireComplete(pool: LoadedPool): LoadedPool {
  if (pool.missing.length > 0) {
    throw new PoolError('ENODEV', `pool ${pool.md.name} is missing ${pool.missing.map((d) => `${d.uuid} (last seen at ${d.path})`).join(', ')}: it cannot be changed without them`);
  }
  return pool;
}

/**
 * A pool about to be changed: locked against other commands on this host (lock file per pool uuid, held
 * until the process exits; a lock whose pid is gone is taken over) and, for a clustered pool, against every
 * node (cluster-lock.ts: this process joins the pool's corosync group and takes the metadata lock, as clvmd
 * did); read again under the lock, complete, and with any interrupted online change settled.
 */
async function openForChange(flags: LocateFlags & ControlFlag, name: string, op = 'change'): Promise<LoadedPool> {
  const first = (await locatePool(flags, name)).pool;
  lockPool(first.md.uuid, name);
  if (first.md.clustered) await takeClusterLock(first.md, op);
  const pool = await settle(requireComplete((await locatePool(flags, name)).pool), flags);
  await holdPoint();
  return pool;
}

/** Test hook: NBD_MIRROR_POOL_HOLD_MS=<ms> keeps the locks that long before changing anything. */
async function holdPoint(): Promise<void> {
  const ms = Number(process.env.NBD_MIRROR_POOL_HOLD_MS ?? 0);
  if (Number.isFinite(ms) && ms > 0) await new Promise((r) => setTimeout(r, ms));
}

/**
 * Commit `md` and, in a clustered pool, tell every node (COMMITTED seqno): each `serve --pool` re-reads the
 * metadata and reloads the tables that changed. Intents (md.pending) are not announced: nodes act on the
 * committed outcome only.
 */
async function commitChange(pool: Pick<LoadedPool, 'paths'> | null, md: PoolMetadata, plan: CommitPlan = {}, volumes: readonly string[] = []): Promise<void> {
  await commit(pool, md, plan);
  if (md.pending === undefined) await announceCommitted(md.seqno, volumes);
}

const heldLocks = new Set<string>();

export function lockDir(): string {
  return process.env.NBD_MIRROR_LOCK_DIR ?? (process.getuid?.() === 0 ? '/run/lock/nbd-mirror' : join(tmpdir(), `nbd-mirror-locks-${process.getuid?.() ?? 'user'}`));
}

function lockPool(uuid: string, name: string): void {
  const path = join(lockDir(), `${uuid}.lock`);
  if (heldLocks.has(path)) return;
  mkdirSync(lockDir(), { recursive: true, mode: 0o700 });
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      writeFileSync(path, `${process.pid}\n`, { flag: 'wx', mode: 0o600 });
      heldLocks.add(path);
      if (heldLocks.size === 1) process.on('exit', () => heldLocks.forEach((p) => rmSync(p, { force: true })));
      return;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      const pid = Number(readFileSync(path, 'utf8').trim());
      let alive = false;
      try {
        alive = Number.isSafeInteger(pid) && pid > 0 && process.kill(pid, 0);
      } catch (k) {
        alive = (k as NodeJS.ErrnoException).code === 'EPERM';
      }
      if (alive) throw new PoolError('EBUSY', `pool ${name} is being changed by process ${pid} (lock ${path})`);
      rmSync(path, { force: true }); // its owner is gone: take it over
    }
  }
  throw new PoolError('EBUSY', `pool ${name}: cannot take the lock ${path}`);
}

/** Metadata without a pending change, one seqno on. */
function withoutPending(md: PoolMetadata, volumes: readonly PoolVolume[] = md.volumes): PoolMetadata {
  const { pending: _pending, ...rest } = md;
  return { ...rest, volumes, seqno: md.seqno + 1 };
}

/**
 * Settle an online change a killed command left behind (metadata.pending): if a running server serves the
 * pending table, the change happened (commit it); otherwise it did not (drop it). Either way one commit.
 * In a clustered pool it is always dropped (see below).
 */
async function settle(pool: LoadedPool, flags: ControlFlag): Promise<LoadedPool> {
  const pending = pool.md.pending;
  if (pending === undefined) return pool;
  // Clustered: roll back. Servers load a pending table only while the command that wrote it holds the lock
  // (PREPARE); when it dies they go back to the old table on their own (watch.ts), so no node serves it.
  // (With NBD_MIRROR_POOL_LOCK=local there is no group: the local server decides, as in a plain pool.)
  const viaGroup = pool.md.clustered && heldClusterLock() !== undefined;
  const c = viaGroup ? null : controlClient(flags);
  const served = viaGroup || c === null ? null : (await servesVolume(c, pool.md, pool.paths, pending.volume)) || null;
  const md = served !== null ? withoutPending(pool.md, pool.md.volumes.map((v) => (v.name === pending.volume.name ? pending.volume : v))) : withoutPending(pool.md);
  await commitChange(pool, md, {}, [pending.volume.name]);
  return { ...pool, md };
}

/** Paths as they are now, in the metadata's `path` fields (kept for humans; labels are the truth). */
function withPaths(md: PoolMetadata, paths: ReadonlyMap<string, string>): PoolMetadata {
  return { ...md, devices: md.devices.map((d) => ({ ...d, path: paths.get(d.uuid) ?? d.path })) };
}

export async function poolCreate(opts: { name: string; devices: string[]; clustered: boolean; extentSizeBytes?: number }, flags: LocateFlags): Promise<PoolMetadata> {
  const devices = await newDevices(opts.devices);
  const visible = await locate(flags, false);
  const clash = visible.pools.find((p) => p.md.name === opts.name);
  if (clash !== undefined) throw new PoolError('EEXIST', `pool name ${opts.name} is in use (uuid ${clash.md.uuid}, devices ${[...clash.paths.values()].join(' ')})`);
  const md = ops.createPool({ name: opts.name, clustered: opts.clustered, devices, ...(opts.extentSizeBytes !== undefined ? { extentSizeBytes: opts.extentSizeBytes } : {}) });
  await commit(null, md, { join: md.devices.map((d) => ({ path: d.path, uuid: d.uuid })) });
  return md;
}

export async function poolExtend(name: string, paths: string[], flags: LocateFlags & ControlFlag): Promise<PoolMetadata> {
  const pool = await openForChange(flags, name, `pool extend ${name} ${paths.join(' ')}`);
  const devices = await newDevices(paths);
  const { md, added } = ops.extendPool(withPaths(pool.md, pool.paths), devices);
  await commitChange(pool, md, { join: added.map((d) => ({ path: d.path, uuid: d.uuid })) });
  return md;
}

async function deviceUuidOf(pool: LoadedPool, dev: string): Promise<string> {
  if (pool.md.devices.some((d) => d.uuid === dev)) return dev;
  const key = await realpath(dev).catch(() => dev);
  for (const [uuid, p] of pool.paths) if ((await realpath(p).catch(() => p)) === key) return uuid;
  throw new PoolError('ENOENT', `${dev} is not a device of pool ${pool.md.name} (devices: ${[...pool.paths.values()].join(' ')})`);
}

export async function poolReduce(name: string, dev: string, flags: LocateFlags & ControlFlag): Promise<PoolMetadata> {
  const pool = await openForChange(flags, name, `pool reduce ${name} ${dev}`);
  const uuid = await deviceUuidOf(pool, dev);
  const md = ops.reducePool(withPaths(pool.md, pool.paths), uuid);
  await commitChange(pool, md, { leave: [pool.paths.get(uuid)!] });
  return md;
}

export async function poolChange(name: string, change: { clustered?: boolean }, flags: LocateFlags & ControlFlag): Promise<PoolMetadata> {
  const pool = await openForChange(flags, name, `pool change ${name} --clustered ${change.clustered ? 'y' : 'n'}`);
  if (change.clustered === undefined) throw new PoolError('EINVAL', 'pool change: nothing to change (give --clustered y|n)');
  if (change.clustered === pool.md.clustered) throw new PoolError('EINVAL', `pool ${name} is already ${change.clustered ? '' : 'not '}clustered`);
  await refuseServed(pool, pool.md.volumes, flags, 'pool change');
  const md = ops.setClustered(withPaths(pool.md, pool.paths), change.clustered);
  await commitChange(pool, md, {}, md.volumes.map((v) => v.name));
  return md;
}

export interface PoolSummary {
  readonly name: string;
  readonly uuid: string;
  readonly seqno: number;
  readonly clustered: boolean;
  readonly extentSizeBytes: number;
  readonly sizeBytes: number;
  readonly freeBytes: number;
  readonly devices: { uuid: string; path: string | null; sizeBytes: number; extents: number; freeExtents: number; missing: boolean }[];
  readonly volumes: string[];
  readonly orphans: readonly string[];
}

export function summarize(pool: LoadedPool): PoolSummary {
  const md = pool.md;
  const devices = md.devices.map((d) => ({
    uuid: d.uuid,
    path: pool.paths.get(d.uuid) ?? null,
    sizeBytes: d.sizeBytes,
    extents: d.extentCount,
    freeExtents: ops.freeExtents(md, d.uuid),
    missing: !pool.paths.has(d.uuid),
  }));
  return {
    name: md.name,
    uuid: md.uuid,
    seqno: md.seqno,
    clustered: md.clustered,
    extentSizeBytes: md.extentSizeBytes,
    sizeBytes: devices.reduce((a, d) => a + d.extents, 0) * md.extentSizeBytes,
    freeBytes: devices.reduce((a, d) => a + d.freeExtents, 0) * md.extentSizeBytes,
    devices,
    volumes: md.volumes.map((v) => v.name),
    orphans: pool.orphans,
  };
}

export async function poolList(flags: LocateFlags): Promise<PoolSummary[]> {
  return (await locate(flags)).pools.map(summarize);
}

export async function poolShow(name: string, flags: LocateFlags): Promise<PoolSummary & { metadata: PoolMetadata }> {
  const { pool } = await locatePool(flags, name);
  return { ...summarize(pool), metadata: pool.md };
}

/** Labelled devices with the pool each belongs to (pool scan). */
export async function scanReport(entries: string[]): Promise<{ path: string; sizeBytes: number; pool: string | null; poolUuid: string | null; deviceUuid: string | null; seqno: number | null; error?: string }[]> {
  const out = [];
  for (const p of await expandDevicePaths(entries)) {
    const s = await scanDevice(p);
    const m = membership(s);
    out.push({
      path: p,
      sizeBytes: s.sizeBytes,
      pool: m?.name ?? null,
      poolUuid: s.label?.poolUuid ?? null,
      deviceUuid: s.label?.deviceUuid ?? null,
      seqno: s.slots[0]?.seqno ?? null,
      ...(s.error !== undefined ? { error: s.error } : {}),
    });
  }
  return out;
}

// ------------------------------------------------------------------ volumes

function controlClient(flags: ControlFlag): ControlClient | null {
  try {
    return new ControlClient(resolveControlTarget(flags.control !== undefined ? { control: flags.control } : {}));
  } catch {
    return null; // no server running: offline
  }
}

/** Refuse when a reachable server serves one of `volumes` (changing it under a live server is not supported). */
async function refuseServed(pool: LoadedPool, volumes: readonly PoolVolume[], flags: ControlFlag, what: string): Promise<void> {
  const c = controlClient(flags);
  if (c === null) return;
  for (const v of volumes) {
    if (await servesVolume(c, pool.md, pool.paths, v)) throw new PoolError('EBUSY', `${what}: volume ${v.name} is being served (control socket ${c.target.kind === 'unix' ? c.target.path : 'tcp'}); stop serving it first`);
  }
}

export interface VolumeCreateOptions {
  readonly sizeBytes: number;
  readonly mirrors: number;
  readonly regionSizeBytes?: number;
  readonly log?: LogKind;
  readonly nosync?: boolean;
}

export async function volumeCreate(ref: string, poolFlag: string | undefined, o: VolumeCreateOptions, flags: LocateFlags & ControlFlag): Promise<{ md: PoolMetadata; volume: PoolVolume; table: string }> {
  const r = volumeRef(ref, poolFlag);
  const pool = await openForChange(flags, r.pool, `create ${r.pool}/${r.volume}`);
  if (o.regionSizeBytes !== undefined && o.regionSizeBytes > pool.md.extentSizeBytes) {
    throw new PoolError('EINVAL', `--region-size ${o.regionSizeBytes} is larger than the pool's extent size (${pool.md.extentSizeBytes})`);
  }
  const { md, volume } = ops.createVolume(withPaths(pool.md, pool.paths), { name: r.volume, ...o });
  await wipeNewLogRun(md, pool.paths, undefined, volume);
  await commitChange(pool, md, {}, [volume.name]);
  return { md, volume, table: volumeTable(md, pool.paths, volume) };
}

export async function volumeRemove(ref: string, poolFlag: string | undefined, flags: LocateFlags & ControlFlag): Promise<PoolMetadata> {
  const r = volumeRef(ref, poolFlag);
  const pool = await openForChange(flags, r.pool, `remove ${r.pool}/${r.volume}`);
  const v = ops.findVolume(pool.md, r.volume);
  await refuseServed(pool, [v], flags, 'remove');
  const md = ops.removeVolume(withPaths(pool.md, pool.paths), r.volume);
  await commitChange(pool, md, {}, [v.name]);
  return md;
}

/**
 * Grow a volume (lvextend). Served: online (intent, reload of the larger table, suspend --noflush, resume,
 * commit); the server opens the grown table as a new export whose disk log marks the new regions out of
 * sync, so only the new part is resynced (a core log resyncs all). NBD clients connected before see the
 * old size until they reconnect (NBD has no resize notification in the base protocol).
 */
export async function volumeResize(ref: string, poolFlag: string | undefined, sizeBytes: number, flags: LocateFlags & ControlFlag): Promise<{ md: PoolMetadata; volume: PoolVolume; oldSizeBytes: number; online: boolean }> {
  const r = volumeRef(ref, poolFlag);
  const pool = await openForChange(flags, r.pool, `resize ${r.pool}/${r.volume} to ${sizeBytes} bytes`);
  const current = ops.findVolume(pool.md, r.volume);
  const base = withPaths(pool.md, pool.paths);
  const out = ops.resizeVolume(base, r.volume, sizeBytes);
  const c = controlClient(flags);
  const served = c === null ? null : (await servesVolume(c, pool.md, pool.paths, current)) || null;
  if (pool.md.clustered && current.legs.length > 1 && (served !== null || (heldClusterLock()?.members().length ?? 1) > 1)) {
    throw new PoolError(
      'EBUSY',
      `resize ${current.name}: a mirror of clustered pool ${pool.md.name} cannot grow while it may be served (${served !== null ? 'this node serves it' : 'other nodes follow the pool'}): ` +
        `its cluster log cannot change its region count online. Stop serving it on every node, resize, serve it again`,
    );
  }
  if (heldClusterLock() === undefined && (served === null || c === null)) {
    await commitChange(pool, out.md, {}, [r.volume]);
    return { ...out, online: false };
  }
  const md = await applyOnline(pool, c, base, out.volume, out.md.volumes, 'resize');
  return { ...out, md, online: true };
}

/**
 * lvchange --resync: every region of a stopped mirror volume (disk log) is resynced from one leg (`source`,
 * default the first) at its next activation. This is the override the lost-source refusal names, done by
 * the engine's disk log itself: activated once as for the volume's table with the log argument `sync` and
 * the source listed first, it records on the log device every region out of sync, the source up to date,
 * the other legs catching up, and no lost source. The metadata's nosync flag is dropped first (a nosync
 * table would declare everything in sync again). Refused while the volume may be served: by a server on
 * this host, or in a clustered pool while other nodes follow it.
 */
export async function volumeResync(ref: string, poolFlag: string | undefined, source: string | undefined, flags: LocateFlags & ControlFlag): Promise<{ md: PoolMetadata; volume: PoolVolume; source: string }> {
  const r = volumeRef(ref, poolFlag);
  const pool = await openForChange(flags, r.pool, `resync ${r.pool}/${r.volume}`);
  const current = ops.findVolume(pool.md, r.volume);
  const out = ops.resyncVolume(withPaths(pool.md, pool.paths), r.volume);
  await refuseServed(pool, [current], flags, 'resync');
  const members = heldClusterLock()?.members().length ?? 1;
  if (pool.md.clustered && members > 1) {
    throw new PoolError(
      'EBUSY',
      `resync ${current.name}: other nodes follow clustered pool ${pool.md.name} (${members - 1} other member(s)) and may serve the volume; stop serving it on every node first`,
    );
  }
  const spec = volumeTableSpec(pool.md, pool.paths, current);
  if (spec.kind !== 'mirror') throw new PoolError('EINVAL', `resync ${current.name}: not a mirror`);
  let first = spec.legs[0]!;
  if (source !== undefined) {
    // The pool device it names (path or uuid, as pool reduce takes it); spec.legs[i] is current.legs[i].
    const uuid = await deviceUuidOf(pool, source).catch(() => null);
    const i = uuid === null ? -1 : current.legs.findIndex((run) => run.device === uuid);
    if (i < 0) throw new PoolError('EINVAL', `resync ${current.name}: --source ${source} is not a leg of the volume (legs: ${spec.legs.map((l) => l.device).join(', ')})`);
    first = spec.legs[i]!;
  }
  if (current.nosync) await commitChange(pool, out.md, {}, [current.name]);
  // The engine's own disk log, activated once as a table with `sync` and `first` listed first would be (the
  // clustered-disk log reads the same records). No data leg is opened: nothing is copied now.
  const { DiskLog } = await import('../mirror/log/disk.js');
  const logDevice = await FileLeg.open(spec.log.device!, { offsetBytes: 0 });
  try {
    const log = new DiskLog({ device: logDevice, regionSizeBytes: current.regionSizeBytes, lengthBytes: current.sizeBytes, sync: 'sync' });
    await log.resume({ legDevices: [first, ...spec.legs.filter((l) => l !== first)].map((l) => l.device), flushDataLegs: async () => {} });
    await log.close();
  } finally {
    await logDevice.close();
  }
  return { md: out.md, volume: out.volume, source: first.device };
}

export async function volumeConvert(ref: string, poolFlag: string | undefined, mirrors: number, o: { log?: LogKind }, flags: LocateFlags & ControlFlag): Promise<{ md: PoolMetadata; volume: PoolVolume; table: string; online: boolean }> {
  const r = volumeRef(ref, poolFlag);
  const pool = await openForChange(flags, r.pool, `convert ${r.pool}/${r.volume} --mirrors ${mirrors}`);
  const current = ops.findVolume(pool.md, r.volume);
  const c = controlClient(flags);
  const served = c === null ? null : (await servesVolume(c, pool.md, pool.paths, current)) || null;
  const base = withPaths(pool.md, pool.paths);
  const { md, volume } = ops.convertMirrors(base, r.volume, mirrors, o);
  await wipeNewLogRun(md, pool.paths, current, volume);
  const table = volumeTable(md, pool.paths, volume);
  if (heldClusterLock() === undefined && (served === null || c === null)) {
    await commitChange(pool, md, {}, [volume.name]);
    return { md, volume, table, online: false };
  }
  const done = await applyOnline(pool, c, base, volume, md.volumes, 'convert');
  return { md: done, volume, table, online: true };
}

/**
 * One online step on a served volume (lvconvert/lvextend/pvmove on an active LV): the intent (metadata with
 * the new volume as `pending`, new seqno), then the server loads the new table (reload, suspend --noflush,
 * resume), then the commit of `finalVolumes`. A command killed in between is settled by the next command
 * (settle()). Returns the committed metadata.
 */
async function applyOnline(pool: LoadedPool, c: ControlClient | null, base: PoolMetadata, volume: PoolVolume, finalVolumes: readonly PoolVolume[], what: string, step = ''): Promise<PoolMetadata> {
  const intent: PoolMetadata = { ...base, seqno: base.seqno + 1, pending: { volume } };
  checkMetadata(intent);
  await commit(pool, intent);
  crashPoint(`${step}after-intent`);
  const lock = heldClusterLock();
  if (lock !== undefined) {
    const done = await applyClustered(pool, lock, intent, volume, finalVolumes, what, step);
    if (c !== null) await localServerFollows(c, done, pool.paths, volume.name, what);
    return done;
  }
  if (c === null) throw new Error('applyOnline: no control socket');
  const table = volumeTable(intent, pool.paths, volume);
  const path = (op: string): string => `/v1/volumes/${encodeURIComponent(volume.name)}/${op}`;
  try {
    await c.post(path('reload'), { table });
    await c.post(path('suspend'), { noflush: true });
    await c.post(path('resume'));
  } catch (e) {
    await commitChange(pool, withoutPending(intent), {}, [volume.name]); // the server kept (or went back to) the old table
    throw new PoolError('EIO', `${what} ${volume.name}: the running server refused the new table: ${(e as Error).message}; nothing changed`);
  }
  crashPoint(`${step}after-resume`);
  const done = withoutPending(intent, finalVolumes);
  await commitChange(pool, done, {}, [volume.name]);
  return done;
}

/**
 * The clustered form of an online step (clvmd's order): PREPARE on every node of the pool's group (each
 * server of the volume loads the pending table and suspends), then the commit, then FINISH (every node
 * resumes with the new table). A node that cannot load it: FINISH without commit, the intent dropped.
 * Killed before the commit: servers resume the old table when this command leaves the group, the next
 * command drops the intent; after it: they resume the new one.
 */
async function applyClustered(pool: LoadedPool, lock: MetadataLock, intent: PoolMetadata, volume: PoolVolume, finalVolumes: readonly PoolVolume[], what: string, step: string): Promise<PoolMetadata> {
  let refused: string | undefined;
  try {
    const results = await lock.prepareAll(intent.seqno, volume.name);
    const bad = results.filter((r) => !r.ok);
    if (bad.length > 0) refused = bad.map((r) => `node ${r.member.nodeId} (pid ${r.member.pid}): ${r.error}`).join('; ');
  } catch (e) {
    refused = (e as Error).message;
  }
  if (refused !== undefined) {
    await lock.finish(intent.seqno, false);
    await commitChange(pool, withoutPending(intent), {}, [volume.name]);
    throw new PoolError('EIO', `${what} ${volume.name}: ${refused}; nothing changed`);
  }
  crashPoint(`${step}after-prepare`);
  const done = withoutPending(intent, finalVolumes);
  await commit(pool, done);
  crashPoint(`${step}after-commit`);
  await lock.finish(intent.seqno, true);
  await announceCommitted(done.seqno, [volume.name]);
  return done;
}

/** How long this node's server may take to resume on a committed table after FINISH went round the group. */
const FOLLOW_TIMEOUT_MS = 20_000;

/**
 * In a clustered pool FINISH reaches this node's server through the group, so it resumes on the committed
 * table a moment after the commit. The next step (e.g. a move's wait for the resync) must see that table:
 * wait for it, unless the server does not have the volume at all.
 */
async function localServerFollows(c: ControlClient, done: PoolMetadata, paths: ReadonlyMap<string, string>, name: string, what: string): Promise<void> {
  const v = ops.findVolume(done, name);
  const started = Date.now();
  for (;;) {
    const table = await servedTableOf(c, name);
    if (table === null || tableIsVolume(table, done, paths, v)) return;
    if (Date.now() - started > FOLLOW_TIMEOUT_MS) {
      throw new PoolError('EIO', `${what} ${name}: committed, but this node's server did not resume on the new table within ${FOLLOW_TIMEOUT_MS} ms; check its log, then run the command again`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Test hook: NBD_MIRROR_POOL_CRASH_AT=<point> kills this process there with SIGKILL (a crash, no cleanup). */
function crashPoint(point: string): void {
  if (process.env.NBD_MIRROR_POOL_CRASH_AT === point) process.kill(process.pid, 'SIGKILL');
}

export async function volumeTableLine(ref: string, poolFlag: string | undefined, flags: LocateFlags): Promise<{ name: string; pool: string; table: string }> {
  const r = volumeRef(ref, poolFlag);
  const { pool } = await locatePool(flags, r.pool);
  const v = ops.findVolume(pool.md, r.volume);
  return { name: v.name, pool: pool.md.name, table: volumeTable(pool.md, pool.paths, v) };
}

/** Every volume of a pool as [name, table line], for serve --pool. */
export async function poolTables(name: string, flags: LocateFlags & ControlFlag): Promise<{ name: string; table: string }[]> {
  return (await poolServePlan(name, flags)).tables;
}

/**
 * What `serve --pool` serves, and the metadata it came from. A plain pool's interrupted change is settled
 * first (this host's lock); a clustered pool's is left to the next command under the cluster lock (the
 * server serves the committed volumes and follows the outcome when it is announced, see watch.ts).
 */
export async function poolServePlan(name: string, flags: LocateFlags & ControlFlag): Promise<{ tables: { name: string; table: string }[]; md: PoolMetadata }> {
  const located = (await locatePool(flags, name)).pool;
  const viaGroup = located.md.clustered && process.env[LOCK_MODE_ENV] !== 'local';
  const pool = located.md.pending !== undefined && located.missing.length === 0 && !viaGroup ? await settle(located, flags) : located;
  if (pool.md.volumes.length === 0) throw new PoolError('ENOENT', `pool ${name} has no volumes to serve`);
  return { tables: pool.md.volumes.map((v) => ({ name: v.name, table: volumeTable(pool.md, pool.paths, v) })), md: pool.md };
}

export interface VolumeRow {
  readonly name: string;
  readonly pool: string;
  readonly sizeBytes: number;
  readonly legs: number;
  readonly copyPercent: number | null;
  readonly health: string;
  readonly log: string;
  readonly clustered: boolean;
  readonly source: VolumeState['source'];
  readonly error?: string;
}

export async function volumeList(poolName: string | undefined, flags: LocateFlags & ControlFlag): Promise<VolumeRow[]> {
  const l = await locate(flags);
  const pools = poolName === undefined ? l.pools : l.pools.filter((p) => p.md.name === poolName);
  if (poolName !== undefined && pools.length === 0) throw new PoolError('ENOENT', `no pool named "${poolName}" on ${l.where}`);
  const client = controlClient(flags);
  const rows: VolumeRow[] = [];
  for (const pool of pools) {
    for (const v of pool.md.volumes) {
      const log = v.legs.length === 1 ? 'linear' : v.log === 'disk' && v.logRun ? 'disk' : 'core';
      let state: VolumeState = { copyPercent: null, health: '-', source: 'none' };
      let error: string | undefined;
      try {
        state = (client ? await serverState(client, pool.md, pool.paths, v) : null) ?? (await diskLogState(pool.md, pool.paths, v));
      } catch (e) {
        error = (e as Error).message;
      }
      rows.push({
        name: v.name,
        pool: pool.md.name,
        sizeBytes: v.sizeBytes,
        legs: v.legs.length,
        copyPercent: state.copyPercent,
        health: state.health,
        log,
        clustered: pool.md.clustered,
        source: state.source,
        ...(error !== undefined ? { error } : {}),
      });
    }
  }
  return rows;
}

/** Bytes zeroed at the start of a new disk log run: the log header (magic, nr_regions, leg records). */
export const LOG_HEADER_WIPE_BYTES = 4096;

/**
 * A disk log run newly given to a volume may hold an old log (extents freed by a removed volume or a
 * moved log): its header would be trusted at activation (regions "clean" that never were). Zero it first,
 * so the new log starts all out of sync (or all in sync with --nosync).
 */
async function wipeNewLogRun(md: PoolMetadata, paths: ReadonlyMap<string, string>, before: PoolVolume | undefined, after: PoolVolume): Promise<void> {
  const run = after.logRun;
  if (run === undefined || (before?.logRun !== undefined && sameRun(before.logRun, run))) return;
  const leg = await FileLeg.open(paths.get(run.device)!, { offsetBytes: extentOffsetBytes(md, run.startExtent) });
  try {
    await leg.write(Buffer.alloc(LOG_HEADER_WIPE_BYTES), 0, { fua: true });
    await leg.flush();
  } finally {
    await leg.close();
  }
}

/** Bytes copied per step of a move (bounded memory). */
export const MOVE_CHUNK_BYTES = 1024 * 1024;
/** How long an online move waits for the temporary leg to be in sync. */
export const MOVE_SYNC_TIMEOUT_MS = 24 * 3600 * 1000;
const MOVE_SYNC_POLL_MS = 200;

const sameRun = (a: ExtentRun, b: ExtentRun): boolean => a.device === b.device && a.startExtent === b.startExtent && a.extentCount === b.extentCount;

function replaceVolume(md: PoolMetadata, v: PoolVolume): PoolVolume[] {
  return md.volumes.map((x) => (x.name === v.name ? v : x));
}

/** Copy a run's bytes to another run (offline move), in bounded chunks, then flush. */
async function copyRun(md: PoolMetadata, paths: ReadonlyMap<string, string>, from: ExtentRun, to: ExtentRun): Promise<number> {
  const buf = Buffer.alloc(MOVE_CHUNK_BYTES);
  const src = await FileLeg.open(paths.get(from.device)!, { offsetBytes: extentOffsetBytes(md, from.startExtent), readOnly: true });
  const dst = await FileLeg.open(paths.get(to.device)!, { offsetBytes: extentOffsetBytes(md, to.startExtent) });
  let bytes = 0;
  try {
    const total = from.extentCount * md.extentSizeBytes;
    for (let off = 0; off < total; off += MOVE_CHUNK_BYTES) {
      const chunk = buf.subarray(0, Math.min(MOVE_CHUNK_BYTES, total - off));
      await src.read(chunk, off);
      await dst.write(chunk, off, { fua: false });
      bytes += chunk.length;
    }
    await dst.flush();
  } finally {
    await src.close();
    await dst.close();
  }
  return bytes;
}

/**
 * An offline copy is only safe when nobody serves the volume. In a clustered pool this node cannot see the
 * others' servers; when anyone else is in the pool's group (a server follows it), refuse.
 */
function refuseCopyWhileClustered(md: PoolMetadata, volume: string): void {
  const lock = heldClusterLock();
  if (lock === undefined || lock.members().length <= 1) return;
  throw new PoolError(
    'EBUSY',
    `pool move: volume ${volume} of clustered pool ${md.name} is not served on this node, and other nodes follow the pool (${lock.members().length - 1} other member(s)): ` +
      `run pool move on a node that serves it (give its --control), or stop serving it on every node`,
  );
}

/** Commit one volume's new state (offline step), one seqno on. */
async function commitVolume(pool: LoadedPool, cur: PoolMetadata, v: PoolVolume): Promise<PoolMetadata> {
  const next: PoolMetadata = { ...cur, seqno: cur.seqno + 1, volumes: replaceVolume(cur, v) };
  checkMetadata(next);
  await commitChange(pool, next, {}, [v.name]);
  return next;
}

/** Wait until a served mirror has every region in sync on every leg (all legs alive). */
async function waitServedInSync(c: ControlClient, name: string): Promise<void> {
  const started = Date.now();
  for (;;) {
    const { status } = await c.get<{ status: string }>(`/v1/volumes/${encodeURIComponent(name)}/status`);
    const t = status.trim().split(/\s+/);
    const n = Number(t[3]);
    const ratio = /^([0-9]+)\/([0-9]+)$/.exec(t[4 + n] ?? '');
    const health = t[6 + n] ?? '';
    if (t[2] !== 'mirror' || ratio === null) throw new PoolError('EIO', `pool move ${name}: unexpected status "${status}"`);
    if (/[^A]/.test(health)) throw new PoolError('EIO', `pool move ${name}: a leg failed while the new leg was resyncing (health ${health}); the move stays in progress: run pool move again once the legs are healthy`);
    if (ratio[1] === ratio[2]) return;
    if (Date.now() - started > MOVE_SYNC_TIMEOUT_MS) throw new PoolError('EIO', `pool move ${name}: the new leg is not in sync after ${MOVE_SYNC_TIMEOUT_MS} ms (${ratio[1]}/${ratio[2]} regions)`);
    await new Promise((r) => setTimeout(r, MOVE_SYNC_POLL_MS));
  }
}

/**
 * Finish a leg move in progress (volume.moving): served, wait until the temporary leg is in sync, then
 * reload without the source leg (online step); not served, copy the source run and commit.
 */
async function finishLegMove(pool: LoadedPool, c: ControlClient | null, cur: PoolMetadata, name: string): Promise<{ md: PoolMetadata; bytes: number; online: boolean }> {
  const v = ops.findVolume(cur, name);
  const m = v.moving!;
  const { moving: _m, ...rest } = v;
  const fin: PoolVolume = { ...rest, legs: v.legs.filter((l) => !sameRun(l, m.to)).map((l) => (sameRun(l, m.from) ? m.to : l)), log: m.log, nosync: m.nosync };
  const served = c === null ? null : (await servesVolume(c, cur, pool.paths, v)) || null;
  if (served === null || c === null) {
    refuseCopyWhileClustered(cur, name);
    const bytes = await copyRun(cur, pool.paths, m.from, m.to);
    return { md: await commitVolume(pool, cur, fin), bytes, online: false };
  }
  await waitServedInSync(c, name);
  crashPoint('move-synced');
  return { md: await applyOnline(pool, c, cur, fin, replaceVolume(cur, fin), 'pool move', 'move-drop-'), bytes: 0, online: true };
}

/**
 * pvmove: every run off `dev` to its new place. A volume that is not served: copy, flush, commit (a crash
 * before the commit leaves the old runs authoritative). A served volume, online, LVM's way: each leg on
 * `dev` gets a temporary extra leg on its destination (a linear volume becomes a 2-leg mirror with a core
 * log), committed with the move recorded in the volume (`moving`); once the resync has copied it, a reload
 * without the source leg, committed. A disk log on `dev` moves in one online step (the new log starts
 * empty: the volume resyncs). Every step is intent-then-commit; a move a killed command left in progress is
 * finished by the next `pool move`.
 */
export async function poolMove(name: string, dev: string, to: string | undefined, flags: LocateFlags & ControlFlag): Promise<{ md: PoolMetadata; moves: ops.RunMove[]; bytes: number; online: string[] }> {
  const pool = await openForChange(flags, name, `pool move ${name} ${dev}${to !== undefined ? ` --to ${to}` : ''}`);
  const fromUuid = await deviceUuidOf(pool, dev);
  const toUuid = to === undefined ? undefined : await deviceUuidOf(pool, to);
  const c = controlClient(flags);
  let cur = withPaths(pool.md, pool.paths);
  let bytes = 0;
  const online = new Set<string>();
  const done: ops.RunMove[] = [];
  // Moves a killed `pool move` left in progress come first.
  for (const v of cur.volumes.filter((x) => x.moving !== undefined)) {
    done.push({ volume: v.name, from: v.moving!.from, to: v.moving!.to });
    const r = await finishLegMove(pool, c, cur, v.name);
    cur = r.md;
    bytes += r.bytes;
    if (r.online) online.add(v.name);
  }
  if (done.length > 0 && ops.freeExtents(cur, fromUuid) === cur.devices.find((d) => d.uuid === fromUuid)!.extentCount) {
    return { md: cur, moves: done, bytes, online: [...online] };
  }
  const { md: target, moves } = ops.moveDevice(cur, fromUuid, toUuid);
  for (const vname of [...new Set(moves.map((m) => m.volume))]) {
    const v = ops.findVolume(cur, vname);
    const served = c === null ? null : (await servesVolume(c, cur, pool.paths, v)) || null;
    if (served === null || c === null) {
      refuseCopyWhileClustered(cur, vname);
      for (const m of moves.filter((x) => x.volume === vname)) bytes += await copyRun(cur, pool.paths, m.from, m.to);
      cur = await commitVolume(pool, cur, ops.findVolume(target, vname));
      continue;
    }
    online.add(vname);
    for (const m of moves.filter((x) => x.volume === vname)) {
      const now = ops.findVolume(cur, vname);
      if (now.logRun !== undefined && sameRun(now.logRun, m.from)) {
        if (cur.clustered) {
          throw new PoolError('EBUSY', `pool move: the disk log of ${vname} in clustered pool ${cur.name} cannot move while served (a second cluster log of the volume cannot join its group while the first is open): stop serving ${vname} on every node, or move it with --to onto another device first`);
        }
        const moved: PoolVolume = { ...now, logRun: m.to };
        await wipeNewLogRun(cur, pool.paths, now, moved);
        cur = await applyOnline(pool, c, cur, moved, replaceVolume(cur, moved), 'pool move', 'move-log-');
        continue;
      }
      const temp: PoolVolume = { ...now, legs: [...now.legs, m.to], nosync: false, log: now.legs.length === 1 ? 'core' : now.log, moving: { from: m.from, to: m.to, log: now.log, nosync: now.nosync } };
      cur = await applyOnline(pool, c, cur, temp, replaceVolume(cur, temp), 'pool move', 'move-add-');
      crashPoint('move-added');
      cur = (await finishLegMove(pool, c, cur, vname)).md;
    }
  }
  return { md: cur, moves: [...done, ...moves], bytes, online: [...online] };
}
