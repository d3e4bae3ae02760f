// One client connection: handshake, then transmission, then close. Owns the socket's lifecycle
// and the handshake timeout; never throws out (every failure ends only this connection).
// After STARTTLS the socket is replaced by the TLS stream (upgradeTls, see ../tls/server-tls.ts) and
// the handshake continues over it; the timeout covers the TLS handshake too. Bytes the client sent
// after STARTTLS before our reply (pipelined plaintext) end the connection.

import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { ByteReader, StreamClosedError } from './byte-reader.js';
import { lendTlsReads, ReadController, TLS_DIRECT_READ_BYTES_MIN } from './direct-read.js';
import { type HandshakeContext, type HandshakeResult, serverHandshake } from './handshake.js';
import { IdlePoll } from './idle-poll.js';
import type { ServerLimits } from './limits.js';
import type { Logger } from './log.js';
import { widenSendBuffer } from './send-buffer.js';
import { Transmission, type TransmissionStats } from './transmission.js';

export class Connection {
  private transmission: Transmission | null = null;
  /** The export this connection is in transmission with (resolved name); null during the handshake. */
  exportName: string | null = null;
  private closing = false;
  /** Resolves when the socket is closed and no request is in flight. */
  readonly done: Promise<void>;

  constructor(
    readonly id: number,
    private socket: Duplex,
    private readonly ctx: HandshakeContext,
    private readonly limits: ServerLimits,
    private readonly log: Logger,
    private readonly readController: ReadController | null = null,
    /** Runs the TLS handshake after STARTTLS; rejects if the peer proves nothing acceptable. */
    private readonly upgradeTls: ((socket: Duplex) => Promise<Duplex>) | null = null,
    /** After STARTTLS, decrypt WRITE payloads straight into their buffers (lendTlsReads). */
    private readonly tlsDirectReads = true,
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
    widenSendBuffer(this.socket, this.limits.sendBufferBytes); // the raw socket: under TLS too
    let closed = new Promise<void>((resolve) => this.socket.once('close', () => resolve()));
    let reader = new ByteReader(this.socket, this.limits.optionBytesMax + 64);
    const timer = setTimeout(() => {
      this.log.warn({ conn: this.id, limit: 'handshakeTimeoutMs', handshakeTimeoutMs: this.limits.handshakeTimeoutMs }, 'handshake timed out');
      this.destroy();
    }, this.limits.handshakeTimeoutMs);
    let result: HandshakeResult;
    let upgraded = false;
    try {
      result = await serverHandshake(
        { read: (n) => reader.read(n), write: (b) => void this.socket.write(b) },
        this.ctx,
      );
      if (result.kind === 'starttls') {
        const pipelined = reader.detach();
        if (pipelined.length > 0 || this.upgradeTls === null) {
          result = { kind: 'disconnect', reason: `${pipelined.length} bytes sent after STARTTLS before its reply` };
        } else {
          let tlsSocket: Duplex;
          try {
            tlsSocket = await this.upgradeTls(this.socket);
          } catch (err) {
            this.log.warn({ conn: this.id, err: err instanceof Error ? err.message : String(err) }, 'TLS handshake failed: disconnecting');
            this.destroy();
            return;
          }
          this.socket = tlsSocket;
          upgraded = true;
          tlsSocket.on('error', (err: Error) => this.log.debug({ conn: this.id, err: err.message }, 'TLS socket error'));
          closed = new Promise<void>((resolve) => tlsSocket.once('close', () => resolve()));
          reader = new ByteReader(tlsSocket, this.limits.optionBytesMax + 64);
          const resume = result.resume;
          result = await serverHandshake(
            { read: (n) => reader.read(n), write: (b) => void tlsSocket.write(b) },
            this.ctx,
            resume,
          );
          // A second STARTTLS is refused inside the handshake (NBD_REP_ERR_INVALID), never returned.
          if (result.kind === 'starttls') throw new Error('STARTTLS accepted twice');
        }
      }
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
    this.exportName = result.negotiated.exportName;
    this.socket.once('close', () => t.closedBySocket());
    this.socket.once('end', () => t.inputEnd());
    if (!upgraded) {
      this.readController?.lendTo(t);
      t.useDirectWrites();
      const poll = this.readController === null ? null : IdlePoll.attach(this.readController, this.socket as Socket, t, this.limits.pollMaxUs);
      if (poll !== null) t.usePolling(poll);
    } else if (this.tlsDirectReads) {
      // Over TLS the raw socket feeds the TLS layer; the cleartext goes to our buffers (direct-read.ts).
      const ctl = new ReadController(TLS_DIRECT_READ_BYTES_MIN);
      if (lendTlsReads(this.socket, ctl)) ctl.lendTo(t);
    }
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
