// Server side of NBD_OPT_STARTTLS: owns the current key material (swapped whole by reload(), so
// clients already connected keep their sessions and new handshakes use the new keys) and the TLS
// handshake of one connection after the NBD_REP_ACK to STARTTLS.
//
// upgrade() resolves only when the handshake completed AND the peer proved who it is: a PSK identity
// found in the file, or (with verifyPeer) a certificate chain verified against ca-cert.pem. Anything
// else rejects (TlsUpgradeError) and the caller closes that connection only. Plaintext bytes after
// the upgrade are not TLS records: the TLS layer fails and the connection closes.

import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { TLSSocket } from 'node:tls';
import type { PeerIdentity } from '../server/authz.js';
import { normalizeDn } from '../server/authz.js';
import type { Logger } from '../server/log.js';
import { splitLargeTlsWrites } from './tls-writes.js';
import { loadServerTls, type ServerTlsMaterial, type ServerTlsSettings, type TlsMode } from './config.js';

export class TlsUpgradeError extends Error {
  readonly code = 'ERR_NBD_TLS_HANDSHAKE';
  constructor(message: string) {
    super(message);
    this.name = 'TlsUpgradeError';
  }
}

interface TlsHandleInternals {
  _handle?: { verifyError?: () => (Error & { code?: string }) | null | undefined } | null;
}

export class ServerTls {
  private material: ServerTlsMaterial;
  private reloads = 0;

  /** Reads the key material now; throws TlsConfigError (bad flags, files, key permissions). */
  constructor(
    readonly settings: ServerTlsSettings,
    private readonly log: Logger,
  ) {
    this.material = loadServerTls(settings);
  }

  get mode(): TlsMode {
    return this.settings.mode;
  }

  get kind(): 'x509' | 'psk' {
    return this.material.kind;
  }

  /** PSK identities currently known (for checking --allow psk: rules at start). */
  pskIdentities(): readonly string[] {
    return this.material.pskKeys === null ? [] : [...this.material.pskKeys.keys()];
  }

  /**
   * Re-read keys and certificates. On success new handshakes use them (connected clients keep their
   * sessions); on failure the old material stays and the error is thrown. Returns a one-line summary.
   */
  reload(): string {
    const next = loadServerTls(this.settings);
    this.material = next;
    this.reloads++;
    const what = next.kind === 'psk' ? `${next.pskKeys!.size} PSK identities` : 'X.509 certificates';
    this.log.info({ tls: next.kind, reloads: this.reloads }, `TLS keys reloaded (${what})`);
    return `reloaded ${what}`;
  }

  /**
   * Run the TLS handshake over `socket` (the STARTTLS reply already sent). Fills in `peer` with what
   * the client proved. Rejects if the handshake fails or the peer proves nothing acceptable.
   */
  upgrade(socket: Duplex, peer: PeerIdentity): Promise<TLSSocket> {
    const m = this.material; // this handshake uses the material current now, even if a reload follows
    let pskIdentity: string | undefined;
    let unknownIdentity: string | undefined;
    const tlsSocket = new TLSSocket(socket as Socket, {
      isServer: true,
      secureContext: m.secureContext,
      requestCert: m.verifyPeer,
      rejectUnauthorized: m.verifyPeer,
      ...(m.kind === 'psk'
        ? {
            pskCallback: (_s: TLSSocket, identity: string): Buffer | null => {
              const key = m.pskKeys!.get(identity);
              if (key === undefined) {
                unknownIdentity = identity;
                return null;
              }
              pskIdentity = identity;
              return key;
            },
          }
        : {}),
    });
    return new Promise<TLSSocket>((resolve, reject) => {
      const fail = (why: string): void => {
        cleanup();
        tlsSocket.destroy();
        reject(new TlsUpgradeError(why));
      };
      const onError = (err: Error): void => {
        if (unknownIdentity !== undefined) fail(`unknown PSK identity "${unknownIdentity}"`);
        else if (pskIdentity !== undefined && /binder does not verify/.test(err.message)) fail(`wrong PSK key for identity "${pskIdentity}"`);
        else fail(`TLS handshake failed: ${err.message.trim()}`);
      };
      const onClose = (): void => fail(unknownIdentity !== undefined ? `unknown PSK identity "${unknownIdentity}"` : 'connection closed during the TLS handshake');
      const onSecure = (): void => {
        cleanup();
        if (m.kind === 'psk') {
          if (pskIdentity === undefined) {
            fail('TLS session without a PSK identity');
            return;
          }
          peer.pskIdentity = pskIdentity;
        } else {
          const cert = tlsSocket.getPeerX509Certificate();
          if (m.verifyPeer) {
            const handle = (tlsSocket as unknown as TlsHandleInternals)._handle;
            if (typeof handle?.verifyError !== 'function') {
              fail('cannot check the client certificate on this Node version'); // fail closed
              return;
            }
            const verr = handle.verifyError();
            if (verr !== null && verr !== undefined) {
              fail(`client certificate not accepted: ${verr.code ?? verr.message}`);
              return;
            }
            if (cert === undefined) {
              fail('client sent no certificate');
              return;
            }
            peer.certSubject = normalizeDn(cert.subject);
          }
        }
        peer.tls = true;
        splitLargeTlsWrites(tlsSocket); // 1 MiB read replies are encrypted in place, not concatenated first
        this.log.debug({ protocol: tlsSocket.getProtocol(), cipher: tlsSocket.getCipher()?.name, psk: m.kind === 'psk' }, 'TLS session established');
        resolve(tlsSocket);
      };
      const cleanup = (): void => {
        tlsSocket.off('secure', onSecure);
        tlsSocket.off('error', onError);
        tlsSocket.off('close', onClose);
      };
      tlsSocket.once('secure', onSecure);
      tlsSocket.once('error', onError);
      tlsSocket.once('close', onClose);
    });
  }
}
