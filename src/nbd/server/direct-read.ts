// Reading straight into our own buffers (Node's `onread` socket option), so a WRITE payload
// lands in its final buffer with no copy from a socket chunk, and large payloads take a few big
// reads instead of many 64 KiB ones.
//
// net.Server has no onread option, so an accepted socket's handle is adopted into a new
// net.Socket constructed with onread (the `handle` option is what net.Server itself uses). If
// that is not possible (no _handle, e.g. another Node), adoptSocket returns null and the caller
// uses the plain socket: everything works, only without the zero-copy path.
//
// Under TLS the same controller sits on the TLS socket instead (lendTlsReads): Node's TLS layer hands
// each decrypted piece (at most one 16 KiB record) to a user buffer when the stream has one, so a
// WRITE payload is decrypted straight into its buffer, with no Buffer allocated per record (measured:
// that churn cost ~20% of the server's CPU in garbage collection for 1 MiB writes), no Readable.push,
// and no copy out of a chunk. Node only takes `onread` for TLS sockets it connects itself, so the
// user buffer is installed on the TLS handle after the handshake (the internal symbols are found by
// their descriptions; if they are not there, the TLS socket keeps its 'data' events).
//
// During the handshake data reaches the protocol code as 'data' events emitted by the ReadController
// (the handshake reader stays stream-agnostic), each chunk a copy (the reader keeps chunks). In
// transmission the controller hands chunks straight to Transmission.input(), each a view of a scratch
// buffer. A small WRITE payload inside the chunk is handed to the export as a view of the scratch,
// held (hold/release) until the export is done with it: the next reads go to another scratch (a free
// one, or a new one) and the held one is reused once its last view is released. At most
// SCRATCH_HELD_MAX scratches are held per connection; past that the Transmission copies the payload out
// instead. A scratch the Transmission keeps a view of otherwise (a stash while paused, takeRetained) is
// never reused.
//
// The idle poll (idle-poll.ts) reads on the same fd between Node's reads. It never reads into the buffer
// Node has installed for its next read (what buffer() last returned: Node takes it after each callback and
// may read into it any time later), but into a scratch of its own (pollBuffer), processed by polled()
// exactly as a read of Node's would be; so Node's installed buffer is never held or abandoned under it.

import { Socket } from 'node:net';
import type { Duplex } from 'node:stream';

/** What Transmission offers the reader: a place for the next read, and notice of bytes landed there. */
export interface DirectReadTarget {
  /**
   * From now on input chunks are views of a reused buffer (copy what must be kept, or hold it through
   * `lender`), handed to input() rather than emitted as 'data'. A payload with at least
   * `directReadBytesMin` bytes still to come is read straight into its buffer (nextReadTarget).
   */
  lendInput(directReadBytesMin: number, lender: ScratchLender): void;
  /** Input: chunk[0, end) (the reader's scratch buffer: valid during the call only unless held). */
  input(chunk: Buffer, end: number): void;
  /** A buffer to read the next bytes into directly (the rest of a WRITE payload), or null. */
  nextReadTarget(): Buffer | null;
  /** n bytes were read into the buffer nextReadTarget() returned. */
  directRead(n: number): void;
  /** True (once) if the last 'data' chunk is still referenced (payload view or stash). */
  takeRetained(): boolean;
}

export const SCRATCH_BYTES = 64 * 1024;
/** Scratch buffers held by payload views per connection (1 MiB); past it payloads are copied out. */
export const SCRATCH_HELD_MAX = 16;
/** Released scratch buffers kept for reuse per connection. */
export const SCRATCH_FREE_MAX = 4;

/** A read buffer and the number of payload views of it the export still holds. */
export class Scratch {
  holds = 0;
  /** A view of it is kept beyond the holds (a stash): never reuse it. */
  abandoned = false;
  constructor(readonly buf: Buffer) {}
}

/**
 * Payload bytes still to come from which a read goes straight into the payload buffer. On a plain socket
 * a direct read is a read(2) of its own, so only large payloads (below, the scratch read takes the next
 * headers too). Under TLS each decrypted record is handed over on its own anyway and a direct read only
 * means the record is decrypted into the payload instead of scratch: worth it for any payload but a
 * tiny tail (libnbd sends a 4 KiB write as one record for the header and one for the payload).
 */
export const DIRECT_READ_BYTES_MIN = 16 * 1024;
export const TLS_DIRECT_READ_BYTES_MIN = 1024;

/** What the reader offers the Transmission: keeping views of the chunk being processed. */
export interface ScratchLender {
  /** Keep the chunk being processed (input()) valid until release(); null: at the limit, copy instead. */
  hold(): Scratch | null;
  release(s: Scratch): void;
}

export class ReadController implements ScratchLender {
  private scratch = new Scratch(Buffer.allocUnsafeSlow(SCRATCH_BYTES));
  private readonly free: Scratch[] = [];
  /** Scratches with holds > 0. */
  private heldScratches = 0;
  private lastWasDirect = false;
  private target: DirectReadTarget | null = null;
  /** The idle poll's read buffer (see the header); replaced when a payload view holds it, as `scratch` is. */
  private pollScratch: Scratch | null = null;
  socket: Socket | null = null;
  /** Called when Node's read brings input (the idle poll measures the gap since the last reply). */
  onNodeRead: (() => void) | null = null;

  constructor(private readonly directReadBytesMin = DIRECT_READ_BYTES_MIN) {}

  /** Transmission phase: chunks are lent (views), payload reads go direct. */
  lendTo(target: DirectReadTarget): void {
    target.lendInput(this.directReadBytesMin, this);
    this.target = target;
  }

