// MirrorExport: the dm-raid1 engine served as an NBD Export (one shared engine for every connection).
// Owns: the request paths (write / zero / trim split at region edges; group-committed log marks; sync-region
// writes to every healthy leg, nosync-region writes to the default leg; balanced reads; FLUSH to every leg),
// the serialised log flush with its batches, lazy clears, the default (source) leg choice, the failure pass
// (EIO / hold / success after the stale-leg record is durable), suspend / reload / resume, and status.
//
// Order of work per write piece (dm do_writes): classify (park if the region is held, else count it in and
// mark the log if it is clean) -> one log flush per batch, completing BEFORE any data write of the batch ->
// dispatch to legs. A piece whose region's mark is already durable is dispatched at once, with no await
// (the fast path). Writes that arrive while a log flush runs join the next batch.
//
// Completion callbacks only record (leg failures, counters) and hand the piece to pieceDone(), which decides.
// Never calls Date.now / setTimeout / Math.random: time comes from the injected Scheduler.

import { strict as assert } from 'node:assert';
import {
  ExportError,
  SETTLED_OK,
  type Export,
  type ExportCapabilities,
  type Extent,
  type SplicePipe,
  type WriteFlags,
  type ZeroFlags,
} from '../nbd/export.js';
import type { Leg } from './legs/leg.js';
import type { DirtyLog, LegLogState } from './log/dirty-log.js';
import { HeldWrites, LegHealth, type Emit, type HeldWrite } from './errors.js';
import {
  MIRROR_LIMIT_DEFAULTS,
  RESYNC_DEFAULTS,
  type LegErrorKind,
  type MirrorEventMap,
  type MirrorEventName,
  type MirrorLimits,
  type MirrorOptions,
  type ResyncOptions,
} from './options.js';
import { RegionHash, type RegionStateName } from './regions.js';
import { Resync, type ResyncHost, type ResyncProgress } from './resync.js';
import { systemScheduler, type Scheduler } from './scheduler.js';
import { WriteOrder } from './write-order.js';

export type { MirrorOptions } from './options.js';

/** Completed before returning (export.ts: the server answers without a promise reaction). */
const RESOLVED: Promise<void> = SETTLED_OK;

/** Build and activate a mirror: resumes the log, picks the source leg, starts resync. */
export async function createMirror(opts: MirrorOptions): Promise<MirrorExport> {
  const m = new MirrorExport(opts);
  await m.activate();
  return m;
}

type OpKind = 'write' | 'zero' | 'trim';

/** One client request (write / zero / trim), split into pieces at region edges. */
interface Request {
  readonly kind: OpKind;
  readonly data: Buffer | null;
  readonly offsetBytes: number;
  readonly lengthBytes: number;
  readonly fua: boolean;
  readonly mayTrim: boolean;
  piecesLeft: number;
  failed: boolean;
  hold: boolean;
  /** Do not acknowledge before this log flush has completed (stale-leg record durable). */
  ackAfterSeq: number;
  /** The caller's promise, made when submit() returns with the request still in flight; null until then. */
  resolve: (() => void) | null;
  reject: ((err: Error) => void) | null;
  /** Settled before submit() returned (every leg completed on its stack): the outcome, no promise made. */
  settledNow: boolean;
  errorNow: Error | null;
}

/** The part of a request inside one region. */
interface Piece {
  readonly req: Request;
  readonly region: number;
  readonly offsetBytes: number;
  readonly lengthBytes: number;
  readonly data: Buffer | null;
  legsLeft: number;
  legsOk: number;
  legErrors: number;
  /** Written to fewer legs than the table has while the region is in sync. */
  missedLeg: boolean;
}

export interface MirrorLegStatus {
  readonly device: string;
  readonly health: string;
  readonly upToDate: boolean;
  readonly isDefault: boolean;
}

export interface MirrorStatus {
  readonly legs: readonly MirrorLegStatus[];
  readonly inSyncRegions: number;
  readonly regionCount: number;
  readonly regionSizeBytes: number;
  readonly healthChars: string;
  readonly log: { readonly type: string; readonly health: string; readonly info: readonly string[] };
  readonly resync: ResyncProgress & {
    readonly running: boolean;
    readonly regionsInFlight: number;
    readonly rateBytesPerSec: number;
    readonly bytesCopied: number;
  };
  readonly heldWrites: number;
  /** The leg recorded as a source lost while out of sync (its unsynced regions are unreadable), or null. */
  readonly lostSource: string | null;
  readonly eventNr: number;
  readonly suspended: boolean;
  /** dmsetup status line: `<#legs> <leg>... <in_sync>/<nr_regions> 1 <health chars> <log status>`. */
  readonly line: string;
}

export interface ReloadOptions {
  readonly legs: readonly Leg[];
  /** A new log (e.g. core after log loss); the old one is closed on resume. Default: keep the log. */
  readonly log?: DirtyLog;
  readonly handleErrors?: boolean;
  readonly keepLog?: boolean;
}

export class MirrorExport implements Export {
  private legs: Leg[];
  private log: DirtyLog;
  private regions: RegionHash<Piece>;
  private health: LegHealth;
  private readonly held: HeldWrites;
  private readonly scheduler: Scheduler;
  private readonly limits: MirrorLimits;
  private readonly resyncOptions: ResyncOptions;
  private resync: Resync;
  private handleErrors: boolean;
  private keepLog: boolean;
  readonly lengthBytes: number;
  readonly regionSizeBytes: number;

  /** Per leg, as the log records it: false = stale (must not be a source). */
  private upToDate: boolean[] = [];
  /** Source for unsynced regions and resync; -1 = none valid (primary lost while out of sync). */
  private defaultLeg = 0;
  private readCursor = 0;
  private readonly outstandingReads: number[];

  // Log flush batching (group commit). Sequence numbers count started / completed log flushes.
  private flushSeqStarted = 0;
  private flushSeqDone = 0;
  private logFlushRunning = false;
  private logFlushScheduled = false;
  private waitCurrent: Piece[] = [];
  private waitNext: Piece[] = [];
  private ackWaiters: Request[] = [];
  private flushWaitersCurrent: (() => void)[] = [];
  private flushWaitersNext: (() => void)[] = [];
  private legStaleSeq = 0;
  private logFailed = false;

