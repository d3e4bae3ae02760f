// How replies leave a TLS socket without an extra copy. Node's TLS layer (TLSWrap::DoWrite) encrypts a
// write of one buffer in place, but a writev of several buffers is first concatenated into one new
// allocation. A stream's queued writes (a cork, or writes issued while the previous one is still
// being encrypted and sent, which at QD8 of 1 MiB reads is most of them) leave as one writev, so every
// 1 MiB read reply was copied once more (measured: memmove was 23% of the server's CPU for 1 MiB reads
// over TLS, more than AES-GCM).
//
// splitLargeTlsWrites replaces the socket's _writev: a chunk of at least TLS_WRITE_ALONE_BYTES_MIN (the
// largest TLS record's plaintext: concatenating it with others saves no record) is written on its own;
// runs of smaller chunks still go as one writev (one TLS record for many 16-byte replies, what the cork
// is for). It also replaces _write: a chunk longer than TLS_WRITE_PIECE_BYTES is handed to the TLS
// layer in pieces (see there). The callback contract is unchanged: one call when every chunk was
// written, or the first error.

import type { Duplex } from 'node:stream';
import { fastIo } from '../server/fast-io.js';
import { socketFd } from '../server/socket-fd.js';

/** Chunks at least this long (16 KiB: a full TLS record) are encrypted on their own, never concatenated. */
export const TLS_WRITE_ALONE_BYTES_MIN = 16 * 1024;
/**
 * A chunk longer than this goes to the TLS layer in pieces of this size, each once the previous one is
 * in the kernel. TLSWrap encrypts a whole write before sending any of it and takes the next write only
 * when the previous one has left: a 1 MiB read reply was 64 records encrypted in one go (~0.3 ms) while
 * the client, having drained the socket buffer, waited; then the server waited while the client
 * decrypted. In pieces the next piece is encrypted while the client still has the socket buffer to read,
 * and TLSWrap holds at most a piece of ciphertext instead of the whole reply. Measured (fio read 1M QD8
 * over TLS against whole writes, interleaved rounds on the loaded 2-core machine): throughput 1.07x (8
 * rounds) and 0.94x (10 rounds), i.e. no effect measurable there; server CPU per request 3-7% lower;
 * 64 KiB pieces cost ~9% more CPU per request.
 */
export const TLS_WRITE_PIECE_BYTES = 256 * 1024;

interface WritevChunk {
  chunk: Buffer | string;
  encoding: BufferEncoding | string;
}
type WriteCb = (err?: Error | null) => void;
type WritevChunks = WritevChunk[] & { allBuffers?: boolean };
interface WritableInternals {
  _write?: (chunk: Buffer | string, encoding: string, cb: WriteCb) => void;
  _writev?: ((chunks: WritevChunks, cb: WriteCb) => void) | null;
}

/** Install on a connected TLS socket (see the header). Returns false if the socket has no _writev. */
export function splitLargeTlsWrites(socket: Duplex, aloneBytesMin = TLS_WRITE_ALONE_BYTES_MIN, pieceBytes = TLS_WRITE_PIECE_BYTES): boolean {
  const s = socket as unknown as WritableInternals;
  const writev = s._writev;
  const writeWhole = s._write;
  if (typeof writev !== 'function' || typeof writeWhole !== 'function') return false;
  const pieceWrite = function pieceWrite(this: WritableInternals, chunk: Buffer | string, encoding: BufferEncoding | string, cb: WriteCb): void {
    if (typeof chunk === 'string' || chunk.length <= pieceBytes) {
      writeWhole.call(this, chunk, encoding, cb);
      return;
    }
    let at = 0;
    inSequence((next) => {
      if (at >= chunk.length) return false;
      const end = Math.min(at + pieceBytes, chunk.length);
      const piece = chunk.subarray(at, end);
      at = end;
      writeWhole.call(this, piece, encoding, next);
      return true;
    }, cb);
  };
  const write = pieceBytes > 0 ? pieceWrite : writeWhole;
  s._write = write;
  s._writev = function splitWritev(this: WritableInternals, chunks: WritevChunks, cb: WriteCb): void {
    let large = false;
    for (let k = 0; k < chunks.length; k++) {
      if (chunks[k]!.chunk.length >= aloneBytesMin) {
        large = true;
        break;
      }
    }
    if (!large) {
      writev.call(this, chunks, cb);
      return;
    }
    let i = 0;
    inSequence((next) => {
      if (i >= chunks.length) return false;
      const c = chunks[i]!;
      let j = i + 1;
      if (c.chunk.length < aloneBytesMin) while (j < chunks.length && chunks[j]!.chunk.length < aloneBytesMin) j++;
      if (j - i === 1) {
        i = j;
        write.call(this, c.chunk, c.encoding, next);
        return true;
      }
      const run: WritevChunks = chunks.slice(i, j);
      run.allBuffers = chunks.allBuffers;
      i = j;
      writev.call(this, run, next);
      return true;
    }, cb);
  };
  return true;
}

