// The operator's dashboard: an HTTP listener on 127.0.0.1 (never another address) serving the static page
// (static/: plain HTML, JS and CSS sent as they are, no build step), Prometheus metrics, a JSON snapshot of
// every volume, each mirror's region map as 2-bit binary, a live WebSocket feed (state once a second,
// events as they happen), and the operator's actions, which go to the control socket through the same
// ControlClient and HTTP/JSON API the CLI uses.
//
// Owns: the listener, its routes, Host/Origin checks (no DNS rebinding, no cross-site WebSocket), the
// token check for actions, the 1 s sampler (throughput/latency/resync history, HISTORY_SAMPLES deep) and
// the bounded event timeline. Reading is open on 127.0.0.1 (read-only page); acting needs the token,
// which is printed in the page URL's fragment (#token=...), never sent in a URL the server logs.
//
// Never blocks the NBD path: it reads counters and status at its own pace (batch at your own pace).
import { timingSafeEqual } from 'node:crypto';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { dirname, extname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { WebSocketServer, WebSocket } from 'ws';
import { ControlClient } from '../client.js';
import { ControlError } from '../control-error.js';
import { readJsonObject, sendJson as sendJsonReply, sendJsonError } from '../http-json.js';
import { bucketQuantileMs, mirrorSample, type IoCounters, type Metrics } from '../metrics.js';
import { planRepair } from '../repair.js';
import type { Volume, VolumeEvent, Volumes } from '../volumes.js';
// The serve options and their validation live in dashboard-options.ts (loaded at start-up; this file is
// loaded when a dashboard starts).
export { DASHBOARD_PORT_DEFAULT, addDashboardOptions, dashboardPlan, type DashboardFlags, type DashboardPlan } from './dashboard-options.js';
import { onClusterMembership, type ClusterView } from './cluster-view.js';
import { regionMapOf } from './region-map.js';

/** One sample per second, five minutes of history. */
export const SAMPLE_INTERVAL_MS = 1000;
export const HISTORY_SAMPLES = 300;
/** Events kept for the timeline (resync progress is not an event here: it is state). */
export const TIMELINE_EVENTS_MAX = 500;
export const DASHBOARD_BODY_BYTES_MAX = 16 * 1024;
/** A live-feed subscriber lagging by more than this is disconnected (it reconnects and resyncs). */
export const LIVE_BUFFERED_BYTES_MAX = 4 * 1024 * 1024;
export const LIVE_SUBSCRIBERS_MAX = 32;
/** Static files larger than this are not served (the page is a few tens of KiB). */
const STATIC_FILE_BYTES_MAX = 1024 * 1024;

const CONTENT_TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.ico': 'image/x-icon',
};

export interface DashboardOptions {
  readonly volumes: Volumes;
  readonly metrics: Metrics;
  /** The control socket the actions go to (the CLI's API). */
  readonly controlSocketPath: string;
  readonly port: number;
  readonly token: string;
  /** This node's name in the page and logs. */
  readonly node: string;
  readonly log?: { info(obj: object, msg: string): void; warn(obj: object, msg: string): void };
  /** Where index.html, app.js and style.css are (default: found next to this module or in src/). */
  readonly staticDir?: string;
}

interface Sample {
  readonly tMs: number;
  readonly readBytesPerSec: number;
  readonly writeBytesPerSec: number;
  readonly opsPerSec: number;
  readonly latencyMeanMs: number | null;
  readonly latencyP99Ms: number | null;
  readonly resyncBytesPerSec: number;
}

interface CounterMark {
  readBytes: number;
  writeBytes: number;
  ops: number;
  latencySumMs: number;
  buckets: Float64Array;
  resyncBytes: number;
  /** The export whose copy counter resyncBytes is: a table swap starts a new counter. */
  resyncSource: unknown;
}

export class Dashboard {
  private readonly server: Server;
  private readonly wss: WebSocketServer;
  private readonly subscribers = new Set<WebSocket>();
  private readonly history = new Map<string, Sample[]>();
  private readonly marks = new Map<string, CounterMark>();
  private readonly timeline: VolumeEvent[] = [];
  private readonly files = new Map<string, { type: string; body: Buffer }>();
  private readonly client: ControlClient;
  private timer: NodeJS.Timeout | undefined;
  private address: { host: string; port: number } | undefined;
  private readonly onEvent: (ev: VolumeEvent) => void;
  private readonly offCluster: () => void;
  private readonly startedAt = new Date().toISOString();

