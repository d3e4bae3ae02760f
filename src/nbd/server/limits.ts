// Named limits of the NBD server, with safe defaults. Every client-claimed length is checked
// against one of these before anything is allocated for it.

import { DEFAULT_PAYLOAD_BYTES_MAX } from '../codec/constants.js';
import { SEND_BUFFER_BYTES, SEND_BUFFER_BYTES_MAX } from './send-buffer.js';

export interface ServerLimits {
  /** Largest READ/WRITE payload accepted (advertised as the maximum block size). */
  readonly requestBytesMax: number;
  /** Requests being served at once per connection; past it the socket is paused. */
  readonly inFlightRequestsMax: number;
  /** Payload bytes held per connection (write payloads received, read replies allocated). */
  readonly inFlightBytesMax: number;
  /** Reply bytes queued in the socket the client has not read; past it no new work is issued. */
  readonly writeBufferedBytesMax: number;
  /** Largest option data accepted in the handshake; larger disconnects. */
  readonly optionBytesMax: number;
  /** Options per handshake; more disconnects (a client looping on options is a DoS). */
  readonly optionsMax: number;
  /** Queries in one LIST/SET_META_CONTEXT. */
  readonly metaContextQueriesMax: number;
  /** Time allowed from accept to the end of the handshake. */
  readonly handshakeTimeoutMs: number;
  /** Open connections per server; more are closed at once. */
  readonly connectionsMax: number;
  /** Open connections per peer (TCP: remote address; unix: uid when known); more are closed at once. */
  readonly connectionsPerPeerMax: number;
  /**
   * Longest spin for a connection's next request after it answered everything at once (idle-poll.ts;
   * qemu's poll-max-ns). 0: never spin.
   */
  readonly pollMaxUs: number;
  /**
   * SO_SNDBUF asked for on a unix-socket connection (send-buffer.ts; the kernel doubles it, capped at
   * net.core.wmem_max; TCP keeps its autotuning). 0: leave the system default.
   */
  readonly sendBufferBytes: number;
}

/** Limits that may be 0 (off). */
const ZERO_ALLOWED: ReadonlySet<keyof ServerLimits> = new Set(['pollMaxUs', 'sendBufferBytes']);
/** Above this a spin is no longer "a short while" (and a typo could burn a core per client). */
export const POLL_MAX_US_LIMIT = 1000;

export const DEFAULT_SERVER_LIMITS: ServerLimits = Object.freeze({
  requestBytesMax: DEFAULT_PAYLOAD_BYTES_MAX, // 32 MiB, what the spec says servers SHOULD accept
  inFlightRequestsMax: 128,
  inFlightBytesMax: 64 * 1024 * 1024,
  writeBufferedBytesMax: 16 * 1024 * 1024,
  optionBytesMax: 64 * 1024,
  optionsMax: 256,
  metaContextQueriesMax: 128,
  handshakeTimeoutMs: 30_000,
  connectionsMax: 1024,
  connectionsPerPeerMax: 256,
  pollMaxUs: 32, // qemu's default
  sendBufferBytes: SEND_BUFFER_BYTES,
});

export function resolveLimits(partial: Partial<ServerLimits> | undefined): ServerLimits {
  const l: ServerLimits = { ...DEFAULT_SERVER_LIMITS, ...(partial ?? {}) };
  for (const [k, v] of Object.entries(l)) {
    const zeroOk = ZERO_ALLOWED.has(k as keyof ServerLimits);
    if (!Number.isSafeInteger(v) || v < 0 || (v === 0 && !zeroOk)) {
      throw new RangeError(`server limit ${k} must be a ${zeroOk ? 'non-negative' : 'positive'} integer, got ${v}`);
    }
  }
  if (l.pollMaxUs > POLL_MAX_US_LIMIT) throw new RangeError(`pollMaxUs must be at most ${POLL_MAX_US_LIMIT}, got ${l.pollMaxUs}`);
  if (l.sendBufferBytes > SEND_BUFFER_BYTES_MAX) throw new RangeError(`sendBufferBytes must be at most ${SEND_BUFFER_BYTES_MAX}, got ${l.sendBufferBytes}`);
  if (l.requestBytesMax > 0xffffffff) throw new RangeError('requestBytesMax must fit in 32 bits');
  // Below the socket's own high-water mark a full buffer might never emit 'drain' to resume us.
  if (l.writeBufferedBytesMax < 64 * 1024) throw new RangeError('writeBufferedBytesMax must be at least 64 KiB');
  if (l.optionBytesMax < 4096 + 8) throw new RangeError('optionBytesMax must admit a 4096-byte export name');
  return Object.freeze(l);
}
