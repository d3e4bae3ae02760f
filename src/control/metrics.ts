// Metrics: per-export NBD I/O counters (requests, bytes, errors, latency histogram by command) and the
// Prometheus exposition of them plus the mirror state (regions in sync, held writes, leg health, resync
// bytes, log flushes, cluster membership).
//
// Owns: the counters and their exposition. The hot path (MeteredExport) only bumps plain numbers in typed
// arrays: no prom-client call, no label hashing, no allocation per request beyond the promise the
// wrapped export returns anyway. prom-client reads everything at scrape time through metric objects
// whose get() builds the values (the registry's collect-on-scrape protocol), so a scrape costs
// O(exports x commands + volumes x legs), never O(requests).
//
// prom-client is loaded when the registry is first wanted (the dashboard starting, a scrape), not when
// the module is: counting costs nothing at start-up and a serve without a dashboard never loads it.
//
// Assumes: single-threaded (no atomics needed); counters are doubles (exact up to 2^53).
import type promClient from 'prom-client';
import { SETTLED_OK, type Export, type ExportCapabilities, type Extent, type SplicePipe, type WriteFlags, type ZeroFlags } from '../nbd/export.js';
import { MirrorExport } from '../mirror/mirror.js';
import type { Volumes } from './volumes.js';
import { clusterViewOf } from './dashboard/cluster-view.js';

export const NBD_COMMANDS = ['read', 'write', 'flush', 'trim', 'zero', 'cache', 'block_status'] as const;
export type NbdCommandName = (typeof NBD_COMMANDS)[number];
const CMD = { read: 0, write: 1, flush: 2, trim: 3, zero: 4, cache: 5, block_status: 6 } as const satisfies Record<NbdCommandName, number>;
const COMMAND_COUNT = NBD_COMMANDS.length;

/** Latency histogram upper bounds, seconds (100 us .. 10 s; disks and NBD legs live in this range). */
export const LATENCY_BUCKETS_SEC: readonly number[] = [
  0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
];
const BUCKET_COUNT = LATENCY_BUCKETS_SEC.length + 1; // + the +Inf bucket
const BUCKETS_MS = LATENCY_BUCKETS_SEC.map((s) => s * 1000);

/** Plain counters of one export, indexed by command. Read by the scrape and by the dashboard sampler. */
export class IoCounters {
  readonly requests = new Float64Array(COMMAND_COUNT);
  readonly errors = new Float64Array(COMMAND_COUNT);
  readonly bytes = new Float64Array(COMMAND_COUNT);
  readonly latencySumMs = new Float64Array(COMMAND_COUNT);
  /** Non-cumulative bucket counts: [command * BUCKET_COUNT + bucket]. */
  readonly buckets = new Float64Array(COMMAND_COUNT * BUCKET_COUNT);

  record(cmd: number, lengthBytes: number, startMs: number, failed: boolean): void {
    const ms = performance.now() - startMs;
    this.requests[cmd]!++;
    if (failed) this.errors[cmd]!++;
    else this.bytes[cmd]! += lengthBytes;
    this.latencySumMs[cmd]! += ms;
    let b = 0;
    while (b < BUCKETS_MS.length && ms > BUCKETS_MS[b]!) b++;
    this.buckets[cmd * BUCKET_COUNT + b]!++;
  }

  /** Total latency-bucket counts over the given commands (dashboard percentile estimate). */
  bucketTotals(commands: readonly NbdCommandName[]): Float64Array {
    const out = new Float64Array(BUCKET_COUNT);
    for (const c of commands) {
      const base = CMD[c] * BUCKET_COUNT;
      for (let b = 0; b < BUCKET_COUNT; b++) out[b]! += this.buckets[base + b]!;
    }
    return out;
  }
}

/** Upper bound (ms) of the bucket holding quantile q of the counts; null without samples. */
export function bucketQuantileMs(counts: Float64Array, q: number): number | null {
  let total = 0;
  for (const c of counts) total += c;
  if (total === 0) return null;
  const rank = q * total;
  let seen = 0;
  for (let b = 0; b < counts.length; b++) {
    seen += counts[b]!;
    if (seen >= rank) return b < BUCKETS_MS.length ? BUCKETS_MS[b]! : Infinity;
  }
  return Infinity;
}

