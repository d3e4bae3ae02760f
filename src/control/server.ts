// The control socket: an HTTP/JSON API over a unix socket (mode 0600), optionally also on 127.0.0.1 with
// a bearer token, plus a WebSocket event stream (/v1/events) pushing every volume event as JSON.
//
// Owns: routing, request validation (at the edge: body size, JSON shape, argument types), the mapping
// of ControlError codes to HTTP statuses (one place), authentication of the TCP listener, and the event
// fan-out with a bound on what a slow subscriber may buffer. The operations themselves are the Volume's.
//
// API (every answer is JSON; errors are {error: {code, message}}):
//   GET  /v1/volumes                                  -> {volumes: [{name, target, state, eventNr}]}
//   GET  /v1/volumes/NAME/status                      -> {name, status}
//   GET  /v1/volumes/NAME/table[?inactive=1]          -> {name, table}
//   GET  /v1/volumes/NAME/info                        -> VolumeInfo
//   GET  /v1/volumes/NAME/wait[?event_nr=N&timeout_ms=T] -> {name, eventNr}
//   POST /v1/volumes/NAME/suspend  {noflush?}          -> {name, state}
//   POST /v1/volumes/NAME/resume                       -> {name, state, swapped, heldWritesReissued}
//   POST /v1/volumes/NAME/reload   {table}             -> {name, table}
//   POST /v1/volumes/NAME/clear                        -> {name}
//   POST /v1/volumes/NAME/message  {argv: [..]}        -> {name, answer}
//   POST /v1/volumes/NAME/repair   {spares?: [..], force?} -> RepairResult
//   POST /v1/volumes/NAME/verify   {repair?}           -> VolumeVerifyResult, when the run ends (verify.ts:
//        progress as verify-* events on the stream; EBUSY if one runs; EINVAL on a linear volume;
//        closing the request cancels the run)
//   GET  /v1/events[?volume=NAME]  (WebSocket)         -> {kind:'hello', volumes}, then VolumeEvent...
import { timingSafeEqual } from 'node:crypto';
import { chmod, lstat, mkdir, unlink } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { dirname } from 'node:path';
import type { WebSocketServer, WebSocket } from 'ws';
import { ControlError } from './control-error.js';
import { CONTROL_TOKEN_CHARS_MIN } from './control-path.js';
import { readJsonObject, sendJson, sendJsonError } from './http-json.js';
import { repairVolume } from './repair.js';
import { socketAccepts } from './socket-probe.js';
import { verifyVolume } from './verify.js';
import { errorText, type VolumeEvent, type Volumes } from './volumes.js';

/** Largest JSON request body accepted. */
export const CONTROL_BODY_BYTES_MAX = 64 * 1024;
/** A WebSocket subscriber that lags by more than this is disconnected (close code 1013). */
export const EVENT_BUFFERED_BYTES_MAX = 1024 * 1024;
/** Event stream subscribers at once. */
export const EVENT_SUBSCRIBERS_MAX = 64;

export interface ControlServerOptions {
  readonly volumes: Volumes;
  /** Unix socket path (created with mode 0600; its directory is created 0700 if missing). */
  readonly socketPath: string;
  /** Optional TCP port on 127.0.0.1 (0 = pick one); requires `token`. */
  readonly tcpPort?: number;
  readonly token?: string;
  /** Spare devices for `repair` requests that name none, and for the automatic policy. */
  readonly spares?: () => string[];
  readonly log?: { info(obj: object, msg: string): void; warn(obj: object, msg: string): void };
}

export class ControlServer {
  private readonly unixServer: Server;
  private tcpServer: Server | undefined;
  /** Created on the first event-stream upgrade: `ws` is not loaded at start-up (most servers never stream). */
  private wss: Promise<WebSocketServer> | undefined;
  private closed = false;
  private readonly subscribers = new Set<{ ws: WebSocket; volume: string | null }>();
  private readonly onEvent: (ev: VolumeEvent) => void;
  private tcpAddress: { host: string; port: number } | undefined;

  private constructor(private readonly opts: ControlServerOptions) {
    this.unixServer = this.makeHttpServer(false);
    this.onEvent = (ev) => this.broadcast(ev);
    opts.volumes.on('event', this.onEvent);
  }

  static async start(opts: ControlServerOptions): Promise<ControlServer> {
    if (opts.tcpPort !== undefined) {
      if (opts.token === undefined || opts.token.length < CONTROL_TOKEN_CHARS_MIN) {
        throw new ControlError('EINVAL', `--control-tcp needs a token of at least ${CONTROL_TOKEN_CHARS_MIN} characters (--control-token-file)`);
      }
    }
    const s = new ControlServer(opts);
    await prepareSocketPath(opts.socketPath);
    await listen(s.unixServer, opts.socketPath);
    // Mode 0600: only the owner may drive the volumes. The directory is ours (0700) when we created it.
    await chmod(opts.socketPath, 0o600);
    if (opts.tcpPort !== undefined) {
      s.tcpServer = s.makeHttpServer(true);
      await listen(s.tcpServer, { host: '127.0.0.1', port: opts.tcpPort });
      const a = s.tcpServer.address();
      if (a !== null && typeof a === 'object') s.tcpAddress = { host: a.address, port: a.port };
    }
    return s;
  }

