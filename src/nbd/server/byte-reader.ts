// Pull-style reader over any Duplex for the handshake: read(n) resolves with exactly n bytes.
// Buffered input is bounded (the stream is paused above highWaterBytes), so a client cannot make
// us hold more than one option's worth plus one chunk. detach() hands leftover bytes to the next
// phase (transmission, or a TLS upgrade) and removes every listener, so the stream can be reused.

import type { Duplex } from 'node:stream';

export class StreamClosedError extends Error {
  constructor(message = 'connection closed') {
    super(message);
    this.name = 'StreamClosedError';
  }
}

export class ByteReader {
  private chunks: Buffer[] = [];
  private bufferedBytes = 0;
  private want = 0;
  private resolveWant: ((b: Buffer) => void) | null = null;
  private rejectWant: ((e: Error) => void) | null = null;
  private ended: Error | null = null;
  private readonly onData = (chunk: Buffer): void => {
    this.chunks.push(chunk);
    this.bufferedBytes += chunk.length;
    if (this.bufferedBytes > this.highWaterBytes) this.stream.pause();
    this.satisfy();
  };
  private readonly onEnd = (): void => this.fail(new StreamClosedError());
  private readonly onError = (err: Error): void => this.fail(new StreamClosedError(err.message));

  constructor(
    private readonly stream: Duplex,
    private readonly highWaterBytes: number,
  ) {
    stream.on('data', this.onData);
    stream.on('end', this.onEnd);
    stream.on('close', this.onEnd);
    stream.on('error', this.onError);
  }

  /** True once the stream ended or closed (buffered bytes may remain). */
  get inputEnded(): boolean {
    return this.ended !== null;
  }

  read(n: number): Promise<Buffer> {
    if (this.resolveWant !== null) throw new Error('ByteReader: concurrent read');
    if (n > this.highWaterBytes) throw new RangeError(`read of ${n} exceeds reader bound ${this.highWaterBytes}`);
    return new Promise<Buffer>((resolve, reject) => {
      this.want = n;
      this.resolveWant = resolve;
      this.rejectWant = reject;
      this.satisfy();
    });
  }

  /** Remove listeners; return bytes received but not consumed. */
  detach(): Buffer {
    this.stream.off('data', this.onData);
    this.stream.off('end', this.onEnd);
    this.stream.off('close', this.onEnd);
    this.stream.off('error', this.onError);
    const rest = this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks);
    this.chunks = [];
    this.bufferedBytes = 0;
    return rest;
  }

  private fail(err: Error): void {
    if (this.ended === null) this.ended = err;
    this.satisfy();
  }

  private satisfy(): void {
    const resolve = this.resolveWant;
    if (resolve === null) return;
    if (this.bufferedBytes >= this.want) {
      const out = this.take(this.want);
      this.resolveWant = null;
      this.rejectWant = null;
      if (this.stream.isPaused() && this.bufferedBytes <= this.highWaterBytes) this.stream.resume();
      resolve(out);
    } else if (this.ended !== null) {
      const reject = this.rejectWant!;
      this.resolveWant = null;
      this.rejectWant = null;
      reject(this.ended);
    } else if (this.stream.isPaused()) {
      this.stream.resume();
    }
  }

  private take(n: number): Buffer {
    const first = this.chunks[0];
    if (first !== undefined && first.length >= n) {
      const out = first.subarray(0, n);
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
      this.bufferedBytes -= n;
      return out;
    }
    const out = Buffer.allocUnsafe(n);
    let have = 0;
    while (have < n) {
      const c = this.chunks[0]!;
      const k = Math.min(c.length, n - have);
      c.copy(out, have, 0, k);
      have += k;
      if (k === c.length) this.chunks.shift();
      else this.chunks[0] = c.subarray(k);
    }
    this.bufferedBytes -= n;
    return out;
  }
}
