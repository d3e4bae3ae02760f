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
import type { TableSpec } from '../mirror/table.js';
import { formatTable } from '../mirror/table.js';
import { SECTOR_BYTES } from '../units.js';
import { ControlError } from './control-error.js';
import { engineFeatures, engineOf, type EngineEvent, type LegState } from './engine.js';
import { LegAcquisitions, LegPool, legKey } from './leg-pool.js';
import { VolumeExport, type VolumeExportLimits } from './volume-export.js';

/** Anything with emit(name, payload) (the mirror's MirrorEventSink). */
export interface EventSink {
  emit(name: string, payload: unknown): unknown;
}

/**
 * Opens a leg (or the log device) through the volume's pool: `open` is called only when no table of the
 * volume holds that device at that offset yet.
 */
export type LegSharer = (device: string, offsetBytes: number, open: () => Promise<Leg>) => Promise<Leg>;

export interface OpenContext {
  readonly events: EventSink;
  readonly shareLeg: LegSharer;
  /**
   * true for a reload: build the export but do not activate it (no log resume, no resync) until the
   * controller calls its activate() on resume, once the old table is closed.
   */
  readonly deferActivation: boolean;
}

/** Binds the control plane to the table parser and opener (src/mirror); table-backend.ts is the real one. */
export interface TableBackend {
  /** Pure; throws an Error whose message names the bad token. */
  parse(line: string): TableSpec;
  /** Open the table's legs (through shareLeg) and build its export; events go to `events`. */
  open(spec: TableSpec, ctx: OpenContext): Promise<Export>;
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

interface LoadedTable {
  readonly spec: TableSpec;
  readonly line: string;
  readonly export: Export;
  readonly sink: TableSink;
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

export class Volume extends EventEmitter {
  readonly proxy: VolumeExport;
  private live: LoadedTable;
  private inactive: LoadedTable | undefined;
  private suspended = false;
  private eventCounter = 0;
  private readonly ops = new OpQueue();
  private readonly pool: LegPool;
  private closed = false;
  /** Set by the server glue when it can count connections per export. */
  openCountFn: (() => number) | undefined;

