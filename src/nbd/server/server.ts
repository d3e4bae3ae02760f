// NbdServer: listens on TCP and unix sockets, serves the exports of a registry to many clients.
// Owns listeners and the set of live connections; everything per connection is in connection.ts.
// close(): stop listening, let every connection finish its in-flight requests, then close it.

import { createServer, type Server, type Socket } from 'node:net';
import { unlink } from 'node:fs/promises';
import { describePeer, type ExportPolicy, type PeerIdentity } from './authz.js';
import { Connection } from './connection.js';
import { adoptSocket, ReadController } from './direct-read.js';
import { resolveLimits, type ServerLimits } from './limits.js';
import { type Logger, NULL_LOGGER } from './log.js';
import type { ExportRegistry } from './registry.js';
import type { TransmissionStats } from './transmission.js';
import type { ServerTls } from '../tls/server-tls.js';
import { peerUid } from './peer-cred.js';

export type { ExportEntry, ExportRegistry } from './registry.js';
export type { ServerLimits } from './limits.js';
export { DEFAULT_SERVER_LIMITS } from './limits.js';
export type { Logger } from './log.js';

export type ListenAddress =
  | { readonly kind: 'tcp'; readonly host: string; readonly port: number }
  | { readonly kind: 'unix'; readonly path: string };

export interface ServerOptions {
  exports: ExportRegistry;
  /** What an empty export name ("") means. */
  defaultExportName?: string;
  log?: Logger;
  limits?: Partial<ServerLimits>;
  /** Read WRITE payloads straight into their buffers (default true); false uses plain 'data' events. */
  directReads?: boolean;
  /** STARTTLS (../tls/server-tls.ts): mode off|on|require and the key material (reloadable). */
  tls?: ServerTls;
  /** Per-export allow rules (authz.ts); exports without rules are open. */
  policy?: ExportPolicy;
}

export interface ServerStats {
  readonly connections: number;
  readonly transmissions: readonly TransmissionStats[];
}

export class NbdServer {
  private readonly limits: ServerLimits;
  private readonly log: Logger;
  private readonly listeners: Server[] = [];
  private readonly bound: ListenAddress[] = [];
  private readonly connections = new Set<Connection>();
  private readonly perPeer = new Map<string, number>();
  private nextId = 1;
  private shuttingDown = false;

  constructor(private readonly opts: ServerOptions) {
    this.limits = resolveLimits(opts.limits);
    this.log = opts.log ?? NULL_LOGGER;
  }

  /** Start listening; for tcp port 0 the bound port is in addresses(). */
  async listen(address: ListenAddress): Promise<void> {
    if (this.shuttingDown) throw new Error('server is closed');
    const srv = createServer({ noDelay: true, allowHalfOpen: true, pauseOnConnect: true }, (socket) => this.accept(socket));
    await new Promise<void>((resolve, reject) => {
      srv.once('error', reject);
      if (address.kind === 'tcp') srv.listen(address.port, address.host, () => resolve());
      else srv.listen(address.path, () => resolve());
    });
    srv.on('error', (err) => this.log.error({ err: err.message }, 'listener error'));
    this.listeners.push(srv);
    const a = srv.address();
    this.bound.push(
      address.kind === 'tcp' && a !== null && typeof a === 'object' ? { kind: 'tcp', host: address.host, port: a.port } : address,
    );
    this.log.debug({ address: this.bound[this.bound.length - 1] }, 'listening');
  }

  addresses(): readonly ListenAddress[] {
    return [...this.bound];
  }

  stats(): ServerStats {
    const transmissions: TransmissionStats[] = [];
    for (const c of this.connections) {
      const s = c.stats();
      if (s !== null) transmissions.push(s);
    }
    return { connections: this.connections.size, transmissions };
  }

  /** Connections in transmission with the export `name` (dmsetup info's "Open count"). */
  openCount(name: string): number {
    let n = 0;
    for (const c of this.connections) if (c.exportName === name) n++;
    return n;
  }

  async close(): Promise<void> {
    this.shuttingDown = true;
    const closing = this.listeners.map((srv) => new Promise<void>((resolve) => srv.close(() => resolve())));
    this.listeners.length = 0;
    for (const c of this.connections) c.shutdown();
    await Promise.all([...closing, ...[...this.connections].map((c) => c.done)]);
    // net.Server removes its unix socket on close; be sure for paths left by a crash-free close.
    for (const a of this.bound) if (a.kind === 'unix') await unlink(a.path).catch(() => undefined);
  }

  private accept(raw: Socket): void {
    if (this.shuttingDown || this.connections.size >= this.limits.connectionsMax) {
      this.log.warn(
        { connections: this.connections.size, limit: 'connectionsMax', connectionsMax: this.limits.connectionsMax },
        'connection refused: server closing or connectionsMax reached',
      );
      raw.destroy();
      return;
    }
    const peer: PeerIdentity =
      raw.remoteAddress !== undefined
        ? { transport: 'tcp', address: raw.remoteAddress, tls: false }
        : { transport: 'unix', uid: peerUid(raw), tls: false };
    const peerKey = peer.transport === 'tcp' ? `addr:${peer.address}` : peer.uid === undefined ? null : `uid:${peer.uid}`;
    if (peerKey !== null) {
      const n = this.perPeer.get(peerKey) ?? 0;
      if (n >= this.limits.connectionsPerPeerMax) {
        this.log.warn(
          { peer: describePeer(peer), connections: n, limit: 'connectionsPerPeerMax', connectionsPerPeerMax: this.limits.connectionsPerPeerMax },
          'connection refused: connectionsPerPeerMax reached for this peer',
        );
        raw.destroy();
        return;
      }
      this.perPeer.set(peerKey, n + 1);
    }
    const tls = this.opts.tls;
    const policy = this.opts.policy;
    const connId = this.nextId;
    const ctl = new ReadController();
    // Under TLS (on or require) the handle goes to the TLS layer after STARTTLS; an adopted handle with a
    // user read buffer under it measured 2-4x slower for 1 MiB I/O over TLS, so TLS servers read the raw
    // socket plainly and put the user buffer on the TLS socket instead (connection.ts, lendTlsReads).
    const adopted = this.opts.directReads === false || tls !== undefined ? null : adoptSocket(raw, ctl, true);
    const socket = adopted ?? raw;
    if (adopted === null) raw.resume();
    const conn = new Connection(
      this.nextId++,
      socket,
      {
        registry: this.opts.exports,
        defaultExportName: this.opts.defaultExportName,
        limits: this.limits,
        shuttingDown: () => this.shuttingDown,
        ...(tls !== undefined ? { tls: { mode: tls.mode, active: () => peer.tls } } : {}),
        ...(policy !== undefined
          ? {
              authorize: (name: string, opening: boolean): string | null => {
                const why = policy.check(name, peer);
                if (why !== null && opening) this.log.warn({ conn: connId, export: name, peer: describePeer(peer), reason: why }, 'export refused by policy');
                return why;
              },
            }
          : {}),
      },
      this.limits,
      this.log,
      adopted === null ? null : ctl,
      tls === undefined ? null : (s) => tls.upgrade(s, peer),
      this.opts.directReads !== false,
    );
    this.connections.add(conn);
    void conn.done.then(() => {
      this.connections.delete(conn);
      if (peerKey !== null) {
        const n = (this.perPeer.get(peerKey) ?? 1) - 1;
        if (n <= 0) this.perPeer.delete(peerKey);
        else this.perPeer.set(peerKey, n);
      }
    });
  }
}