  private cleanTimerCancel: (() => void) | null = null;
  /** Writes waiting for a region another cluster node is recovering. */
  private readonly remoteParked = new Map<number, Piece[]>();
  private remotePollCancel: (() => void) | null = null;
  private logUnsubs: (() => void)[] = [];
  private piecesInFlight = 0;
  private drainWaiters: (() => void)[] = [];
  private suspended = false;
  private closed = false;
  private suspendQueue: (() => void)[] = [];
  private reloadPending: ReloadOptions | null = null;
  private activated = false;
  private eventNr = 0;
  private inSyncAnnounced = false;
  private readonly events: MirrorOptions['events'];
  private readonly emit: Emit;
  private readonly description: string | undefined;
  private readonly releaseParked = (parked: Piece[]): void => {
    for (const p of parked) this.classify(p);
  };
  /** Overlapping write pieces reach the legs one after another (write-order.ts: legs never diverge). */
  private readonly writeOrder = new WriteOrder<Piece>((p) => this.dispatchAdmitted(p));

  constructor(opts: MirrorOptions) {
    // Validate at the edge (the table parser already did; these guard programmatic callers).
    if (opts.legs.length < 1) throw new ExportError('EINVAL', 'a mirror needs at least one leg');
    if (!(opts.regionSizeBytes > 0 && (opts.regionSizeBytes & (opts.regionSizeBytes - 1)) === 0)) {
      throw new ExportError('EINVAL', `region size ${opts.regionSizeBytes} is not a power of two`);
    }
    if (opts.keepLog && !opts.handleErrors) throw new ExportError('EINVAL', 'keep_log requires handle_errors');
    for (const l of opts.legs) {
      if (l.sizeBytes < opts.lengthBytes) {
        throw new ExportError('EINVAL', `leg ${l.device} holds ${l.sizeBytes} bytes, the mirror needs ${opts.lengthBytes}`);
      }
    }
    if (opts.log.regionSizeBytes !== opts.regionSizeBytes) throw new ExportError('EINVAL', 'log region size differs from the mirror');
    this.legs = [...opts.legs];
    this.log = opts.log;
    this.lengthBytes = opts.lengthBytes;
    this.regionSizeBytes = opts.regionSizeBytes;
    this.handleErrors = opts.handleErrors;
    this.keepLog = opts.keepLog;
    this.scheduler = opts.scheduler ?? systemScheduler;
    this.limits = { ...MIRROR_LIMIT_DEFAULTS, ...opts.limits };
    this.resyncOptions = { ...RESYNC_DEFAULTS, ...opts.resync };
    this.events = opts.events;
    this.description = opts.description;
    this.emit = <K extends MirrorEventName>(name: K, payload: MirrorEventMap[K]): void => {
      this.eventNr++;
      this.events?.emit(name, payload);
    };
    this.held = new HeldWrites(this.limits.heldBytesMax);
    this.health = new LegHealth(
      this.legs.map((l) => l.device),
      this.emit,
    );
    this.outstandingReads = new Array(16).fill(0);
    this.regions = this.newRegionHash();
    this.resync = new Resync(this.resyncHost(), this.resyncOptions);
  }

  private newRegionHash(): RegionHash<Piece> {
    return new RegionHash<Piece>({
      log: this.log,
      regionSizeBytes: this.regionSizeBytes,
      lengthBytes: this.lengthBytes,
      release: this.releaseParked,
      idle: () => this.armCleanTimer(),
      nowMs: () => this.scheduler.nowMs(),
    });
  }

  /** Resume the log and start. Called once by createMirror. */
  async activate(): Promise<void> {
    assert(!this.activated, 'activate twice');
    await this.resumeLog();
    this.activated = true;
    this.afterActivation();
  }

  private async resumeLog(): Promise<void> {
    this.attachLog();
    const states: readonly LegLogState[] = await this.log.resume({
      legDevices: this.legs.map((l) => l.device),
      flushDataLegs: () => this.flushDataLegs(),
    });
    assert.equal(states.length, this.legs.length, 'log returned leg states for a different leg count');
    this.upToDate = states.map((s) => s.upToDate);
    // A source lost while out of sync, still in the table (resume within the process): it alone holds the
    // unsynced regions but is stale for the rest, so it serves nothing, nor does any other stale leg (none
    // catches up: there is no source); the unsynced regions stay unreadable.
    if (this.lostSourceIndex() >= 0) {
      for (let i = 0; i < this.legs.length; i++) {
        if (!this.upToDate[i] && !this.health.isFailed(i)) {
          this.health.fail(i, 'sync', 'stale while the source leg lost with regions out of sync is in the table');
        }
      }
    }
    this.chooseDefaultLeg(true);
  }

  private afterActivation(): void {
    this.inSyncAnnounced = false;
    this.checkInSync();
    if (this.resyncOptions.autoStart) this.resync.start();
    this.recheckRemote('all');
  }

  // ---------------------------------------------------------------- Export: capabilities and reads

  capabilities(): ExportCapabilities {
    return {
      sizeBytes: this.lengthBytes,
      readOnly: false,
      canFlush: true,
      canFua: true,
      canTrim: true,
      canZero: true,
      canFastZero: false,
      canCache: false,
      canMultiConn: true,
      blockSizeMin: 1,
      blockSizePreferred: 4096,
      blockSizeMax: this.limits.requestBytesMax,
      ...(this.description !== undefined ? { description: this.description } : {}),
    };
  }

  read(target: Buffer, offsetBytes: number): Promise<void> {
    if (this.suspended) return this.whenResumed(() => this.read(target, offsetBytes));
    if (this.closed) return Promise.reject(new ExportError('ESHUTDOWN', 'mirror closed'));
    const bad = this.rangeError(offsetBytes, target.length);
    if (bad) return Promise.reject(bad);
    return this.readFrom(target, offsetBytes, 0);
  }

