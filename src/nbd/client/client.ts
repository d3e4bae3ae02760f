// NbdClient: connects to an NBD URI, negotiates (handshake.ts), then runs many requests in flight
// over one socket, matching replies to requests by cookie. Used by remote-NBD legs and by tests.
//
// Replies are parsed straight from received chunks; READ data (simple or OFFSET_DATA) is copied
// directly into the caller's target. Requests larger than the server's maximum payload are split.
// Any framing violation or connection loss rejects every pending request with ExportError('EIO')
// and every later call too. Server errors come back as ExportError with the errno name.

import { connect as netConnect, type Socket } from 'node:net';
import * as C from '../codec/constants.js';
import { nbdToErrno } from '../codec/errors.js';
import {
  decodeBlockStatusPayload,
  decodeErrorPayload,
  decodeOffsetHolePayload,
  decodeReplyHeader,
  newReplyHeader,
  readU64,
  replyHeaderBytes,
} from '../codec/reply.js';
import { encodeRequestHeader } from '../codec/request.js';
import { ExportError, type Extent } from '../export.js';
import { ByteReader } from '../server/byte-reader.js';
import { type NbdUri, parseNbdUri } from '../uri.js';
import { type ClientNegotiated, clientHandshake, HandshakeError, OPTION_REPLY_BYTES_MAX } from './handshake.js';
import { clientTlsMaterial, startClientTls } from '../tls/client-tls.js';
import type { ClientTlsMaterial } from '../tls/config.js';

export { HandshakeError } from './handshake.js';

export interface ClientOptions {
  /** Overrides the URI's export name. */
  readonly exportName?: string;
  /** Give up connecting + negotiating after this long (default 30 s). */
  readonly connectTimeoutMs?: number;
  /** Ask for structured replies (default true). */
  readonly structuredReplies?: boolean;
  /** Ask for base:allocation (default true; needs structured replies). */
  readonly blockStatus?: boolean;
  /** Largest READ/WRITE sent in one request (default and cap: the server's maximum payload). */
  readonly requestBytesMax?: number;
}

const STATE_HEADER = 0;
const STATE_SIMPLE_DATA = 1; // simple reply to READ: raw data into target
const STATE_CHUNK_OFFSET = 2; // OFFSET_DATA: the 8-byte offset
const STATE_CHUNK_DATA = 3; // OFFSET_DATA: data into target
const STATE_CHUNK_PAYLOAD = 4; // any other chunk: buffered (small)
const STATE_DEAD = 5;

/** Largest non-data structured chunk we buffer (block status: 4 + 8 * 2^20 bytes, plus slack). */
const CHUNK_PAYLOAD_BYTES_MAX = 4 + 8 * (1 << 20) + 4096;
const U32_MAX = 0xffffffff;
const TRIM_ZERO_PIECE_BYTES_MAX = 1 << 30;

interface Pending {
  readonly type: number;
  readonly offsetBytes: number;
  readonly lengthBytes: number;
  readonly target: Buffer | null;
  readonly resolve: (v: Extent[] | undefined) => void;
  readonly reject: (e: ExportError) => void;
  error: ExportError | null;
  extents: Extent[] | undefined;
  dataBytes: number;
}

export class NbdClient {
  readonly sizeBytes: number;
  readonly transmissionFlags: number;
  readonly negotiated: ClientNegotiated;
  private readonly pending = new Map<number, Pending>();
  private nextCookie = 1;
  private dead: ExportError | null = null;
  private readonly requestBytesMax: number;
  // reply parser state
  private state = STATE_HEADER;
  private readonly hdr = newReplyHeader();
  private readonly hdrBuf = Buffer.allocUnsafe(C.STRUCTURED_REPLY_HEADER_BYTES);
  private hdrHave = 0;
  private cur: Pending | null = null;
  private left = 0; // bytes left in the current data/payload
  private targetAt = 0;
  private payload: Buffer | null = null;
  private payloadHave = 0;
  private readonly closed: Promise<void>;
  private corked = false;
  private drainWaiters: (() => void)[] = [];

