// cluster-log-state.ts — the cluster log's replicated state machine (pure, deterministic, no I/O).
//
// Owns: what every initialized member of a log's group holds identically, because each applies the same
// totally ordered requests and membership changes: the sync bitmap, marks per (region, node), the one
// region recovered cluster-wide and its recoverer, the priority queue of regions with waiting writes,
// the resync search cursor, the member list, which members hold the state (initialized) and which are
// waiting for a checkpoint (with their epoch), and the snapshot codec used for checkpoints.
//
// Node failure (beyond LVM's cmirrord): a departed node's marks are purged and their regions set out
// of sync (they are resynced), and its recovery claim is released.
//
// Leg sets (a leg added by a repair with a spare, or a reload): every member announces its data legs
// (LEGS) after each activation. A device no member announced before ("known" legs) holds none of the data:
// at the first announcement naming it, every region goes out of sync, once, cluster-wide (the recovery
// claim in progress is released: its copy did not include the new leg). Recovery is handed out only while
// every initialized member announced the same set of legs, so no region is copied onto the new leg (and
// set in sync) while a node that has not reloaded yet could still write that region without it; writes to
// the out-of-sync regions wait meanwhile, as with a cluster-wide suspend. A sync result counts only from
// the member holding the region's recovery claim (a stale copy's result is ignored).
//
// Stale legs (beyond dm, as the single-node disk log keeps them): `staleLegs` names the legs that are not
// up to date cluster-wide: 'failed' (missed writes: a node failed it, LEG_FAILED; every node stops using it
// and it stays failed while the group lives) or 'catching' (new, or back after a whole-cluster restart:
// every region was set out of sync for it once and every node writes it, so a region in sync is valid on it;
// it becomes up to date once every region is in sync while all members run on it). A stale leg is never a
// resync source. The first LEGS of a fresh state decides from `legSeed` (the clustered-disk log's per-leg
// records, read at a whole-cluster start): a leg recorded failed, or never recorded, sets every region out of
// sync and catches up; with no records leg 0 is the source and the others catch up unless all is in sync.
// The source (first up-to-date leg in the log server's table order) failing while regions are out of sync
// leaves no leg up to date: the others are only current for the regions in sync, so they become catching up
// (cluster-log.ts refuses a whole-cluster start from such records).
import { Bitmap } from '../mirror/log/bitmap.js';
import { ClusterLogCodecError, type CheckpointTarget } from './cluster-log-codec.js';
import type { ConfigChange, Member } from './transport.js';

export const memberKey = (m: Member): string => `${m.nodeId}:${m.pid}`;

/** Orders members by node id, then pid (the log server is the first initialized one). */
export function compareMembers(a: Member, b: Member): number {
  return a.nodeId - b.nodeId || a.pid - b.pid;
}

/** A leg that is not up to date cluster-wide (see the header). */
export type StaleLegState = 'failed' | 'catching';
/** A leg as the clustered-disk log records it (disk.ts flags): up to date, catching up, or stale. */
export type RecordedLegState = 'current' | StaleLegState;
/**
 * How the first LEGS of a fresh state decides the stale legs: 'records' (the log device's per-leg records of
 * the announced devices; a device without a record is stale), 'equal' (every leg holds the data: nosync, or a
 * log written without records), 'first' (leg 0 is the source; the others catch up unless all is in sync).
 */
export type LegSeed = { mode: 'records'; legs: Array<[string, RecordedLegState]> } | { mode: 'equal' } | { mode: 'first' };

export interface Recovery {
  region: number;
  nodeId: number;
}

export interface ConfigEffect {
  /** Regions whose sync bit went from 1 to 0 because a departed node had marked them. */
  purged: number[];
  /** The recovery claim released because its node departed. */
  released: Recovery | null;
  /** Node ids that left the group entirely. */
  nodesGone: number[];
  /** Per node that left entirely: what it left out of sync (departures.ts defines the sets). */
  departed: DepartedNode[];
}