  /**
   * Export.spliceRead: the leg read() would pick now (in sync: balanced over healthy legs; else the default
   * leg) fills the pipe. Declines whenever read() would wait or fail (suspended, closed, no usable leg) or the
   * leg cannot splice; a failed fill fails no leg (read() then reads and judges).
   */
  spliceRead(pipe: SplicePipe, offsetBytes: number, lengthBytes: number): boolean {
    if (this.suspended || this.closed || this.rangeError(offsetBytes, lengthBytes)) return false;
    const leg = this.rangeInSync(offsetBytes, lengthBytes) ? this.pickReadLeg() : this.defaultLeg;
    if (leg < 0 || this.health.isFailed(leg)) return false;
    const l = this.legs[leg]!;
    return l.spliceNow !== undefined && l.spliceNow(pipe, offsetBytes, lengthBytes);
  }

  /** All regions of the range in sync (and not being recovered): any healthy leg may serve it. */
  private rangeInSync(offsetBytes: number, lengthBytes: number): boolean {
    if (lengthBytes === 0) return true;
    const first = this.regions.regionOf(offsetBytes);
    const last = this.regions.regionOf(offsetBytes + lengthBytes - 1);
    for (let r = first; r <= last; r++) if (!this.log.inSync(r)) return false;
    return true;
  }

  private pickReadLeg(): number {
    // Least outstanding reads among healthy legs, ties broken round robin.
    const n = this.legs.length;
    let best = -1;
    const start = this.readCursor++ % n;
    for (let k = 0; k < n; k++) {
      const i = (start + k) % n;
      if (this.health.isFailed(i)) continue;
      if (best < 0 || this.outstandingReads[i]! < this.outstandingReads[best]!) best = i;
    }
    return best;
  }

  private readFrom(target: Buffer, offsetBytes: number, attempt: number): Promise<void> {
    const inSync = this.rangeInSync(offsetBytes, target.length);
    const leg = inSync ? this.pickReadLeg() : this.defaultLeg;
    if (leg < 0 || this.health.isFailed(leg)) {
      return Promise.reject(new ExportError('EIO', inSync ? 'no healthy leg left' : 'region not in sync and its source leg has failed'));
    }
    const l = this.legs[leg]!;
    if (l.readNow !== undefined) {
      // Synchronous fast path (page-cached file leg); nothing is outstanding afterwards.
      const err = l.readNow(target, offsetBytes);
      if (err === null) return RESOLVED;
      if (err !== undefined) {
        this.failLeg(leg, 'read', err);
        if (attempt + 1 >= this.legs.length) return Promise.reject(toExportError(err));
        return this.readFrom(target, offsetBytes, attempt + 1);
      }
    }
    return this.readAsync(target, offsetBytes, attempt, leg);
  }

  private async readAsync(target: Buffer, offsetBytes: number, attempt: number, leg: number): Promise<void> {
    this.outstandingReads[leg]!++;
    try {
      await this.legs[leg]!.read(target, offsetBytes);
    } catch (err) {
      this.failLeg(leg, 'read', err);
      if (attempt + 1 >= this.legs.length) throw toExportError(err);
      return this.readFrom(target, offsetBytes, attempt + 1);
    } finally {
      this.outstandingReads[leg]!--;
    }
  }

  // ---------------------------------------------------------------- Export: writes

  write(data: Buffer, offsetBytes: number, flags: WriteFlags): Promise<void> {
    return this.submit('write', data, offsetBytes, data.length, flags.fua, false);
  }

  zero(offsetBytes: number, lengthBytes: number, flags: ZeroFlags): Promise<void> {
    if (flags.fastZero) return Promise.reject(new ExportError('ENOTSUP', 'fast zero not supported by the mirror'));
    return this.submit('zero', null, offsetBytes, lengthBytes, flags.fua, flags.mayTrim);
  }

  trim(offsetBytes: number, lengthBytes: number, flags: WriteFlags): Promise<void> {
    return this.submit('trim', null, offsetBytes, lengthBytes, flags.fua, true);
  }

  private submit(kind: OpKind, data: Buffer | null, offsetBytes: number, lengthBytes: number, fua: boolean, mayTrim: boolean): Promise<void> {
    if (this.suspended) return this.whenResumed(() => this.submit(kind, data, offsetBytes, lengthBytes, fua, mayTrim));
    if (this.closed) return Promise.reject(new ExportError('ESHUTDOWN', 'mirror closed'));
    const bad = this.rangeError(offsetBytes, lengthBytes);
    if (bad) return Promise.reject(bad);
    if (lengthBytes === 0) return Promise.resolve();
    // A request that every leg completed on this stack (page-cached file legs) is answered with a settled
    // promise and no promise of its own; otherwise the caller's promise is made here, before anything can
    // complete later (completions that come later find req.resolve set). A throw (an assertion) becomes a
    // rejection, as it did inside a promise executor.
    try {
      const req: Request = {
        kind,
        data,
        offsetBytes,
        lengthBytes,
        fua,
        mayTrim,
        piecesLeft: 0,
        failed: false,
        hold: false,
        ackAfterSeq: 0,
        resolve: null,
        reject: null,
        settledNow: false,
        errorNow: null,
      };
      const regionSize = this.regionSizeBytes;
      const first = this.regions.regionOf(offsetBytes);
      const last = this.regions.regionOf(offsetBytes + lengthBytes - 1);
      req.piecesLeft = last - first + 1;
      if (first === last) {
        this.classify(newPiece(req, first, offsetBytes, lengthBytes, data));
      } else {
        for (let r = first; r <= last; r++) {
          const startBytes = Math.max(offsetBytes, r * regionSize);
          const endBytes = Math.min(offsetBytes + lengthBytes, (r + 1) * regionSize);
          const slice = data ? data.subarray(startBytes - offsetBytes, endBytes - offsetBytes) : null;
          this.classify(newPiece(req, r, startBytes, endBytes - startBytes, slice));
        }
      }
      if (req.settledNow) return req.errorNow === null ? RESOLVED : Promise.reject(req.errorNow);
      return new Promise<void>((resolve, reject) => {
        req.resolve = resolve;
        req.reject = reject;
      });
    } catch (err) {
      return Promise.reject(err);
    }
  }

