// The send buffer of a connection's unix socket. Linux's default (net.core.wmem_default, 208 KiB) holds a
// fifth of a 1 MiB READ reply: the server fills it, waits for the client to drain most of it, and the client,
// having emptied it, waits for the next write. Asking for 1 MiB lets a whole reply (and, over TLS, several
// 256 KiB pieces of ciphertext) sit in the socket while the client reads. Measured (fio read 1M QD8 over a
// unix socket, mirror against the same build with the default, interleaved rounds on the 2-vCPU machine):
// 1.24x and 1.35x throughput, 0.83-0.87x server CPU per request; over TLS ~1.2x (d0619b6).
//
// TCP sockets are left alone: their send buffer grows by itself (tcp_wmem autotuning, up to 4 MiB by
// default), and setting SO_SNDBUF would pin it. The kernel doubles what is asked and caps it at
// net.core.wmem_max; the buffer is never lowered. It bounds the kernel memory a connection's unread replies
// take (at twice this); the server's own queue is bounded by writeBufferedBytesMax as before.

import type { Duplex } from 'node:stream';
import { fastIo } from './fast-io.js';
import { socketFd } from './socket-fd.js';

/** Default send buffer asked for on a unix-socket connection (ServerLimits.sendBufferBytes). */
export const SEND_BUFFER_BYTES = 1024 * 1024;
/** Largest value accepted: past it a typo would pin tens of MiB of kernel memory per connection. */
export const SEND_BUFFER_BYTES_MAX = 64 * 1024 * 1024;
export const SEND_BUFFER_ENV = 'NBD_MIRROR_SEND_BUFFER_BYTES';
/** Session 7's name, TLS connections only; refused at start so that a setting of it is not silently ignored. */
export const OLD_TLS_SEND_BUFFER_ENV = 'NBD_MIRROR_TLS_SEND_BUFFER_BYTES';

/**
 * Raise the send buffer of a connection's unix socket to `bytes` (never lowers it). Returns the size the
 * kernel keeps, or null when it was not set (0 asked, a TCP socket, no fast-io addon or an addon without
 * setSendBuffer, no fd, an error): the connection then works as before, with the default.
 */
export function widenSendBuffer(socket: Duplex, bytes: number): number | null {
  if (bytes <= 0 || typeof (socket as { remoteAddress?: unknown }).remoteAddress === 'string') return null;
  const set = fastIo()?.setSendBuffer;
  const sf = socketFd(socket);
  if (set === undefined || sf === null) return null;
  const r = set(sf.fd, bytes);
  return r > 0 ? r : null;
}
