// Reading straight into our own buffers (Node's `onread` socket option), so a WRITE payload
// lands in its final buffer with no copy from a socket chunk, and large payloads take a few big
// reads instead of many 64 KiB ones.
//
// net.Server has no onread option, so an accepted socket's handle is adopted into a new
// net.Socket constructed with onread (the `handle` option is what net.Server itself uses). If
// that is not possible (no _handle, e.g. another Node), adoptSocket returns null and the caller
// uses the plain socket: everything works, only without the zero-copy path.
//
// Data still reaches the protocol code as 'data' events emitted by the ReadController, so the
// handshake reader and Transmission stay stream-agnostic. During the handshake each chunk is a
// copy (the reader keeps chunks); in transmission a chunk is a view of a scratch buffer: the
// Transmission copies small payloads out of it, and says if it still kept a view (a stash while
// paused), in which case a fresh scratch is used for the next read.

import { Socket } from 'node:net';

/** What Transmission offers the reader: a place for the next read, and notice of bytes landed there. */
export interface DirectReadTarget {
  /** From now on 'data' chunks are views of a reused buffer: copy what must be kept. */
  lendInput(): void;
  /** A buffer to read the next bytes into directly (the rest of a WRITE payload), or null. */
  nextReadTarget(): Buffer | null;
  /** n bytes were read into the buffer nextReadTarget() returned. */
  directRead(n: number): void;
  /** True (once) if the last 'data' chunk is still referenced (payload view or stash). */
  takeRetained(): boolean;
}

export const SCRATCH_BYTES = 64 * 1024;

export class ReadController {
  private scratch: Buffer = Buffer.allocUnsafeSlow(SCRATCH_BYTES);
  private lastWasDirect = false;
  private target: DirectReadTarget | null = null;
  socket: Socket | null = null;

  /** Transmission phase: chunks are lent (views), payload reads go direct. */
  lendTo(target: DirectReadTarget): void {
    target.lendInput();
    this.target = target;
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
    return this.scratch;
  };

  readonly callback = (n: number, buf: Uint8Array): boolean => {
    const socket = this.socket!;
    if (this.lastWasDirect) {
      this.target!.directRead(n);
      return true;
    }
    const view = Buffer.from(buf.buffer, buf.byteOffset, n);
    if (this.target === null) {
      socket.emit('data', Buffer.from(view)); // handshake: the reader keeps chunks, so copy
      return true;
    }
    socket.emit('data', view);
    if (this.target.takeRetained()) this.scratch = Buffer.allocUnsafeSlow(SCRATCH_BYTES);
    return true;
  };
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
