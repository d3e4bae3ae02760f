// Repair: what LVM's `lvconvert --repair` and dmeventd's mirror plugin do when a leg fails, in-process.
// - planRepair (pure): from the live table and the leg health, the new table: failed legs dropped
//   (policy remove; a single survivor becomes a linear table) or replaced by spares (policy allocate;
//   falls back to remove when the spares run out, as LVM does).
// - repairVolume: suspend --noflush, reload the planned table, resume (held writes complete on the new
//   table); on a refused reload the old table is resumed and the error re-thrown. Every step is an event.
// - RepairPolicy: `serve --repair-policy none|remove|allocate [--spare DEV]...`: on a leg-failed event
//   with health D, F or U, repair that volume (once at a time per volume; failures during a repair
//   trigger another pass afterwards).
// - Cluster tables: a repair is also sent on the log's group as a REPAIR (src/cluster/repair-relay.ts:
//   the devices dropped and the spares added) before this node suspends; every other node's RepairPolicy
//   (whatever its policy name) applies it to its volume with that log uuid (the same spare devices: they
//   are shared, like the legs), so `nbd-mirror repair NAME [--spare DEV]` on one node repairs all nodes.
//   The cluster log resyncs an added leg once, cluster-wide, after every node runs on it. Policy
//   `allocate` on a cluster table is decided by the log server's node: the others wait for its REPAIR
//   (CLUSTER_ALLOCATE_DEFER_MS, then act themselves), so no two nodes pick different spares.
import { clusterLogWaits, isClusterLogServer, onClusterRepair, requestClusterRepair, type ClusterRepairRequest } from '../cluster/repair-relay.js';
import type { LegSpec, MirrorTableSpec, TableSpec } from '../mirror/table.js';
import { formatTable } from '../mirror/table.js';
import { sectors } from '../units.js';
import { ControlError } from './control-error.js';
import { engineOf, REPAIR_HEALTH, type LegState } from './engine.js';
import { errorText, type Volume, type VolumeEvent, type Volumes } from './volumes.js';

export type RepairPolicyName = 'none' | 'remove' | 'allocate';
export const REPAIR_POLICIES: readonly RepairPolicyName[] = ['none', 'remove', 'allocate'];

/** A repair pass gives up after this many consecutive failures on one volume (no busy loop). */
export const REPAIR_ATTEMPTS_MAX = 3;
/** Failures arriving within this window are repaired in one pass (several legs failing at once). */
export const REPAIR_BATCH_DELAY_MS = 50;
/** Policy allocate, cluster table, not the log server: wait this long for the server's REPAIR first. */
export const CLUSTER_ALLOCATE_DEFER_MS = 10_000;
/** A repair still running after this long reports what it waits for (event repair-waiting), and again each period. */
export const REPAIR_WAIT_REPORT_MS = 10_000;
/**
 * Another node's REPAIR that failed here is tried again after this long (REPAIR_ATTEMPTS_MAX attempts in
 * all): until this node runs on the same legs as the others, writes wait on every node.
 */
export const CLUSTER_REPAIR_RETRY_MS = 2_000;

export interface RepairPlan {
  readonly spec: TableSpec;
  readonly line: string;
  readonly removed: readonly string[];
  readonly added: readonly string[];
}

export interface RepairResult {
  readonly repaired: boolean;
  /** Why nothing was done (repaired=false). */
  readonly reason?: string;
  readonly table?: string;
  readonly removed?: readonly string[];
  readonly added?: readonly string[];
  readonly heldWritesReissued?: number;
}

/**
 * The table that replaces `spec` once the legs whose health is D/F/U (or listed in `failed`) are gone.
 * Returns null when no leg needs repair. Throws ControlError when nothing would be left.
 */
