// VolumeExport: the stable Export the NBD server holds for one volume. Connections keep the export
// object they opened, so a table swap (reload + resume) cannot hand them a new object; instead this
// proxy forwards every request to the volume's *current* export and is retargeted on resume.
//
// Owns: the suspend gate (requests that arrive while suspended wait in a bounded queue, answered on
// resume or on close), the in-flight count (a flushing suspend waits until it reaches zero), and the
// swap of the target export. It knows nothing of tables or mirrors: the Volume (volumes.ts) drives it.
//
// May block: suspend() waits for in-flight requests (flushing suspend) or for the caller's drain
// predicate (noflush). Every queued request gets an answer: forwarded on resume, ESHUTDOWN on close,
// ENOMEM at once when the queue bound is spent.
import assert from 'node:assert/strict';
import { ExportError, SETTLED_OK } from '../nbd/export.js';
import type { Export, ExportCapabilities, Extent, SplicePipe, WriteFlags, ZeroFlags } from '../nbd/export.js';

export interface VolumeExportLimits {
  /** Requests that may wait while the volume is suspended; one more is refused with ENOMEM. */
  readonly queuedRequestsMax: number;
  /** Payload bytes (writes) that may wait while suspended. */
  readonly queuedBytesMax: number;
}

export const DEFAULT_VOLUME_EXPORT_LIMITS: VolumeExportLimits = {
  queuedRequestsMax: 4096,
  queuedBytesMax: 256 * 1024 * 1024,
};

/** How often a suspend re-checks its drain predicate when nothing completes. */
export const DRAIN_RECHECK_MS = 20;

interface Waiter {
  readonly payloadBytes: number;
  go(): void;
  fail(err: Error): void;
}

export class VolumeExport implements Export {
  private target: Export;
  private suspended = false;
  private closed = false;
  private inFlight = 0;
  private readonly queue: Waiter[] = [];
  private queuedBytes = 0;
  private idleWaiters: Array<() => void> = [];
  private readonly limits: VolumeExportLimits;

  /** Called once by close(): the owner (the Volume) closes the real tables. */
  onClose: (() => Promise<void>) | undefined;

  constructor(target: Export, limits: Partial<VolumeExportLimits> = {}) {
    this.target = target;
    this.limits = { ...DEFAULT_VOLUME_EXPORT_LIMITS, ...limits };
    assert.ok(this.limits.queuedRequestsMax > 0);
    assert.ok(this.limits.queuedBytesMax > 0);
  }

  get current(): Export {
    return this.target;
  }
  get isSuspended(): boolean {
    return this.suspended;
  }
  get inFlightCount(): number {
    return this.inFlight;
  }
  get queuedCount(): number {
    return this.queue.length;
  }