  /** Settle a request: its promise, or (still inside submit()) the outcome submit() returns. */
  private settleOk(req: Request): void {
    if (req.resolve !== null) req.resolve();
    else if (!req.settledNow) req.settledNow = true;
  }

  private settleFailed(req: Request, err: Error): void {
    if (req.reject !== null) {
      req.reject(err);
    } else if (!req.settledNow) {
      req.settledNow = true;
      req.errorNow = err;
    }
  }

  /** dm do_writes step 1-2: park, or count in (+ mark) and dispatch now or after the batch's log flush. */
  private classify(p: Piece): void {
    const r = p.region;
    const waitSeq = this.regions.tryInc(r, this.flushSeqStarted + 1, this.flushSeqDone);
    if (waitSeq < 0) {
      if (this.regions.isHeld(r)) this.regions.park(r, p);
      else this.parkRemote(p);
      return;
    }
    this.piecesInFlight++;
    const log = this.log;
    if (!log.inSync(r)) this.resync.prioritize(r);
    if (waitSeq === 0 && (log.markDurable === undefined || log.markDurable(r))) {
      this.dispatch(p);
    } else if (waitSeq !== 0 && this.logFlushRunning && waitSeq === this.flushSeqStarted) {
      this.waitCurrent.push(p);
    } else {
      this.waitNext.push(p);
      this.requestLogFlush();
    }
  }

  /** Issue now, or once the overlapping pieces before it completed on every leg (write-order.ts). */
  private dispatch(p: Piece): void {
    if (!this.writeOrder.admit(p)) return;
    this.dispatchAdmitted(p);
    this.writeOrder.issued(p);
  }

  /** dm do_write: in-sync regions to every healthy leg, others to the default leg only. */
  private dispatchAdmitted(p: Piece): void {
    const inSync = this.log.inSync(p.region);
    const legCount = this.legs.length;
    if (!inSync) {
      if (this.defaultLeg >= 0 && !this.health.isFailed(this.defaultLeg)) {
        p.legsLeft = 1;
        this.issue(p, this.defaultLeg);
      } else {
        // Primary lost while out of sync: no leg holds this region's data, and a write could never make it
        // consistent (nothing to resync from). Fail it, as reads of the region fail (dm would report success).
        p.legsLeft = 0;
        this.pieceDone(p);
      }
      return;
    }
    // Every leg without a write/flush error (dm maps every leg; a read- or resync-failed leg still takes writes).
    let healthy = 0;
    for (let i = 0; i < legCount; i++) if (this.health.takesWrites(i)) healthy++;
    if (healthy === 0) {
      p.legsLeft = 0;
      this.pieceDone(p);
      return;
    }
    p.missedLeg = inSync && healthy < legCount;
    p.legsLeft = healthy;
    for (let i = 0; i < legCount; i++) if (this.health.takesWrites(i)) this.issue(p, i);
  }

  private issue(p: Piece, legIndex: number): void {
    const leg = this.legs[legIndex]!;
    const req = p.req;
    let io: Promise<void>;
    switch (req.kind) {
      case 'write':
        if (!req.fua && leg.writeNow !== undefined) {
          // Synchronous fast path (page-cached file leg): completes on this stack, no promise per leg.
          const err = leg.writeNow(p.data!, p.offsetBytes);
          if (err !== undefined) {
            this.legDone(p, legIndex, err);
            return;
          }
        }
        io = leg.write(p.data!, p.offsetBytes, { fua: req.fua });
        break;
      case 'zero':
        io = leg.zero(p.offsetBytes, p.lengthBytes, { mayTrim: req.mayTrim });
        if (req.fua) io = io.then(() => leg.flush());
        break;
      case 'trim':
        io = leg.trim(p.offsetBytes, p.lengthBytes);
        if (req.fua) io = io.then(() => leg.flush());
        break;
    }
    io.then(
      () => this.legDone(p, legIndex, null),
      (err: unknown) => this.legDone(p, legIndex, err),
    );
  }

  private legDone(p: Piece, legIndex: number, err: unknown): void {
    if (err === null) {
      p.legsOk++;
    } else if (p.req.kind === 'trim') {
      // A discard never degrades the mirror (dm: discard errors are not leg failures); trimmed data is
      // unspecified anyway.
      p.legsOk++;
    } else if (this.health.isFailed(legIndex)) {
      // Already failed (read or resync copy) and recorded stale: as if skipped (the region stays in sync
      // among the other legs), but the write error is recorded (D) so the repair policy acts on it.
      p.missedLeg = true;
      this.failLeg(legIndex, 'write', err);
    } else {
      p.legErrors++;
      this.failLeg(legIndex, 'write', err);
    }
    if (--p.legsLeft === 0) this.pieceDone(p);
  }

  /** The failure pass for one piece (dm do_failures), then count it out of its region. */
  private pieceDone(p: Piece): void {
    const req = p.req;
    if (p.legErrors > 0 || p.missedLeg || p.legsOk === 0) {
      if (p.legErrors > 0) {
        this.regions.markNosync(p.region);
        this.resync.kick();
      }
      if (p.legsOk === 0) {
        req.failed = true;
      } else {
        if (this.handleErrors && !this.keepLog) req.hold = true;
        req.ackAfterSeq = Math.max(req.ackAfterSeq, this.legStaleSeq);
      }
    }
    this.regions.dec(p.region, this.flushSeqDone);
    this.pieceCountedOut();
    if (this.regions.idleDirtyCount() > 0) this.armCleanTimer();
    if (--req.piecesLeft === 0) this.requestDone(req);
    this.writeOrder.done(p);
  }

  private requestDone(req: Request): void {
    if (!req.failed && !req.hold && req.ackAfterSeq > this.flushSeqDone && !this.logFailed) {
      this.ackWaiters.push(req);
      this.requestLogFlush();
      return;
    }
    this.finish(req);
  }