  private constructor(
    private readonly socket: Socket,
    negotiated: ClientNegotiated,
    leftover: Buffer,
    opts: ClientOptions,
    private readonly label: string,
  ) {
    this.negotiated = negotiated;
    this.sizeBytes = negotiated.sizeBytes;
    this.transmissionFlags = negotiated.transmissionFlags;
    this.requestBytesMax = Math.max(
      negotiated.blockSizeMinBytes,
      Math.min(opts.requestBytesMax ?? negotiated.payloadBytesMax, negotiated.payloadBytesMax),
    );
    this.closed = new Promise((resolve) => socket.once('close', () => resolve()));
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('error', (err) => this.kill(`connection error: ${err.message}`));
    socket.on('end', () => this.kill('server closed the connection'));
    socket.on('close', () => this.kill('connection closed'));
    if (leftover.length > 0) this.onData(leftover);
  }

  /** Connect to nbd://host[:port]/export or nbd+unix:///export?socket=PATH and negotiate. */
  static async connect(uri: string | NbdUri, opts: ClientOptions = {}): Promise<NbdClient> {
    const u = typeof uri === 'string' ? parseNbdUri(uri) : uri;
    const label = typeof uri === 'string' ? uri : JSON.stringify(uri);
    const exportName = opts.exportName ?? u.exportName;
    // nbds: read the key material before connecting, so a bad file fails without touching the network.
    let material: ClientTlsMaterial | null = null;
    if (u.tls !== undefined) {
      try {
        material = clientTlsMaterial(u.tls);
      } catch (err) {
        throw new ExportError('EIO', `nbd connect ${label}: ${(err as Error).message}`);
      }
    }
    let socket: Socket = u.kind === 'unix' ? netConnect({ path: u.socketPath }) : netConnect({ host: u.host, port: u.port, noDelay: true });
    const timeoutMs = opts.connectTimeoutMs ?? 30_000;
    const timer = setTimeout(() => socket.destroy(new Error(`timed out after ${timeoutMs} ms`)), timeoutMs);
    try {
      await new Promise<void>((resolve, reject) => {
        socket.once('connect', resolve);
        socket.once('error', reject);
      });
      let reader = new ByteReader(socket, OPTION_REPLY_BYTES_MAX + 64);
      const plain = socket;
      let negotiated: ClientNegotiated;
      const starttls =
        material === null
          ? undefined
          : async () => {
              const early = reader.detach();
              if (early.length > 0) throw new HandshakeError('server sent data after its STARTTLS reply');
              const secure = await startClientTls(plain, u, material!);
              socket = secure;
              reader = new ByteReader(secure, OPTION_REPLY_BYTES_MAX + 64);
              return { read: (n: number) => reader.read(n), write: (b: Buffer) => void secure.write(b) };
            };
      try {
        negotiated = await clientHandshake(
          { read: (n) => reader.read(n), write: (b) => void plain.write(b) },
          {
            exportName,
            structuredReplies: opts.structuredReplies ?? true,
            blockStatus: opts.blockStatus ?? true,
            ...(starttls !== undefined ? { starttls } : {}),
          },
        );
      } finally {
        clearTimeout(timer);
      }
      const leftover = reader.detach();
      return new NbdClient(socket, negotiated, leftover, opts, label);
    } catch (err) {
      clearTimeout(timer);
      socket.destroy();
      const msg = err instanceof Error ? err.message : String(err);
      const e = new ExportError('EIO', `nbd connect ${label}: ${msg}`);
      if (err instanceof HandshakeError) (e as ExportError & { cause?: unknown }).cause = err;
      throw e;
    }
  }

  private has(flag: number): boolean {
    return (this.transmissionFlags & flag) !== 0;
  }

  get readOnly(): boolean {
    return this.has(C.NBD_FLAG_READ_ONLY);
  }

  get inFlight(): number {
    return this.pending.size;
  }

  async read(target: Buffer, offsetBytes: number): Promise<void> {
    const max = this.requestBytesMax;
    if (target.length <= max) {
      await this.request(C.NBD_CMD_READ, 0, offsetBytes, target.length, target, null);
      return;
    }
    const parts: Promise<unknown>[] = [];
    for (let done = 0; done < target.length; done += max) {
      const n = Math.min(max, target.length - done);
      parts.push(this.request(C.NBD_CMD_READ, 0, offsetBytes + done, n, target.subarray(done, done + n), null));
    }
    await Promise.all(parts);
  }