export function planRepair(
  spec: TableSpec,
  legs: readonly LegState[],
  opts: {
    readonly policy: 'remove' | 'allocate';
    readonly spares: readonly string[];
    readonly failed?: ReadonlySet<string>;
    /** Accept losing the regions that only a lost primary held (see below). */
    readonly force?: boolean;
  },
): RepairPlan | null {
  if (spec.kind !== 'mirror') return null;
  const failedDevices = new Set<string>(opts.failed ?? []);
  for (const l of legs) if (REPAIR_HEALTH.has(l.health)) failedDevices.add(l.device);
  const failed = spec.legs.filter((l) => failedDevices.has(l.device));
  if (failed.length === 0) return null;
  // The primary was lost while the mirror was out of sync: the engine has no default leg, and the regions
  // not yet in sync exist only on the failed leg (their reads fail). Dropping it would make the survivors
  // (and a spare resynced from them) serve stale data for those regions, silently. dm and LVM would; we
  // refuse unless told to accept the loss.
  const engineKnowsDefault = legs.some((l) => l.isDefault !== undefined);
  if (engineKnowsDefault && !legs.some((l) => l.isDefault === true) && opts.force !== true) {
    throw new ControlError(
      'EBUSY',
      `repair: the default leg failed while the mirror was out of sync; the regions not yet in sync exist only on ` +
        `${failed.map((l) => l.device).join(', ')}, so dropping it would serve stale data for them. Either keep that ` +
        `leg's copy (once it works, restart once with the log argument 'sync' and it listed first: every region is ` +
        `resynced from it, and writes made since it failed are lost), or accept losing those regions with ` +
        `\`repair --force\``,
    );
  }
  const survivors = spec.legs.filter((l) => !failedDevices.has(l.device));
  if (survivors.length === 0) {
    throw new ControlError('EIO', `repair: every leg of the mirror failed (${failed.map((l) => l.device).join(', ')}); nothing to keep`);
  }
  const inUse = new Set<string>([...spec.legs.map((l) => l.device), ...(spec.log.device ? [spec.log.device] : [])]);
  const added: LegSpec[] = [];
  if (opts.policy === 'allocate') {
    for (const dev of opts.spares) {
      if (added.length === failed.length) break;
      if (inUse.has(dev)) continue;
      inUse.add(dev);
      added.push({ device: dev, offsetSectors: sectors(0) });
    }
  }
  const newLegs = [...survivors, ...added];
  const removed = failed.map((l) => l.device);
  let next: TableSpec;
  if (newLegs.length === 1) {
    next = { kind: 'linear', startSectors: spec.startSectors, lengthSectors: spec.lengthSectors, leg: newLegs[0]! };
  } else {
    const m: MirrorTableSpec = {
      ...spec,
      legs: newLegs,
      // A new leg has none of the data: `nosync` would declare it in sync.
      log: added.length > 0 && spec.log.sync === 'nosync' ? { ...spec.log, sync: 'default' } : spec.log,
    };
    next = m;
  }
  return { spec: next, line: formatTable(next), removed, added: added.map((l) => l.device) };
}

/**
 * Repair one volume now: plan, suspend --noflush, reload, resume. Policy: `allocate` when spares are
 * given, else `remove` (lvconvert --repair with and without PVs to allocate from).
 */
export async function repairVolume(
  v: Volume,
  opts: {
    readonly spares: readonly string[];
    readonly policy?: 'remove' | 'allocate';
    readonly trigger: string;
    readonly failed?: ReadonlySet<string>;
    readonly force?: boolean;
    /** Period of the repair-waiting reports (default REPAIR_WAIT_REPORT_MS). */
    readonly waitReportMs?: number;
  },
): Promise<RepairResult> {
  for (const s of opts.spares) {
    if (typeof s !== 'string' || s.trim().length === 0) throw new ControlError('EINVAL', 'repair: empty spare device name');
  }
  const policy = opts.policy ?? (opts.spares.length > 0 ? 'allocate' : 'remove');
  const plan = planRepair(v.liveSpec, v.legs(), { policy, spares: opts.spares, force: opts.force === true, ...(opts.failed ? { failed: opts.failed } : {}) });
  if (plan === null) {
    const reason = v.liveSpec.kind === 'mirror' ? 'no failed leg: nothing to repair' : `a ${v.liveSpec.kind} target has no legs to repair`;
    v.record('repair-skipped', { trigger: opts.trigger, reason }, false);
    return { repaired: false, reason };
  }
  v.record('repair-start', { trigger: opts.trigger, policy, removed: plan.removed, added: plan.added, table: plan.line }, false);
  let step = 'cluster REPAIR';
  const stopReports = reportWhileWaiting(v, opts.trigger, () => step, opts.waitReportMs ?? REPAIR_WAIT_REPORT_MS);
  try {
    return await applyPlan(v, plan, opts.trigger, (s) => (step = s));
  } finally {
    stopReports();
  }
}

