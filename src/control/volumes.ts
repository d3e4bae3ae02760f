// Volumes: the registry of served volumes and the controller of each (dmsetup's device model).
// A Volume has a name, a live table (line + open Export), an optional inactive table (loaded by reload,
// swapped in by resume), a state (ACTIVE/SUSPENDED), an event counter, and the stable VolumeExport
// proxy the NBD server serves. Operations: suspend(noflush) / resume / reload(line) / clear / message /
// status / table / info / wait(event_nr).
//
// Owns: operation order per volume (one at a time), the table swap (held writes and region state handed
// to the new table, legs shared through the LegPool), the event counter and the event stream.
// Does not own: parsing and opening tables (TableBackend), the engine's behaviour (engine.ts contract),
// repair policy (repair.ts).
//
// Refusals are ControlErrors thrown before anything changed; a reload that fails leaves the live table
// untouched and the inactive slot as it was.
import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import type { Export } from '../nbd/export.js';
import type { Leg } from '../mirror/legs/leg.js';
import type { DirtyLog } from '../mirror/log/dirty-log.js';
import { diskLogBytesMin } from '../mirror/open.js';
import type { MirrorTableSpec, TableSpec } from '../mirror/table.js';
import { formatTable } from '../mirror/table.js';
import { SECTOR_BYTES } from '../units.js';
import { ControlError } from './control-error.js';
import { engineFeatures, engineOf, type LegState } from './engine.js';
import { LegAcquisitions, LegPool, legKey } from './leg-pool.js';
import { VolumeExport, type VolumeExportLimits } from './volume-export.js';
import { stopVerify, verifyStopped } from './verify.js';

/** Anything with emit(name, payload) (the mirror's MirrorEventSink). */
export interface EventSink {
  emit(name: string, payload: unknown): unknown;
}

/** Opens a leg or log device at a byte offset (openTable's LegOpener shape). */
export type DeviceOpener = (device: string, offsetBytes: number, opts: { readOnly: boolean }) => Promise<Leg>;

/** Binds the control plane to the table parser and opener (src/mirror); table-backend.ts is the real one. */
export interface TableBackend {
  /** Pure; throws an Error whose message names the bad token. */
  parse(line: string): TableSpec;
  /** Linear legs are opened read-only (serve --read-only). */
  readonly readOnly: boolean;
  /** Opens a device for real (FileLeg / NbdLeg); the Volume shares the result through its LegPool. */
  openDevice: DeviceOpener;
  /** Build the table's export, opening devices only through `openLeg`; engine events go to `events`. */
  open(spec: TableSpec, ctx: { readonly events: EventSink; readonly openLeg: DeviceOpener }): Promise<Export>;
  /** Build a (not yet resumed) dirty log for an in-place mirror reload whose log changed. */
  openLog(spec: MirrorTableSpec, device: Leg | undefined): Promise<DirtyLog>;
}

export interface VolumeLimits extends VolumeExportLimits {
  /** A flushing suspend gives up (and resumes) when in-flight requests have not finished by then. */
  suspendTimeoutMs: number;
  /** Longest `wait` the server accepts. */
  waitTimeoutMsMax: number;
}

export const DEFAULT_VOLUME_LIMITS: VolumeLimits = {
  queuedRequestsMax: 4096,
  queuedBytesMax: 256 * 1024 * 1024,
  suspendTimeoutMs: 30_000,
  waitTimeoutMsMax: 24 * 3600 * 1000,
};

/**
 * Engine events that dm raises with dm_table_event (they bump the event counter, as `dmsetup wait` and
 * dmeventd see it). Progress and per-write notices are streamed but do not count.
 */
export const COUNTED_ENGINE_EVENTS: ReadonlySet<string> = new Set(['leg-failed', 'log-failed', 'in-sync']);

export type VolumeState = 'ACTIVE' | 'SUSPENDED';

/** One event as the stream carries it. */
export interface VolumeEvent {
  readonly volume: string;
  readonly kind: string;
  /** The volume's event counter after this event. */
  readonly eventNr: number;
  readonly time: string;
  /** True when the event bumped the counter. */
  readonly counted: boolean;
  readonly data: Record<string, unknown>;
}