/**
 * Counts every request of one export. A pass-through: flags and errors are the inner export's own.
 * One performance.now() before and one after; the rest is typed-array arithmetic.
 */
export class MeteredExport implements Export {
  constructor(
    private readonly inner: Export,
    readonly counters: IoCounters,
  ) {}

  capabilities(): ExportCapabilities {
    return this.inner.capabilities();
  }
  read(target: Buffer, offsetBytes: number): Promise<void> {
    const start = performance.now();
    return this.track(CMD.read, target.length, start, this.inner.read(target, offsetBytes));
  }
  /** A spliced READ is counted and timed here (its fill is the export's whole part); a declined one by read(). */
  spliceRead(pipe: SplicePipe, offsetBytes: number, lengthBytes: number): boolean {
    const inner = this.inner;
    if (inner.spliceRead === undefined) return false;
    const start = performance.now();
    if (!inner.spliceRead(pipe, offsetBytes, lengthBytes)) return false;
    this.counters.record(CMD.read, lengthBytes, start, false);
    return true;
  }
  write(data: Buffer, offsetBytes: number, flags: WriteFlags): Promise<void> {
    const start = performance.now();
    return this.track(CMD.write, data.length, start, this.inner.write(data, offsetBytes, flags));
  }
  flush(): Promise<void> {
    const start = performance.now();
    return this.track(CMD.flush, 0, start, this.inner.flush());
  }
  trim(offsetBytes: number, lengthBytes: number, flags: WriteFlags): Promise<void> {
    const start = performance.now();
    return this.track(CMD.trim, lengthBytes, start, this.inner.trim(offsetBytes, lengthBytes, flags));
  }
  zero(offsetBytes: number, lengthBytes: number, flags: ZeroFlags): Promise<void> {
    const start = performance.now();
    return this.track(CMD.zero, lengthBytes, start, this.inner.zero(offsetBytes, lengthBytes, flags));
  }
  cache(offsetBytes: number, lengthBytes: number): Promise<void> {
    const start = performance.now();
    return this.track(CMD.cache, lengthBytes, start, this.inner.cache(offsetBytes, lengthBytes));
  }
  blockStatus(offsetBytes: number, lengthBytes: number): Promise<Extent[]> {
    const start = performance.now();
    const c = this.counters;
    return this.inner.blockStatus(offsetBytes, lengthBytes).then(
      (r) => {
        c.record(CMD.block_status, 0, start, false);
        return r;
      },
      (e: unknown) => {
        c.record(CMD.block_status, 0, start, true);
        throw e;
      },
    );
  }
  close(): Promise<void> {
    return this.inner.close();
  }

  /** start: taken before the inner call, whose synchronous part (page-cached legs) is most of a request. */
  private track(cmd: number, lengthBytes: number, start: number, p: Promise<void>): Promise<void> {
    const c = this.counters;
    if (p === SETTLED_OK) {
      // Completed before returning: counted now and passed on, so the server answers at once (export.ts).
      c.record(cmd, lengthBytes, start, false);
      return p;
    }
    return p.then(
      () => c.record(cmd, lengthBytes, start, false),
      (e: unknown) => {
        c.record(cmd, lengthBytes, start, true);
        throw e;
      },
    );
  }
}

interface MetricValue {
  value: number;
  labels?: Record<string, string | number>;
  metricName?: string;
}

/** A metric whose values are computed at scrape time (prom-client's registerMetric protocol). */
class ScrapeMetric {
  constructor(
    readonly name: string,
    readonly help: string,
    readonly type: 'counter' | 'gauge' | 'histogram',
    private readonly values: () => MetricValue[],
  ) {}
  get(): { name: string; help: string; type: string; values: MetricValue[]; aggregator: string } {
    return { name: this.name, help: this.help, type: this.type, values: this.values(), aggregator: 'sum' };
  }
}