export interface DepartedNode {
  nodeId: number;
  /** Its marks that were in sync before this change (sorted): out of sync now because it left. */
  purged: number[];
  /** Its marks on regions already out of sync (sorted). */
  markedOutOfSync: number[];
  /** The region it was recovering, released. */
  released: number | null;
}

export class ReplicatedLogState {
  readonly sync: Bitmap;
  /** nodeId -> regions that node has marked (durably: delivered in a FLUSH). */
  readonly marksByNode = new Map<number, Set<number>>();
  recovering: Recovery | null = null;
  readonly priority: number[] = [];
  private readonly prioritySet = new Set<number>();
  searchFrom = 0;
  members: Member[] = [];
  readonly initialized = new Set<string>();
  /** Members waiting for a checkpoint -> configuration changes since their join. */
  readonly waiting = new Map<string, number>();
  /** memberKey -> the data legs it announced (LEGS), table order. */
  readonly legsByMember = new Map<string, string[]>();
  /** Devices whose data the log covers: named by some member before (a new name resyncs everything). */
  readonly knownLegs = new Set<string>();
  /** Devices not up to date cluster-wide (never a resync source). */
  readonly staleLegs = new Map<string, StaleLegState>();
  /** The source leg that failed while regions were out of sync (they exist only on it), or null. */
  lostSource: string | null = null;
  /** What the first LEGS uses to decide the stale legs (fresh states only). */
  legSeed: LegSeed = { mode: 'first' };
  /** The first LEGS was applied (legSeed consumed). */
  legsSeeded = false;

  constructor(readonly regionCount: number) {
    this.sync = new Bitmap(regionCount);
  }

  static fresh(regionCount: number, allInSync: boolean): ReplicatedLogState {
    const s = new ReplicatedLogState(regionCount);
    s.sync.fill(allInSync);
    return s;
  }

  /** Some node (other than exceptNode, when given) holds a mark on the region. */
  isMarked(region: number, exceptNode?: number): boolean {
    for (const [n, set] of this.marksByNode) if (n !== exceptNode && set.has(region)) return true;
    return false;
  }

  /** dm-log-userspace IS_CLEAN as the cluster sees it: no node holds a mark. */
  isCleanClusterWide(region: number): boolean {
    return !this.isMarked(region);
  }

  applyFlush(nodeId: number, marks: readonly number[], clears: readonly number[]): void {
    let set = this.marksByNode.get(nodeId);
    if (!set) {
      set = new Set();
      this.marksByNode.set(nodeId, set);
    }
    for (const r of marks) set.add(r);
    for (const r of clears) set.delete(r);
    if (set.size === 0) this.marksByNode.delete(nodeId);
  }

  /**
   * LEGS from a member. Returns true when it named a leg new to the log: every region was set out of sync
   * (and the recovery claim in progress, if any, released: see `released`).
   */
  applyLegs(key: string, devices: readonly string[]): { invalidated: boolean; released: Recovery | null } {
    this.legsByMember.set(key, [...devices]);
    if (!this.legsSeeded) {
      this.legsSeeded = true;
      const invalidate = this.seedLegs(devices);
      for (const d of devices) this.knownLegs.add(d);
      this.pruneKnownLegs();
      if (invalidate) return { invalidated: true, released: this.invalidate() };
      // A leg recorded catching up whose last regions were resynced before the stop (the record was written
      // lazily) is up to date now if every region is in sync.
      this.settleCaughtUp();
      return { invalidated: false, released: null };
    }
    const fresh = devices.filter((d) => !this.knownLegs.has(d));
    for (const d of fresh) {
      this.knownLegs.add(d);
      this.staleLegs.set(d, 'catching'); // holds none of the data: every region goes out of sync for it below
    }
    this.pruneKnownLegs();
    if (fresh.length === 0) {
      this.settleCaughtUp();
      return { invalidated: false, released: null };
    }
    return { invalidated: true, released: this.invalidate() };
  }