  private constructor(
    private readonly opts: DashboardOptions,
    WebSocketServerClass: typeof WebSocketServer,
  ) {
    this.client = new ControlClient({ kind: 'unix', path: opts.controlSocketPath });
    this.loadStatic(opts.staticDir ?? findStaticDir());
    this.wss = new WebSocketServerClass({ noServer: true, maxPayload: 1024 });
    this.server = createServer((req, res) => {
      this.handle(req, res).catch((e: unknown) => sendError(res, e));
    });
    this.server.on('upgrade', (req, socket, head) => {
      const url = new URL(req.url ?? '/', 'http://dashboard');
      if (!this.hostAllowed(req) || !originAllowed(req) || url.pathname !== '/api/live') {
        socket.end('HTTP/1.1 403 Forbidden\r\nConnection: close\r\n\r\n');
        return;
      }
      if (this.subscribers.size >= LIVE_SUBSCRIBERS_MAX) {
        socket.end('HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n\r\n');
        return;
      }
      this.wss.handleUpgrade(req, socket, head, (ws) => this.subscribe(ws));
    });
    this.onEvent = (ev) => this.event(ev);
    opts.volumes.on('event', this.onEvent);
    this.offCluster = onClusterMembership((_log, view) => this.membership(view));
  }

  static async start(opts: DashboardOptions): Promise<Dashboard> {
    // `ws` (and the page) only when a dashboard starts: serve without one, or before its table opens, never loads it.
    const { WebSocketServer } = await import('ws');
    const d = new Dashboard(opts, WebSocketServer);
    await new Promise<void>((resolvePromise, reject) => {
      d.server.once('error', reject);
      d.server.listen(opts.port, '127.0.0.1', () => {
        d.server.off('error', reject);
        resolvePromise();
      });
    });
    const a = d.server.address();
    if (a !== null && typeof a === 'object') d.address = { host: a.address, port: a.port };
    d.timer = setInterval(() => d.tick(), SAMPLE_INTERVAL_MS);
    d.timer.unref();
    return d;
  }

  /** The page's address with the action token in the fragment (browsers do not send fragments). */
  get url(): string {
    return `${this.baseUrl}/#token=${this.opts.token}`;
  }
  get baseUrl(): string {
    const a = this.address!;
    return `http://${a.host}:${a.port}`;
  }

  async close(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.opts.volumes.off('event', this.onEvent);
    this.offCluster();
    for (const ws of this.subscribers) ws.terminate();
    this.subscribers.clear();
    this.wss.close();
    await new Promise<void>((r) => {
      this.server.close(() => r());
      this.server.closeAllConnections();
    });
  }