export interface VolumeInfo {
  readonly name: string;
  readonly state: VolumeState;
  readonly tablesPresent: { readonly live: boolean; readonly inactive: boolean };
  /** NBD connections on the volume; null when the server cannot tell. */
  readonly openCount: number | null;
  readonly eventNr: number;
  readonly targetCount: number;
  /** The cluster log uuid, if any. */
  readonly uuid: string | null;
  readonly target: string;
  readonly sizeBytes: number;
  readonly lengthSectors: number;
  readonly heldWrites: number;
  readonly queuedRequests: number;
  readonly inFlightRequests: number;
  readonly legs: readonly LegState[];
  /** Engine members the live export provides (engine.ts), for diagnosis. */
  readonly engineFeatures: readonly string[];
}

/** A table's event sink: the engine emits into it; the Volume listens while the table is live. */
class TableSink implements EventSink {
  listener: ((name: string, payload: unknown) => void) | undefined;
  emit(name: string, payload: unknown): boolean {
    this.listener?.(name, payload);
    return true;
  }
}

interface LiveTable {
  readonly spec: TableSpec;
  readonly line: string;
  readonly export: Export;
  readonly sink: TableSink;
}

/**
 * A reloaded (inactive) table: parsed, size-checked, and every device it names opened through the pool
 * (the references keep them open until resume uses them or the table is dropped). Nothing runs on it.
 */
interface PreparedTable {
  readonly spec: TableSpec;
  readonly line: string;
  /** Data legs in table order (pool references). */
  readonly legs: Leg[];
  /** The disk log device (pool reference), if any. */
  logDevice: Leg | undefined;
}

/** A one-at-a-time queue for the operations of one volume. */
class OpQueue {
  private tail: Promise<unknown> = Promise.resolve();
  run<T>(fn: () => Promise<T>): Promise<T> {
    const result = this.tail.then(fn, fn);
    this.tail = result.catch(() => undefined);
    return result;
  }
}

export interface ResumeResult {
  readonly swapped: boolean;
  /** How the new table went live: the engine took new legs/log ('in-place'), a mirror became linear, or a new export. */
  readonly how: 'none' | 'in-place' | 'to-linear' | 'new-export';
  /** Writes that were held when the table went live (completed on the new table by the engine). */
  readonly heldWritesReissued: number;
}

export class Volume extends EventEmitter {
  readonly proxy: VolumeExport;
  private live: LiveTable;
  private inactive: PreparedTable | undefined;
  private suspended = false;
  private eventCounter = 0;
  private readonly ops = new OpQueue();
  private closed = false;
  /** close() was called (it may still be draining). */
  get isClosed(): boolean {
    return this.closed;
  }
  /** Set by Volumes.setOpenCounter: connections using this volume. */
  openCountFn: (() => number) | undefined;

  private constructor(
    readonly name: string,
    live: LiveTable,
    private readonly pool: LegPool,
    private readonly backend: TableBackend,
    private readonly limits: VolumeLimits,
  ) {
    super();
    this.live = live;
    this.proxy = new VolumeExport(live.export, limits);
    this.proxy.onClose = () => this.close();
    this.attach(live);
  }

  /** Open the first table (a line, or a spec already parsed) and build the volume around it. */
  static async create(
    name: string,
    first: string | TableSpec,
    backend: TableBackend,
    limits: Partial<VolumeLimits> = {},
  ): Promise<Volume> {
    const pool = new LegPool();
    const spec = typeof first === 'string' ? parseOrRefuse(backend, first) : first;
    const live = await openExport(backend, pool, spec);
    return new Volume(name, live, pool, backend, { ...DEFAULT_VOLUME_LIMITS, ...limits });
  }

  get state(): VolumeState {
    return this.suspended ? 'SUSPENDED' : 'ACTIVE';
  }
  get eventNr(): number {
    return this.eventCounter;
  }
  get liveSpec(): TableSpec {
    return this.live.spec;
  }
  get liveExport(): Export {
    return this.live.export;
  }
  get hasInactiveTable(): boolean {
    return this.inactive !== undefined;
  }
  /** Open devices of the volume (pool keys), for tests. */
  openDevices(): string[] {
    return this.pool.keys();
  }