  private finish(req: Request): void {
    if (req.failed) {
      this.settleFailed(req, new ExportError('EIO', `${req.kind} failed on every leg`));
    } else if (req.hold) {
      this.holdRequest({
        kind: req.kind,
        data: req.data,
        offsetBytes: req.offsetBytes,
        lengthBytes: req.lengthBytes,
        fua: req.fua,
        mayTrim: req.mayTrim,
        resolve: () => this.settleOk(req),
        reject: (err: Error) => this.settleFailed(req, err),
      });
    } else {
      this.settleOk(req);
    }
  }

  private holdRequest(h: HeldWrite): void {
    if (!this.held.add(h)) {
      h.reject(new ExportError('EIO', 'held-write limit reached'));
      return;
    }
    this.emit('write-held', { offsetBytes: h.offsetBytes, lengthBytes: h.lengthBytes, heldCount: this.held.count });
  }

  private pieceCountedOut(): void {
    this.piecesInFlight--;
    if (this.piecesInFlight === 0 && this.drainWaiters.length) {
      const w = this.drainWaiters;
      this.drainWaiters = [];
      for (const f of w) f();
    }
  }

  // ---------------------------------------------------------------- remote recovery (cluster logs)

  /**
   * Requests with a piece parked until the cluster log lets it go (another node recovers the region, the
   * members run on different legs, this side of a split is unknown). A noflush suspend keeps them as it
   * keeps held writes (they may wait for the very reload it precedes); resume re-checks them.
   */
  clusterParkedWriteCount(): number {
    if (this.remoteParked.size === 0) return 0;
    const requests = new Set<Request>();
    for (const list of this.remoteParked.values()) for (const p of list) requests.add(p.req);
    return requests.size;
  }

  /** Another node recovers the region: wait, re-checking on the log's notification or by polling. */
  private parkRemote(p: Piece): void {
    let list = this.remoteParked.get(p.region);
    if (!list) {
      list = [];
      this.remoteParked.set(p.region, list);
    }
    list.push(p);
    this.armRemotePoll();
  }

  private armRemotePoll(): void {
    if (this.remotePollCancel || this.closed) return;
    this.remotePollCancel = this.scheduler.after(this.limits.remoteRecoveryPollMs, () => {
      this.remotePollCancel = null;
      this.recheckRemote('all');
      if (this.remoteParked.size) this.armRemotePoll();
    });
  }

  private recheckRemote(regions: readonly number[] | 'all'): void {
    if (this.remoteParked.size === 0 || this.suspended || this.closed) return; // resume re-checks all
    const keys = regions === 'all' ? [...this.remoteParked.keys()] : regions;
    for (const r of keys) {
      const list = this.remoteParked.get(r);
      if (!list) continue;
      this.remoteParked.delete(r);
      for (const p of list) this.classify(p);
    }
  }

  /** Subscribe to the log's optional notifications (cluster logs). */
  private attachLog(): void {
    for (const u of this.logUnsubs) u();
    const log = this.log;
    this.logUnsubs = [
      log.onWorkAvailable?.(() => {
        if (!this.suspended && !this.closed) this.resync.kick();
      }),
      log.onRegionsChanged?.((regions) => {
        this.recheckRemote(regions);
        // Idle marks on regions gone out of sync hold up their recovery on every node: clear them now
        // rather than after the lazy-clear delay (no write reaches such a region before it is recovered).
        if (log.clearsOutOfSync === true && this.regions.idleDirtyCount() > 0 && !this.closed) this.clearPass(this.limits.cleanDelayMs);
      }),
      log.onLost?.((err) => {
        if (this.logFailed) return;
        this.logFailed = true;
        this.emit('log-failed', { message: err.message });
      }),
      log.onLegFailed?.((i, message) => {
        if (i >= 0 && i < this.legs.length) this.failLeg(i, 'write', new Error(message));
      }),
    ].filter((u): u is () => void => u !== undefined);
  }

  // ---------------------------------------------------------------- FLUSH

  async flush(): Promise<void> {
    if (this.suspended) return this.whenResumed(() => this.flush());
    if (this.closed) throw new ExportError('ESHUTDOWN', 'mirror closed');
    let ok = 0;
    let failed = 0;
    await Promise.all(
      this.legs.map((leg, i) => {
        if (this.health.isFailed(i)) return undefined;
        return leg.flush().then(
          () => void ok++,
          (err: unknown) => {
            failed++;
            this.failLeg(i, 'flush', err);
          },
        );
      }),
    );
    if (this.log.hasUnflushedChanges() && !this.logFailed) await this.logFlushNow().catch(() => undefined);
    if (ok === 0) throw new ExportError('EIO', 'flush failed on every leg');
    const degraded = failed > 0 || this.health.healthyCount() < this.legs.length;
    if (failed > 0 && this.handleErrors && !this.keepLog) {
      return new Promise<void>((resolve, reject) =>
        this.holdRequest({ kind: 'flush', data: null, offsetBytes: 0, lengthBytes: 0, fua: false, mayTrim: false, resolve, reject }),
      );
    }
    if (degraded && this.legStaleSeq > this.flushSeqDone && !this.logFailed) await this.logFlushNow().catch(() => undefined);
  }

  /** Flush every healthy data leg (the log calls this before persisting newly cleaned bits). */
  private async flushDataLegs(): Promise<void> {
    let ok = 0;
    await Promise.all(
      this.legs.map((leg, i) =>
        this.health.isFailed(i)
          ? undefined
          : leg.flush().then(
              () => void ok++,
              (err: unknown) => this.failLeg(i, 'flush', err),
            ),
      ),
    );
    if (ok === 0) throw new ExportError('EIO', 'no data leg could be flushed');
  }

  // ---------------------------------------------------------------- log flush (group commit)

  private requestLogFlush(): void {
    if (this.logFlushScheduled || this.logFlushRunning) return;
    this.logFlushScheduled = true;
    // A microtask, not a timer: every request parsed from the same socket chunk joins this batch.
    queueMicrotask(() => this.runLogFlush());
  }

