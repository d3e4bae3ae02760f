// serve-node.ts — test-side helpers for `nbd-mirror serve` running inside a cluster node's namespace:
// start (ready = pid file), kill -9 / SIGTERM by PID, dm status and resync bytes (/metrics inside the
// namespace) per node, its control event stream, a writer that records which writes were acknowledged,
// the read-back check, and the exact-resync check after a node died (expectDepartureResynced); the common
// set-up of a serve test file (serveTestUnavailable, ServeCluster: corosync up, data dir, leg files, an
// optional nbdkit error leg, the nodes, and their teardown).
// NBDM_SERVE_LOG_DIR=DIR keeps every serve's log (debug level) in DIR/<namespace prefix>-n<node>.log, for
// chasing a failure that only happens under load.
import { spawn, type ChildProcess } from 'node:child_process';
import { appendFileSync, existsSync, mkdirSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { expect } from 'vitest';
import type { NodeLeftEvent, NodeResyncedEvent } from '../../src/cluster/cluster-log.js';
import { parseRangeText } from '../../src/cluster/departures.js';
import { ControlClient } from '../../src/control/client.js';
import { NbdClient } from '../../src/nbd/client/client.js';
import { run } from '../helpers/run.js';
import { sleep, within } from '../helpers/time.js';
import { CLI_PATH } from '../helpers/server.js';
import { findTool } from '../helpers/tools.js';
import { startNbdkitErrorLeg, type NbdkitLeg } from '../control/nbdkit-leg.js';
import { ADDON, clusterUnavailableReason, Harness, now } from './harness.js';

const READY_MS = 30_000;

export { sleep, within };

export function pattern(tag: number, bytes: number): Buffer {
  const b = Buffer.alloc(bytes);
  for (let i = 0; i < bytes; i += 4) b.writeUInt32LE((tag * 2654435761 + i) >>> 0, i);
  return b;
}

export class Node {
  child: ChildProcess | undefined;
  output = '';
  exited = true;
  constructor(
    readonly h: Harness,
    readonly n: number,
    readonly dir: string,
    readonly table: string,
    readonly dashboardPort: number,
    /** More `serve` arguments (e.g. --repair-policy allocate --spare DEV). */
    readonly extraArgs: readonly string[] = [],
  ) {}
  get sock(): string {
    return path.join(this.dir, `n${this.n}.sock`);
  }
  get ctl(): string {
    return path.join(this.dir, `n${this.n}.ctl`);
  }
  get uri(): string {
    return `nbd+unix:///volume?socket=${this.sock}`;
  }
  async start(): Promise<number> {
    const t0 = now();
    const pidFile = path.join(this.dir, `n${this.n}.pid`);
    const table = this.table;
    const logDir = process.env.NBDM_SERVE_LOG_DIR;
    const args = ['serve', '--listen', `unix:${this.sock}`, '--pid-file', pidFile, '--control', this.ctl, '--dashboard', String(this.dashboardPort), '--table', table, '--name', 'volume', '--quiet', ...(logDir ? ['--log-level', 'debug'] : []), ...this.extraArgs];
    this.output = '';
    this.exited = false;
    const child = spawn('ip', ['netns', 'exec', `${this.h.prefix}-n${this.n}`, process.execPath, CLI_PATH, ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, NBD_MIRROR_CPG_ADDON: ADDON },
    });
    this.child = child;
    if (logDir) mkdirSync(logDir, { recursive: true });
    const logFile = logDir ? path.join(logDir, `${this.h.prefix}-n${this.n}.log`) : undefined;
    const collect = (b: Buffer) => {
      this.output = (this.output + b.toString()).slice(-16384);
      if (logFile) appendFileSync(logFile, b);
    };
    child.stdout!.on('data', collect);
    child.stderr!.on('data', collect);
    child.on('exit', () => (this.exited = true));
    while (!existsSync(pidFile) || (await readFile(pidFile, 'utf8')).trim() !== String(child.pid)) {
      if (this.exited) throw new Error(`node ${this.n} serve exited: ${this.output}`);
      if (now() - t0 > READY_MS) throw new Error(`node ${this.n} serve not ready: ${this.output}`);
      await sleep(50);
    }
    return now() - t0;
  }
  async kill9(): Promise<void> {
    if (!this.child || this.exited) return;
    const gone = new Promise((r) => this.child!.once('exit', r));
    process.kill(this.child.pid!, 'SIGKILL');
    await gone;
  }
  async stop(): Promise<void> {
    if (!this.child || this.exited) return;
    const gone = new Promise((r) => this.child!.once('exit', r));
    process.kill(this.child.pid!, 'SIGTERM');
    await within(gone, 20_000, `node ${this.n} SIGTERM`).catch(async () => this.kill9());
  }
  async status(): Promise<{ inSync: number; regions: number; raw: string }> {
    const r = await run(process.execPath, [CLI_PATH, 'status', 'volume', '--control', this.ctl, '--json']);
    const raw = (JSON.parse(r.stdout) as { status: string }).status;
    const t = raw.trim().split(/\s+/);
    const [a, b] = t[4 + Number(t[3])]!.split('/').map(Number);
    return { inSync: a!, regions: b!, raw };
  }
  /** Follows this node's control event stream from now on (close() it). */
  async watchEvents(): Promise<EventWatch> {
    const events: WatchedEvent[] = [];
    let wake: (() => void) | undefined;
    const ws = await new ControlClient({ kind: 'unix', path: this.ctl }).events('volume', (ev) => {
      if (ev.kind === 'hello') return;
      events.push(ev as unknown as WatchedEvent);
      wake?.();
    });
    return {
      events,
      close: () => ws.terminate(),
      waitFor: async (kind, pred = () => true, ms = 30_000) => {
        const t0 = now();
        for (;;) {
          const hit = events.find((e) => e.kind === kind && pred(e.data));
          if (hit) return hit.data;
          if (now() - t0 > ms) throw new Error(`node ${this.n}: no ${kind} event in ${ms} ms (got: ${events.map((e) => e.kind).join(' ')})`);
          await new Promise<void>((r) => {
            wake = r;
            setTimeout(r, 200);
          });
        }
      },
    };
  }
  /** Resync bytes copied by this node's engine (nbd_mirror_resync_bytes_total from its /metrics). */
  async resyncBytes(): Promise<number> {
    const r = await run('ip', ['netns', 'exec', `${this.h.prefix}-n${this.n}`, 'curl', '-sf', `http://127.0.0.1:${this.dashboardPort}/metrics`]);
    const m = /^nbd_mirror_resync_bytes_total\{[^}]*\} (\d+)/m.exec(r.stdout);
    if (!m) throw new Error(`no resync metric from node ${this.n}`);
    return Number(m[1]);
  }
}