  hold(): Scratch | null {
    const s = this.scratch;
    if (s.holds === 0) {
      if (this.heldScratches >= SCRATCH_HELD_MAX) return null;
      this.heldScratches++;
    }
    s.holds++;
    return s;
  }

  release(s: Scratch): void {
    if (--s.holds !== 0) return;
    this.heldScratches--;
    if (s !== this.scratch && s !== this.pollScratch && !s.abandoned && this.free.length < SCRATCH_FREE_MAX) this.free.push(s);
  }

  readonly buffer = (): Buffer => {
    const t = this.target;
    if (t !== null) {
      const direct = t.nextReadTarget();
      if (direct !== null) {
        this.lastWasDirect = true;
        return direct;
      }
    }
    this.lastWasDirect = false;
    return this.scratch.buf;
  };

  readonly callback = (n: number, buf: Uint8Array): boolean => {
    if (this.onNodeRead !== null) this.onNodeRead();
    return this.consume(n, buf);
  };

  /** Node's next read goes straight into a WRITE payload (then the idle poll must not read: it would land first). */
  get nodeReadsDirect(): boolean {
    return this.lastWasDirect;
  }

  /** The buffer the idle poll reads into: never the one Node's next read goes to (see the header). */
  pollBuffer(): Buffer {
    return (this.pollScratch ??= this.free.pop() ?? new Scratch(Buffer.allocUnsafeSlow(SCRATCH_BYTES))).buf;
  }

  /** The idle poll read n bytes into pollBuffer(): processed as Node's read into a scratch would be. */
  polled(n: number): void {
    const nodeScratch = this.scratch;
    const nodeDirect = this.lastWasDirect;
    this.scratch = this.pollScratch!;
    this.lastWasDirect = false;
    try {
      this.consume(n, this.scratch.buf);
    } finally {
      this.pollScratch = this.scratch; // another one if a payload view holds it now, or a stash
      this.scratch = nodeScratch; // what Node reads into next, whatever happened
      this.lastWasDirect = nodeDirect;
    }
  }

  private consume(n: number, buf: Uint8Array): boolean {
    const socket = this.socket!;
    if (this.lastWasDirect) {
      this.target!.directRead(n);
      return true;
    }
    const target = this.target;
    if (target === null) {
      socket.emit('data', Buffer.from(buf.subarray(0, n))); // handshake: the reader keeps chunks, so copy
      return true;
    }
    const s = this.scratch;
    // Straight to the parser: no 'data' event (one per TLS record at 4 KiB QD32), no view per read.
    // (Always our scratch; were it ever another buffer, a copy: nothing then views a buffer we did not hold.)
    target.input(buf === s.buf ? s.buf : Buffer.from(buf.subarray(0, n)), n);
    if (target.takeRetained()) {
      s.abandoned = true; // a stash views it: read into another buffer, never reuse this one
      this.scratch = this.free.pop() ?? new Scratch(Buffer.allocUnsafeSlow(SCRATCH_BYTES));
    } else if (s.holds > 0) {
      this.scratch = this.free.pop() ?? new Scratch(Buffer.allocUnsafeSlow(SCRATCH_BYTES));
    }
    return true;
  }
}

interface SocketInternals {
  _handle?: unknown;
  _server?: unknown;
}

/**
 * Re-home an accepted (paused) socket's handle into a socket that reads through `ctl`.
 * Returns null if this Node does not allow it; the raw socket is then untouched.
 */
export function adoptSocket(raw: Socket, ctl: ReadController, allowHalfOpen: boolean): Socket | null {
  const r = raw as unknown as SocketInternals;
  if (r._handle === undefined || r._handle === null) return null;
  let s: Socket;
  try {
    s = new Socket({ handle: r._handle, allowHalfOpen, onread: { buffer: ctl.buffer, callback: ctl.callback } } as unknown as ConstructorParameters<typeof Socket>[0]);
  } catch {
    return null;
  }
  // The new socket owns the handle and the server's connection count (net.Server.close waits on it).
  (s as unknown as SocketInternals)._server = r._server;
  r._server = null;
  r._handle = null;
  ctl.socket = s;
  return s;
}

interface UserBufferHandle {
  useUserBuffer?: (buf: Uint8Array) => void;
}

/**
 * Make a connected TLS socket deliver its cleartext through `ctl` (see the header), from the next read
 * on. Call it between two reads (no listener may be in the middle of a chunk) and before lendTo().
 * Returns false, touching nothing, when this Node does not have the internals it needs.
 */
export function lendTlsReads(tls: Duplex, ctl: ReadController): boolean {
  const s = tls as unknown as Record<symbol, unknown> & { _handle?: UserBufferHandle | null };
  const handle = s._handle;
  if (handle === null || handle === undefined || typeof handle.useUserBuffer !== 'function') return false;
  const byName = new Map<string, symbol>();
  for (const sym of Object.getOwnPropertySymbols(tls)) if (sym.description !== undefined) byName.set(sym.description, sym);
  const kBuffer = byName.get('kBuffer');
  const kBufferCb = byName.get('kBufferCb');
  const kBufferGen = byName.get('kBufferGen');
  if (kBuffer === undefined || kBufferCb === undefined || kBufferGen === undefined) return false;
  if (s[kBuffer] !== null || s[kBufferCb] !== null || s[kBufferGen] !== null) return false; // already in use
  if ((tls as Partial<Socket>).readableLength) return false; // chunks still queued as 'data': keep that path
  ctl.socket = tls as Socket;
  const first = ctl.buffer();
  handle.useUserBuffer(first);
  s[kBuffer] = first;
  s[kBufferGen] = ctl.buffer;
  s[kBufferCb] = ctl.callback;
  return true;
}