  get socketPath(): string {
    return this.opts.socketPath;
  }
  get tcp(): { host: string; port: number } | undefined {
    return this.tcpAddress;
  }

  async close(): Promise<void> {
    this.closed = true;
    this.opts.volumes.off('event', this.onEvent);
    for (const s of this.subscribers) s.ws.terminate();
    this.subscribers.clear();
    (await this.wss?.catch(() => undefined))?.close();
    const servers = [this.unixServer, this.tcpServer].filter((x): x is Server => x !== undefined);
    await Promise.all(
      servers.map(
        (srv) =>
          new Promise<void>((resolve) => {
            srv.close(() => resolve());
            srv.closeAllConnections();
          }),
      ),
    );
    await unlink(this.opts.socketPath).catch(() => undefined);
  }

  // ------------------------------------------------------------------ HTTP

  private makeHttpServer(needsToken: boolean): Server {
    const srv = createServer((req, res) => {
      if (needsToken && !this.authorized(req)) {
        sendError(res, new ControlError('EACCES', 'missing or wrong bearer token'));
        return;
      }
      this.handle(req, res).catch((e: unknown) => sendError(res, e));
    });
    srv.on('upgrade', (req, socket, head) => {
      if ((needsToken && !this.authorized(req)) || !(req.url ?? '').startsWith('/v1/events')) {
        socket.end('HTTP/1.1 401 Unauthorized\r\nConnection: close\r\n\r\n');
        return;
      }
      if (this.subscribers.size >= EVENT_SUBSCRIBERS_MAX) {
        socket.end('HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n\r\n');
        return;
      }
      this.wss ??= import('ws').then(({ WebSocketServer }) => new WebSocketServer({ noServer: true, maxPayload: CONTROL_BODY_BYTES_MAX }));
      this.wss.then(
        (wss) => {
          if (this.closed) socket.destroy();
          else wss.handleUpgrade(req, socket, head, (ws) => this.subscribe(ws, req));
        },
        () => socket.end('HTTP/1.1 500 Internal Server Error\r\nConnection: close\r\n\r\n'),
      );
    });
    // `wait` may legitimately take long: no per-request timeout on a local control socket.
    srv.requestTimeout = 0;
    return srv;
  }

  private authorized(req: IncomingMessage): boolean {
    const token = this.opts.token;
    if (token === undefined) return false;
    const header = req.headers.authorization ?? '';
    const m = /^Bearer (.+)$/.exec(header);
    if (m === null) return false;
    const given = Buffer.from(m[1]!);
    const expected = Buffer.from(token);
    return given.length === expected.length && timingSafeEqual(given, expected);
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://control');
    const parts = url.pathname.split('/').filter((p) => p.length > 0).map(decodeURIComponent);
    const method = req.method ?? 'GET';
    const volumes = this.opts.volumes;
    if (parts[0] !== 'v1') throw new ControlError('ENOENT', `unknown path ${url.pathname}`);
    if (parts.length === 2 && parts[1] === 'volumes' && method === 'GET') {
      send(res, 200, {
        volumes: volumes.list().map((v) => ({ name: v.name, target: v.liveSpec.kind, state: v.state, eventNr: v.eventNr })),
      });
      return;
    }
    if (parts.length !== 4 || parts[1] !== 'volumes') throw new ControlError('ENOENT', `unknown path ${url.pathname}`);
    const name = parts[2]!;
    const op = parts[3]!;
    const v = volumes.get(name);
    const route = `${method} ${op}`;
    switch (route) {
      case 'GET status':
        send(res, 200, { name, status: v.status(), legs: v.legs() });
        return;
      case 'GET table': {
        const inactive = url.searchParams.get('inactive') === '1';
        const table = v.table(inactive ? 'inactive' : 'live');
        if (table === null) throw new ControlError('ENOENT', `volume "${name}" has no inactive table`);
        send(res, 200, { name, table });
        return;
      }
      case 'GET info':
        send(res, 200, v.info());
        return;
      case 'GET wait': {
        const eventNr = optionalInt(url.searchParams.get('event_nr'), 'event_nr');
        const timeoutMs = optionalInt(url.searchParams.get('timeout_ms'), 'timeout_ms');
        const abort = new AbortController();
        res.on('close', () => abort.abort());
        const nr = await v.wait(eventNr, timeoutMs, abort.signal);
        send(res, 200, { name, eventNr: nr });
        return;
      }
      case 'POST suspend': {
        const body = await readJson(req);
        const noflush = optionalBool(body.noflush, 'noflush') ?? false;
        await v.suspend({ noflush });
        send(res, 200, { name, state: v.state });
        return;
      }
      case 'POST resume': {
        await readJson(req);
        const r = await v.resume();
        send(res, 200, { name, state: v.state, ...r });
        return;
      }
      case 'POST reload': {
        const body = await readJson(req);
        if (typeof body.table !== 'string') throw new ControlError('EINVAL', 'reload: "table" must be a string');
        const r = await v.reload(body.table);
        send(res, 200, { name, ...r });
        return;
      }
      case 'POST clear':
        await readJson(req);
        await v.clear();
        send(res, 200, { name });
        return;
      case 'POST message': {
        const body = await readJson(req);
        const argv = body.argv;
        if (!Array.isArray(argv) || !argv.every((a) => typeof a === 'string')) {
          throw new ControlError('EINVAL', 'message: "argv" must be an array of strings');
        }
        const serverMessage = this.opts.volumes.serverMessages.get(argv[0] as string);
        const answer = serverMessage !== undefined ? await serverMessage(argv as string[]) : await v.message(argv as string[]);
        send(res, 200, { name, answer });
        return;
      }
      case 'POST repair': {
        const body = await readJson(req);
        const spares = body.spares ?? this.opts.spares?.() ?? [];
        if (!Array.isArray(spares) || !spares.every((a) => typeof a === 'string')) {
          throw new ControlError('EINVAL', 'repair: "spares" must be an array of device strings');
        }
        if (body.force !== undefined && typeof body.force !== 'boolean') throw new ControlError('EINVAL', 'repair: "force" must be a boolean');
        const r = await repairVolume(v, { spares: spares as string[], trigger: 'manual', force: body.force === true });
        send(res, 200, { name, ...r });
        return;
      }
      case 'POST verify': {
        const body = await readJson(req);
        const repair = optionalBool(body.repair, 'repair') ?? false;
        const abort = new AbortController();
        res.on('close', () => abort.abort());
        const r = await verifyVolume(v, { repair, signal: abort.signal });
        send(res, 200, r);
        return;
      }
      default:
        throw new ControlError('ENOENT', `unknown operation ${method} ${url.pathname}`);
    }
  }

