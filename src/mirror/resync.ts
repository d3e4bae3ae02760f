// Resync (recovery, dm-raid1.c do_recovery + dm-kcopyd): copy out-of-sync regions from the source leg to
// the other healthy legs.
// Owns: which regions are being recovered here (up to regionsInFlightMax copies at once, each a run of up
// to RUN_BYTES_MAX of contiguous regions), the priority queue (regions with waiting writes jump ahead),
// the copy loop (Leg.copyRangeTo offload, copy_file_range between file legs, one call per run; else read +
// write through chunkBytes buffers, one per worker, reused), the rate limit (a token bucket on the injected
// scheduler, changeable while running), and progress
// (in-sync regions, bytes/s, ETA, how long this run has been copying) with 'resync-progress' events: one
// when copying starts from idle, periodic ones, and one when it goes idle (runningMs then is the run's
// length: the benchmark's engine time).
//
// Per run: claim each region in the log (recovering), hold each in the region hash (new writes park, wait
// for its pending writes), copy the run, then release each hold with the result (sync bit + lazy clear on
// success: only once the whole run is on every target leg) and let the parked writes go. A run is the
// region handed out plus the next ones the log lets us claim (claimResyncWork: out of sync, not recovering,
// not held), and only while the copy offload works for every target (one kernel call per run, a few ms
// for 4 MiB): a 1 GiB resync of 512 KiB file-leg regions is 256 copy jobs, not 2048 (the main thread's
// work per job kept the offload from running back to back: the engine was ~20% slower than the same
// copies issued by a bare loop). Read + write copies and a region a write waits for (priority) stay runs
// of one, so a waiting write never waits for more than its region's copy there. Failures are reported to the host, which fails the leg ('S'); the run's
// regions stay out of sync and are retried later without the failed leg. Async: copies await leg I/O and
// the rate limiter.

import { strict as assert } from 'node:assert';
import type { Leg } from './legs/leg.js';
import type { DirtyLog } from './log/dirty-log.js';
import type { ResyncOptions } from './options.js';
import type { RegionHash } from './regions.js';
import type { Scheduler } from './scheduler.js';

/** What the resync needs from the mirror. */
export interface ResyncHost {
  readonly log: DirtyLog & { claimResyncWork?(region: number): boolean };
  readonly regions: RegionHash<unknown>;
  readonly scheduler: Scheduler;
  /** Current legs (table order). */
  legs(): readonly Leg[];
  /** The leg to copy from now, or -1 when no valid source exists (resync pauses). */
  sourceLeg(): number;
  /** Healthy legs to copy to (never the source). */
  targetLegs(source: number): number[];
  /** A resync read (source) or write (target) failed on leg i. */
  legFailed(legIndex: number, err: unknown): void;
  /** A region's recovery ended (its hold already released). */
  regionRecovered(region: number, inSync: boolean): void;
  /** Periodic progress. */
  progress(p: ResyncProgress): void;
}

export interface ResyncProgress {
  inSyncRegions: number;
  regionCount: number;
  bytesPerSec: number;
  etaSec: number | null;
  /** How long the current (or last) copying run has lasted: from handing out its first region to idle. */
  runningMs: number;
}

/** Bytes-per-second token bucket on the injected clock. rate 0 = unlimited. */
export class TokenBucket {
  private tokens = 0;
  private lastMs: number;
  /** Longest single sleep, so a rate change takes effect soon. */
  static readonly SLEEP_MS_MAX = 100;

  constructor(
    private readonly scheduler: Scheduler,
    private rateBytesPerSec: number,
  ) {
    this.lastMs = scheduler.nowMs();
  }

  get rate(): number {
    return this.rateBytesPerSec;
  }

  setRate(bytesPerSec: number): void {
    assert(Number.isFinite(bytesPerSec) && bytesPerSec >= 0, 'rate must be >= 0');
    this.refill();
    this.rateBytesPerSec = bytesPerSec;
    if (bytesPerSec === 0) this.tokens = 0;
  }