  // ---------------------------------------------------------------- queries

  /** dmsetup status line: `<start> <length> <target> <params>`. */
  status(): string {
    const spec = this.live.spec;
    const head = `${spec.startSectors} ${spec.lengthSectors} ${spec.kind}`;
    const engine = engineOf(this.live.export);
    const params = engine.statusParams() ?? fallbackStatusParams(spec);
    return params.length > 0 ? `${head} ${params}` : head;
  }

  /** dmsetup table line (normalized), of the live or the inactive table. */
  table(which: 'live' | 'inactive' = 'live'): string | null {
    const t = which === 'live' ? this.live : this.inactive;
    return t === undefined ? null : t.line;
  }

  legs(): readonly LegState[] {
    return engineOf(this.live.export).legs() ?? fallbackLegs(this.live.spec);
  }

  info(): VolumeInfo {
    const spec = this.live.spec;
    const engine = engineOf(this.live.export);
    return {
      name: this.name,
      state: this.state,
      tablesPresent: { live: true, inactive: this.inactive !== undefined },
      openCount: this.openCountFn?.() ?? null,
      eventNr: this.eventCounter,
      targetCount: 1,
      uuid: spec.kind === 'mirror' ? (spec.log.uuid ?? null) : null,
      target: spec.kind,
      sizeBytes: spec.lengthSectors * SECTOR_BYTES,
      lengthSectors: spec.lengthSectors,
      heldWrites: engine.heldWriteCount(),
      queuedRequests: this.proxy.queuedCount,
      inFlightRequests: this.proxy.inFlightCount,
      legs: this.legs(),
      engineFeatures: engineFeatures(this.live.export),
    };
  }

  /**
   * dmsetup wait: resolves with the counter once it exceeds `afterEventNr` (default: its value now).
   * Rejects with ETIMEDOUT after timeoutMs (bounded by waitTimeoutMsMax).
   */
  wait(afterEventNr: number | undefined, timeoutMs: number | undefined, signal?: AbortSignal): Promise<number> {
    const after = afterEventNr ?? this.eventCounter;
    if (!Number.isSafeInteger(after) || after < 0) throw new ControlError('EINVAL', `bad event_nr: ${afterEventNr}`);
    if (this.eventCounter > after) return Promise.resolve(this.eventCounter);
    const limitMs = Math.min(timeoutMs ?? this.limits.waitTimeoutMsMax, this.limits.waitTimeoutMsMax);
    return new Promise<number>((resolve, reject) => {
      const onEvent = (ev: VolumeEvent) => {
        if (ev.eventNr > after) finish(() => resolve(ev.eventNr));
      };
      const onAbort = () => finish(() => reject(new ControlError('EIO', 'wait cancelled')));
      const timer = setTimeout(
        () => finish(() => reject(new ControlError('ETIMEDOUT', `no event after event number ${after} within ${limitMs} ms`))),
        limitMs,
      );
      const finish = (settle: () => void) => {
        clearTimeout(timer);
        this.off('event', onEvent);
        this.off('closed', onAbort);
        signal?.removeEventListener('abort', onAbort);
        settle();
      };
      this.on('event', onEvent);
      this.on('closed', onAbort);
      signal?.addEventListener('abort', onAbort);
    });
  }

  // ---------------------------------------------------------------- operations

  /**
   * dm suspend. New requests wait in the proxy. Flushing (noflush=false): the engine fails held writes
   * with EIO; returns once nothing is in flight. noflush: held writes stay held (a reload + resume
   * completes them); returns once only held writes are in flight. Suspending a suspended volume is a no-op.
   */
  suspend(opts: { noflush: boolean }): Promise<void> {
    return this.ops.run(() => this.suspendNow(opts));
  }

  /**
   * dm resume. With an inactive table: make it live (suspending first, flushing, if the volume is active);
   * held writes complete on it. Without one: resume the live table (held writes are re-issued to it).
   * Then the requests that waited are released, in arrival order.
   */
  resume(): Promise<ResumeResult> {
    return this.ops.run(() => this.resumeNow());
  }

