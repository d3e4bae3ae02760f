// An in-memory Duplex standing in for a socket: tests push() client bytes in chosen splits and
// collect what the other side wrote. Lets the real server Connection and NbdClient run without
// the kernel deciding chunk boundaries.

import { Duplex } from 'node:stream';

export class FakeSocket extends Duplex {
  readonly written: Buffer[] = [];
  constructor() {
    super({ allowHalfOpen: true });
  }
  override _read(): void {}
  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (e?: Error | null) => void): void {
    this.written.push(Buffer.from(chunk));
    cb();
  }
  override _writev(chunks: { chunk: Buffer }[], cb: (e?: Error | null) => void): void {
    for (const c of chunks) this.written.push(Buffer.from(c.chunk));
    cb();
  }
  output(): Buffer {
    return Buffer.concat(this.written);
  }
}

export async function until(cond: () => boolean, timeoutMs = 2000): Promise<void> {
  const start = Date.now();
  while (!cond()) {
    if (Date.now() - start > timeoutMs) throw new Error('timed out waiting for condition');
    await new Promise((r) => setImmediate(r));
  }
}