  async write(data: Buffer, offsetBytes: number, flags: { fua: boolean }): Promise<void> {
    if (this.readOnly) throw new ExportError('EPERM', 'export is read-only');
    const fuaFlag = flags.fua && this.has(C.NBD_FLAG_SEND_FUA) ? C.NBD_CMD_FLAG_FUA : 0;
    const max = this.requestBytesMax;
    if (data.length <= max) await this.request(C.NBD_CMD_WRITE, fuaFlag, offsetBytes, data.length, null, data);
    else {
      const parts: Promise<unknown>[] = [];
      for (let done = 0; done < data.length; done += max) {
        const n = Math.min(max, data.length - done);
        parts.push(this.request(C.NBD_CMD_WRITE, fuaFlag, offsetBytes + done, n, null, data.subarray(done, done + n)));
      }
      await Promise.all(parts);
    }
    if (flags.fua && fuaFlag === 0) await this.flush(); // no FUA on the server: a flush gives the same guarantee
  }

  async flush(): Promise<void> {
    if (!this.has(C.NBD_FLAG_SEND_FLUSH)) return; // the server has no volatile cache to flush
    await this.request(C.NBD_CMD_FLUSH, 0, 0, 0, null, null);
  }

  async trim(offsetBytes: number, lengthBytes: number, flags: { fua: boolean }): Promise<void> {
    if (this.readOnly) throw new ExportError('EPERM', 'export is read-only');
    if (!this.has(C.NBD_FLAG_SEND_TRIM) || lengthBytes === 0) return; // trim is advisory
    const fuaFlag = flags.fua && this.has(C.NBD_FLAG_SEND_FUA) ? C.NBD_CMD_FLAG_FUA : 0;
    await this.pieces(offsetBytes, lengthBytes, (o, n) => this.request(C.NBD_CMD_TRIM, fuaFlag, o, n, null, null));
    if (flags.fua && fuaFlag === 0) await this.flush();
  }

  async zero(offsetBytes: number, lengthBytes: number, flags: { fua: boolean; mayTrim: boolean; fastZero?: boolean }): Promise<void> {
    if (this.readOnly) throw new ExportError('EPERM', 'export is read-only');
    if (lengthBytes === 0) return;
    if (!this.has(C.NBD_FLAG_SEND_WRITE_ZEROES)) {
      if (flags.fastZero === true) throw new ExportError('ENOTSUP', 'server cannot zero quickly');
      const zeros = Buffer.alloc(Math.min(lengthBytes, this.requestBytesMax));
      for (let done = 0; done < lengthBytes; done += zeros.length) {
        const n = Math.min(zeros.length, lengthBytes - done);
        await this.write(zeros.subarray(0, n), offsetBytes + done, { fua: false });
      }
      if (flags.fua) await this.flush();
      return;
    }
    let f = flags.mayTrim ? 0 : C.NBD_CMD_FLAG_NO_HOLE;
    if (flags.fastZero === true) {
      if (!this.has(C.NBD_FLAG_SEND_FAST_ZERO)) throw new ExportError('ENOTSUP', 'server does not support fast zero');
      f |= C.NBD_CMD_FLAG_FAST_ZERO;
    }
    const fuaFlag = flags.fua && this.has(C.NBD_FLAG_SEND_FUA) ? C.NBD_CMD_FLAG_FUA : 0;
    await this.pieces(offsetBytes, lengthBytes, (o, n) => this.request(C.NBD_CMD_WRITE_ZEROES, f | fuaFlag, o, n, null, null));
    if (flags.fua && fuaFlag === 0) await this.flush();
  }

  async cache(offsetBytes: number, lengthBytes: number): Promise<void> {
    if (!this.has(C.NBD_FLAG_SEND_CACHE) || lengthBytes === 0) return;
    await this.pieces(offsetBytes, lengthBytes, (o, n) => this.request(C.NBD_CMD_CACHE, 0, o, n, null, null));
  }

  /** Extents from offsetBytes covering at least its first byte (all data if the server has no base:allocation). */
  async blockStatus(offsetBytes: number, lengthBytes: number): Promise<Extent[]> {
    if (lengthBytes === 0) return [];
    const n = Math.min(lengthBytes, this.alignDown(U32_MAX));
    if (this.negotiated.baseAllocationContextId === null) return [{ lengthBytes: n, flags: 0 }];
    const extents = await this.request(C.NBD_CMD_BLOCK_STATUS, 0, offsetBytes, n, null, null);
    return extents ?? [{ lengthBytes: n, flags: 0 }];
  }