/** Writes 64 KiB blocks (each + flush) into [offset, offset+len) through uri until stopped; records the acked. */
export function writer(uri: string, offsetBytes: number, lengthBytes: number, tag: number) {
  const acked: number[] = [];
  let stop = false;
  let error: unknown;
  const BLOCK = 64 * 1024;
  const done = (async () => {
    const c = await NbdClient.connect(uri);
    try {
      for (let i = 0; !stop; i = (i + 7) % (lengthBytes / BLOCK)) {
        const off = offsetBytes + i * BLOCK;
        await c.write(pattern(tag * 100000 + i, BLOCK), off, { fua: false });
        await c.flush();
        acked.push(i);
      }
    } catch (e) {
      error = e;
    } finally {
      await c.close().catch(() => undefined);
    }
  })();
  return {
    acked,
    block: BLOCK,
    stop: async () => {
      stop = true;
      await done;
    },
    done,
    get error() {
      return error;
    },
  };
}

/**
 * Arm a leg's fault while `ws` write through `nodes`, wait until every node's status shows leg `legIndex`
 * no longer A (D on its own writes, or S when the failure hit the resync of a region another node's failed
 * write put out of sync), then check that the writes are held, not failed: no writer saw an error, and none
 * advanced past the write in flight at the failure. Returns the ms from arming to every node noticing.
 */
export async function failLegExpectHeld(
  nodes: readonly Node[],
  ws: readonly ReturnType<typeof writer>[],
  arm: () => Promise<void>,
  legIndex: number,
  detectMs: number,
): Promise<number> {
  const tFail = now();
  await arm();
  await Promise.all(
    nodes.map(async (n) => {
      for (;;) {
        const s = await n.status();
        const t = s.raw.trim().split(/\s+/);
        const health = t[6 + Number(t[3])]!;
        if (health[legIndex] !== 'A') return;
        if (now() - tFail > detectMs) throw new Error(`node ${n.n} did not fail the leg: ${s.raw}`);
        await sleep(50);
      }
    }),
  );
  const detectedMs = now() - tFail;
  const acksAtFailure = ws.map((w) => w.acked.length);
  await sleep(500);
  for (const w of ws) expect(w.error).toBeUndefined();
  const held = ws.map((w, i) => w.acked.length - acksAtFailure[i]!);
  expect(held.every((x) => x <= 1)).toBe(true);
  return detectedMs;
}