  // ------------------------------------------------------------------ events

  private subscribe(ws: WebSocket, req: IncomingMessage): void {
    const url = new URL(req.url ?? '/', 'http://control');
    const volume = url.searchParams.get('volume');
    const sub = { ws, volume };
    this.subscribers.add(sub);
    ws.on('close', () => this.subscribers.delete(sub));
    ws.on('error', () => this.subscribers.delete(sub));
    // Clients only listen; anything they send is ignored.
    ws.on('message', () => undefined);
    const vols = this.opts.volumes.list().filter((v) => volume === null || v.name === volume);
    ws.send(JSON.stringify({ kind: 'hello', volumes: vols.map((v) => ({ name: v.name, eventNr: v.eventNr, state: v.state })) }));
  }

  private broadcast(ev: VolumeEvent): void {
    const text = JSON.stringify(ev);
    for (const s of this.subscribers) {
      if (s.volume !== null && s.volume !== ev.volume) continue;
      if (s.ws.bufferedAmount > EVENT_BUFFERED_BYTES_MAX) {
        // A subscriber that does not read is cut off rather than buffered without bound.
        this.subscribers.delete(s);
        s.ws.close(1013, 'event subscriber too slow (EVENT_BUFFERED_BYTES_MAX)');
        continue;
      }
      s.ws.send(text);
    }
  }
}

// -------------------------------------------------------------------- helpers

function send(res: ServerResponse, status: number, body: unknown): void {
  sendJson(res, status, body);
}

const sendError = (res: ServerResponse, e: unknown): void => sendJsonError(res, e);
const readJson = (req: IncomingMessage): Promise<Record<string, unknown>> => readJsonObject(req, CONTROL_BODY_BYTES_MAX);

function optionalInt(text: string | null, what: string): number | undefined {
  if (text === null) return undefined;
  if (!/^[0-9]+$/.test(text)) throw new ControlError('EINVAL', `${what} must be a non-negative integer, not "${text}"`);
  const n = Number(text);
  if (!Number.isSafeInteger(n)) throw new ControlError('EINVAL', `${what} is too large: ${text}`);
  return n;
}

function optionalBool(v: unknown, what: string): boolean | undefined {
  if (v === undefined) return undefined;
  if (typeof v !== 'boolean') throw new ControlError('EINVAL', `${what} must be true or false`);
  return v;
}

function listen(srv: Server, where: string | { host: string; port: number }): Promise<void> {
  return new Promise((resolve, reject) => {
    srv.once('error', reject);
    const done = () => {
      srv.off('error', reject);
      resolve();
    };
    if (typeof where === 'string') srv.listen(where, done);
    else srv.listen(where.port, where.host, done);
  });
}

/**
 * The socket's directory is created (0700) if missing; an existing file at the path must be a stale
 * socket (nobody accepts on it), which is removed. A live socket or another kind of file is refused.
 */
async function prepareSocketPath(path: string): Promise<void> {
  await mkdir(dirname(path), { recursive: true, mode: 0o700 });
  const st = await lstat(path).catch(() => undefined);
  if (st === undefined) return;
  if (!st.isSocket()) throw new ControlError('EINVAL', `control socket ${path} exists and is not a socket`);
  if (await socketAccepts(path)) throw new ControlError('EBUSY', `control socket ${path}: another process is listening on it`);
  await unlink(path);
}