  /**
   * dm load (dmsetup reload): parse, check the size, open every device the table names (sharing the live
   * table's open devices) and check their sizes; keep the result as the inactive table, made live by
   * resume. Refused, with nothing changed: a table that does not parse, has another length, or names a
   * device that cannot be opened or is too small. A second reload replaces the inactive table.
   */
  reload(line: string): Promise<{ table: string }> {
    return this.ops.run(async () => {
      this.assertOpen();
      const spec = parseOrRefuse(this.backend, line);
      const liveLen = this.live.spec.lengthSectors;
      if (spec.lengthSectors < liveLen) {
        // Growing is supported (a new export of the larger table on resume; connected clients keep the size
        // they negotiated until they reconnect); shrinking under connected clients is not.
        throw new ControlError(
          'ESIZE',
          `table length ${spec.lengthSectors} sectors differs from the live table's ${liveLen} sectors: shrinking is not supported (only growing)`,
        );
      }
      const prepared = await prepareTable(this.backend, this.pool, spec);
      const previous = this.inactive;
      this.inactive = prepared;
      if (previous !== undefined) await releasePrepared(previous);
      this.record('reload', { table: prepared.line, replacedInactive: previous !== undefined }, false);
      return { table: prepared.line };
    });
  }

  /** dmsetup clear: drop the inactive table. */
  clear(): Promise<void> {
    return this.ops.run(async () => {
      this.assertOpen();
      const t = this.inactive;
      if (t === undefined) return;
      this.inactive = undefined;
      await releasePrepared(t);
      this.record('clear', {}, false);
    });
  }

  /** dmsetup message: the target's answer text (may be empty). */
  message(argv: readonly string[]): Promise<string> {
    return this.ops.run(async () => {
      this.assertOpen();
      if (argv.length === 0) throw new ControlError('EINVAL', 'message: empty message');
      const engine = engineOf(this.live.export);
      if (engine.kind !== 'mirror') {
        throw new ControlError('ENOTSUP', `message: the ${this.live.spec.kind} target of "${this.name}" takes no messages`);
      }
      let answer: string;
      try {
        answer = engine.message(argv);
      } catch (e) {
        throw new ControlError('EINVAL', `message "${argv.join(' ')}": ${errorText(e)}`);
      }
      this.record('message', { message: argv.join(' '), answer }, false);
      return answer;
    });
  }