/**
 * Writes one after another: `step(next)` starts the next write with `next` as its callback and returns
 * true, or returns false when nothing is left; `cb` gets null after the last one, or the first error.
 */
function inSequence(step: (next: WriteCb) => boolean, cb: WriteCb): void {
  const next = (err?: Error | null): void => {
    if (err) cb(err);
    else if (!step(next)) cb(null);
  };
  next();
}

/**
 * SO_SNDBUF asked for on a TLS connection's unix socket (the kernel doubles it, capped at net.core.wmem_max:
 * 2 MiB here, 416 KiB with Linux's default cap). The default (net.core.wmem_default, 208 KiB) holds less
 * than one 256 KiB piece of ciphertext: a piece of a 1 MiB read reply then fills the socket, the rest waits
 * in TLSWrap until the client has drained most of it, and only then is the next piece encrypted while the
 * client, having emptied the socket, waits for it. With room for several pieces the server encrypts ahead
 * while the client reads. Measured (fio read 1M QD8, X.509, TLS 1.3, interleaved rounds, see the commit):
 * ~1.2x throughput. It bounds the kernel memory of a connection at this (doubled), as before at the default.
 * NBD_MIRROR_TLS_SEND_BUFFER_BYTES overrides it (0: leave the socket's default).
 */
export const TLS_SEND_BUFFER_BYTES = 1024 * 1024;

/**
 * Raise the send buffer of the unix socket under a TLS connection to `bytes` (never lowers it). Returns
 * the size the kernel keeps, or null when it was not set (a TCP socket, no fast-io addon or an addon
 * without setSendBuffer, no fd, an error): the connection then works as before, with the default.
 */
export function widenSendBuffer(socket: Duplex, bytes = sendBufferBytesOrOff()): number | null {
  // Unix sockets only: a TCP socket's send buffer grows by itself (tcp_wmem autotuning, up to 4 MiB by
  // default), and setting SO_SNDBUF would pin it, switching that off.
  if (bytes <= 0 || typeof (socket as { remoteAddress?: unknown }).remoteAddress === 'string') return null;
  const set = fastIo()?.setSendBuffer;
  const sf = socketFd(socket);
  if (set === undefined || sf === null) return null;
  const r = set(sf.fd, bytes);
  return r > 0 ? r : null;
}

export const TLS_SEND_BUFFER_ENV = 'NBD_MIRROR_TLS_SEND_BUFFER_BYTES';
export const TLS_SEND_BUFFER_BYTES_MAX = 64 * 1024 * 1024;

/**
 * The send buffer to ask for: TLS_SEND_BUFFER_ENV when set, else TLS_SEND_BUFFER_BYTES. A value that is not
 * an integer from 0 to TLS_SEND_BUFFER_BYTES_MAX throws, naming the variable (`serve` checks it at start).
 */
export function tlsSendBufferBytes(): number {
  const v = process.env[TLS_SEND_BUFFER_ENV];
  if (v === undefined || v === '') return TLS_SEND_BUFFER_BYTES;
  if (!/^[0-9]+$/.test(v) || Number(v) > TLS_SEND_BUFFER_BYTES_MAX) {
    throw new RangeError(`${TLS_SEND_BUFFER_ENV}=${v}: expected an integer from 0 to ${TLS_SEND_BUFFER_BYTES_MAX}`);
  }
  return Number(v);
}

/** tlsSendBufferBytes(), or 0 (leave the default) on a bad value: `serve` refused it at start already. */
function sendBufferBytesOrOff(): number {
  try {
    return tlsSendBufferBytes();
  } catch {
    return 0;
  }
}