  /** Wait for in-flight requests, send NBD_CMD_DISC, close the socket. */
  async close(): Promise<void> {
    if (this.dead === null && this.pending.size > 0) {
      await new Promise<void>((resolve) => this.drainWaiters.push(resolve));
    }
    if (this.dead === null) {
      const h = Buffer.allocUnsafe(C.REQUEST_HEADER_BYTES);
      encodeRequestHeader(h, 0, { flags: 0, type: C.NBD_CMD_DISC, cookieHi: 0, cookieLo: 0, offsetBytes: 0, lengthBytes: 0 });
      this.socket.end(h);
      this.dead = new ExportError('EIO', `nbd ${this.label}: client closed`);
    }
    const timer = setTimeout(() => this.socket.destroy(), 5000);
    await this.closed;
    clearTimeout(timer);
  }

  private alignDown(n: number): number {
    const min = this.negotiated.blockSizeMinBytes;
    return n - (n % min);
  }

  private async pieces(offsetBytes: number, lengthBytes: number, fn: (o: number, n: number) => Promise<unknown>): Promise<void> {
    const piece = this.alignDown(TRIM_ZERO_PIECE_BYTES_MAX);
    const parts: Promise<unknown>[] = [];
    for (let done = 0; done < lengthBytes; done += piece) parts.push(fn(offsetBytes + done, Math.min(piece, lengthBytes - done)));
    await Promise.all(parts);
  }

  private request(
    type: number,
    flags: number,
    offsetBytes: number,
    lengthBytes: number,
    target: Buffer | null,
    data: Buffer | null,
  ): Promise<Extent[] | undefined> {
    if (this.dead !== null) return Promise.reject(this.dead);
    const cookie = this.nextCookie;
    this.nextCookie = cookie >= U32_MAX ? 1 : cookie + 1;
    return new Promise<Extent[] | undefined>((resolve, reject) => {
      this.pending.set(cookie, { type, offsetBytes, lengthBytes, target, resolve, reject, error: null, extents: undefined, dataBytes: 0 });
      const h = Buffer.allocUnsafe(C.REQUEST_HEADER_BYTES);
      encodeRequestHeader(h, 0, { flags, type, cookieHi: 0, cookieLo: cookie, offsetBytes, lengthBytes });
      if (!this.corked) {
        this.corked = true;
        this.socket.cork();
        process.nextTick(() => {
          this.corked = false;
          this.socket.uncork();
        });
      }
      this.socket.write(h);
      if (data !== null) this.socket.write(data);
    });
  }

  // ---- reply parsing ---------------------------------------------------------------------------

  private kill(reason: string): void {
    if (this.state === STATE_DEAD && this.pending.size === 0) return;
    this.state = STATE_DEAD;
    const err = this.dead ?? new ExportError('EIO', `nbd ${this.label}: ${reason}`);
    this.dead = err;
    const all = [...this.pending.values()];
    this.pending.clear();
    for (const p of all) p.reject(new ExportError('EIO', `nbd ${this.label}: ${reason}`));
    this.socket.destroy();
    this.wakeDrainWaiters();
  }