  // ------------------------------------------------------------------ HTTP

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    if (!this.hostAllowed(req)) throw new ControlError('EACCES', 'unexpected Host header (the dashboard answers only to 127.0.0.1 and localhost)');
    const url = new URL(req.url ?? '/', 'http://dashboard');
    const method = req.method ?? 'GET';
    const path = url.pathname;
    if (method === 'GET' && path === '/metrics') {
      const { contentType, text } = await this.opts.metrics.exposition();
      res.writeHead(200, { 'content-type': contentType, 'cache-control': 'no-store' });
      res.end(text);
      return;
    }
    if (method === 'GET' && path === '/api/state') {
      sendJson(res, 200, this.hello());
      return;
    }
    const parts = path.split('/').filter((p) => p.length > 0).map(decodeURIComponent);
    if (parts[0] === 'api' && parts[1] === 'volumes' && parts.length === 4) {
      const name = parts[2]!;
      const op = parts[3]!;
      if (method === 'GET' && op === 'regions') {
        this.sendRegions(res, this.opts.volumes.get(name));
        return;
      }
      if (method === 'POST') {
        if (!this.authorized(req)) throw new ControlError('EACCES', 'actions need the dashboard token (open the URL serve printed, with #token=...)');
        if (!originAllowed(req)) throw new ControlError('EACCES', 'cross-site request refused');
        const body = await readJson(req);
        const answer = await this.act(name, op, body);
        sendJson(res, 200, answer);
        return;
      }
    }
    if (method === 'GET') {
      const f = this.files.get(path === '/' ? '/index.html' : path);
      if (f !== undefined) {
        res.writeHead(200, { 'content-type': f.type, 'content-length': f.body.length, 'cache-control': 'no-cache' });
        res.end(f.body);
        return;
      }
    }
    throw new ControlError('ENOENT', `no such page: ${method} ${path}`);
  }

  private sendRegions(res: ServerResponse, v: Volume): void {
    const map = regionMapOf(v.liveExport);
    if (map === null) throw new ControlError('ENOTSUP', `volume "${v.name}" is not a mirror: it has no regions`);
    res.writeHead(200, {
      'content-type': 'application/octet-stream',
      'content-length': map.bits.length,
      'x-region-count': String(map.regionCount),
      'x-region-size-bytes': String(map.regionSizeBytes),
      'cache-control': 'no-store',
    });
    res.end(map.bits);
  }

  /** The operator's actions, as CLI calls on the control socket (same API, same validation there). */
  private async act(name: string, op: string, body: Record<string, unknown>): Promise<unknown> {
    const base = `/v1/volumes/${encodeURIComponent(name)}`;
    const c = this.client;
    switch (op) {
      case 'resync-rate': {
        const rate = body.bytesPerSec;
        if (typeof rate !== 'number' || !Number.isSafeInteger(rate) || rate < 0) throw new ControlError('EINVAL', 'resync-rate: "bytesPerSec" must be a non-negative integer');
        return c.post(`${base}/message`, { argv: ['resync_rate', String(rate)] });
      }
      case 'verify': {
        // Answered when the run ends; progress reaches the page as verify-progress events.
        if (body.repair !== undefined && typeof body.repair !== 'boolean') throw new ControlError('EINVAL', 'verify: "repair" must be true or false');
        return c.post(`${base}/verify`, { repair: body.repair === true });
      }
      case 'resync':
        return c.post(`${base}/message`, { argv: ['resync'] });
      case 'repair':
        return c.post(`${base}/repair`, {});
      case 'resume':
        return c.post(`${base}/resume`, {});
      case 'reload': {
        if (typeof body.table !== 'string') throw new ControlError('EINVAL', 'reload: "table" must be a string');
        return this.swapTable(base, body.table);
      }
      case 'remove-leg': {
        if (typeof body.device !== 'string') throw new ControlError('EINVAL', 'remove-leg: "device" must be a string');
        const v = this.opts.volumes.get(name);
        const spec = v.liveSpec;
        if (spec.kind !== 'mirror' || !spec.legs.some((l) => l.device === body.device)) throw new ControlError('ENOENT', `remove-leg: "${body.device}" is not a leg of "${name}"`);
        const plan = planRepair(spec, [], { policy: 'remove', spares: [], failed: new Set([body.device]) });
        if (plan === null) throw new ControlError('EINVAL', `remove-leg: "${name}" is not a mirror`);
        return this.swapTable(base, plan.line);
      }
      default:
        throw new ControlError('ENOENT', `unknown action "${op}"`);
    }
  }

  /** dmsetup reload + suspend --noflush + resume: held writes complete on the new table. */
  private async swapTable(base: string, table: string): Promise<unknown> {
    const c = this.client;
    await c.post(`${base}/reload`, { table });
    await c.post(`${base}/suspend`, { noflush: true });
    return c.post(`${base}/resume`, {});
  }

  private authorized(req: IncomingMessage): boolean {
    const m = /^Bearer (.+)$/.exec(req.headers.authorization ?? '');
    if (m === null) return false;
    const given = Buffer.from(m[1]!);
    const expected = Buffer.from(this.opts.token);
    return given.length === expected.length && timingSafeEqual(given, expected);
  }

  /** DNS rebinding guard: only our own loopback names reach the API. */
  private hostAllowed(req: IncomingMessage): boolean {
    const host = req.headers.host;
    if (host === undefined) return true;
    const port = this.address?.port;
    return host === `127.0.0.1:${port}` || host === `localhost:${port}` || host === '127.0.0.1' || host === 'localhost';
  }

  private loadStatic(dir: string): void {
    for (const name of readdirSync(dir)) {
      const type = CONTENT_TYPES[extname(name)];
      if (type === undefined) continue;
      const body = readFileSync(join(dir, name));
      if (body.length > STATIC_FILE_BYTES_MAX) continue;
      this.files.set(`/${name}`, { type, body });
    }
    if (!this.files.has('/index.html')) throw new Error(`dashboard: no index.html in ${dir}`);
  }

  // ------------------------------------------------------------------ live feed

  private subscribe(ws: WebSocket): void {
    this.subscribers.add(ws);
    ws.on('close', () => this.subscribers.delete(ws));
    ws.on('error', () => this.subscribers.delete(ws));
    ws.on('message', () => undefined);
    ws.send(JSON.stringify(this.hello()));
  }

  private hello(): object {
    return {
      kind: 'hello',
      node: this.opts.node,
      startedAt: this.startedAt,
      pid: process.pid,
      volumes: this.opts.volumes.list().map((v) => volumeSnapshot(v)),
      history: Object.fromEntries(this.history),
      events: this.timeline,
    };
  }

  private broadcast(msg: object): void {
    if (this.subscribers.size === 0) return;
    const text = JSON.stringify(msg);
    for (const ws of this.subscribers) {
      if (ws.bufferedAmount > LIVE_BUFFERED_BYTES_MAX) {
        this.subscribers.delete(ws);
        ws.close(1013, 'dashboard subscriber too slow');
        continue;
      }
      ws.send(text);
    }
  }

  private event(ev: VolumeEvent): void {
    if (ev.kind === 'resync-progress') return; // state, shown by the next tick
    if (ev.kind === 'verify-progress') {
      // Progress, not history: to the page only, without a snapshot.
      if (this.subscribers.size > 0) this.broadcast({ kind: 'event', event: ev, volume: null });
      return;
    }
    this.timeline.push(ev);
    if (this.timeline.length > TIMELINE_EVENTS_MAX) this.timeline.splice(0, this.timeline.length - TIMELINE_EVENTS_MAX);
    if (this.subscribers.size === 0) return;
    // A burst of held writes is one event each: those go without a snapshot (the next tick brings it).
    this.broadcast({ kind: 'event', event: ev, volume: ev.kind === 'write-held' ? null : safeSnapshot(this.opts.volumes, ev.volume) });
  }

  private membership(view: ClusterView): void {
    const ev: VolumeEvent = {
      volume: '',
      kind: 'membership',
      eventNr: 0,
      time: new Date().toISOString(),
      counted: false,
      data: { members: view.members.map((m) => `${m.nodeId}/${m.pid}`), server: view.server ? `${view.server.nodeId}/${view.server.pid}` : null },
    };
    this.event(ev);
  }

  /** Once a second: sample the counters into the history and push the state. */
  private tick(): void {
    const now = Date.now();
    const samples: Record<string, Sample> = {};
    const volumes = this.opts.volumes.list();
    for (const v of volumes) {
      const s = this.sample(v, now);
      samples[v.name] = s;
      let h = this.history.get(v.name);
      if (h === undefined) this.history.set(v.name, (h = []));
      h.push(s);
      if (h.length > HISTORY_SAMPLES) h.splice(0, h.length - HISTORY_SAMPLES);
    }
    if (this.subscribers.size > 0) this.broadcast({ kind: 'tick', tMs: now, volumes: volumes.map((v) => volumeSnapshot(v)), samples });
  }

  private sample(v: Volume, nowMs: number): Sample {
    const c: IoCounters = this.opts.metrics.counters(v.name);
    const m = mirrorSample(v.liveExport);
    const cur: CounterMark = {
      readBytes: c.bytes[0]!,
      writeBytes: c.bytes[1]! + c.bytes[3]! + c.bytes[4]!,
      ops: c.requests.reduce((a, b) => a + b, 0),
      latencySumMs: c.latencySumMs.reduce((a, b) => a + b, 0),
      buckets: c.bucketTotals(['read', 'write', 'flush', 'trim', 'zero']),
      resyncBytes: m?.status.resync.bytesCopied ?? 0,
      resyncSource: v.liveExport,
    };
    const prev = this.marks.get(v.name);
    this.marks.set(v.name, cur);
    if (prev === undefined) {
      return { tMs: nowMs, readBytesPerSec: 0, writeBytesPerSec: 0, opsPerSec: 0, latencyMeanMs: null, latencyP99Ms: null, resyncBytesPerSec: 0 };
    }
    const secs = SAMPLE_INTERVAL_MS / 1000;
    const ops = cur.ops - prev.ops;
    const delta = cur.buckets.map((x, i) => x - prev.buckets[i]!);
    return {
      tMs: nowMs,
      readBytesPerSec: (cur.readBytes - prev.readBytes) / secs,
      writeBytesPerSec: (cur.writeBytes - prev.writeBytes) / secs,
      opsPerSec: ops / secs,
      latencyMeanMs: ops > 0 ? (cur.latencySumMs - prev.latencySumMs) / ops : null,
      latencyP99Ms: bucketQuantileMs(delta, 0.99),
      // A table swap starts a new engine whose copy counter restarts from 0, possibly several swaps
      // within one sample (mirror -> linear -> mirror): then all the new engine copied is this sample's.
      resyncBytesPerSec: (cur.resyncSource === prev.resyncSource ? Math.max(0, cur.resyncBytes - prev.resyncBytes) : cur.resyncBytes) / secs,
    };
  }
}