  /** Server shutdown: answer queued requests, drop the inactive table, close the live one. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.proxy.shutdown();
    this.emit('closed');
    await verifyStopped(this); // a running verify stops at its current region before the legs close
    await this.ops.run(async () => {
      const prepared = this.inactive;
      this.inactive = undefined;
      if (prepared !== undefined) await releasePrepared(prepared);
      this.live.sink.listener = undefined;
      await this.live.export.close();
    });
  }

  // ---------------------------------------------------------------- internals

  private async suspendNow(opts: { noflush: boolean }): Promise<void> {
    this.assertOpen();
    if (this.suspended) return;
    // A running verify stops first (after its current region): nothing of it touches legs while suspended.
    await stopVerify(this, 'volume suspended');
    const engine = engineOf(this.live.export);
    this.suspended = true;
    try {
      await withTimeout(
        (async () => {
          // 1. Gate closed: wait until every forwarded request has completed or is held by the engine (no
          //    request may reach the engine after its suspend, or it would wait inside it unseen). noflush
          //    also keeps writes parked for the cluster: while a repair reaches the nodes one by one, every
          //    write waits until all run on the same legs, which needs this very suspend and reload.
          const kept = () => engine.heldWriteCount() + (opts.noflush ? engine.clusterParkedWriteCount() : 0);
          await this.proxy.suspend((n) => n <= kept());
          // 2. The engine's own suspend: stop resync, persist the log; held writes fail with EIO when
          //    flushing, stay held with noflush.
          await engine.suspend(opts.noflush);
          // 3. Flushing: the failed held writes have now completed too.
          if (!opts.noflush) await this.proxy.suspend('all');
        })(),
        this.limits.suspendTimeoutMs,
        () =>
          `suspend: ${this.proxy.inFlightCount} requests still in flight after ${this.limits.suspendTimeoutMs} ms ` +
          `(${engine.heldWriteCount()} held, ${engine.clusterParkedWriteCount()} parked for the cluster)`,
      );
    } catch (e) {
      // Give up: reopen the gate so clients are not stuck behind a suspend nobody completes.
      this.suspended = false;
      await engine.resume().catch(() => undefined);
      this.proxy.resume();
      throw e instanceof ControlError ? e : new ControlError('EIO', `suspend failed: ${errorText(e)}`);
    }
    this.record('suspend', { noflush: opts.noflush, heldWrites: engine.heldWriteCount(), clusterParkedWrites: engine.clusterParkedWriteCount() }, false);
  }

  private async resumeNow(): Promise<ResumeResult> {
    this.assertOpen();
    const next = this.inactive;
    if (next === undefined) {
      if (!this.suspended) return { swapped: false, how: 'none', heldWritesReissued: 0 };
      const engine = engineOf(this.live.export);
      const held = engine.heldWriteCount();
      await engine.resume();
      this.suspended = false;
      this.proxy.resume();
      this.record('resume', { swapped: false, heldWrites: held }, false);
      return { swapped: false, how: 'none', heldWritesReissued: held };
    }
    // dm: resuming with an inactive table suspends (flushing) first if the device is active.
    if (!this.suspended) await this.suspendNow({ noflush: false });

    const engine = engineOf(this.live.export);
    const held = engine.heldWriteCount();
    const old = this.live;
    let how: ResumeResult['how'];
    try {
      const sameLength = next.spec.lengthSectors === old.spec.lengthSectors;
      if (sameLength && engine.reloadInPlace !== undefined && next.spec.kind === 'mirror' && old.spec.kind === 'mirror' &&
          engine.regionSizeBytes === next.spec.log.regionSizeSectors * SECTOR_BYTES) {
        await this.resumeInPlace(next, old.spec, next.spec);
        how = 'in-place';
      } else if (sameLength && engine.reloadInPlace !== undefined && next.spec.kind === 'linear' && old.spec.kind === 'mirror') {
        await this.resumeToLinear(next);
        how = 'to-linear';
      } else {
        await this.resumeNewExport(next);
        how = 'new-export';
      }
    } catch (e) {
      const err = e instanceof ControlError ? e : new ControlError('EIO', `resume failed: ${errorText(e)}`);
      this.record('resume-failed', { table: next.line, message: err.message }, false);
      throw err;
    }
    this.inactive = undefined;
    this.suspended = false;
    this.proxy.resume();
    this.record('resume', { swapped: true, how, table: next.line, heldWritesReissued: held }, false);
    return { swapped: true, how, heldWritesReissued: held };
  }

  /** Mirror -> mirror (same region size): the engine takes the new legs (and log) and re-issues held writes. */
  private async resumeInPlace(next: PreparedTable, oldSpec: MirrorTableSpec, spec: MirrorTableSpec): Promise<void> {
    const engine = engineOf(this.live.export);
    let log: DirtyLog | undefined;
    if (!sameLog(oldSpec, spec)) {
      log = await this.backend.openLog(spec, next.logDevice);
      next.logDevice = undefined; // the new log owns it now
    } else if (next.logDevice !== undefined) {
      await next.logDevice.close(); // the live log keeps its own reference
      next.logDevice = undefined;
    }
    engine.reloadInPlace!({ legs: next.legs, ...(log ? { log } : {}), handleErrors: spec.features.handleErrors, keepLog: spec.features.keepLog });
    await engine.resume();
    this.live = { ...this.live, spec, line: next.line };
  }

  /**
   * Mirror -> linear (repair down to one leg): first the engine goes on with the one surviving leg so held
   * writes complete on it, then it is drained and closed and a linear export takes its place.
   */
  private async resumeToLinear(next: PreparedTable): Promise<void> {
    const old = this.live;
    const engine = engineOf(old.export);
    const oldSpec = old.spec as MirrorTableSpec;
    const legRef = next.legs[0]!;
    engine.reloadInPlace!({ legs: [legRef], handleErrors: oldSpec.features.handleErrors, keepLog: oldSpec.features.keepLog });
    next.legs.length = 0; // the engine owns that reference now
    await engine.resume();
    // The proxy is still closed: wait for everything forwarded (held writes included) to complete.
    await withTimeout(this.proxy.suspend('all'), this.limits.suspendTimeoutMs, () => 'resume: held writes did not complete on the remaining leg');
    await engine.suspend(false);
    await this.resumeNewExport(next);
  }

