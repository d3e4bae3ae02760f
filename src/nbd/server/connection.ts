// One client connection: handshake, then transmission, then close. Owns the socket's lifecycle
// and the handshake timeout; never throws out (every failure ends only this connection).

import type { Duplex } from 'node:stream';
import { ByteReader, StreamClosedError } from './byte-reader.js';
import type { ReadController } from './direct-read.js';
import { type HandshakeContext, serverHandshake } from './handshake.js';
import type { ServerLimits } from './limits.js';
import type { Logger } from './log.js';
import { Transmission, type TransmissionStats } from './transmission.js';

export class Connection {
  private transmission: Transmission | null = null;
  private closing = false;
  /** Resolves when the socket is closed and no request is in flight. */
  readonly done: Promise<void>;

  constructor(
    readonly id: number,
    private readonly socket: Duplex,
    private readonly ctx: HandshakeContext,
    private readonly limits: ServerLimits,
    private readonly log: Logger,
    private readonly readController: ReadController | null = null,
  ) {
    socket.on('error', (err: Error) => this.log.debug({ conn: id, err: err.message }, 'socket error'));
    this.done = this.run().catch((err: unknown) => {
      this.log.warn({ conn: id, err: err instanceof Error ? err.message : String(err) }, 'connection failed');
      this.destroy();
    });
  }

  stats(): TransmissionStats | null {
    return this.transmission?.stats() ?? null;
  }

  /** Server shutdown: handshakes are cut; transmissions stop reading, finish in-flight, then end. */
  shutdown(): void {
    this.closing = true;
    if (this.transmission === null) this.destroy();
    else this.transmission.stop();
  }

  private async run(): Promise<void> {
    Transmission.tune(this.socket);
    const closed = new Promise<void>((resolve) => this.socket.once('close', () => resolve()));
    const reader = new ByteReader(this.socket, this.limits.optionBytesMax + 64);
    const timer = setTimeout(() => {
      this.log.warn({ conn: this.id }, 'handshake timed out');
      this.destroy();
    }, this.limits.handshakeTimeoutMs);
    let result;
    try {
      result = await serverHandshake(
        { read: (n) => reader.read(n), write: (b) => void this.socket.write(b) },
        this.ctx,
      );
    } catch (err) {
      if (!(err instanceof StreamClosedError)) throw err;
      this.destroy();
      return;
    } finally {
      clearTimeout(timer);
    }
    const inputEnded = reader.inputEnded;
    const leftover = reader.detach();
    if (result.kind === 'abort') {
      this.socket.end();
      await closed;
      return;
    }
    if (result.kind === 'disconnect') {
      this.log.warn({ conn: this.id, reason: result.reason }, 'handshake violation: disconnecting');
      this.destroy();
      return;
    }
    if (this.socket.destroyed) return;
    this.log.debug({ conn: this.id, export: result.negotiated.exportName }, 'transmission');
    const t = new Transmission(this.socket, result.negotiated, this.limits, this.log, (reason) => {
      this.log.warn({ conn: this.id, reason }, 'protocol violation: disconnecting');
      this.destroy();
    });
    this.transmission = t;
    this.socket.once('close', () => t.closedBySocket());
    this.socket.once('end', () => t.inputEnd());
    this.readController?.lendTo(t);
    t.start(leftover);
    if (inputEnded) t.inputEnd();
    if (this.closing) t.stop();
    await t.finished;
    // Every reply is written (or the socket is gone); end our side once the queue has flushed.
    if (!this.socket.destroyed) this.socket.end();
    await closed;
  }

  private destroy(): void {
    this.transmission?.closedBySocket();
    this.socket.destroy();
  }
}