/** Leg health chars dm-raid1 prints; a gauge per leg and char (1 for the current one). */
const HEALTH_CHARS = ['A', 'F', 'D', 'S', 'R', 'U'] as const;

/** The process's metrics: I/O counters per export, mirror state read from the volumes at scrape time. */
export class Metrics {
  private registryBuilt: Promise<promClient.Registry> | undefined;
  private readonly perExport = new Map<string, IoCounters>();
  private volumes: Volumes | undefined;

  constructor(private readonly opts: { readonly node?: string } = {}) {}

  /** The prom-client registry, built on first use (the process's default metrics are collected from then on). */
  registry(): Promise<promClient.Registry> {
    this.registryBuilt ??= import('prom-client').then((m) => this.buildRegistry(m.default));
    return this.registryBuilt;
  }

  private buildRegistry(prom: typeof promClient): promClient.Registry {
    const registry = new prom.Registry();
    if (this.opts.node !== undefined) registry.setDefaultLabels({ node: this.opts.node });
    prom.collectDefaultMetrics({ register: registry, prefix: 'nbd_mirror_' });
    const reg = (name: string, help: string, type: 'counter' | 'gauge' | 'histogram', values: () => MetricValue[]) =>
      registry.registerMetric(new ScrapeMetric(name, help, type, values) as unknown as promClient.Metric);
    reg('nbd_mirror_requests_total', 'NBD requests completed, by export and command', 'counter', () => this.perCommand((c, i) => c.requests[i]!));
    reg('nbd_mirror_request_errors_total', 'NBD requests answered with an error, by export and command', 'counter', () => this.perCommand((c, i) => c.errors[i]!));
    reg('nbd_mirror_bytes_total', 'Bytes moved by successful NBD requests, by export and command', 'counter', () => this.perCommand((c, i) => c.bytes[i]!));
    reg('nbd_mirror_request_duration_seconds', 'NBD request latency (server side, request to reply), by export and command', 'histogram', () => this.histogram());
    reg('nbd_mirror_regions', 'Regions of the mirror', 'gauge', () => this.mirrors((name, s) => [{ value: s.status.regionCount, labels: { volume: name } }]));
    reg('nbd_mirror_regions_in_sync', 'Regions whose sync bit is set', 'gauge', () => this.mirrors((name, s) => [{ value: s.status.inSyncRegions, labels: { volume: name } }]));
    reg('nbd_mirror_held_writes', 'Writes held (handle_errors) until the volume is reloaded', 'gauge', () => this.mirrors((name, s) => [{ value: s.status.heldWrites, labels: { volume: name } }]));
    reg('nbd_mirror_leg_health', 'Leg health: 1 for the leg\'s current dm health char (A alive; F flush, D write, S sync, R read error; U unknown)', 'gauge', () =>
      this.mirrors((name, s) =>
        s.status.legs.flatMap((l, i) => HEALTH_CHARS.map((h) => ({ value: l.health === h ? 1 : 0, labels: { volume: name, leg: i, device: l.device, health: h } }))),
      ),
    );
    reg('nbd_mirror_resync_bytes_total', 'Bytes copied by resync since the mirror opened', 'counter', () => this.mirrors((name, s) => [{ value: s.status.resync.bytesCopied, labels: { volume: name } }]));
    reg('nbd_mirror_resync_rate_limit_bytes_per_second', 'Resync rate limit (0 = unlimited)', 'gauge', () => this.mirrors((name, s) => [{ value: s.status.resync.rateBytesPerSec, labels: { volume: name } }]));
    reg('nbd_mirror_log_flushes_total', 'Dirty-log flushes completed (group commits)', 'counter', () => this.mirrors((name, s) => [{ value: s.logFlushes, labels: { volume: name } }]));
    reg('nbd_mirror_volume_suspended', '1 while the volume is suspended', 'gauge', () =>
      (this.volumes?.list() ?? []).map((v) => ({ value: v.state === 'SUSPENDED' ? 1 : 0, labels: { volume: v.name } })),
    );
    reg('nbd_mirror_volume_events_total', 'Counted volume events (dm event_nr)', 'counter', () => (this.volumes?.list() ?? []).map((v) => ({ value: v.eventNr, labels: { volume: v.name } })));
    reg('nbd_mirror_cluster_members', 'Members of the cluster log (absent when single node)', 'gauge', () =>
      this.mirrors((name, s) => (s.cluster === null ? [] : [{ value: s.cluster.members.length, labels: { volume: name } }])),
    );
    reg('nbd_mirror_cluster_log_server', 'The cluster log server (1 on its labels; absent when single node)', 'gauge', () =>
      this.mirrors((name, s) =>
        s.cluster === null || s.cluster.server === null ? [] : [{ value: 1, labels: { volume: name, server_node: s.cluster.server.nodeId, server_pid: s.cluster.server.pid } }],
      ),
    );
    return registry;
  }

