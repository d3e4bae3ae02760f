// Adaptive busy polling of an idle connection (qemu's AioContext polling, per connection): after a chunk
// whose requests were all answered at once and sent (Transmission.pollReady: nothing in flight, nothing
// queued; at a request boundary or in a small WRITE's payload), spin on the socket for the next bytes for
// up to the window (poll-window.ts) instead of sleeping in epoll. Owns the spin, the gap measurement and
// the hand-over of what the spin read.
//
// Why: waking a halted vCPU costs ~8 us on a VM. A C ping-pong over a unix socketpair here: 20-22 us per
// round trip with the server sleeping in poll, 12-15 us with it spinning after each reply. That is the
// whole of a QD1 client's wait; a request answered from the page cache costs about as much again.
//
// The spin runs in a setImmediate after the chunk's read callback (so other sockets and timers get their
// turn of the event loop between two spins) and only on a plain socket with the fast-io addon's spinRead,
// which spins in C. What it reads goes through ReadController.polled(), the same input path as Node's
// reads (into a buffer Node will not read into: see direct-read.ts). EOF is left in the socket: Node's
// next read finds it and ends the stream as usual. Any other read error destroys the socket with the
// error, as Node does on a failed read. Never a spin while a request is in flight (pool I/O): its reply
// comes from a completion, not from a chunk's parse, and nothing calls idle(). Never while Node's next read
// goes straight into a WRITE payload (the spin's bytes would land before it). Never while another polling
// connection is busy too (SharedInput in poll-window.ts): qemu polls all its handlers at once, we spin on one
// socket, so the other client's requests would wait behind the spin (both then sleep in epoll, as before).
// Never while other tasks want every CPU (cpu-contention.ts): the spin would take one from them.

import type { Socket } from 'node:net';
import { constants } from 'node:os';
import { performance } from 'node:perf_hooks';
import { cpusContended } from './cpu-contention.js';
import type { ReadController } from './direct-read.js';
import { fastIo, systemError } from './fast-io.js';
import { handleIs, socketFd } from './socket-fd.js';
import { PollWindow, SharedInput } from './poll-window.js';

const EAGAIN = constants.errno.EAGAIN;
const NS_PER_MS = 1e6;
/** Requests one spin() may catch before it lets the event loop turn (other connections wait meanwhile). */
const POLL_TURN_READS_MAX = 16;

/** Whether other connections of this process are busy too (then nobody spins). */
const shared = new SharedInput();

/** What the poll asks of the Transmission before spinning. */
export interface PollSource {
  pollReady(): boolean;
}

type SpinRead = (fd: number, buf: Uint8Array, offset: number, length: number, spinNs: number) => number;

export class IdlePoll {
  private readonly window: PollWindow;
  /** performance.now() when the last reply left with nothing else to do; -1 once input came. */
  private idleAtMs = -1;
  private scheduled = false;
  /** In spin(), processing what it read. */
  private spinning = false;
  /** Reads the spin caught (stats). */
  polledReads = 0;
  private readonly spinBound = (): void => this.spin();

  private constructor(
    private readonly ctl: ReadController,
    private readonly socket: Socket,
    private readonly handle: unknown,
    private readonly fd: number,
    private readonly spinRead: SpinRead,
    private readonly source: PollSource,
    maxNs: number,
  ) {
    this.window = new PollWindow(maxNs);
  }

  /**
   * An idle poll for `socket` (a plain one, read through `ctl`), or null: pollMaxUs is 0, the addon (or its
   * spinRead) is missing, or the socket has no fd.
   */
  static attach(ctl: ReadController, socket: Socket, source: PollSource, pollMaxUs: number): IdlePoll | null {
    if (pollMaxUs <= 0) return null;
    const io = fastIo();
    const spinRead = io?.spinRead;
    if (io === null || spinRead === undefined) return null;
    const sf = socketFd(socket);
    if (sf === null) return null;
    const p = new IdlePoll(ctl, socket, sf.handle, sf.fd, spinRead.bind(io), source, pollMaxUs * 1000);
    ctl.onNodeRead = (): void => p.arrived();
    return p;
  }

  /** Current window in ns (stats). */
  get windowNs(): number {
    return this.window.windowNs;
  }

  /** Everything received is answered and sent: spin for the next request soon. */
  idle(): void {
    const now = performance.now();
    this.idleAtMs = now;
    // (While spinning, spin() goes on by itself; another busy connection: no spin, see the header.)
    if (this.spinning || this.scheduled || this.window.windowNs === 0 || !shared.alone(now) || cpusContended(now)) return;
    this.scheduled = true;
    setImmediate(this.spinBound);
  }

  /** Node's read brought input: it came without the spin (too short a window, or none). */
  private arrived(): void {
    const now = performance.now();
    shared.note(this, now);
    if (this.idleAtMs < 0) return;
    this.window.waited((now - this.idleAtMs) * NS_PER_MS);
    this.idleAtMs = -1;
  }

  private spin(): void {
    this.scheduled = false;
    const s = this.socket;
    for (let reads = 0; this.idleAtMs >= 0; ) {
      const now = performance.now();
      const leftNs = Math.round(this.window.windowNs - (now - this.idleAtMs) * NS_PER_MS);
      // Same handle as when attached (a destroyed socket's fd may be reused), and nothing to do but wait;
      // and no other connection busy (its requests would wait behind the spin).
      if (leftNs <= 0 || !handleIs(s, this.handle) || s.destroyed || !this.source.pollReady() || this.ctl.nodeReadsDirect || !shared.alone(now) || cpusContended(now)) return;
      if (reads === POLL_TURN_READS_MAX) {
        // Let the rest of the event loop run (other connections, timers); spin again after it.
        this.scheduled = true;
        setImmediate(this.spinBound);
        return;
      }
      const buf = this.ctl.pollBuffer();
      const n = this.spinRead(this.fd, buf, 0, buf.length, leftNs);
      if (n <= 0) {
        if (n < 0 && n !== -EAGAIN) {
          this.idleAtMs = -1;
          this.socket.destroy(systemError(n, 'read'));
        }
        return; // -EAGAIN: nothing within the window, Node's read measures the gap; 0: EOF, left for Node's read
      }
      this.idleAtMs = -1; // caught: the window stays
      this.polledReads++;
      shared.note(this, performance.now());
      reads++;
      this.spinning = true;
      try {
        this.ctl.polled(n); // parsed; answered at once again: idle() sets idleAtMs and we go round
      } finally {
        this.spinning = false;
      }
    }
  }
}