  private onData(chunk: Buffer): void {
    let pos = 0;
    const len = chunk.length;
    while (pos < len) {
      const state = this.state;
      if (state === STATE_HEADER) {
        // Need the magic to know the header size; assemble in hdrBuf when split.
        if (this.hdrHave === 0 && len - pos >= C.STRUCTURED_REPLY_HEADER_BYTES) {
          const size = replyHeaderBytes(chunk.readUInt32BE(pos));
          if (size === 0) return this.kill(`bad reply magic 0x${chunk.readUInt32BE(pos).toString(16)}`);
          decodeReplyHeader(chunk, pos, this.hdr);
          pos += size;
        } else {
          const needMagic = Math.max(0, 4 - this.hdrHave);
          if (needMagic > 0) {
            const k = Math.min(needMagic, len - pos);
            chunk.copy(this.hdrBuf, this.hdrHave, pos, pos + k);
            this.hdrHave += k;
            pos += k;
            if (this.hdrHave < 4) return;
          }
          const size = replyHeaderBytes(this.hdrBuf.readUInt32BE(0));
          if (size === 0) return this.kill(`bad reply magic 0x${this.hdrBuf.readUInt32BE(0).toString(16)}`);
          const k = Math.min(size - this.hdrHave, len - pos);
          chunk.copy(this.hdrBuf, this.hdrHave, pos, pos + k);
          this.hdrHave += k;
          pos += k;
          if (this.hdrHave < size) return;
          this.hdrHave = 0;
          decodeReplyHeader(this.hdrBuf, 0, this.hdr);
        }
        if (!this.onHeader()) return;
      } else if (state === STATE_SIMPLE_DATA || state === STATE_CHUNK_DATA) {
        const k = Math.min(this.left, len - pos);
        chunk.copy(this.cur!.target!, this.targetAt, pos, pos + k);
        this.targetAt += k;
        this.left -= k;
        pos += k;
        if (this.left === 0) {
          const p = this.cur!;
          this.cur = null;
          this.state = STATE_HEADER;
          if (state === STATE_SIMPLE_DATA) this.finish(p);
          else if ((this.hdr.flags & C.NBD_REPLY_FLAG_DONE) !== 0) this.finish(p);
        }
      } else if (state === STATE_CHUNK_OFFSET || state === STATE_CHUNK_PAYLOAD) {
        const buf = this.payload!;
        const k = Math.min(buf.length - this.payloadHave, len - pos);
        chunk.copy(buf, this.payloadHave, pos, pos + k);
        this.payloadHave += k;
        pos += k;
        if (this.payloadHave === buf.length) {
          this.payload = null;
          this.payloadHave = 0;
          this.state = STATE_HEADER;
          if (!(state === STATE_CHUNK_OFFSET ? this.onDataOffset(buf) : this.onChunkPayload(buf))) return;
        }
      } else return;
    }
  }

  /** Header decoded into this.hdr: set up the next state. False if the connection was killed. */
  private onHeader(): boolean {
    const h = this.hdr;
    const p = h.cookieHi === 0 ? this.pending.get(h.cookieLo) : undefined;
    if (p === undefined) {
      this.kill(`reply for unknown cookie ${h.cookieHi}:${h.cookieLo}`);
      return false;
    }
    if (h.magic === C.NBD_SIMPLE_REPLY_MAGIC) {
      if (h.error !== 0) {
        p.error = new ExportError(nbdToErrno(h.error), `nbd ${this.label}: server error ${h.error}`);
        if (h.error === C.NBD_ESHUTDOWN) this.serverShuttingDown();
        this.finish(p);
      } else if (p.type === C.NBD_CMD_READ) {
        if (this.negotiated.structuredReplies) {
          this.kill('simple reply to READ after structured replies were negotiated');
          return false;
        }
        this.cur = p;
        this.left = p.lengthBytes;
        this.targetAt = 0;
        this.state = STATE_SIMPLE_DATA;
        if (this.left === 0) {
          this.state = STATE_HEADER;
          this.finish(p);
        }
      } else this.finish(p);
      return true;
    }
    if (!this.negotiated.structuredReplies) {
      this.kill('structured reply without negotiation');
      return false;
    }
    this.cur = p;
    if (h.type === C.NBD_REPLY_TYPE_OFFSET_DATA) {
      if (p.type !== C.NBD_CMD_READ || h.lengthBytes < 8 + 1) {
        this.kill('bad OFFSET_DATA chunk');
        return false;
      }
      this.payload = Buffer.allocUnsafe(8);
      this.payloadHave = 0;
      this.state = STATE_CHUNK_OFFSET;
      return true;
    }
    if (h.lengthBytes > CHUNK_PAYLOAD_BYTES_MAX) {
      this.kill(`reply chunk of ${h.lengthBytes} bytes is too large`);
      return false;
    }
    if (h.lengthBytes === 0) return this.onChunkPayload(Buffer.alloc(0));
    this.payload = Buffer.allocUnsafe(h.lengthBytes);
    this.payloadHave = 0;
    this.state = STATE_CHUNK_PAYLOAD;
    return true;
  }