  /** Resolves after a log flush that started after this call has completed. */
  private logFlushNow(): Promise<void> {
    return new Promise<void>((resolve) => {
      this.flushWaitersNext.push(resolve);
      this.requestLogFlush();
    });
  }

  private runLogFlush(): void {
    this.logFlushScheduled = false;
    if (this.logFlushRunning) return;
    this.logFlushRunning = true;
    const seq = ++this.flushSeqStarted;
    const batch = this.waitNext;
    this.waitNext = this.waitCurrent; // empty; reuse the array
    this.waitCurrent = batch;
    const waiters = this.flushWaitersNext;
    this.flushWaitersNext = this.flushWaitersCurrent;
    this.flushWaitersCurrent = waiters;
    this.log.flush().then(
      () => this.logFlushEnded(seq, null),
      (err: unknown) => this.logFlushEnded(seq, err),
    );
  }

  private logFlushEnded(seq: number, err: unknown): void {
    this.logFlushRunning = false;
    this.flushSeqDone = seq;
    if (err !== null && !this.logFailed) {
      this.logFailed = true;
      this.emit('log-failed', { message: String(err instanceof Error ? err.message : err) });
    }
    const batch = this.waitCurrent;
    const n = batch.length;
    const remote = this.log.isRemoteRecovering;
    for (let i = 0; i < n; i++) {
      const p = batch[i]!;
      if (err !== null && this.handleErrors) {
        // No write without a durable mark: hold it (dm: log_failure with errors handled).
        p.req.hold = true;
        p.legsLeft = 0;
        p.legsOk = 1;
        this.regions.dec(p.region, this.flushSeqDone);
        this.pieceCountedOut();
        if (--p.req.piecesLeft === 0) this.requestDone(p.req);
      } else if (remote !== undefined && remote.call(this.log, p.region)) {
        // Cluster: the region was handed to another node for recovery before this mark reached the group
        // (the flush delivered everything ordered before it). Writing now could land inside its copy.
        this.regions.dec(p.region, this.flushSeqDone);
        this.pieceCountedOut();
        this.parkRemote(p);
      } else {
        this.dispatch(p);
      }
    }
    batch.length = 0;
    const waiters = this.flushWaitersCurrent;
    this.flushWaitersCurrent = [];
    for (const w of waiters) w();
    if (this.ackWaiters.length) {
      const acks = this.ackWaiters;
      this.ackWaiters = [];
      for (const req of acks) {
        if (req.ackAfterSeq <= seq || this.logFailed) this.finish(req);
        else this.ackWaiters.push(req);
      }
    }
    if (this.waitNext.length || this.flushWaitersNext.length || this.ackWaiters.length) this.requestLogFlush();
  }

  // ---------------------------------------------------------------- lazy clears

  private armCleanTimer(): void {
    if (this.cleanTimerCancel || this.closed) return;
    this.cleanTimerCancel = this.scheduler.after(this.limits.cleanDelayMs, () => {
      this.cleanTimerCancel = null;
      this.clearPass(this.limits.cleanDelayMs);
    });
  }

  /** Clear regions idle for at least minIdleMs and persist lazily. */
  private clearPass(minIdleMs: number): void {
    this.regions.clearIdle(this.scheduler.nowMs(), minIdleMs, this.flushSeqDone);
    if (this.log.hasUnflushedChanges() && !this.suspended) this.requestLogFlush();
    if (this.regions.idleDirtyCount() > 0) this.armCleanTimer();
  }

  // ---------------------------------------------------------------- failures and the default leg

  private failLeg(legIndex: number, kind: LegErrorKind, err: unknown): void {
    const message = err instanceof Error ? err.message : String(err);
    const newlyFailed = this.health.fail(legIndex, kind, message);
    if (!newlyFailed) return;
    // Stale-leg protection: record the leg as stale; writes that missed it are acknowledged only once
    // this record is durable, so after a crash it can never become the resync source.
    this.upToDate[legIndex] = false;
    this.log.setLegUpToDate(legIndex, false);
    this.legStaleSeq = this.flushSeqStarted + 1;
    this.requestLogFlush();
    if (legIndex === this.defaultLeg) this.chooseDefaultLeg(false);
  }

  /**
   * The default leg is the first healthy, up-to-date leg. When the default fails while the mirror is out
   * of sync, no leg holds the unsynced regions: defaultLeg = -1 (reads of unsynced regions fail, resync
   * pauses) unless keep_log says otherwise (dm's rule).
   */
  private chooseDefaultLeg(activation: boolean): void {
    const old = this.defaultLeg;
    let next = -1;
    if (this.lostSourceIndex() >= 0) {
      // The log records the source as lost while out of sync: no leg may serve the unsynced regions.
      this.defaultLeg = -1;
      return;
    }
    for (let i = 0; i < this.legs.length; i++) {
      if (!this.health.isFailed(i) && this.upToDate[i]) {
        next = i;
        break;
      }
    }
    if (next < 0 && activation) {
      // No leg is known up to date (the table replaced all of them): fall back to leg 0, as dm would.
      next = 0;
    }
    const inSync = this.log.syncCount() === this.log.regionCount;
    if (!activation && !inSync && !this.keepLog && old >= 0 && this.health.isFailed(old)) {
      // Primary lost while out of sync: in-sync regions still read from any healthy leg. The log records it
      // (durable with the leg's stale record, before any write that missed the leg is acknowledged), so no
      // later activation resyncs the unsynced regions from a leg that never had them.
      next = -1;
      this.log.recordSourceLost?.(old);
    }
    this.defaultLeg = next;
    if (next !== old || activation) {
      if (next >= 0) this.emit('default-leg', { legIndex: next, device: this.legs[next]!.device });
    }
  }

  /** Index of the leg the log records as a source lost while out of sync, or -1. */
  private lostSourceIndex(): number {
    const lost = this.log.lostSource?.() ?? null;
    return lost === null ? -1 : this.legs.findIndex((l) => l.device === lost);
  }