  /** First LEGS of a fresh state: stale legs from legSeed. True when every region must go out of sync. */
  private seedLegs(devices: readonly string[]): boolean {
    const seed = this.legSeed;
    this.legSeed = { mode: 'first' };
    if (seed.mode === 'equal') return false;
    if (seed.mode === 'first') {
      if (this.sync.population() < this.regionCount) for (const d of devices.slice(1)) this.staleLegs.set(d, 'catching');
      return false;
    }
    const recorded = new Map(seed.legs);
    for (const d of devices) {
      const st = recorded.get(d);
      if (st === undefined) this.staleLegs.set(d, 'failed'); // the log never saw it: none of the data
      else if (st !== 'current') this.staleLegs.set(d, st);
    }
    // Nothing recorded up to date (every leg replaced): leg 0 is the source, as dm would have it.
    if (devices.length > 0 && devices.every((d) => this.staleLegs.has(d))) this.staleLegs.delete(devices[0]!);
    let invalidate = false;
    for (const d of devices) {
      if (this.staleLegs.get(d) !== 'failed') continue;
      // It missed writes: every region is resynced onto it; from now on every node writes it.
      this.staleLegs.set(d, 'catching');
      invalidate = true;
    }
    return invalidate;
  }

  /** Every region out of sync (the recovery claim in progress, if any, is released and returned). */
  private invalidate(): Recovery | null {
    this.sync.fill(false);
    this.priority.length = 0;
    this.prioritySet.clear();
    this.searchFrom = 0;
    const released = this.recovering;
    this.recovering = null;
    return released;
  }

  /**
   * LEG_FAILED: a member failed these legs; every member stops using them (applied on delivery) and they
   * stay stale while the group lives. `again`: failed before, re-announced after a partition merge (no
   * lost-source judgement). Returns the devices that were not failed before.
   */
  applyLegFailed(devices: readonly string[], again = false): string[] {
    const changed: string[] = [];
    for (const d of devices) {
      if (this.staleLegs.get(d) === 'failed') continue;
      const wasSource = this.sourceLeg() === d;
      this.staleLegs.set(d, 'failed');
      changed.push(d);
      // (A failure announced again into a re-taken state was judged when it happened, not now.)
      if (wasSource && !again && this.sync.population() < this.regionCount) {
        this.lostSource = d;
        // The source failed while regions were out of sync: only it holds them, so no other leg is up to date
        // (each is for the regions in sync: catching up). No leg is the source any more; a restart from the
        // records refuses (cluster-log.ts) unless told to resync everything from the first leg (`sync`).
        for (const o of this.tableOrder()) if (!this.staleLegs.has(o)) this.staleLegs.set(o, 'catching');
      }
    }
    return changed;
  }

  /** The legs in table order, as the log server announced them (every member runs on the same set). */
  tableOrder(): readonly string[] {
    const server = this.server();
    return (server && this.legsByMember.get(memberKey(server))) ?? [];
  }

  /** The resync source every member derives: the first leg in table order that is up to date. */
  sourceLeg(): string | undefined {
    return this.tableOrder().find((d) => this.knownLegs.has(d) && !this.staleLegs.has(d));
  }

  /** Catching-up legs become up to date once every region is in sync while every member runs on them. */
  private settleCaughtUp(): void {
    if (this.staleLegs.size === 0 || this.sync.population() < this.regionCount || !this.legsAgreed()) return;
    const inUse = (d: string) =>
      this.members.every((m) => !this.initialized.has(memberKey(m)) || (this.legsByMember.get(memberKey(m)) ?? []).includes(d));
    for (const [d, st] of [...this.staleLegs]) if (st === 'catching' && inUse(d)) this.staleLegs.delete(d);
  }