  private onDataOffset(offsetBuf: Buffer): boolean {
    const p = this.cur!;
    const off = readU64(offsetBuf, 0);
    const n = this.hdr.lengthBytes - 8;
    if (off < p.offsetBytes || off + n > p.offsetBytes + p.lengthBytes) {
      this.kill('OFFSET_DATA outside the request');
      return false;
    }
    p.dataBytes += n;
    this.targetAt = off - p.offsetBytes;
    this.left = n;
    this.state = STATE_CHUNK_DATA;
    return true;
  }

  private onChunkPayload(payload: Buffer): boolean {
    const h = this.hdr;
    const p = this.cur!;
    this.cur = null;
    const type = h.type;
    if ((type & C.NBD_REPLY_TYPE_ERROR_BIT) !== 0) {
      const e = decodeErrorPayload(payload, type);
      if (e === null) {
        this.kill('malformed error chunk');
        return false;
      }
      if (p.error === null) p.error = new ExportError(nbdToErrno(e.error), `nbd ${this.label}: ${e.message || `server error ${e.error}`}`);
      if (e.error === C.NBD_ESHUTDOWN) this.serverShuttingDown();
    } else if (type === C.NBD_REPLY_TYPE_OFFSET_HOLE) {
      const hole = decodeOffsetHolePayload(payload);
      if (hole === null || p.type !== C.NBD_CMD_READ || hole.offsetBytes < p.offsetBytes || hole.offsetBytes + hole.holeBytes > p.offsetBytes + p.lengthBytes) {
        this.kill('bad OFFSET_HOLE chunk');
        return false;
      }
      p.target!.fill(0, hole.offsetBytes - p.offsetBytes, hole.offsetBytes - p.offsetBytes + hole.holeBytes);
      p.dataBytes += hole.holeBytes;
    } else if (type === C.NBD_REPLY_TYPE_BLOCK_STATUS) {
      const bs = decodeBlockStatusPayload(payload);
      if (bs === null || p.type !== C.NBD_CMD_BLOCK_STATUS) {
        this.kill('bad BLOCK_STATUS chunk');
        return false;
      }
      if (bs.contextId === this.negotiated.baseAllocationContextId) {
        p.extents = bs.extents.map((e) => ({ lengthBytes: e.lengthBytes, flags: e.flags & (C.NBD_STATE_HOLE | C.NBD_STATE_ZERO) }));
      }
    } else if (type !== C.NBD_REPLY_TYPE_NONE) {
      this.kill(`unexpected reply chunk type ${type}`);
      return false;
    }
    if ((h.flags & C.NBD_REPLY_FLAG_DONE) !== 0) this.finish(p);
    return true;
  }

  private finish(p: Pending): void {
    // Find its cookie: the header we are on names it.
    this.pending.delete(this.hdr.cookieLo);
    if (p.error !== null) p.reject(p.error);
    else if (p.type === C.NBD_CMD_READ && this.negotiated.structuredReplies && p.dataBytes !== p.lengthBytes) {
      p.reject(new ExportError('EIO', `nbd ${this.label}: read reply covered ${p.dataBytes} of ${p.lengthBytes} bytes`));
    } else if (p.type === C.NBD_CMD_BLOCK_STATUS && (p.extents === undefined || p.extents.length === 0)) {
      p.reject(new ExportError('EIO', `nbd ${this.label}: block status reply without base:allocation extents`));
    } else p.resolve(p.extents);
    if (this.pending.size === 0) this.wakeDrainWaiters();
  }

  /** NBD_ESHUTDOWN: the spec says initiate a soft disconnect; refuse new requests meanwhile. */
  private serverShuttingDown(): void {
    if (this.dead !== null) return;
    this.dead = new ExportError('ESHUTDOWN', `nbd ${this.label}: server is shutting down`);
    const disc = (): void => {
      const h = Buffer.allocUnsafe(C.REQUEST_HEADER_BYTES);
      encodeRequestHeader(h, 0, { flags: 0, type: C.NBD_CMD_DISC, cookieHi: 0, cookieLo: 0, offsetBytes: 0, lengthBytes: 0 });
      if (!this.socket.destroyed) this.socket.end(h);
    };
    if (this.pending.size <= 1) queueMicrotask(disc); // the reply being finished is the last one
    else this.drainWaiters.push(disc);
  }

  private wakeDrainWaiters(): void {
    const w = this.drainWaiters;
    this.drainWaiters = [];
    for (const f of w) f();
  }
}