  private checkInSync(): void {
    if (this.log.syncCount() !== this.log.regionCount) {
      this.inSyncAnnounced = false;
      return;
    }
    if (this.inSyncAnnounced) return;
    this.inSyncAnnounced = true;
    // Every healthy leg now holds every region: record them up to date (stale legs are caught up).
    let changed = false;
    for (let i = 0; i < this.legs.length; i++) {
      if (!this.health.isFailed(i) && !this.upToDate[i]) {
        this.upToDate[i] = true;
        this.log.setLegUpToDate(i, true);
        changed = true;
      }
    }
    if (changed) this.requestLogFlush();
    if (this.defaultLeg < 0) this.chooseDefaultLeg(false);
    this.emit('in-sync', { regionCount: this.log.regionCount });
  }

  // ---------------------------------------------------------------- resync host

  private resyncHost(): ResyncHost {
    // eslint-disable-next-line @typescript-eslint/no-this-alias
    const self = this;
    return {
      get log() {
        return self.log as ResyncHost['log'];
      },
      get regions() {
        return self.regions as RegionHash<unknown>;
      },
      scheduler: this.scheduler,
      legs: () => this.legs,
      sourceLeg: () => (this.defaultLeg >= 0 && !this.health.isFailed(this.defaultLeg) ? this.defaultLeg : -1),
      targetLegs: (source) => {
        const out: number[] = [];
        for (let i = 0; i < this.legs.length; i++) if (i !== source && !this.health.isFailed(i)) out.push(i);
        return out;
      },
      legFailed: (i, err) => this.failLeg(i, 'sync', err),
      regionRecovered: (_region, inSync) => {
        if (inSync) {
          this.armLazyFlush();
          this.checkInSync();
        }
      },
      progress: (p) => this.emit('resync-progress', p),
    };
  }

  /** Persist recovered-region clears soon, without a flush per region. */
  private armLazyFlush(): void {
    if (this.cleanTimerCancel || this.closed) return;
    this.cleanTimerCancel = this.scheduler.after(this.limits.cleanDelayMs, () => {
      this.cleanTimerCancel = null;
      this.clearPass(this.limits.cleanDelayMs);
    });
  }

  // ---------------------------------------------------------------- resync controls

  setResyncRate(bytesPerSec: number): void {
    this.resync.setRate(bytesPerSec);
  }

  startResync(): void {
    if (!this.suspended) this.resync.start();
  }

  pauseResync(): Promise<void> {
    return this.resync.stop();
  }

  /** Resolves when no resync region is in flight (tests: call after the mirror reports in sync). */
  resyncIdle(): Promise<void> {
    return this.resync.idle();
  }

  resyncProgress(): ResyncProgress {
    return this.resync.progress();
  }

  // ---------------------------------------------------------------- suspend / reload / resume