/** What the page shows of one volume (JSON). */
export function volumeSnapshot(v: Volume): object {
  const info = v.info();
  const m = mirrorSample(v.liveExport);
  const base = {
    name: v.name,
    state: v.state,
    target: v.liveSpec.kind,
    table: v.table('live'),
    inactiveTable: v.table('inactive'),
    sizeBytes: info.sizeBytes,
    eventNr: v.eventNr,
    heldWrites: info.heldWrites,
    queuedRequests: info.queuedRequests,
    inFlightRequests: info.inFlightRequests,
    openCount: info.openCount,
  };
  if (m === null) {
    return { ...base, legs: v.liveSpec.kind === 'linear' ? [{ device: v.liveSpec.leg.device, health: 'A', upToDate: true, isDefault: true }] : [], mirror: null, cluster: null };
  }
  const s = m.status;
  return {
    ...base,
    legs: s.legs,
    mirror: {
      regionCount: s.regionCount,
      regionSizeBytes: s.regionSizeBytes,
      inSyncRegions: s.inSyncRegions,
      syncPercent: s.regionCount === 0 ? 100 : (100 * s.inSyncRegions) / s.regionCount,
      healthChars: s.healthChars,
      log: s.log,
      logFlushes: m.logFlushes,
      resync: s.resync,
      statusLine: s.line,
    },
    cluster: m.cluster,
  };
}