/**
 * After a repair that left two legs: writes go on through every node (each writer acks more within 1 s),
 * no writer saw an error, all nodes reach in sync on 2 legs, every acked block of writer i (slice i, tag
 * tagBase+i) reads back through the next node, and the two leg files are identical.
 */
export async function expectRepairedTwoLegs(nodes: readonly Node[], ws: readonly ReturnType<typeof writer>[], sliceBytes: number, tagBase: number, files: readonly string[]): Promise<void> {
  const after = ws.map((w) => w.acked.length);
  await sleep(1000);
  ws.forEach((w, i) => expect(w.acked.length, `node ${i + 1} writes after repair`).toBeGreaterThan(after[i]!));
  for (const w of ws) await w.stop();
  for (const w of ws) expect(w.error).toBeUndefined();
  await waitAllInSync([...nodes], 30_000);
  for (const n of nodes) {
    const s = await n.status();
    expect(s.raw).toContain(' 2 '); // two legs left
  }
  for (let i = 0; i < ws.length; i++) await checkAcked(nodes[(i + 1) % nodes.length]!.uri, i * sliceBytes, ws[i]!.acked, ws[i]!.block, tagBase + i);
  await run('cmp', [files[0]!, files[1]!]);
}

/** Reads back every acked block (the last write of each block index) through uri. */
export async function checkAcked(uri: string, offsetBytes: number, acked: number[], block: number, tag: number): Promise<number> {
  const c = await NbdClient.connect(uri);
  try {
    const seen = new Set(acked);
    for (const i of seen) {
      const got = Buffer.alloc(block);
      await c.read(got, offsetBytes + i * block);
      expect(got.equals(pattern(tag * 100000 + i, block)), `block ${i}`).toBe(true);
    }
    return seen.size;
  } finally {
    await c.close();
  }
}

export async function waitAllInSync(nodes: Node[], ms: number): Promise<number> {
  const t0 = now();
  for (;;) {
    const s = await Promise.all(nodes.map((n) => n.status()));
    if (s.every((x) => x.inSync === x.regions)) return now() - t0;
    if (now() - t0 > ms) throw new Error(`not in sync: ${s.map((x) => x.raw).join(' | ')}`);
    await sleep(100);
  }
}


export interface WatchedEvent {
  kind: string;
  time: string;
  data: Record<string, unknown>;
}
export interface EventWatch {
  readonly events: WatchedEvent[];
  waitFor(kind: string, pred?: (data: Record<string, unknown>) => boolean, ms?: number): Promise<Record<string, unknown>>;
  close(): void;
}

export interface DepartureFigures {
  /** Regions that went out of sync because the node left (its in-sync marks). */
  regions: number[];
  bytes: number;
  /** Survivor node number -> bytes its engine copied since `resyncBefore` (= its recoveredHere bytes). */
  copiedBytes: Map<number, number>;
  /** From the membership change to the last region in sync (as the first survivor measured it). */
  resyncMs: number;
  left: NodeLeftEvent;
}

/**
 * After node `deadNodeId` died: every survivor reported the same regions left out of sync
 * (cluster-node-left), the same regions recovered since (cluster-node-resynced = exactly that set, plus a
 * released recovery claim if it held one), the survivors' recoveredHere parts are disjoint and cover the
 * set, and each survivor's engine copied exactly its part (resync byte counter since `resyncBefore`):
 * nothing else was resynced.
 */