  /**
   * The leg as the log device records it ('current' = up to date). Unknown devices are stale. Before the
   * first LEGS of a state just started, what legSeed will make of the table's legs (tableLegs, in order):
   * a power loss before that announcement must find the records the cluster started from, not every leg
   * unknown (failed), which would refuse the next start.
   */
  recordedState(device: string, tableLegs: readonly string[]): RecordedLegState {
    if (!this.legsSeeded) {
      const seed = this.legSeed;
      if (seed.mode === 'equal') return 'current';
      if (seed.mode === 'first') return device === tableLegs[0] || this.sync.population() === this.regionCount ? 'current' : 'catching';
      return seed.legs.find(([d]) => d === device)?.[1] ?? 'failed';
    }
    return this.staleLegs.get(device) ?? (this.knownLegs.has(device) ? 'current' : 'failed');
  }

  /** A device no present member runs on any more is forgotten (named again later, it is new again). */
  private pruneKnownLegs(): void {
    const inUse = new Set<string>();
    let announced = 0;
    for (const [k, devices] of this.legsByMember) {
      if (!this.members.some((m) => memberKey(m) === k)) continue;
      announced++;
      for (const d of devices) inUse.add(d);
    }
    if (announced === 0) return; // nobody present has told its legs yet: keep what the log knew
    for (const d of [...this.knownLegs]) if (!inUse.has(d)) this.knownLegs.delete(d);
    for (const d of [...this.staleLegs.keys()]) if (!inUse.has(d)) this.staleLegs.delete(d);
    // A reload without the lost source (repair --force) accepts the loss of its regions.
    if (this.lostSource !== null && !inUse.has(this.lostSource)) this.lostSource = null;
  }

  /** Every initialized member announced its legs, and all announced the same set. */
  legsAgreed(): boolean {
    let ref: Set<string> | null = null;
    for (const m of this.members) {
      const k = memberKey(m);
      if (!this.initialized.has(k)) continue;
      const devices = this.legsByMember.get(k);
      if (devices === undefined) return false;
      if (ref === null) ref = new Set(devices);
      else if (devices.length !== ref.size || devices.some((d) => !ref!.has(d))) return false;
    }
    return true;
  }

  /**
   * GET_RESYNC_WORK from nodeId: hands out one region cluster-wide (priority first); null if busy/none.
   * A region another node holds a mark on is not handed out: that node may not have seen the region go
   * out of sync yet (a departure reaches members at different times) and write it to every leg during
   * the copy. Its mark goes when its writes there are done (the mirror clears marks on regions out of
   * sync too: clearsOutOfSync); the FLUSH carrying that clear announces work again.
   */
  applyGetResyncWork(nodeId: number): number | null {
    if (this.recovering !== null) return null;
    if (!this.legsAgreed()) return null; // a node has not reloaded onto the same legs yet
    let region = -1;
    for (let i = 0; i < this.priority.length; ) {
      const r = this.priority[i]!;
      if (this.sync.get(r)) {
        this.priority.splice(i, 1);
        this.prioritySet.delete(r);
      } else if (this.isMarked(r, nodeId)) {
        i++; // stays first in line for when the mark goes
      } else {
        this.priority.splice(i, 1);
        this.prioritySet.delete(r);
        region = r;
        break;
      }
    }
    if (region < 0) {
      // Search forward from the cursor and wrap once, so a region whose recovery failed is retried
      // only after the others had their turn.
      region = this.nextUnmarked(this.searchFrom, this.regionCount, nodeId);
      if (region < 0) region = this.nextUnmarked(0, this.searchFrom, nodeId);
    }
    if (region < 0) return null;
    this.searchFrom = region + 1 >= this.regionCount ? 0 : region + 1;
    this.recovering = { region, nodeId };
    return region;
  }

  /** The first region in [from, to) out of sync and marked by no node but nodeId, or -1. */
  private nextUnmarked(from: number, to: number, nodeId: number): number {
    for (let r = this.sync.findNext(false, from); r >= 0 && r < to; r = this.sync.findNext(false, r + 1)) {
      if (!this.isMarked(r, nodeId)) return r;
    }
    return -1;
  }