  private whenResumed<T>(fn: () => Promise<T>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      this.suspendQueue.push(() => fn().then(resolve, reject));
    });
  }

  /** Wait until no write piece is in flight or waiting for a log flush. */
  private drain(): Promise<void> {
    if (this.piecesInFlight === 0) return Promise.resolve();
    return new Promise((resolve) => this.drainWaiters.push(resolve));
  }

  /**
   * dm presuspend+postsuspend: stop resync, let in-flight writes finish, persist the log (clears too).
   * New requests wait until resume(). Held writes: noflush keeps them for resume (re-issued against the
   * reloaded legs); a plain suspend fails them with EIO.
   */
  async suspend(opts: { noflush?: boolean } = {}): Promise<void> {
    if (this.suspended) return;
    this.suspended = true;
    this.log.presuspend();
    await this.resync.stop();
    await this.drain();
    while (this.ackWaiters.length || this.logFlushRunning || this.logFlushScheduled) await this.logFlushNow();
    if (!opts.noflush) {
      for (const h of this.held.takeAll()) h.reject(new ExportError('EIO', 'held write failed by a flushing suspend'));
    }
    this.cleanTimerCancel?.();
    this.cleanTimerCancel = null;
    this.regions.clearIdle(this.scheduler.nowMs(), 0, this.flushSeqDone);
    try {
      await this.log.postsuspend();
    } catch (err) {
      if (!this.logFailed) {
        this.logFailed = true;
        this.emit('log-failed', { message: String(err instanceof Error ? err.message : err) });
      }
    }
  }

  /** Load a new leg set (and optionally a new log) while suspended; applied by resume(). */
  reload(opts: ReloadOptions): void {
    assert(this.suspended, 'reload needs a suspended mirror');
    if (opts.legs.length < 1) throw new ExportError('EINVAL', 'a mirror needs at least one leg');
    for (const l of opts.legs) {
      if (l.sizeBytes < this.lengthBytes) throw new ExportError('EINVAL', `leg ${l.device} is too small`);
    }
    if (opts.log && opts.log.regionCount !== this.log.regionCount) throw new ExportError('EINVAL', 'new log has a different region count');
    this.reloadPending = opts;
  }

  /** Apply a pending reload, re-activate the log, re-issue held writes, release queued requests. */
  async resume(): Promise<void> {
    if (!this.suspended) return;
    const reload = this.reloadPending;
    this.reloadPending = null;
    const oldLegs = this.legs;
    const oldLog = this.log;
    if (reload) {
      this.legs = [...reload.legs];
      // A new table: fresh health (dm builds a new mirror_set); the log's stale records protect data.
      this.health = new LegHealth(
        this.legs.map((l) => l.device),
        this.emit,
      );
      if (reload.handleErrors !== undefined) this.handleErrors = reload.handleErrors;
      if (reload.keepLog !== undefined) this.keepLog = reload.keepLog;
      if (reload.log && reload.log !== this.log) {
        this.log = reload.log;
        this.regions = this.newRegionHash();
        this.resync = new Resync(this.resyncHost(), this.resyncOptions);
      }
      this.logFailed = false;
    }
    await this.resumeLog();
    if (reload) {
      const kept = new Set(this.legs);
      await Promise.all(oldLegs.filter((l) => !kept.has(l)).map((l) => l.close().catch(() => undefined)));
      if (this.log !== oldLog) await oldLog.close().catch(() => undefined);
    }
    this.suspended = false;
    this.afterActivation();
    for (const h of this.held.takeAll()) this.reissue(h);
    const queued = this.suspendQueue;
    this.suspendQueue = [];
    for (const f of queued) f();
  }

  private reissue(h: HeldWrite): void {
    let p: Promise<void>;
    switch (h.kind) {
      case 'write':
        p = this.write(h.data!, h.offsetBytes, { fua: h.fua });
        break;
      case 'zero':
        p = this.zero(h.offsetBytes, h.lengthBytes, { fua: h.fua, mayTrim: h.mayTrim, fastZero: false });
        break;
      case 'trim':
        p = this.trim(h.offsetBytes, h.lengthBytes, { fua: h.fua });
        break;
      case 'flush':
        p = this.flush();
        break;
    }
    p.then(h.resolve, h.reject);
  }

  // ---------------------------------------------------------------- status

  status(): MirrorStatus {
    const legs = this.legs.map((l, i) => ({
      device: l.device,
      health: this.health.healthChar(i),
      upToDate: this.upToDate[i] ?? false,
      isDefault: i === this.defaultLeg,
    }));
    const healthChars = this.health.chars();
    const inSyncRegions = this.log.syncCount();
    const info = this.log.status('info');
    const line = [
      String(this.legs.length),
      ...this.legs.map((l) => l.device),
      `${inSyncRegions}/${this.log.regionCount}`,
      '1',
      healthChars,
      ...info,
    ].join(' ');
    return {
      legs,
      inSyncRegions,
      regionCount: this.log.regionCount,
      regionSizeBytes: this.regionSizeBytes,
      healthChars,
      log: { type: this.log.type, health: this.log.health(), info },
      resync: {
        ...this.resync.progress(),
        running: this.resync.isRunning,
        regionsInFlight: this.resync.regionsInFlight,
        rateBytesPerSec: this.resync.rateBytesPerSec,
        bytesCopied: this.resync.totalBytesCopied,
      },
      heldWrites: this.held.count,
      lostSource: this.log.lostSource?.() ?? null,
      eventNr: this.eventNr,
      suspended: this.suspended,
      line,
    };
  }

  /** Log flushes completed so far (read-only; metrics). */
  get logFlushCount(): number {
    return this.flushSeqDone;
  }

  /** dmsetup status line. */
  statusLine(): string {
    return this.status().line;
  }

  /** The region's state in the region hash (tests, verify). */
  regionState(region: number): RegionStateName {
    return this.regions.state(region);
  }

  // ---------------------------------------------------------------- for verify.ts and tests

  /** Internals verify.ts needs: hold a region, the legs, the source leg. */
  verifyAccess(): {
    legs: readonly Leg[];
    regions: RegionHash<unknown>;
    log: DirtyLog;
    healthy: (i: number) => boolean;
    sourceLeg: () => number;
    failLeg: (i: number, err: unknown, kind?: LegErrorKind) => void;
    emit: Emit;
  } {
    return {
      legs: this.legs,
      regions: this.regions as RegionHash<unknown>,
      log: this.log,
      healthy: (i) => !this.health.isFailed(i),
      sourceLeg: () => (this.defaultLeg >= 0 && !this.health.isFailed(this.defaultLeg) ? this.defaultLeg : -1),
      failLeg: (i, err, kind = 'read') => this.failLeg(i, kind, err),
      emit: this.emit,
    };
  }

  // ---------------------------------------------------------------- misc Export

  async cache(offsetBytes: number, lengthBytes: number): Promise<void> {
    this.checkRange(offsetBytes, lengthBytes);
  }

  async blockStatus(offsetBytes: number, lengthBytes: number): Promise<Extent[]> {
    this.checkRange(offsetBytes, lengthBytes);
    return [{ lengthBytes: Math.min(lengthBytes, this.lengthBytes - offsetBytes), flags: 0 }];
  }

  async close(): Promise<void> {
    if (this.closed) return;
    if (!this.suspended) await this.suspend({ noflush: false });
    this.closed = true;
    for (const h of this.held.takeAll()) h.reject(new ExportError('ESHUTDOWN', 'mirror closed'));
    const queued = this.suspendQueue;
    this.suspendQueue = [];
    this.suspended = false;
    for (const f of queued) f(); // they see closed and fail
    for (const p of this.regions.takeAllParked()) this.settleFailed(p.req, new ExportError('ESHUTDOWN', 'mirror closed'));
    for (const list of this.remoteParked.values()) for (const p of list) this.settleFailed(p.req, new ExportError('ESHUTDOWN', 'mirror closed'));
    this.remoteParked.clear();
    this.remotePollCancel?.();
    for (const u of this.logUnsubs) u();
    this.logUnsubs = [];
    await Promise.all(this.legs.map((l) => l.close().catch(() => undefined)));
    await this.log.close().catch(() => undefined);
  }

  private checkRange(offsetBytes: number, lengthBytes: number): void {
    const bad = this.rangeError(offsetBytes, lengthBytes);
    if (bad) throw bad;
  }

  /** The server validates ranges at the edge; this guards programmatic callers without throwing sync. */
  private rangeError(offsetBytes: number, lengthBytes: number): ExportError | null {
    if (!Number.isSafeInteger(offsetBytes) || offsetBytes < 0 || !Number.isSafeInteger(lengthBytes) || lengthBytes < 0) {
      return new ExportError('EINVAL', `bad range ${offsetBytes}+${lengthBytes}`);
    }
    if (offsetBytes + lengthBytes > this.lengthBytes) {
      return new ExportError('EINVAL', `range ${offsetBytes}+${lengthBytes} beyond ${this.lengthBytes}`);
    }
    return null;
  }
}

function newPiece(req: Request, region: number, offsetBytes: number, lengthBytes: number, data: Buffer | null): Piece {
  return { req, region, offsetBytes, lengthBytes, data, legsLeft: 0, legsOk: 0, legErrors: 0, missedLeg: false };
}

function toExportError(err: unknown): ExportError {
  return err instanceof ExportError ? err : new ExportError('EIO', String(err instanceof Error ? err.message : err));
}
