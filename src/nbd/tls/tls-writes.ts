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