async function applyPlan(v: Volume, plan: RepairPlan, trigger: string, stepping: (step: string) => void): Promise<RepairResult> {
  const live = v.liveSpec;
  if (!trigger.startsWith(CLUSTER_TRIGGER) && live.kind === 'mirror' && live.log.clustered && live.log.uuid) {
    // Before suspending: a reload to linear closes the cluster log.
    try {
      if (await requestClusterRepair(live.log.uuid, plan.removed, plan.added)) {
        v.record('repair-cluster-sent', { uuid: live.log.uuid, removed: plan.removed, added: plan.added }, false);
      }
    } catch (e) {
      v.record('repair-cluster-failed', { uuid: live.log.uuid, message: errorText(e) }, false);
    }
  }
  stepping('suspend');
  await v.suspend({ noflush: true });
  try {
    stepping('reload');
    await v.reload(plan.line);
  } catch (e) {
    v.record('repair-failed', { trigger, step: 'reload', message: errorText(e) }, false);
    await v.resume().catch(() => undefined);
    throw e;
  }
  stepping('resume');
  const r = await v.resume();
  v.record('repair-done', { trigger, table: plan.line, removed: plan.removed, added: plan.added, heldWritesReissued: r.heldWritesReissued }, false);
  return { repaired: true, table: plan.line, removed: plan.removed, added: plan.added, heldWritesReissued: r.heldWritesReissued };
}

/**
 * Every periodMs while the repair runs: event repair-waiting (logged as a warning) with the
 * step, the volume's requests (in flight, held, parked for the cluster) and what its cluster log waits
 * for (which message, which nodes). Returns the stop function.
 */
function reportWhileWaiting(v: Volume, trigger: string, step: () => string, periodMs: number): () => void {
  const t0 = Date.now();
  const timer = setInterval(() => {
    const info = v.info();
    const parked = engineOf(v.liveExport).clusterParkedWriteCount();
    const spec = v.liveSpec;
    const cluster = spec.kind === 'mirror' && spec.log.uuid ? (clusterLogWaits(spec.log.uuid) ?? []) : [];
    const waitingMs = Date.now() - t0;
    const message =
      `${step()} still running after ${waitingMs} ms: ${info.inFlightRequests} requests in flight (${info.heldWrites} held, ` +
      `${parked} parked for the cluster), ${info.queuedRequests} queued` +
      (cluster.length > 0 ? `; the cluster log waits for: ${cluster.join('; ')}` : '');
    v.record('repair-waiting', { trigger, step: step(), waitingMs, inFlightRequests: info.inFlightRequests, heldWrites: info.heldWrites, clusterParkedWrites: parked, cluster, message }, false);
  }, periodMs);
  timer.unref();
  return () => clearInterval(timer);
}

/** Trigger prefix of repairs applied because another node asked (never re-sent to the cluster). */
export const CLUSTER_TRIGGER = 'cluster';

/** dmeventd's part: react to leg failures with the configured policy. */
export class RepairPolicy {
  private readonly spares: string[];
  private readonly running = new Map<string, Promise<void>>();
  private readonly again = new Set<string>();
  private readonly failedSeen = new Map<string, Set<string>>();
  private readonly onEvent: (ev: VolumeEvent) => void;

  private stopped = false;

  constructor(
    private readonly volumes: Volumes,
    readonly policy: RepairPolicyName,
    spares: readonly string[],
    private readonly clusterRetryMs = CLUSTER_REPAIR_RETRY_MS,
  ) {
    this.spares = [...spares];
    this.onEvent = (ev) => this.consider(ev);
    if (policy !== 'none') volumes.on('event', this.onEvent);
    // Cluster-wide repairs asked by other nodes apply whatever the local policy (like a manual repair).
    this.unsubCluster = onClusterRepair((r) => this.applyClusterRepair(r));
  }

  private readonly unsubCluster: () => void;

  private applyClusterRepair(r: ClusterRepairRequest): void {
    const v = this.volumes.list().find((x) => x.liveSpec.kind === 'mirror' && x.liveSpec.log.uuid === r.uuid);
    if (v === undefined) return;
    const prev = this.running.get(v.name) ?? Promise.resolve();
    const trigger = `${CLUSTER_TRIGGER} node ${r.fromNodeId}`;
    // The spares the other node added are taken here too (never allocated again by this node).
    for (const d of r.added) {
      const i = this.spares.indexOf(d);
      if (i >= 0) this.spares.splice(i, 1);
    }
    this.clusterRepairPending.add(v.name); // a deferring policy pass stops waiting (it runs before this one)
    const p = prev
      .then(() => this.applyWithRetries(v, r, trigger))
      .finally(() => {
        this.clusterRepairPending.delete(v.name);
        if (this.running.get(v.name) === p) this.running.delete(v.name);
      });
    this.running.set(v.name, p);
  }

