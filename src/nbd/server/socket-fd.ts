// The libuv handle and fd behind a plain net.Socket, for writing and reading it directly (transmission.ts,
// idle-poll.ts). Node keeps them private; a socket without them (a TLS layer, another runtime) gives null and
// callers keep to the stream. A destroyed socket's fd may be reused: callers compare the handle before each use
// (handleIs).

import type { Duplex } from 'node:stream';

export interface SocketFd {
  readonly handle: object;
  readonly fd: number;
}

type WithHandle = Duplex & { _handle?: { fd?: unknown } | null };

/** The socket's handle and fd, or null (no handle with an fd). */
export function socketFd(socket: Duplex): SocketFd | null {
  const h = (socket as WithHandle)._handle;
  if (h === undefined || h === null || typeof h.fd !== 'number' || h.fd < 0) return null;
  return { handle: h, fd: h.fd };
}

/** The socket still has the handle we took its fd from. */
export function handleIs(socket: Duplex, handle: unknown): boolean {
  return (socket as WithHandle)._handle === handle;
}