function safeSnapshot(volumes: Volumes, name: string): object | null {
  try {
    return volumeSnapshot(volumes.get(name));
  } catch {
    return null;
  }
}

/** A browser sends Origin on cross-site requests and WebSocket upgrades: only our own may act or listen. */
function originAllowed(req: IncomingMessage): boolean {
  const origin = req.headers.origin;
  if (origin === undefined) return true;
  return origin === `http://${req.headers.host ?? ''}`;
}

/** static/ next to this module (a build that copies it), else src/control/dashboard/static upwards. */
export function findStaticDir(): string {
  const here = dirname(fileURLToPath(import.meta.url));
  const own = join(here, 'static');
  if (existsSync(join(own, 'index.html'))) return own;
  // dist/control/dashboard -> <root>/src/control/dashboard/static; a private test build sits deeper.
  let dir = here;
  for (let i = 0; i < 8; i++) {
    const candidate = join(dir, 'src', 'control', 'dashboard', 'static');
    if (existsSync(join(candidate, 'index.html'))) return candidate;
    dir = resolve(dir, '..');
  }
  throw new Error(`dashboard: cannot find its static files (looked in ${own} and src/control/dashboard/static above ${here})`);
}

const NO_STORE = { 'cache-control': 'no-store' };
const sendJson = (res: ServerResponse, status: number, body: unknown): void => sendJsonReply(res, status, body, NO_STORE);
const sendError = (res: ServerResponse, e: unknown): void => sendJsonError(res, e, NO_STORE);
const readJson = (req: IncomingMessage): Promise<Record<string, unknown>> => readJsonObject(req, DASHBOARD_BODY_BYTES_MAX);