  /** The mirror state comes from these volumes at scrape time. */
  attachVolumes(volumes: Volumes): void {
    this.volumes = volumes;
  }

  /** Counters of an export (created on first use; an export name keeps its counters across reloads). */
  counters(exportName: string): IoCounters {
    let c = this.perExport.get(exportName);
    if (c === undefined) {
      c = new IoCounters();
      this.perExport.set(exportName, c);
    }
    return c;
  }

  exportNames(): string[] {
    return [...this.perExport.keys()];
  }

  /** Wrap an export so its requests are counted under `exportName`. */
  wrap(exportName: string, e: Export): Export {
    return new MeteredExport(e, this.counters(exportName));
  }

  /** The text exposition format (what GET /metrics answers). */
  async exposition(): Promise<{ contentType: string; text: string }> {
    const registry = await this.registry();
    return { contentType: registry.contentType, text: await registry.metrics() };
  }

  private perCommand(get: (c: IoCounters, i: number) => number): MetricValue[] {
    const out: MetricValue[] = [];
    for (const [name, c] of this.perExport) {
      for (let i = 0; i < COMMAND_COUNT; i++) out.push({ value: get(c, i), labels: { export: name, command: NBD_COMMANDS[i]! } });
    }
    return out;
  }

  private histogram(): MetricValue[] {
    const out: MetricValue[] = [];
    const base = 'nbd_mirror_request_duration_seconds';
    for (const [name, c] of this.perExport) {
      for (let i = 0; i < COMMAND_COUNT; i++) {
        const labels = { export: name, command: NBD_COMMANDS[i]! };
        let cumulative = 0;
        for (let b = 0; b < BUCKET_COUNT; b++) {
          cumulative += c.buckets[i * BUCKET_COUNT + b]!;
          const le = b < LATENCY_BUCKETS_SEC.length ? LATENCY_BUCKETS_SEC[b]! : '+Inf';
          out.push({ metricName: `${base}_bucket`, value: cumulative, labels: { ...labels, le } });
        }
        out.push({ metricName: `${base}_sum`, value: c.latencySumMs[i]! / 1000, labels });
        out.push({ metricName: `${base}_count`, value: c.requests[i]!, labels });
      }
    }
    return out;
  }

  private mirrors(fn: (name: string, s: MirrorSample) => MetricValue[]): MetricValue[] {
    const out: MetricValue[] = [];
    for (const v of this.volumes?.list() ?? []) {
      const s = mirrorSample(v.liveExport);
      if (s !== null) out.push(...fn(v.name, s));
    }
    return out;
  }
}

export interface MirrorSample {
  readonly status: ReturnType<MirrorExport['status']>;
  readonly logFlushes: number;
  readonly cluster: { members: { nodeId: number; pid: number }[]; server: { nodeId: number; pid: number } | null } | null;
}

/** What the metrics and the dashboard read from a mirror; null for a linear target. */
export function mirrorSample(e: Export): MirrorSample | null {
  if (!(e instanceof MirrorExport)) return null;
  return { status: e.status(), logFlushes: e.logFlushCount, cluster: clusterViewOf(e.verifyAccess().log) };
}