  /**
   * Close the gate: from now on requests wait. With `drain: 'all'` resolves once no forwarded request is
   * in flight (a flushing suspend); with a predicate, once the predicate holds after each completion
   * (noflush: the caller decides, e.g. "only held writes are left").
   */
  async suspend(drain: 'all' | 'none' | ((inFlight: number) => boolean)): Promise<void> {
    assert.ok(!this.closed, 'suspend after close');
    this.suspended = true;
    if (drain === 'none') return;
    const done = drain === 'all' ? (n: number) => n === 0 : drain;
    // Re-checked on every completion and poke(), and every DRAIN_RECHECK_MS: a predicate may depend on
    // state that changes without a completion here (a write becoming held in the engine).
    while (!done(this.inFlight)) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, DRAIN_RECHECK_MS);
        this.idleWaiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }

  /** Point the proxy at a new export (only while suspended: no request can be racing the swap). */
  retarget(next: Export): void {
    assert.ok(this.suspended, 'retarget while not suspended');
    const before = this.target.capabilities().sizeBytes;
    assert.ok(next.capabilities().sizeBytes >= before, 'retarget may grow the size, never shrink it');
    this.target = next;
  }

  /** Open the gate and release queued requests in arrival order. */
  resume(): void {
    assert.ok(this.suspended, 'resume while not suspended');
    this.suspended = false;
    const waiting = this.queue.splice(0);
    this.queuedBytes = 0;
    for (const w of waiting) w.go();
  }

  /** Wake suspend()'s drain check; the Volume calls it when the engine's held count changes. */
  poke(): void {
    const waiters = this.idleWaiters.splice(0);
    for (const w of waiters) w();
  }

  capabilities(): ExportCapabilities {
    return this.target.capabilities();
  }

  // read and write (the hot path) skip forward()'s closure and async frame while the gate is open.
  read(target: Buffer, offsetBytes: number): Promise<void> {
    if (this.suspended || this.closed) return this.forward(0, (e) => e.read(target, offsetBytes));
    this.inFlight++;
    let p: Promise<void>;
    try {
      p = this.target.read(target, offsetBytes);
    } catch (err) {
      this.settled();
      return Promise.reject(err);
    }
    if (p === SETTLED_OK) {
      this.settled(); // done before returning: passed on, so the server answers at once (export.ts)
      return p;
    }
    return p.then(this.settledOk, this.settledFailed);
  }
  /** Export.spliceRead of the current target while the gate is open (it is done before returning: never in flight). */
  spliceRead(pipe: SplicePipe, offsetBytes: number, lengthBytes: number): boolean {
    if (this.suspended || this.closed) return false;
    const t = this.target;
    return t.spliceRead !== undefined && t.spliceRead(pipe, offsetBytes, lengthBytes);
  }
  write(data: Buffer, offsetBytes: number, flags: WriteFlags): Promise<void> {
    if (this.suspended || this.closed) return this.forward(data.length, (e) => e.write(data, offsetBytes, flags));
    this.inFlight++;
    let p: Promise<void>;
    try {
      p = this.target.write(data, offsetBytes, flags);
    } catch (err) {
      this.settled();
      return Promise.reject(err);
    }
    if (p === SETTLED_OK) {
      this.settled(); // done before returning: passed on, so the server answers at once (export.ts)
      return p;
    }
    return p.then(this.settledOk, this.settledFailed);
  }
  private settled(): void {
    this.inFlight--;
    if (this.idleWaiters.length > 0) this.poke();
  }
  private readonly settledOk = (): void => this.settled();
  private readonly settledFailed = (err: unknown): never => {
    this.settled();
    throw err;
  };
  flush(): Promise<void> {
    return this.forward(0, (e) => e.flush());
  }
  trim(offsetBytes: number, lengthBytes: number, flags: WriteFlags): Promise<void> {
    return this.forward(0, (e) => e.trim(offsetBytes, lengthBytes, flags));
  }
  zero(offsetBytes: number, lengthBytes: number, flags: ZeroFlags): Promise<void> {
    return this.forward(0, (e) => e.zero(offsetBytes, lengthBytes, flags));
  }
  cache(offsetBytes: number, lengthBytes: number): Promise<void> {
    return this.forward(0, (e) => e.cache(offsetBytes, lengthBytes));
  }
  blockStatus(offsetBytes: number, lengthBytes: number): Promise<Extent[]> {
    return this.forward(0, (e) => e.blockStatus(offsetBytes, lengthBytes));
  }

  /**
   * Whoever serves the proxy closes it at shutdown: queued requests are answered (ESHUTDOWN) and the
   * owner's onClose closes the real tables (the Volume owns them; the proxy never closes its target).
   */
  async close(): Promise<void> {
    const already = this.closed;
    this.shutdown();
    if (!already) await this.onClose?.();
  }

  /** Refuse everything from now on and answer every queued request with ESHUTDOWN. */
  shutdown(): void {
    if (this.closed) return;
    this.closed = true;
    const waiting = this.queue.splice(0);
    this.queuedBytes = 0;
    for (const w of waiting) w.fail(new ExportError('ESHUTDOWN', 'volume is shutting down'));
    this.poke();
  }

  private async forward<T>(payloadBytes: number, op: (e: Export) => Promise<T>): Promise<T> {
    if (this.closed) throw new ExportError('ESHUTDOWN', 'volume is shutting down');
    if (this.suspended) await this.waitForResume(payloadBytes);
    this.inFlight++;
    try {
      return await op(this.target);
    } finally {
      this.inFlight--;
      this.poke();
    }
  }

  private waitForResume(payloadBytes: number): Promise<void> {
    if (this.queue.length >= this.limits.queuedRequestsMax) {
      return Promise.reject(
        new ExportError('ENOMEM', `volume suspended and ${this.queue.length} requests already wait (queuedRequestsMax)`),
      );
    }
    if (this.queuedBytes + payloadBytes > this.limits.queuedBytesMax) {
      return Promise.reject(
        new ExportError('ENOMEM', `volume suspended and ${this.queuedBytes} bytes already wait (queuedBytesMax)`),
      );
    }
    this.queuedBytes += payloadBytes;
    return new Promise<void>((go, fail) => this.queue.push({ payloadBytes, go, fail }));
  }
}