  private refill(): void {
    const now = this.scheduler.nowMs();
    const burst = this.rateBytesPerSec / 10; // at most 100 ms worth of credit
    this.tokens = Math.min(burst, this.tokens + ((now - this.lastMs) * this.rateBytesPerSec) / 1000);
    this.lastMs = now;
  }

  async take(n: number): Promise<void> {
    if (this.rateBytesPerSec === 0) return;
    this.refill();
    this.tokens -= n;
    while (this.tokens < 0 && this.rateBytesPerSec > 0) {
      const waitMs = Math.min(TokenBucket.SLEEP_MS_MAX, Math.ceil((-this.tokens * 1000) / this.rateBytesPerSec));
      await new Promise<void>((resolve) => this.scheduler.after(Math.max(1, waitMs), resolve));
      this.refill();
    }
  }
}

/** Longest run of contiguous regions recovered as one copy (a region larger than this is a run alone). */
export const RUN_BYTES_MAX = 4 * 1024 * 1024;

export class Resync {
  private running = false;
  /** Copies (runs) in flight, and the regions they hold. */
  private inFlight = 0;
  private regionsHeld = 0;
  private readonly priority: number[] = [];
  private readonly prioritySet = new Set<number>();
  private readonly freeBuffers: Buffer[] = [];
  private readonly bucket: TokenBucket;
  private idleWaiters: (() => void)[] = [];
  private progressCancel: (() => void) | null = null;
  private bytesCopied = 0;
  private rateSampleBytes = 0;
  private rateSampleMs: number;
  private bytesPerSec = 0;
  /** The last copy was offloaded for every target (copyRangeTo): runs may extend past one region. */
  private offloading = false;
  /** nextRegion() took its region from the priority queue (a write waits for it). */
  private lastWasPriority = false;
  /** The current (or last) run: copying from idle to idle (scheduler clock); null before the first. */
  private runStartMs: number | null = null;
  private runEndMs: number | null = null;
  regionsRecovered = 0;

  constructor(
    private readonly host: ResyncHost,
    private readonly opts: ResyncOptions,
  ) {
    assert(opts.regionsInFlightMax >= 1, 'regionsInFlightMax >= 1');
    assert(opts.chunkBytes >= 512, 'chunkBytes >= 512');
    this.bucket = new TokenBucket(host.scheduler, opts.rateBytesPerSec);
    this.rateSampleMs = host.scheduler.nowMs();
  }

  get isRunning(): boolean {
    return this.running;
  }

  get regionsInFlight(): number {
    return this.regionsHeld;
  }

  get totalBytesCopied(): number {
    return this.bytesCopied;
  }

  setRate(bytesPerSec: number): void {
    this.bucket.setRate(bytesPerSec);
  }

  get rateBytesPerSec(): number {
    return this.bucket.rate;
  }

  start(): void {
    this.running = true;
    this.pump();
  }

  /** Stop handing out regions; resolves when the copies in flight have ended (aborted at a chunk edge). */
  async stop(): Promise<void> {
    this.running = false;
    this.stopProgressTimer();
    await this.idle();
  }

  /** A write is waiting on this not-yet-synced region: recover it next. */
  prioritize(region: number): void {
    if (this.prioritySet.has(region)) return;
    this.prioritySet.add(region);
    this.priority.push(region);
    this.pump();
  }

  /** New work may exist (a region went out of sync, a leg came back). */
  kick(): void {
    this.pump();
  }