  /**
   * Another node's REPAIR on `v`, tried again after a failure (a refused reload, a timed-out suspend or
   * resume): the nodes run on different legs until this one reloads, and every node's writes wait meanwhile.
   * A repeat finds the legs already gone once one attempt got through (planRepair: nothing to do).
   */
  private async applyWithRetries(v: Volume, r: ClusterRepairRequest, trigger: string): Promise<void> {
    for (let attempt = 1; ; attempt++) {
      try {
        await repairVolume(v, { spares: [...r.added], policy: r.added.length > 0 ? 'allocate' : 'remove', trigger, failed: new Set(r.removed) });
        return;
      } catch (e) {
        const last = attempt >= REPAIR_ATTEMPTS_MAX || this.stopped || v.isClosed;
        const message = last
          ? `${errorText(e)}; gave up after ${attempt} attempt(s): this node keeps its legs, and writes wait on every node ` +
            `until it runs on the same legs as the others (suspend, reload and resume it by hand)`
          : errorText(e);
        v.record('repair-failed', { trigger, attempt, ...(last ? {} : { retryInMs: this.clusterRetryMs }), message }, false);
        if (last) return;
        await new Promise((resolve) => setTimeout(resolve, this.clusterRetryMs));
      }
    }
  }

  /** Volumes with a cluster REPAIR queued (from another node). */
  private readonly clusterRepairPending = new Set<string>();

  /** Spares not yet used by a repair. */
  remainingSpares(): string[] {
    return [...this.spares];
  }

  stop(): void {
    this.stopped = true;
    this.volumes.off('event', this.onEvent);
    this.unsubCluster();
  }

  /** Resolves when no repair is running (tests, shutdown). */
  async idle(): Promise<void> {
    while (this.running.size > 0) await Promise.allSettled([...this.running.values()]);
  }

  private consider(ev: VolumeEvent): void {
    if (ev.kind !== 'leg-failed') return;
    const health = String(ev.data.healthChar ?? 'U');
    if (!REPAIR_HEALTH.has(health)) return;
    const device = ev.data.device;
    if (typeof device === 'string') {
      let seen = this.failedSeen.get(ev.volume);
      if (seen === undefined) this.failedSeen.set(ev.volume, (seen = new Set()));
      seen.add(device);
    }
    if (this.running.has(ev.volume)) {
      this.again.add(ev.volume);
      return;
    }
    const p = this.runPasses(ev.volume).finally(() => this.running.delete(ev.volume));
    this.running.set(ev.volume, p);
  }

  private async runPasses(name: string): Promise<void> {
    await new Promise((r) => setTimeout(r, REPAIR_BATCH_DELAY_MS));
    let v: Volume;
    try {
      v = this.volumes.get(name);
    } catch {
      return;
    }
    const spec = v.liveSpec;
    if (this.policy === 'allocate' && spec.kind === 'mirror' && spec.log.clustered && spec.log.uuid && isClusterLogServer(spec.log.uuid) === false) {
      // The log server's node allocates for the cluster (its REPAIR reaches this node); act only if none came.
      v.record('repair-deferred', { trigger: `policy ${this.policy}`, reason: 'the cluster log server allocates', waitMs: CLUSTER_ALLOCATE_DEFER_MS }, false);
      const t0 = Date.now();
      while (Date.now() - t0 < CLUSTER_ALLOCATE_DEFER_MS) {
        await new Promise((r) => setTimeout(r, 100));
        const live = new Set(v.legs().map((l) => l.device));
        const failed = [...(this.failedSeen.get(name) ?? [])].filter((d) => live.has(d));
        if (failed.length === 0 || this.clusterRepairPending.has(name)) return; // the server's REPAIR repairs it
      }
    }
    for (let attempt = 1; attempt <= REPAIR_ATTEMPTS_MAX; attempt++) {
      this.again.delete(name);
      const failed = this.failedSeen.get(name) ?? new Set<string>();
      // Only devices still in the live table count (a repaired leg is gone from it).
      const liveDevices = new Set(v.legs().map((l) => l.device));
      for (const d of [...failed]) if (!liveDevices.has(d)) failed.delete(d);
      try {
        const r = await repairVolume(v, {
          policy: this.policy === 'allocate' ? 'allocate' : 'remove',
          spares: this.spares,
          trigger: `policy ${this.policy}`,
          failed,
        });
        for (const used of r.added ?? []) {
          const i = this.spares.indexOf(used);
          if (i >= 0) this.spares.splice(i, 1);
        }
        if (!this.again.has(name)) return;
      } catch (e) {
        v.record('repair-failed', { trigger: `policy ${this.policy}`, attempt, message: errorText(e) }, false);
        if (attempt === REPAIR_ATTEMPTS_MAX) return;
      }
    }
  }
}
