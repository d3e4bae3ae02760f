// Client side of NBD_OPT_STARTTLS for nbds:// and nbds+unix:// URIs: after the server's ACK, run
// the TLS handshake over the connected socket and resolve only once the server proved who it is.
//
// Fails closed: the server certificate must chain to ca-cert.pem of tls-certificates=DIR (or to the
// system CAs without a DIR) and carry the expected host name (tls-hostname=, else the URI host, else
// "localhost" for unix sockets); with tls-psk-file= the server must know our key. Only
// tls-verify-peer=false skips the certificate checks. A refused STARTTLS is never downgraded to
// plaintext. Until this resolves, no NBD option naming an export and no data has been sent.

import type { Socket } from 'node:net';
import { userInfo } from 'node:os';
import { checkServerIdentity, connect as tlsConnect, type PeerCertificate, type TLSSocket } from 'node:tls';
import { isIP } from 'node:net';
import type { NbdUri, NbdUriTls } from '../uri.js';
import { loadClientTls, type ClientTlsMaterial } from './config.js';
import { splitLargeTlsWrites } from './tls-writes.js';

export class ClientTlsError extends Error {
  readonly code = 'ERR_NBD_TLS_CLIENT';
  constructor(message: string) {
    super(message);
    this.name = 'ClientTlsError';
  }
}

function loginName(): string {
  try {
    return userInfo().username;
  } catch {
    return process.env.USER ?? 'nbd';
  }
}

/** Read the key material a URI names (throws TlsConfigError naming the file). Done before connecting. */
export function clientTlsMaterial(t: NbdUriTls): ClientTlsMaterial {
  return loadClientTls(
    {
      verifyPeer: t.verifyPeer,
      ...(t.certificatesDir !== undefined ? { certificatesDir: t.certificatesDir } : {}),
      ...(t.pskFile !== undefined ? { pskFile: t.pskFile } : {}),
      ...(t.username !== undefined ? { username: t.username } : {}),
    },
    loginName,
  );
}

/** The name the server certificate must carry. */
export function expectedServerName(u: NbdUri): string {
  if (u.tls?.hostname !== undefined) return u.tls.hostname;
  return u.kind === 'tcp' ? u.host : 'localhost';
}

export function startClientTls(socket: Socket, u: NbdUri, material: ClientTlsMaterial): Promise<TLSSocket> {
  const t = u.tls!;
  const name = expectedServerName(u);
  const verify = t.verifyPeer && material.kind !== 'psk';
  const s = tlsConnect({
    socket,
    secureContext: material.secureContext,
    ...(isIP(name) === 0 ? { servername: name } : {}),
    rejectUnauthorized: verify,
    checkServerIdentity: (_host: string, cert: PeerCertificate) => (verify ? checkServerIdentity(name, cert) : undefined),
    ...(material.psk !== null
      ? { pskCallback: () => ({ identity: material.psk!.identity, psk: material.psk!.key }) }
      : {}),
  });
  return new Promise<TLSSocket>((resolve, reject) => {
    const fail = (why: string): void => {
      cleanup();
      s.destroy();
      reject(new ClientTlsError(why));
    };
    const onError = (err: Error & { code?: string }): void => {
      const what = material.kind === 'psk' ? `TLS-PSK handshake as "${material.psk!.identity}" failed` : 'TLS handshake failed';
      fail(`${what}: ${err.code !== undefined && !err.message.includes(err.code) ? `${err.code}: ` : ''}${err.message}`);
    };
    const onClose = (): void => fail('connection closed during the TLS handshake');
    const onSecure = (): void => {
      cleanup();
      if (verify && !s.authorized) {
        fail(`server certificate not trusted: ${String(s.authorizationError)}`); // belt and braces: rejectUnauthorized already refuses
        return;
      }
      splitLargeTlsWrites(s); // a 1 MiB WRITE payload is encrypted in place, not concatenated with its header
      resolve(s);
    };
    const cleanup = (): void => {
      s.off('secureConnect', onSecure);
      s.off('error', onError);
      s.off('close', onClose);
    };
    s.once('secureConnect', onSecure);
    s.once('error', onError);
    s.once('close', onClose);
  });
}
