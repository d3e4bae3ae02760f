// The pipes one connection splices READ replies through (splice.ts): taken empty for a fill, given back
// once their bytes went to the socket, closed when their content is unknown and at the connection's end.
// Owns the bounds: SPLICE_PIPES_PER_CONNECTION_MAX per connection, SPLICE_PIPES_PROCESS_MAX in the process
// (each pipe is two fds and may pin up to SPLICE_PIPE_BYTES of page-cache pages until its reply is sent).
// Without a pipe (a bound reached, pipe creation refused) the READ is copied as before.

import { closeSync } from 'node:fs';
import type { SplicePipe } from '../export.js';
import type { SpliceIo } from './splice.js';

/** Capacity asked for each pipe (the kernel caps it at /proc/sys/fs/pipe-max-size, 1 MiB by default). */
export const SPLICE_PIPE_BYTES = 1024 * 1024;
/** Filled pipes one connection may hold (QD8 of 1 MiB reads: every queued reply spliced). */
export const SPLICE_PIPES_PER_CONNECTION_MAX = 8;
/** Pipes open in the whole process. */
export const SPLICE_PIPES_PROCESS_MAX = 64;

let processOpen = 0;

/** Pipes open in this process (tests: none left after the connections ended). */
export function splicePipesOpen(): number {
  return processOpen;
}

export class Pipe implements SplicePipe {
  constructor(
    readonly readFd: number,
    readonly writeFd: number,
    readonly capacityBytes: number,
  ) {}
}

export class SplicePipes {
  private readonly idle: Pipe[] = [];
  private open = 0;
  /** Pipe creation failed (EMFILE, over the user's pipe pages): no new pipe until one of ours is closed. */
  private refused = false;

  /** The addon (the connection splices and reads its pipes through it). */
  constructor(readonly io: SpliceIo) {}

  /** An empty pipe for `lengthBytes` (whole pages), or null: none to be had (the READ is copied instead). */
  take(lengthBytes: number): Pipe | null {
    const p = this.idle.pop();
    if (p !== undefined) return lengthBytes <= p.capacityBytes ? p : (this.idle.push(p), null);
    if (this.refused || this.open >= SPLICE_PIPES_PER_CONNECTION_MAX || processOpen >= SPLICE_PIPES_PROCESS_MAX) return null;
    const r = this.io.pipe(SPLICE_PIPE_BYTES);
    if (typeof r === 'number') {
      this.refused = true;
      return null;
    }
    this.open++;
    processOpen++;
    const pipe = new Pipe(r[0], r[1], r[2]);
    if (lengthBytes <= pipe.capacityBytes) return pipe;
    this.idle.push(pipe);
    return null;
  }

  /** A pipe whose bytes all went out: reused. */
  give(p: Pipe): void {
    this.idle.push(p);
  }

  /** A pipe an export declined or failed to fill: reused if empty, else closed (its content is unknown). */
  recycle(p: Pipe): void {
    if (this.io.pending(p.readFd) === 0) this.idle.push(p);
    else this.close(p);
  }

  close(p: Pipe): void {
    closeSync(p.readFd);
    closeSync(p.writeFd);
    this.open--;
    processOpen--;
    this.refused = false;
  }

  /** The connection ended: close the idle pipes (the caller closes those it still holds). */
  closeIdle(): void {
    for (const p of this.idle.splice(0)) this.close(p);
  }
}
