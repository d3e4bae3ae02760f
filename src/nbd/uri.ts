// NBD URIs (doc/uri.md of NetworkBlockDevice/nbd): parse and format. Pure.
//   nbd://host[:port][/export]              TCP, port defaults to 10809
//   nbd+unix:///[export]?socket=PATH        unix socket
// The export name is the path without its leading '/', percent-decoded. TLS schemes (nbds,
// nbds+unix) and vsock are rejected with a clear message since this client has no TLS or vsock.
// Unknown query parameters are diagnosed, as the URI spec asks; `x-` ones and the tls-* ones
// (meaningful only with TLS) are accepted and ignored.

export const NBD_DEFAULT_PORT = 10809;

export type NbdUri =
  | { readonly kind: 'tcp'; readonly host: string; readonly port: number; readonly exportName: string }
  | { readonly kind: 'unix'; readonly socketPath: string; readonly exportName: string };

export class NbdUriError extends Error {
  readonly code = 'ERR_NBD_URI';
  constructor(
    readonly uri: string,
    reason: string,
  ) {
    super(`bad NBD URI "${uri}": ${reason}`);
    this.name = 'NbdUriError';
  }
}

const URI_RE = /^([A-Za-z][A-Za-z0-9+.-]*):\/\/([^/?#]*)([^?#]*)(?:\?([^#]*))?(?:#.*)?$/;
const IGNORED_PARAMS = new Set(['tls-type', 'tls-hostname', 'tls-verify-peer', 'tls-certificates', 'tls-psk-file']);

function decode(uri: string, s: string, what: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    throw new NbdUriError(uri, `bad percent-encoding in ${what}`);
  }
}

export function parseNbdUri(uri: string): NbdUri {
  const m = URI_RE.exec(uri);
  if (m === null) throw new NbdUriError(uri, 'expected scheme://[host[:port]]/[export][?query]');
  const scheme = m[1]!.toLowerCase();
  const authority = m[2]!;
  const path = m[3]!;
  const query = m[4];
  if (scheme === 'nbds' || scheme === 'nbds+unix') throw new NbdUriError(uri, `scheme ${scheme} requires TLS, which is not supported`);
  if (scheme === 'nbd+vsock' || scheme === 'nbds+vsock') throw new NbdUriError(uri, 'vsock is not supported');
  if (scheme !== 'nbd' && scheme !== 'nbd+unix') throw new NbdUriError(uri, `unknown scheme "${scheme}" (expected nbd or nbd+unix)`);
  if (path !== '' && !path.startsWith('/')) throw new NbdUriError(uri, 'path must start with /');
  const exportName = decode(uri, path.slice(1), 'export name');
  if (exportName.includes('\0')) throw new NbdUriError(uri, 'export name contains NUL');
  if (Buffer.byteLength(exportName) > 4096) throw new NbdUriError(uri, 'export name longer than 4096 bytes');

  const params = new Map<string, string>();
  if (query !== undefined && query !== '') {
    for (const part of query.split('&')) {
      if (part === '') continue;
      const eq = part.indexOf('=');
      const key = decode(uri, eq < 0 ? part : part.slice(0, eq), 'query');
      const value = decode(uri, eq < 0 ? '' : part.slice(eq + 1), 'query');
      if (params.has(key)) throw new NbdUriError(uri, `query parameter "${key}" given twice`);
      params.set(key, value);
    }
  }
  for (const key of params.keys()) {
    if (key !== 'socket' && !key.startsWith('x-') && !IGNORED_PARAMS.has(key)) {
      throw new NbdUriError(uri, `unknown query parameter "${key}"`);
    }
  }

  if (scheme === 'nbd+unix') {
    if (authority !== '') throw new NbdUriError(uri, 'nbd+unix URIs take no host (write nbd+unix:///export?socket=PATH)');
    const socketPath = params.get('socket');
    if (socketPath === undefined || socketPath === '') throw new NbdUriError(uri, 'nbd+unix needs ?socket=PATH');
    return { kind: 'unix', socketPath, exportName };
  }
  if (params.has('socket')) throw new NbdUriError(uri, 'socket= is only valid with nbd+unix');
  // authority: [userinfo@]host[:port]
  const hostPort = authority.slice(authority.lastIndexOf('@') + 1);
  let host: string;
  let portText: string | undefined;
  if (hostPort.startsWith('[')) {
    const close = hostPort.indexOf(']');
    if (close < 0) throw new NbdUriError(uri, 'unterminated [IPv6] host');
    host = hostPort.slice(1, close);
    const rest = hostPort.slice(close + 1);
    if (rest !== '' && !rest.startsWith(':')) throw new NbdUriError(uri, 'junk after [IPv6] host');
    portText = rest === '' ? undefined : rest.slice(1);
  } else {
    const colon = hostPort.indexOf(':');
    host = colon < 0 ? hostPort : hostPort.slice(0, colon);
    portText = colon < 0 ? undefined : hostPort.slice(colon + 1);
    host = decode(uri, host, 'host');
  }
  if (host === '') throw new NbdUriError(uri, 'nbd URIs need a host (nbd://host[:port]/export)');
  let port = NBD_DEFAULT_PORT;
  if (portText !== undefined && portText !== '') {
    if (!/^[0-9]{1,5}$/.test(portText) || Number(portText) < 1 || Number(portText) > 65535) {
      throw new NbdUriError(uri, `bad port "${portText}"`);
    }
    port = Number(portText);
  }
  return { kind: 'tcp', host, port, exportName };
}

function encodeExport(name: string): string {
  return encodeURIComponent(name).replace(/%2F/g, '/');
}

export function formatNbdUri(u: NbdUri): string {
  if (u.kind === 'unix') return `nbd+unix:///${encodeExport(u.exportName)}?socket=${encodeURIComponent(u.socketPath).replace(/%2F/g, '/')}`;
  const host = u.host.includes(':') ? `[${u.host}]` : u.host;
  const port = u.port === NBD_DEFAULT_PORT ? '' : `:${u.port}`;
  return `nbd://${host}${port}/${encodeExport(u.exportName)}`;
}