export async function expectDepartureResynced(
  survivors: readonly { node: Node; watch: EventWatch; resyncBefore: number }[],
  deadNodeId: number,
  ms = 60_000,
): Promise<DepartureFigures> {
  const isDead = (d: Record<string, unknown>) => d.nodeId === deadNodeId;
  const lefts = await Promise.all(survivors.map((s) => s.watch.waitFor('cluster-node-left', isDead, ms)));
  const resynced = await Promise.all(survivors.map((s) => s.watch.waitFor('cluster-node-resynced', isDead, ms)));
  const left = lefts[0] as unknown as NodeLeftEvent;
  for (const l of lefts) expect(l, 'every survivor reports the same departure').toEqual(left);
  const regions = parseRangeText(left.regions);
  expect(regions.length).toBe(left.regionCount);
  const expected = [...new Set([...regions, ...(left.released === null ? [] : [left.released])])].sort((a, b) => a - b);
  const here: number[] = [];
  const copiedBytes = new Map<number, number>();
  for (let i = 0; i < survivors.length; i++) {
    const r = resynced[i] as unknown as NodeResyncedEvent;
    expect(parseRangeText(r.regions), `node ${survivors[i]!.node.n}: recovered set`).toEqual(expected);
    here.push(...parseRangeText(r.recoveredHere));
    const copied = (await survivors[i]!.node.resyncBytes()) - survivors[i]!.resyncBefore;
    copiedBytes.set(survivors[i]!.node.n, copied);
    expect(copied, `node ${survivors[i]!.node.n}: bytes its engine resynced = its recoveredHere bytes`).toBe(r.recoveredHereBytes);
  }
  expect(here.sort((a, b) => a - b), 'the survivors recovered each region once, all of them').toEqual(expected);
  return { regions, bytes: left.bytes, copiedBytes, resyncMs: (resynced[0] as unknown as NodeResyncedEvent).ms, left };
}

/**
 * Why a serve test on a corosync cluster cannot run here (no corosync, or a tool of `tools` missing), or
 * undefined. Under CI=true that is an error: the tests must not skip there.
 */
export async function serveTestUnavailable(tools: readonly string[], what = 'cluster tests'): Promise<string | undefined> {
  const reason =
    (await clusterUnavailableReason()) ??
    (tools.length > 0 && tools.some((t) => !findTool(t)) ? `${tools.filter((t) => !findTool(t)).join(', ')} missing (apt-get install ${tools.join(' ')})` : undefined);
  if (reason && process.env.CI === 'true') throw new Error(`${what} cannot run under CI: ${reason}`);
  return reason;
}

export interface ServeClusterOptions {
  /** Harness tag (namespace prefix). */
  readonly tag: string;
  readonly nodes: number;
  readonly tokenMs: number;
  /** Size of each leg file (and of the nbdkit error leg). */
  readonly sizeBytes: number;
  /** Sparse leg files leg0.img, leg1.img, ... in the data dir. */
  readonly legFiles: number;
  /** Also an nbdkit error-filter leg ('bad', armed by its trigger file). */
  readonly errorLeg?: boolean;
}

/** One test file's cluster: corosync on `nodes` namespaces, a data dir with the legs, the serve nodes. */
export class ServeCluster {
  readonly nodes: Node[] = [];
  private constructor(
    readonly h: Harness,
    readonly dir: string,
    readonly files: string[],
    readonly bad: NbdkitLeg | undefined,
    /** corosync start until every node is quorate. */
    readonly corosyncUpMs: number,
  ) {}

  static async start(o: ServeClusterOptions): Promise<ServeCluster> {
    const h = new Harness(o.tag);
    const dir = path.join(h.runDir, 'data');
    mkdirSync(dir);
    const files = Array.from({ length: o.legFiles }, (_, i) => path.join(dir, `leg${i}.img`));
    for (const f of files) await run('truncate', ['-s', String(o.sizeBytes), f]);
    const bad = o.errorLeg ? await startNbdkitErrorLeg(dir, 'bad', o.sizeBytes) : undefined;
    const c = new ServeCluster(h, dir, files, bad, 0);
    try {
      (c as { corosyncUpMs: number }).corosyncUpMs = await h.start(o.nodes, o.tokenMs);
    } catch (e) {
      await c.teardown();
      throw e;
    }
    return c;
  }

  /** Node objects 1..n serving `table` (not started). */
  addNodes(n: number, table: string, dashboardPort: number, extraArgs: readonly string[] = []): Node[] {
    const added = Array.from({ length: n }, (_, i) => new Node(this.h, i + 1, this.dir, table, dashboardPort, extraArgs));
    this.nodes.push(...added);
    return added;
  }

  /** addNodes, then starts them in order (node 1 first: it becomes the log server). */
  async startNodes(n: number, table: string, dashboardPort: number, extraArgs: readonly string[] = []): Promise<Node[]> {
    const added = this.addNodes(n, table, dashboardPort, extraArgs);
    for (const node of added) await node.start();
    return added;
  }

  /** Kills the nodes by PID, stops the error leg, brings the cluster down. Never throws. */
  async teardown(): Promise<void> {
    for (const n of this.nodes) await n.kill9().catch(() => undefined);
    await this.bad?.stop().catch(() => undefined);
    await this.h.teardown();
  }
}