  /** The region is out of sync and no node holds a mark on it: any node may be handed it. */
  recoverable(region: number): boolean {
    return !this.sync.get(region) && !this.isMarked(region);
  }

  /** SET_REGION_SYNC from nodeId. Returns the recovery claim it ended, if any. */
  applySetRegionSync(nodeId: number, region: number, inSync: boolean): Recovery | null {
    const rec0 = this.recovering;
    // In sync only from the recoverer holding the claim: a copy whose claim was released (its node's leg
    // set changed under it, or the claim was re-handed) proves nothing.
    if (inSync && !(rec0 && rec0.region === region && rec0.nodeId === nodeId)) return null;
    this.sync.set(region, inSync);
    if (inSync && this.prioritySet.delete(region)) {
      this.priority.splice(this.priority.indexOf(region), 1);
    }
    if (inSync) this.settleCaughtUp();
    const rec = this.recovering;
    if (rec && rec.region === region && rec.nodeId === nodeId) {
      this.recovering = null;
      return rec;
    }
    return null;
  }

  /** IS_REMOTE_RECOVERING hint: a write waits on the region; recover it next. */
  applyPriority(region: number): void {
    if (this.sync.get(region) || this.prioritySet.has(region)) return;
    if (this.recovering?.region === region) return;
    this.prioritySet.add(region);
    this.priority.push(region);
  }

  applyConfigChange(c: ConfigChange): ConfigEffect {
    const effect: ConfigEffect = { purged: [], released: null, nodesGone: [], departed: [] };
    for (const l of c.left) {
      this.initialized.delete(memberKey(l));
      this.waiting.delete(memberKey(l));
      this.legsByMember.delete(memberKey(l));
    }
    const presentNodes = new Set(c.members.map((m) => m.nodeId));
    const purgedNow = new Set<number>();
    for (const nodeId of new Set(c.left.map((l) => l.nodeId))) {
      if (presentNodes.has(nodeId)) continue;
      effect.nodesGone.push(nodeId);
      const d: DepartedNode = { nodeId, purged: [], markedOutOfSync: [], released: null };
      const marks = this.marksByNode.get(nodeId);
      if (marks) {
        for (const r of [...marks].sort((a, b) => a - b)) {
          // In sync before this change (another node leaving in the same change may have cleared it).
          if (this.sync.get(r) || purgedNow.has(r)) d.purged.push(r);
          else d.markedOutOfSync.push(r);
          if (this.sync.set(r, false)) {
            effect.purged.push(r);
            purgedNow.add(r);
          }
        }
        this.marksByNode.delete(nodeId);
      }
      if (this.recovering?.nodeId === nodeId) {
        effect.released = this.recovering;
        d.released = this.recovering.region;
        this.recovering = null;
      }
      effect.departed.push(d);
    }
    this.members = [...c.members];
    if (c.left.length > 0) this.pruneKnownLegs();
    for (const [k, epoch] of this.waiting) this.waiting.set(k, epoch + 1);
    for (const j of c.joined) {
      const k = memberKey(j);
      if (!this.initialized.has(k)) this.waiting.set(k, 0);
    }
    return effect;
  }

  /** The last part of a checkpoint was delivered: its targets (still waiting) now hold the state. */
  applyCheckpointDone(targets: readonly CheckpointTarget[]): void {
    for (const t of targets) {
      const k = memberKey(t);
      if (this.waiting.has(k)) {
        this.waiting.delete(k);
        this.initialized.add(k);
      }
    }
  }

  /** The lowest initialized member present (sends checkpoints; the "log server"). */
  server(): Member | undefined {
    return this.members.filter((m) => this.initialized.has(memberKey(m))).sort(compareMembers)[0];
  }