  /** Anything else: build the new export (devices are shared through the pool), swap, close the old one. */
  private async resumeNewExport(next: PreparedTable): Promise<void> {
    const old = this.live;
    const live = await openExport(this.backend, this.pool, next.spec);
    this.live = live;
    this.attach(live);
    this.proxy.retarget(live.export);
    old.sink.listener = undefined;
    await old.export.close().catch((e: unknown) => this.record('close-error', { table: old.line, message: errorText(e) }, false));
    await releasePrepared(next);
  }

  private attach(t: LiveTable): void {
    t.sink.listener = (kind, payload) => {
      if (this.live.sink !== t.sink) return; // only the live table's events count
      this.proxy.poke(); // a suspend may be waiting for a write to become held
      const data = (payload !== null && typeof payload === 'object' ? payload : { value: payload }) as Record<string, unknown>;
      this.record(kind, data, COUNTED_ENGINE_EVENTS.has(kind));
    };
  }

  /** Append one event: bump the counter if counted, then emit it to subscribers. */
  record(kind: string, data: Record<string, unknown>, counted: boolean): VolumeEvent {
    if (counted) this.eventCounter++;
    const ev: VolumeEvent = {
      volume: this.name,
      kind,
      eventNr: this.eventCounter,
      time: new Date().toISOString(),
      counted,
      data,
    };
    this.emit('event', ev);
    return ev;
  }

  private assertOpen(): void {
    if (this.closed) throw new ControlError('EBUSY', `volume "${this.name}" is shutting down`);
  }
}

/** The registry: name -> Volume, and one merged event stream. */
export class Volumes extends EventEmitter {
  private readonly byName = new Map<string, Volume>();
  /** Messages the server itself answers whatever the volume (e.g. reload-tls, set by serve). */
  readonly serverMessages = new Map<string, (argv: readonly string[]) => Promise<string>>();

  private openCounter: ((name: string) => number) | undefined;

  /** The NBD server's per-export connection count, for `info`'s Open count (set by serve). */
  setOpenCounter(count: (name: string) => number): void {
    this.openCounter = count;
    for (const v of this.byName.values()) v.openCountFn = () => count(v.name);
  }

  add(v: Volume): void {
    assert.ok(!this.byName.has(v.name), `duplicate volume ${v.name}`);
    this.byName.set(v.name, v);
    const count = this.openCounter;
    if (count !== undefined) v.openCountFn = () => count(v.name);
    v.on('event', (ev: VolumeEvent) => this.emit('event', ev));
  }

  get(name: string): Volume {
    const v = this.byName.get(name);
    if (v === undefined) {
      const known = [...this.byName.keys()].join(', ') || 'none';
      throw new ControlError('ENOENT', `no volume named "${name}" (volumes: ${known})`);
    }
    return v;
  }

  list(): Volume[] {
    return [...this.byName.values()];
  }

  async closeAll(): Promise<void> {
    await Promise.allSettled(this.list().map((v) => v.close()));
  }
}

// ------------------------------------------------------------------ helpers

function parseOrRefuse(backend: TableBackend, line: string): TableSpec {
  if (typeof line !== 'string' || line.trim().length === 0) throw new ControlError('EINVAL', 'table: empty table line');
  try {
    return backend.parse(line);
  } catch (e) {
    throw new ControlError('EINVAL', `table: ${errorText(e)}`);
  }
}

/** Build a live export for `spec`, every device opened through the pool. */
async function openExport(backend: TableBackend, pool: LegPool, spec: TableSpec): Promise<LiveTable> {
  const acquisitions = new LegAcquisitions(pool);
  const sink = new TableSink();
  const openLeg: DeviceOpener = (device, offsetBytes, opts) =>
    acquisitions.acquire(legKey(device, offsetBytes), () => openDeviceOrRefuse(backend, device, offsetBytes, opts.readOnly));
  try {
    const exp = await backend.open(spec, { events: sink, openLeg });
    return { spec, line: formatTable(spec), export: exp, sink };
  } catch (e) {
    await acquisitions.releaseAll();
    if (e instanceof ControlError) throw e;
    throw new ControlError('ENODEV', `cannot open table: ${errorText(e)}`);
  }
}

