// NBD URIs (doc/uri.md of NetworkBlockDevice/nbd): parse and format. Pure.
//   nbd://host[:port][/export]              TCP, port defaults to 10809
//   nbd+unix:///[export]?socket=PATH        unix socket
//   nbds://[user@]host[:port][/export], nbds+unix://[user@]/[export]?socket=PATH   the same over TLS
//       (STARTTLS, ../tls/client-tls.ts), with libnbd's query parameters:
//       tls-certificates=DIR  ca-cert.pem (+ client-cert.pem, client-key.pem) instead of the system CAs
//       tls-psk-file=FILE     psktool file; user@ is the PSK identity
//       tls-verify-peer=false skip verifying the server's certificate (only when asked for)
//       tls-hostname=NAME     the name the server certificate must carry (default: host; unix: localhost)
// The export name is the path without its leading '/', percent-decoded. vsock is rejected.
// Unknown query parameters are diagnosed, as the URI spec asks; `x-` ones are accepted and ignored,
// tls-* ones are refused on plaintext schemes (they would silently not apply).

export const NBD_DEFAULT_PORT = 10809;

export type NbdUri =
  | { readonly kind: 'tcp'; readonly host: string; readonly port: number; readonly exportName: string; readonly tls?: NbdUriTls }
  | { readonly kind: 'unix'; readonly socketPath: string; readonly exportName: string; readonly tls?: NbdUriTls };

/** Present exactly when the scheme is nbds / nbds+unix. */
export interface NbdUriTls {
  readonly certificatesDir?: string;
  readonly pskFile?: string;
  /** user@ of the URI: the PSK identity. */
  readonly username?: string;
  /** false only when the URI says tls-verify-peer=false. */
  readonly verifyPeer: boolean;
  readonly hostname?: string;
}

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
const TLS_PARAMS = new Set(['tls-hostname', 'tls-verify-peer', 'tls-certificates', 'tls-psk-file']);

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
  if (scheme === 'nbd+vsock' || scheme === 'nbds+vsock') throw new NbdUriError(uri, 'vsock is not supported');
  if (scheme !== 'nbd' && scheme !== 'nbd+unix' && scheme !== 'nbds' && scheme !== 'nbds+unix') {
    throw new NbdUriError(uri, `unknown scheme "${scheme}" (expected nbd, nbd+unix, nbds or nbds+unix)`);
  }
  const secure = scheme.startsWith('nbds');
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
    if (key === 'tls-type') continue; // libnbd accepts it; only anonymous/x509/psk exist and we infer which
    if (TLS_PARAMS.has(key)) {
      if (!secure) throw new NbdUriError(uri, `${key} needs a TLS scheme (nbds:// or nbds+unix://)`);
      continue;
    }
    if (key !== 'socket' && !key.startsWith('x-')) throw new NbdUriError(uri, `unknown query parameter "${key}"`);
  }
  const at = authority.lastIndexOf('@');
  const username = at < 0 ? undefined : decode(uri, authority.slice(0, at), 'user name');
  let tls: NbdUriTls | undefined;
  if (secure) {
    const verify = params.get('tls-verify-peer');
    if (verify !== undefined && !['true', 'false', '1', '0'].includes(verify)) {
      throw new NbdUriError(uri, `tls-verify-peer must be true or false, got "${verify}"`);
    }
    const certificatesDir = params.get('tls-certificates');
    const pskFile = params.get('tls-psk-file');
    if (certificatesDir !== undefined && pskFile !== undefined) throw new NbdUriError(uri, 'give tls-certificates or tls-psk-file, not both');
    const hostname = params.get('tls-hostname');
    tls = {
      verifyPeer: verify === undefined || verify === 'true' || verify === '1',
      ...(certificatesDir !== undefined && certificatesDir !== '' ? { certificatesDir } : {}),
      ...(pskFile !== undefined && pskFile !== '' ? { pskFile } : {}),
      ...(username !== undefined && username !== '' ? { username } : {}),
      ...(hostname !== undefined && hostname !== '' ? { hostname } : {}),
    };
  } // user@ on a plaintext scheme means nothing (libnbd ignores it too)

  if (scheme === 'nbd+unix' || scheme === 'nbds+unix') {
    if (authority.slice(at + 1) !== '') throw new NbdUriError(uri, `${scheme} URIs take no host (write ${scheme}:///export?socket=PATH)`);
    const socketPath = params.get('socket');
    if (socketPath === undefined || socketPath === '') throw new NbdUriError(uri, `${scheme} needs ?socket=PATH`);
    return tls === undefined ? { kind: 'unix', socketPath, exportName } : { kind: 'unix', socketPath, exportName, tls };
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
  return tls === undefined ? { kind: 'tcp', host, port, exportName } : { kind: 'tcp', host, port, exportName, tls };
}

function encodeExport(name: string): string {
  return encodeURIComponent(name).replace(/%2F/g, '/');
}

function encodePath(p: string): string {
  return encodeURIComponent(p).replace(/%2F/g, '/');
}

export function formatNbdUri(u: NbdUri): string {
  const t = u.tls;
  const user = t?.username !== undefined ? `${encodeURIComponent(t.username)}@` : '';
  const q: string[] = [];
  if (u.kind === 'unix') q.push(`socket=${encodePath(u.socketPath)}`);
  if (t?.certificatesDir !== undefined) q.push(`tls-certificates=${encodePath(t.certificatesDir)}`);
  if (t?.pskFile !== undefined) q.push(`tls-psk-file=${encodePath(t.pskFile)}`);
  if (t?.hostname !== undefined) q.push(`tls-hostname=${encodeURIComponent(t.hostname)}`);
  if (t !== undefined && !t.verifyPeer) q.push('tls-verify-peer=false');
  const query = q.length === 0 ? '' : `?${q.join('&')}`;
  if (u.kind === 'unix') return `${t ? 'nbds' : 'nbd'}+unix://${user}/${encodeExport(u.exportName)}${query}`;
  const host = u.host.includes(':') ? `[${u.host}]` : u.host;
  const port = u.port === NBD_DEFAULT_PORT ? '' : `:${u.port}`;
  return `${t ? 'nbds' : 'nbd'}://${user}${host}${port}/${encodeExport(u.exportName)}${query}`;
}