  waitingTargets(): CheckpointTarget[] {
    return this.members
      .filter((m) => this.waiting.has(memberKey(m)))
      .sort(compareMembers)
      .map((m) => ({ nodeId: m.nodeId, pid: m.pid, epoch: this.waiting.get(memberKey(m))! }));
  }

  // ---- snapshot codec -------------------------------------------------------------------------
  encode(): Buffer {
    const words: number[] = [];
    const push = (...v: number[]) => words.push(...v);
    push(this.regionCount, this.sync.bytes.length);
    const rec = this.recovering;
    push(rec ? 1 : 0, rec?.region ?? 0, rec?.nodeId ?? 0, this.searchFrom);
    push(this.priority.length, ...this.priority);
    const nodes = [...this.marksByNode.keys()].sort((a, b) => a - b);
    push(nodes.length);
    for (const n of nodes) {
      const regions = [...this.marksByNode.get(n)!].sort((a, b) => a - b);
      push(n, regions.length, ...regions);
    }
    push(this.members.length);
    for (const m of this.members) push(m.nodeId, m.pid);
    const init = [...this.initialized].sort();
    push(init.length);
    for (const k of init) push(...k.split(':').map(Number));
    const waiting = [...this.waiting.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    push(waiting.length);
    for (const [k, e] of waiting) push(...k.split(':').map(Number), e);
    const legs = Buffer.from(
      JSON.stringify({
        members: [...this.legsByMember.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)),
        known: [...this.knownLegs].sort(),
        stale: [...this.staleLegs].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)),
        seed: this.legsSeeded ? null : this.legSeed,
        lost: this.lostSource,
      }),
      'utf8',
    );
    push(legs.length);
    const head = Buffer.alloc(8);
    head.writeUInt32LE(words[0]!, 0);
    head.writeUInt32LE(words[1]!, 4);
    const tail = Buffer.alloc(4 * (words.length - 2));
    for (let i = 2; i < words.length; i++) tail.writeUInt32LE(words[i]!, 4 * (i - 2));
    return Buffer.concat([head, Buffer.from(this.sync.bytes), tail, legs]);
  }

  static decode(b: Buffer, regionCount: number): ReplicatedLogState {
    let o = 0;
    const u32 = (what: string) => {
      if (o + 4 > b.length) throw new ClusterLogCodecError(`truncated checkpoint (${what})`);
      const v = b.readUInt32LE(o);
      o += 4;
      return v;
    };
    const region = (what: string) => {
      const v = u32(what);
      if (v >= regionCount) throw new ClusterLogCodecError(`checkpoint ${what} ${v} out of range`);
      return v;
    };
    const rc = u32('regionCount');
    if (rc !== regionCount) throw new ClusterLogCodecError(`checkpoint for ${rc} regions, this log has ${regionCount}`);
    const s = new ReplicatedLogState(regionCount);
    const syncBytes = u32('sync length');
    if (syncBytes !== s.sync.bytes.length || o + syncBytes > b.length) throw new ClusterLogCodecError('bad sync bitmap length');
    s.sync.load(b.subarray(o, o + syncBytes));
    o += syncBytes;
    const hasRec = u32('recovering');
    const recRegion = u32('recovering region');
    const recNode = u32('recoverer');
    if (hasRec) {
      if (recRegion >= regionCount) throw new ClusterLogCodecError('recovering region out of range');
      s.recovering = { region: recRegion, nodeId: recNode };
    }
    s.searchFrom = u32('cursor');
    if (s.searchFrom >= regionCount && regionCount > 0) throw new ClusterLogCodecError('cursor out of range');
    const np = u32('priority count');
    for (let i = 0; i < np; i++) s.applyPriorityRaw(region('priority region'));
    const nn = u32('mark node count');
    for (let i = 0; i < nn; i++) {
      const node = u32('mark node');
      const n = u32('mark count');
      const set = new Set<number>();
      for (let j = 0; j < n; j++) set.add(region('marked region'));
      s.marksByNode.set(node, set);
    }
    const nm = u32('member count');
    for (let i = 0; i < nm; i++) s.members.push({ nodeId: u32('member node'), pid: u32('member pid') });
    const ni = u32('initialized count');
    for (let i = 0; i < ni; i++) s.initialized.add(`${u32('node')}:${u32('pid')}`);
    const nw = u32('waiting count');
    for (let i = 0; i < nw; i++) {
      const k = `${u32('node')}:${u32('pid')}`;
      s.waiting.set(k, u32('epoch'));
    }
    const legBytes = u32('leg section bytes');
    if (o + legBytes !== b.length) throw new ClusterLogCodecError(`leg section of ${legBytes} bytes, ${b.length - o} left`);
    s.decodeLegs(b.subarray(o, o + legBytes));
    return s;
  }

  private decodeLegs(b: Buffer): void {
    let v: unknown;
    try {
      v = JSON.parse(b.toString('utf8'));
    } catch {
      throw new ClusterLogCodecError('bad leg section');
    }
    const isNames = (x: unknown): x is string[] => Array.isArray(x) && x.every((d) => typeof d === 'string' && d.length > 0);
    const o = v as { members?: unknown; known?: unknown };
    if (typeof v !== 'object' || v === null || !Array.isArray(o.members) || !isNames(o.known)) throw new ClusterLogCodecError('bad leg section');
    for (const e of o.members as unknown[]) {
      if (!Array.isArray(e) || e.length !== 2 || typeof e[0] !== 'string' || !/^\d+:\d+$/.test(e[0]) || !isNames(e[1])) {
        throw new ClusterLogCodecError('bad leg section entry');
      }
      this.legsByMember.set(e[0], e[1]);
    }
    for (const d of o.known) this.knownLegs.add(d);
    const x = v as { stale?: unknown; seed?: unknown; lost?: unknown };
    if (x.lost !== undefined && x.lost !== null && !isNames([x.lost])) throw new ClusterLogCodecError('bad lost source');
    this.lostSource = (x.lost as string | null | undefined) ?? null;
    const isStale = (st: unknown): st is StaleLegState => st === 'failed' || st === 'catching';
    if (x.stale !== undefined) {
      if (!Array.isArray(x.stale)) throw new ClusterLogCodecError('bad stale leg list');
      for (const e of x.stale as unknown[]) {
        if (!Array.isArray(e) || e.length !== 2 || !isNames([e[0]]) || !isStale(e[1])) throw new ClusterLogCodecError('bad stale leg entry');
        this.staleLegs.set(e[0] as string, e[1]);
      }
    }
    this.legsSeeded = x.seed === undefined || x.seed === null;
    if (!this.legsSeeded) {
      const seed = x.seed as { mode?: unknown; legs?: unknown };
      if (seed.mode === 'equal' || seed.mode === 'first') this.legSeed = { mode: seed.mode };
      else if (seed.mode === 'records' && Array.isArray(seed.legs)) {
        const legs: Array<[string, RecordedLegState]> = [];
        for (const e of seed.legs as unknown[]) {
          if (!Array.isArray(e) || e.length !== 2 || !isNames([e[0]]) || !(e[1] === 'current' || isStale(e[1]))) {
            throw new ClusterLogCodecError('bad leg seed entry');
          }
          legs.push([e[0] as string, e[1] as RecordedLegState]);
        }
        this.legSeed = { mode: 'records', legs };
      } else throw new ClusterLogCodecError('bad leg seed');
    }
  }

  private applyPriorityRaw(region: number): void {
    if (this.prioritySet.has(region)) throw new ClusterLogCodecError(`duplicate priority region ${region}`);
    this.prioritySet.add(region);
    this.priority.push(region);
  }

  /** Canonical text of the whole state (tests compare members with it). */
  digest(): string {
    return this.encode().toString('base64');
  }
}