async function openDeviceOrRefuse(backend: TableBackend, device: string, offsetBytes: number, readOnly: boolean): Promise<Leg> {
  try {
    return await backend.openDevice(device, offsetBytes, { readOnly });
  } catch (e) {
    throw new ControlError('ENODEV', `cannot open ${device}: ${errorText(e)}`);
  }
}

/** Open (share) every device `spec` names and check its size; on any failure release them all. */
async function prepareTable(backend: TableBackend, pool: LegPool, spec: TableSpec): Promise<PreparedTable> {
  const acquisitions = new LegAcquisitions(pool);
  const lengthBytes = spec.lengthSectors * SECTOR_BYTES;
  const legSpecs = spec.kind === 'linear' ? [spec.leg] : spec.legs;
  const readOnly = spec.kind === 'linear' ? backend.readOnly : false;
  try {
    const legs: Leg[] = [];
    for (const l of legSpecs) {
      const offsetBytes = l.offsetSectors * SECTOR_BYTES;
      const leg = await acquisitions.acquire(legKey(l.device, offsetBytes), () => openDeviceOrRefuse(backend, l.device, offsetBytes, readOnly));
      if (leg.sizeBytes < lengthBytes) {
        throw new ControlError('ENODEV', `leg ${l.device} is too small: ${leg.sizeBytes} bytes from offset ${l.offsetSectors} sectors, the table needs ${lengthBytes}`);
      }
      legs.push(leg);
    }
    let logDevice: Leg | undefined;
    if (spec.kind === 'mirror' && spec.log.kind === 'disk' && spec.log.device !== undefined) {
      const dev = spec.log.device;
      logDevice = await acquisitions.acquire(legKey(dev, 0), () => openDeviceOrRefuse(backend, dev, 0, false));
      const need = diskLogBytesMin(Math.ceil(spec.lengthSectors / spec.log.regionSizeSectors));
      if (logDevice.sizeBytes < need) throw new ControlError('ENODEV', `log device ${dev} is too small: ${logDevice.sizeBytes} bytes, the log needs ${need}`);
    }
    return { spec, line: formatTable(spec), legs, logDevice };
  } catch (e) {
    await acquisitions.releaseAll();
    throw e;
  }
}

async function releasePrepared(t: PreparedTable): Promise<void> {
  const refs = [...t.legs, ...(t.logDevice ? [t.logDevice] : [])];
  t.legs.length = 0;
  t.logDevice = undefined;
  await Promise.allSettled(refs.map((l) => l.close()));
}

/** The same log: an in-place reload keeps it (and its region state). */
function sameLog(a: MirrorTableSpec, b: MirrorTableSpec): boolean {
  return (
    a.log.kind === b.log.kind &&
    a.log.device === b.log.device &&
    a.log.regionSizeSectors === b.log.regionSizeSectors &&
    a.log.clustered === b.log.clustered &&
    a.log.uuid === b.log.uuid
  );
}

function fallbackLegs(spec: TableSpec): LegState[] {
  const legs = spec.kind === 'linear' ? [spec.leg] : spec.legs;
  return legs.map((l) => ({ device: l.device, health: 'A' }));
}

/** Status params when the engine does not print its own: health unknown beyond "A". */
function fallbackStatusParams(spec: TableSpec): string {
  if (spec.kind === 'linear') return '';
  const states = spec.legs.map((l) => ({ device: l.device, health: 'U' }));
  const regions = Math.ceil(spec.lengthSectors / spec.log.regionSizeSectors);
  const logStatus = spec.log.kind === 'disk' ? `3 disk ${spec.log.device} A` : '1 core';
  return [
    String(states.length),
    ...states.map((l) => l.device),
    `0/${regions}`,
    '1',
    states.map((l) => l.health).join(''),
    logStatus,
  ].join(' ');
}

export function errorText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

async function withTimeout<T>(p: Promise<T>, ms: number, what: () => string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new ControlError('ETIMEDOUT', what())), ms);
  });
  try {
    return await Promise.race([p, timeout]);
  } finally {
    clearTimeout(timer);
  }
}
