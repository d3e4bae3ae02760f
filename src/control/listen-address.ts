// Parses the `--listen` forms the CLI accepts (`unix:PATH`, `tcp:HOST:PORT`) into a ListenAddress and
// formats them back for messages. Pure: opens nothing, touches no file (the runtime checks the socket
// path's directory when it binds). Every rejection names the bad text.
import { resolve } from 'node:path';
import { UsageError } from './usage-error.js';

export type ListenAddress =
  | { readonly kind: 'tcp'; readonly host: string; readonly port: number }
  | { readonly kind: 'unix'; readonly path: string };

/** sun_path is 108 bytes on Linux, one of which is the terminating NUL. */
export const UNIX_SOCKET_PATH_BYTES_MAX = 107;
export const TCP_PORT_MAX = 65535;
/** The IANA port for NBD, as nbd-server, nbdkit and qemu-nbd use. */
export const NBD_DEFAULT_PORT = 10809;
export const DEFAULT_LISTEN: ListenAddress = { kind: 'tcp', host: '127.0.0.1', port: NBD_DEFAULT_PORT };

export function parseListenAddress(text: string): ListenAddress {
  if (text.startsWith('unix:')) return parseUnix(text, text.slice('unix:'.length));
  if (text.startsWith('tcp:')) return parseTcp(text, text.slice('tcp:'.length));
  throw new UsageError(`bad --listen address "${text}": expected unix:PATH or tcp:HOST:PORT`);
}

function parseUnix(text: string, pathText: string): ListenAddress {
  if (pathText.length === 0) throw new UsageError(`bad --listen address "${text}": empty socket path`);
  const path = resolve(pathText);
  const pathBytes = Buffer.byteLength(path);
  if (pathBytes > UNIX_SOCKET_PATH_BYTES_MAX) {
    throw new UsageError(
      `bad --listen address "${text}": socket path is ${pathBytes} bytes, the limit is ${UNIX_SOCKET_PATH_BYTES_MAX}`,
    );
  }
  return { kind: 'unix', path };
}

function parseTcp(text: string, rest: string): ListenAddress {
  // The port follows the last colon; an IPv6 host is written in brackets: tcp:[::1]:10809.
  const colon = rest.lastIndexOf(':');
  if (colon < 0) throw new UsageError(`bad --listen address "${text}": expected tcp:HOST:PORT`);
  let host = rest.slice(0, colon);
  const portText = rest.slice(colon + 1);
  if (host.startsWith('[') && host.endsWith(']')) host = host.slice(1, -1);
  else if (host.includes(':')) {
    throw new UsageError(`bad --listen address "${text}": write an IPv6 host in brackets, e.g. tcp:[::1]:10809`);
  }
  if (host.length === 0) throw new UsageError(`bad --listen address "${text}": empty host`);
  if (!/^[0-9]+$/.test(portText)) {
    throw new UsageError(`bad --listen address "${text}": port "${portText}" is not a number`);
  }
  const port = Number(portText);
  if (port > TCP_PORT_MAX) {
    throw new UsageError(`bad --listen address "${text}": port ${port} is above ${TCP_PORT_MAX}`);
  }
  return { kind: 'tcp', host, port };
}

export function formatListenAddress(address: ListenAddress): string {
  if (address.kind === 'unix') return `unix:${address.path}`;
  return `tcp:${address.host.includes(':') ? `[${address.host}]` : address.host}:${address.port}`;
}