  /** Resolves when no copy is in flight and (stopped or nothing left to hand out right now). */
  idle(): Promise<void> {
    if (this.inFlight === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  progress(): ResyncProgress {
    const regionCount = this.host.log.regionCount;
    const inSyncRegions = this.host.log.syncCount();
    const remainingBytes = (regionCount - inSyncRegions) * this.host.log.regionSizeBytes;
    const etaSec = remainingBytes === 0 ? 0 : this.bytesPerSec > 0 ? remainingBytes / this.bytesPerSec : null;
    const runningMs = this.runStartMs === null ? 0 : (this.runEndMs ?? this.host.scheduler.nowMs()) - this.runStartMs;
    return { inSyncRegions, regionCount, bytesPerSec: this.bytesPerSec, etaSec, runningMs };
  }

  private nextRegion(): number | null {
    const log = this.host.log;
    this.lastWasPriority = true;
    while (this.priority.length) {
      const r = this.priority.shift()!;
      this.prioritySet.delete(r);
      if (this.host.regions.isHeld(r)) continue;
      if (log.claimResyncWork ? log.claimResyncWork(r) : false) return r;
    }
    this.lastWasPriority = false;
    for (let tries = 0; tries < 2; tries++) {
      const r = log.getResyncWork();
      if (r === null) return null;
      if (!this.host.regions.isHeld(r)) return r;
      // Held by verify (cannot be: verify takes in-sync regions only) or by another path: give it back.
      log.setRegionSync(r, false);
    }
    return null;
  }

  /**
   * The next region and, while the offload works, the contiguous ones after it that the log lets us claim
   * too (out of sync, not recovering, not held), up to RUN_BYTES_MAX. A region a write waits for, and a log
   * without claimResyncWork (the cluster's: the group hands out one region at a time), give runs of one.
   */
  private nextRun(): number[] | null {
    const first = this.nextRegion();
    if (first === null) return null;
    const run = [first];
    const log = this.host.log;
    if (!this.offloading || this.lastWasPriority || log.claimResyncWork === undefined) return run;
    const runRegionsMax = Math.max(1, Math.floor(RUN_BYTES_MAX / log.regionSizeBytes));
    for (let r = first + 1; run.length < runRegionsMax && r < log.regionCount; r++) {
      if (this.host.regions.isHeld(r) || !log.claimResyncWork(r)) break;
      run.push(r);
    }
    return run;
  }

  private pump(): void {
    if (!this.running) return;
    if (this.host.sourceLeg() < 0) return;
    while (this.inFlight < this.opts.regionsInFlightMax) {
      const run = this.nextRun();
      if (run === null) break;
      if (this.runEndMs !== null || this.runStartMs === null) this.announceStart(); // from idle
      this.inFlight++;
      this.regionsHeld += run.length;
      this.startProgressTimer();
      void this.recover(run).then(
        () => this.copyEnded(run.length),
        () => this.copyEnded(run.length),
      );
    }
  }

  private copyEnded(regions: number): void {
    this.inFlight--;
    this.regionsHeld -= regions;
    this.pump();
    if (this.inFlight === 0) {
      this.runEndMs = this.host.scheduler.nowMs();
      this.stopProgressTimer();
      this.emitProgress();
      const w = this.idleWaiters;
      this.idleWaiters = [];
      for (const f of w) f();
    }
  }

  /** Recover a run of contiguous regions: hold them all, copy, release each with the run's result. */
  private async recover(run: readonly number[]): Promise<void> {
    const regions = this.host.regions;
    await Promise.all(run.map((r) => regions.acquire(r, 'recovery')));
    let ok = false;
    try {
      const startBytes = regions.regionStartBytes(run[0]!);
      const last = run[run.length - 1]!;
      ok = await this.copyRange(startBytes, regions.regionStartBytes(last) + regions.regionLengthBytes(last) - startBytes);
    } finally {
      for (const r of run) {
        regions.releaseHold(r, ok);
        if (ok) this.regionsRecovered++;
        this.host.regionRecovered(r, ok);
      }
    }
  }

  /** Copy [startBytes, +lengthBytes) from the source leg to every target leg; false: not on every target. */
  private async copyRange(startBytes: number, lengthBytes: number): Promise<boolean> {
    const host = this.host;
    const source = host.sourceLeg();
    if (source < 0) return false;
    const targets = host.targetLegs(source);
    if (targets.length === 0) return true; // one healthy leg: trivially in sync
    const legs = host.legs();
    const sourceLeg = legs[source]!;
    // An offload copies a whole run per call; read + write goes through chunkBytes buffers.
    const stepBytesMax = sourceLeg.copyRangeTo !== undefined ? Math.max(RUN_BYTES_MAX, this.opts.chunkBytes) : this.opts.chunkBytes;
    for (let doneBytes = 0; doneBytes < lengthBytes; ) {
      if (!this.running) return false; // suspend: abort at a chunk edge, the run stays out of sync
      const n = Math.min(stepBytesMax, lengthBytes - doneBytes);
      await this.bucket.take(n);
      const off = startBytes + doneBytes;
      // Offload first (copy_file_range between file legs); targets it did not fully copy get read + write.
      let rest = targets;
      if (sourceLeg.copyRangeTo !== undefined) {
        const copied = await Promise.all(targets.map((t) => sourceLeg.copyRangeTo!(legs[t]!, off, n)));
        rest = targets.filter((_t, i) => !copied[i]);
      }
      this.offloading = rest.length === 0;
      if (rest.length > 0 && !(await this.readWrite(source, rest, off, n))) return false;
      doneBytes += n;
      this.bytesCopied += n;
      this.rateSampleBytes += n;
    }
    return true;
  }

  /** Read + write [off, +n) from the source to `targets` in chunkBytes pieces; errors go to the leg's host. */
  private async readWrite(source: number, targets: readonly number[], off: number, n: number): Promise<boolean> {
    const host = this.host;
    const legs = host.legs();
    const buffer = this.freeBuffers.pop() ?? Buffer.allocUnsafe(this.opts.chunkBytes);
    try {
      for (let done = 0; done < n; ) {
        if (!this.running) return false;
        const piece = Math.min(this.opts.chunkBytes, n - done);
        const chunk = buffer.subarray(0, piece);
        try {
          await legs[source]!.read(chunk, off + done);
        } catch (err) {
          host.legFailed(source, err);
          return false;
        }
        let failed = false;
        await Promise.all(
          targets.map((t) =>
            legs[t]!.write(chunk, off + done, { fua: false }).catch((err: unknown) => {
              failed = true;
              host.legFailed(t, err);
            }),
          ),
        );
        if (failed) return false;
        done += piece;
      }
      return true;
    } finally {
      this.freeBuffers.push(buffer);
    }
  }

  /** Copying starts from idle: the rate window starts now (idle time is not slowness), progress is announced. */
  private announceStart(): void {
    this.rateSampleBytes = 0;
    this.rateSampleMs = this.host.scheduler.nowMs();
    this.runStartMs = this.rateSampleMs;
    this.runEndMs = null;
    this.host.progress(this.progress());
  }

  private startProgressTimer(): void {
    if (this.progressCancel || this.opts.progressIntervalMs <= 0) return;
    this.progressCancel = this.host.scheduler.after(this.opts.progressIntervalMs, () => {
      this.progressCancel = null;
      this.emitProgress();
      if (this.inFlight > 0) this.startProgressTimer();
    });
  }

  private stopProgressTimer(): void {
    this.progressCancel?.();
    this.progressCancel = null;
  }

  private emitProgress(): void {
    const now = this.host.scheduler.nowMs();
    const elapsedMs = now - this.rateSampleMs;
    if (elapsedMs > 0) {
      const sample = (this.rateSampleBytes * 1000) / elapsedMs;
      this.bytesPerSec = this.bytesPerSec === 0 ? sample : 0.5 * this.bytesPerSec + 0.5 * sample;
      this.rateSampleBytes = 0;
      this.rateSampleMs = now;
    }
    this.host.progress(this.progress());
  }
}