  private constructor(
    readonly name: string,
    live: LoadedTable,
    pool: LegPool,
    private readonly backend: TableBackend,
    private readonly limits: VolumeLimits,
  ) {
    super();
    this.live = live;
    this.pool = pool;
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
    const table = await openOrRefuse(backend, pool, spec, false);
    return new Volume(name, table, pool, backend, { ...DEFAULT_VOLUME_LIMITS, ...limits });
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

  // ---------------------------------------------------------------- queries

  /** dmsetup status line: `<start> <length> <target> <params>`. */
  status(): string {
    const spec = this.live.spec;
    const head = `${spec.startSectors} ${spec.lengthSectors} ${spec.kind}`;
    const engine = engineOf(this.live.export);
    const params = engine.statusParams?.() ?? fallbackStatusParams(spec, engine.legs?.());
    return params.length > 0 ? `${head} ${params}` : head;
  }

  /** dmsetup table line (the live table, normalized). */
  table(which: 'live' | 'inactive' = 'live'): string | null {
    const t = which === 'live' ? this.live : this.inactive;
    return t === undefined ? null : formatTable(t.spec);
  }

  legs(): readonly LegState[] {
    const engine = engineOf(this.live.export);
    return engine.legs?.() ?? fallbackLegs(this.live.spec);
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
      heldWrites: engine.heldWriteCount?.() ?? 0,
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
        () => finish(() => reject(new ControlError('ETIMEDOUT', `no event after ${after} within ${limitMs} ms`))),
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
   * with EIO; returns once nothing is in flight. noflush: held writes stay held (for a reload to pick up);
   * returns once only held writes are in flight. Suspending a suspended volume is a no-op.
   */
  suspend(opts: { noflush: boolean }): Promise<void> {
    return this.ops.run(() => this.suspendNow(opts));
  }

  /**
   * dm resume. With an inactive table: swap it in (suspending first, flushing, if the volume is active),
   * hand the old table's held writes and region state to it, re-issue held writes, then release queued
   * requests. Without one: resume the live table (held writes are re-issued to it by the engine).
   */
  resume(): Promise<{ swapped: boolean; heldWritesReissued: number }> {
    return this.ops.run(() => this.resumeNow());
  }

  /**
   * dm load (dmsetup reload): parse, check the size, open the new legs (sharing the live table's open legs
   * for the same device and offset) and keep the result as the inactive table; it goes live on resume.
   * Refused, with nothing changed: a table that does not parse, changes the size, or names a leg that
   * cannot be opened. A second reload replaces the inactive table.
   */
  reload(line: string): Promise<{ table: string }> {
    return this.ops.run(async () => {
      this.assertOpen();
      const spec = parseOrRefuse(this.backend, line);
      const liveLen = this.live.spec.lengthSectors;
      if (spec.lengthSectors !== liveLen) {
        throw new ControlError(
          'ESIZE',
          `table length ${spec.lengthSectors} sectors differs from the live table's ${liveLen} sectors: resizing is not supported`,
        );
      }
      const table = await openOrRefuse(this.backend, this.pool, spec, true);
      const previous = this.inactive;
      this.inactive = table;
      if (previous !== undefined) await closeTable(previous);
      this.record('reload', { table: table.line, replacedInactive: previous !== undefined }, false);
      return { table: table.line };
    });
  }

  /** dmsetup clear: drop the inactive table. */
  clear(): Promise<void> {
    return this.ops.run(async () => {
      this.assertOpen();
      const t = this.inactive;
      if (t === undefined) return;
      this.inactive = undefined;
      await closeTable(t);
      this.record('clear', {}, false);
    });
  }

  /** dmsetup message: passed to the engine; the answer text (may be empty). */
  message(argv: readonly string[]): Promise<string> {
    return this.ops.run(async () => {
      this.assertOpen();
      if (argv.length === 0) throw new ControlError('EINVAL', 'message: empty message');
      const engine = engineOf(this.live.export);
      if (engine.message === undefined) {
        throw new ControlError('ENOTSUP', `message: the ${this.live.spec.kind} target of "${this.name}" takes no messages`);
      }
      let answer: string;
      try {
        answer = await engine.message(argv);
      } catch (e) {
        throw new ControlError('EINVAL', `message "${argv.join(' ')}": ${errorText(e)}`);
      }
      this.record('message', { message: argv.join(' '), answer }, false);
      return answer;
    });
  }

  /** Server shutdown: answer queued requests, close both tables. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.proxy.shutdown();
    this.emit('closed');
    await this.ops.run(async () => {
      const tables = [this.inactive, this.live].filter((t): t is LoadedTable => t !== undefined);
      this.inactive = undefined;
      for (const t of tables) await closeTable(t);
    });
  }

  // ---------------------------------------------------------------- internals

  private async suspendNow(opts: { noflush: boolean }): Promise<void> {
    this.assertOpen();
    if (this.suspended) return;
    const engine = engineOf(this.live.export);
    this.suspended = true;
    try {
      const draining = this.proxy.suspend(
        opts.noflush ? (n) => n <= (engine.heldWriteCount?.() ?? 0) : 'all',
      );
      // The engine's own suspend decides what happens to held writes (EIO when flushing).
      const engineSuspended = engine.suspend?.({ noflush: opts.noflush });
      await withTimeout(
        Promise.all([draining, engineSuspended]),
        this.limits.suspendTimeoutMs,
        () => `suspend: ${this.proxy.inFlightCount} requests still in flight after ${this.limits.suspendTimeoutMs} ms`,
      );
    } catch (e) {
      // Give up: reopen the gate so clients are not stuck behind a suspend nobody completed.
      this.suspended = false;
      await engine.resume?.().catch(() => undefined);
      this.proxy.resume();
      throw e instanceof ControlError ? e : new ControlError('EIO', `suspend failed: ${errorText(e)}`);
    }
    this.record('suspend', { noflush: opts.noflush, heldWrites: engine.heldWriteCount?.() ?? 0 }, false);
  }

  private async resumeNow(): Promise<{ swapped: boolean; heldWritesReissued: number }> {
    this.assertOpen();
    const next = this.inactive;
    if (next === undefined) {
      if (!this.suspended) return { swapped: false, heldWritesReissued: 0 };
      const engine = engineOf(this.live.export);
      const held = engine.heldWriteCount?.() ?? 0;
      await engine.resume?.();
      this.suspended = false;
      this.proxy.resume();
      this.record('resume', { swapped: false, heldWrites: held }, false);
      return { swapped: false, heldWritesReissued: 0 };
    }
    // dm: resuming with an inactive table suspends (flushing) first if the device is active.
    if (!this.suspended) await this.suspendNow({ noflush: false });

    const old = this.live;
    const oldEngine = engineOf(old.export);
    const newEngine = engineOf(next.export);
    // 1. Take the held writes out of the old table and hand its region state to the new one (memory).
    const held = oldEngine.takeHeldWrites?.() ?? [];
    newEngine.adoptStateFrom?.(old.export);
    // 2. Close the old table before the new one activates: its log is persisted and released first, so
    //    the new table's log reads the final state. Shared legs stay open (pool references).
    this.inactive = undefined;
    this.live = next;
    old.sink.listener = undefined;
    this.attach(next);
    await closeTable(old).catch((e: unknown) => this.record('close-error', { table: old.line, message: errorText(e) }, false));
    // 3. Activate the new table (deferred at reload: it must not resync while the old one is live).
    try {
      await newEngine.activate?.();
    } catch (e) {
      const err = new ControlError('EIO', `resume: the new table failed to activate: ${errorText(e)}`);
      for (const h of held) h.settle(err);
      this.record('resume-failed', { table: next.line, message: err.message, heldWritesFailed: held.length }, false);
      throw err;
    }
    this.proxy.retarget(next.export);
    // 4. Held writes first, in the order they were held, then whatever queued during the suspend.
    for (const h of held) {
      next.export.write(h.data, h.offsetBytes, h.flags).then(
        () => h.settle(),
        (e: unknown) => h.settle(e instanceof Error ? e : new Error(String(e))),
      );
    }
    this.suspended = false;
    this.proxy.resume();
    this.record('resume', { swapped: true, table: next.line, heldWritesReissued: held.length }, false);
    return { swapped: true, heldWritesReissued: held.length };
  }

  private attach(t: LoadedTable): void {
    t.sink.listener = (kind, payload) => {
      if (this.live !== t) return; // only the live table's events count
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

  add(v: Volume): void {
    assert.ok(!this.byName.has(v.name), `duplicate volume ${v.name}`);
    this.byName.set(v.name, v);
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

async function openOrRefuse(
  backend: TableBackend,
  pool: LegPool,
  spec: TableSpec,
  deferActivation: boolean,
): Promise<LoadedTable> {
  const acquisitions = new LegAcquisitions(pool);
  const sink = new TableSink();
  const shareLeg: LegSharer = (device, offsetBytes, open) =>
    acquisitions.acquire(legKey(device, offsetBytes), async () => {
      try {
        return await open();
      } catch (e) {
        throw new ControlError('ENODEV', `cannot open ${device}: ${errorText(e)}`);
      }
    });
  let exp: Export;
  try {
    exp = await backend.open(spec, { events: sink, shareLeg, deferActivation });
  } catch (e) {
    await acquisitions.releaseAll();
    if (e instanceof ControlError) throw e;
    throw new ControlError('ENODEV', `cannot open table: ${errorText(e)}`);
  }
  return { spec, line: formatTable(spec), export: exp, sink };
}

async function closeTable(t: LoadedTable): Promise<void> {
  t.sink.listener = undefined;
  await t.export.close();
}

function fallbackLegs(spec: TableSpec): LegState[] {
  const legs = spec.kind === 'linear' ? [spec.leg] : spec.legs;
  return legs.map((l) => ({ device: l.device, health: 'A' as const }));
}

/** Status params when the engine does not print its own: health unknown beyond "A". */
function fallbackStatusParams(spec: TableSpec, legs: readonly LegState[] | undefined): string {
  if (spec.kind === 'linear') return '';
  const states = legs ?? spec.legs.map((l) => ({ device: l.device, health: 'U' as const }));
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
