// memory-engines.ts — test-side helpers for real mirror engines (openTable) over shared memory legs,
// coordinated by ClusterLogs on the in-memory bus: one node's view of a shared leg (optionally a path that
// fails on demand), one node's engine and its cluster log, one node's control-plane Volume over them,
// polling until a condition holds, pausing one write, holding back a member's deliveries, and seeded test
// bytes.
import { clusterLogOpener } from '../../src/cluster/log-opener.js';
import type { ClusterLog } from '../../src/cluster/cluster-log.js';
import type { MemoryBus } from '../../src/cluster/memory-bus.js';
import type { ConfigChange, Delivery, Transport, Unsubscribe } from '../../src/cluster/transport.js';
import { tableBackend } from '../../src/control/table-backend.js';
import { Volume, type TableBackend, type VolumeLimits } from '../../src/control/volumes.js';
import { ExportError } from '../../src/nbd/export.js';
import type { Leg } from '../../src/mirror/legs/leg.js';
import type { MemoryLeg } from '../../src/mirror/legs/memory.js';
import type { DirtyLog } from '../../src/mirror/log/dirty-log.js';
import type { MirrorExport } from '../../src/mirror/mirror.js';
import { openTable } from '../../src/mirror/open.js';
import { parseTable } from '../../src/mirror/table.js';

/**
 * A node's path to a shared MemoryLeg: every operation goes through `through` (which may fail or delay it);
 * close() leaves the bytes to the other nodes.
 */
export function legThrough(leg: MemoryLeg, through: <T>(op: () => Promise<T>) => Promise<T>): Leg {
  return {
    device: leg.device,
    sizeBytes: leg.sizeBytes,
    read: (t, o) => through(() => leg.read(t, o)),
    write: (d, o, f) => through(() => leg.write(d, o, f)),
    flush: () => through(() => leg.flush()),
    trim: (o, l) => through(() => leg.trim(o, l)),
    zero: (o, l, f) => through(() => leg.zero(o, l, f)),
    close: async () => undefined,
  } as Leg;
}

/** One node's view of a shared MemoryLeg; while `broken.on`, every request on this path fails with EIO. */
export function sharedLeg(leg: MemoryLeg, broken: { on: boolean } = { on: false }): Leg {
  return legThrough(leg, (op) => (broken.on ? Promise.reject(new ExportError('EIO', `${leg.device}: path failed`)) : op()));
}

/** A node's engine for `table`; openLeg gets this node's log (set before the mirror activates). */
export async function memoryNode(
  bus: MemoryBus,
  nodeId: number,
  table: string,
  openLeg: (device: string, log: () => DirtyLog | undefined) => Leg,
  transport: () => Transport = () => bus.connect(nodeId),
): Promise<{ exp: MirrorExport; log: ClusterLog }> {
  let log: DirtyLog | undefined;
  const opener = clusterLogOpener({ transport });
  const exp = (await openTable(parseTable(table), {
    openLeg: async (d) => openLeg(d, () => log),
    openLog: async (s, ctx) => (log = await opener(s, ctx)),
  })) as MirrorExport;
  return { exp, log: log as ClusterLog };
}

/**
 * Node `nodeId`'s control-plane Volume ('volume') on `table`: every device is a shared memory leg, the log a
 * ClusterLog on the bus (log() returns the one live now).
 */
export async function memoryVolume(
  bus: MemoryBus,
  nodeId: number,
  table: string,
  legs: ReadonlyMap<string, MemoryLeg>,
  limits: Partial<VolumeLimits> = {},
): Promise<{ v: Volume; log: () => ClusterLog }> {
  let log: ClusterLog | undefined;
  const opener = clusterLogOpener({ transport: () => bus.connect(nodeId) });
  const backend: TableBackend = {
    ...tableBackend({ openTable: { openLog: async (s, ctx) => (log = (await opener(s, ctx)) as ClusterLog) } }),
    openDevice: async (device) => {
      const leg = legs.get(device);
      if (leg === undefined) throw new Error(`${device}: no such device on node ${nodeId}`);
      return sharedLeg(leg);
    },
  };
  const v = await Volume.create('volume', table, backend, limits);
  return { v, log: () => log! };
}

/** Polls cond every 2 ms; throws after ms. */
export async function until(cond: () => boolean, ms: number, what: string): Promise<void> {
  const t0 = Date.now();
  while (!cond()) {
    if (Date.now() - t0 > ms) throw new Error(`${what}: not within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

/**
 * Pauses one write: once armed, the first write into [fromBytes, toBytes) on any leg it wrapped waits until
 * letGo() (the pause disarms itself, so later writes pass).
 */
export class LegWritePause {
  armed = false;
  paused = false;
  private go: (() => void) | null = null;
  constructor(
    private readonly fromBytes: number,
    private readonly toBytes: number,
  ) {}
  wrap(leg: Leg): Leg {
    const write = leg.write.bind(leg);
    leg.write = async (d, o, f) => {
      if (this.armed && o < this.toBytes && o + d.length > this.fromBytes) {
        this.armed = false;
        this.paused = true;
        await new Promise<void>((res) => (this.go = res));
      }
      return write(d, o, f);
    };
    return leg;
  }
  letGo(): void {
    this.armed = false;
    this.go?.();
    this.go = null;
  }
}

/** Bytes that differ for every seed and along a region (so a misplaced or stale piece shows). */
export function seededBytes(seed: number, bytes: number): Buffer {
  const b = Buffer.alloc(bytes);
  for (let i = 0; i < bytes; i++) b[i] = (seed * 131 + i * 7 + (i >> 9)) & 0xff;
  return b;
}

/** A member whose deliveries and configuration changes can be held back (kept in order) and let go later. */
export class HoldableTransport implements Transport {
  private held = false;
  private readonly queue: Array<() => void> = [];
  constructor(private readonly inner: Transport) {}
  get localNodeId(): number {
    return this.inner.localNodeId;
  }
  get localPid(): number {
    return this.inner.localPid;
  }
  get messageBytesMax(): number {
    return this.inner.messageBytesMax;
  }
  join(group: string): Promise<void> {
    return this.inner.join(group);
  }
  mcast(payload: Uint8Array): Promise<void> {
    return this.inner.mcast(payload);
  }
  onDeliver(fn: (d: Delivery) => void): Unsubscribe {
    return this.inner.onDeliver((d) => this.pass(() => fn(d)));
  }
  onConfigChange(fn: (c: ConfigChange) => void): Unsubscribe {
    return this.inner.onConfigChange((c) => this.pass(() => fn(c)));
  }
  onLost(fn: (err: Error) => void): Unsubscribe {
    return this.inner.onLost(fn);
  }
  close(): Promise<void> {
    return this.inner.close();
  }
  hold(): void {
    this.held = true;
  }
  release(): void {
    // Events arriving while the queue is replayed join its end (held stays true until it is empty).
    while (this.queue.length > 0) this.queue.shift()!();
    this.held = false;
  }
  private pass(f: () => void): void {
    if (this.held) this.queue.push(f);
    else f();
  }
}
