// Resync (recovery, dm-raid1.c do_recovery + dm-kcopyd): copy out-of-sync regions from the source leg to
// the other healthy legs.
// Owns: which regions are being recovered here (up to regionsInFlightMax at once), the priority queue
// (regions with waiting writes jump ahead), the copy loop (Leg.copyRangeTo offload, copy_file_range between
// file legs; else read + write through chunkBytes buffers, one per worker, reused), the rate limit (a token
// bucket on the injected scheduler, changeable while running), and progress
// (in-sync regions, bytes/s, ETA, how long this run has been copying) with 'resync-progress' events: one
// when copying starts from idle, periodic ones, and one when it goes idle (runningMs then is the run's
// length: the benchmark's engine time).
//
// Per region: claim it in the log (recovering), hold it in the region hash (new writes park, wait for its
// pending writes), copy, then release the hold with the result (sync bit + lazy clear on success) and let
// the parked writes go. Failures are reported to the host, which fails the leg ('S'); the region stays out
// of sync and is retried later without the failed leg. Async: copies await leg I/O and the rate limiter.

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

export class Resync {
  private running = false;
  private inFlight = 0;
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
    return this.inFlight;
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

  /** Stop handing out regions; resolves when the regions in flight have ended (aborted at a chunk edge). */
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

  /** Resolves when no region is in flight and (stopped or nothing left to hand out right now). */
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
    while (this.priority.length) {
      const r = this.priority.shift()!;
      this.prioritySet.delete(r);
      if (this.host.regions.isHeld(r)) continue;
      if (log.claimResyncWork ? log.claimResyncWork(r) : false) return r;
    }
    for (let tries = 0; tries < 2; tries++) {
      const r = log.getResyncWork();
      if (r === null) return null;
      if (!this.host.regions.isHeld(r)) return r;
      // Held by verify (cannot be: verify takes in-sync regions only) or by another path: give it back.
      log.setRegionSync(r, false);
    }
    return null;
  }

  private pump(): void {
    if (!this.running) return;
    if (this.host.sourceLeg() < 0) return;
    while (this.inFlight < this.opts.regionsInFlightMax) {
      const r = this.nextRegion();
      if (r === null) break;
      if (this.runEndMs !== null || this.runStartMs === null) this.announceStart(); // from idle
      this.inFlight++;
      this.startProgressTimer();
      void this.recover(r).then(
        () => this.regionEnded(),
        () => this.regionEnded(),
      );
    }
  }

  private regionEnded(): void {
    this.inFlight--;
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

  private async recover(region: number): Promise<void> {
    const regions = this.host.regions;
    await regions.acquire(region, 'recovery');
    let ok = false;
    try {
      ok = await this.copyRegion(region);
    } finally {
      regions.releaseHold(region, ok);
      if (ok) this.regionsRecovered++;
      this.host.regionRecovered(region, ok);
    }
  }

  private async copyRegion(region: number): Promise<boolean> {
    const host = this.host;
    const source = host.sourceLeg();
    if (source < 0) return false;
    const targets = host.targetLegs(source);
    if (targets.length === 0) return true; // one healthy leg: trivially in sync
    const legs = host.legs();
    const sourceLeg = legs[source]!;
    const startBytes = host.regions.regionStartBytes(region);
    const lengthBytes = host.regions.regionLengthBytes(region);
    // The buffer is taken only when a chunk goes through read + write (no copy offload for some target).
    let buffer: Buffer | null = null;
    try {
      for (let doneBytes = 0; doneBytes < lengthBytes; ) {
        if (!this.running) return false; // suspend: abort at a chunk edge, the region stays out of sync
        const n = Math.min(this.opts.chunkBytes, lengthBytes - doneBytes);
        await this.bucket.take(n);
        const off = startBytes + doneBytes;
        // Offload first (copy_file_range between file legs); targets it did not fully copy get read + write.
        let rest = targets;
        if (sourceLeg.copyRangeTo !== undefined) {
          const copied = await Promise.all(targets.map((t) => sourceLeg.copyRangeTo!(legs[t]!, off, n)));
          rest = targets.filter((_t, i) => !copied[i]);
        }
        if (rest.length > 0) {
          buffer ??= this.freeBuffers.pop() ?? Buffer.allocUnsafe(this.opts.chunkBytes);
          const chunk = buffer.subarray(0, n);
          try {
            await sourceLeg.read(chunk, off);
          } catch (err) {
            host.legFailed(source, err);
            return false;
          }
          let failed = false;
          await Promise.all(
            rest.map((t) =>
              legs[t]!.write(chunk, off, { fua: false }).catch((err: unknown) => {
                failed = true;
                host.legFailed(t, err);
              }),
            ),
          );
          if (failed) return false;
        }
        doneBytes += n;
        this.bytesCopied += n;
        this.rateSampleBytes += n;
      }
      return true;
    } finally {
      if (buffer !== null) this.freeBuffers.push(buffer);
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
