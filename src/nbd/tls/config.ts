// TLS key material for the server and the client, read from the layouts nbdkit, qemu and libnbd use.
// Owns: reading and checking files (certificate directory, psktool PSK files, key file permissions),
// and turning them into Node SecureContexts. Synchronous and side-effect free apart from reading files,
// so it can run at start (errors become usage errors) and on every reload (errors keep the old context).
//
//   certificates DIR:  ca-cert.pem, server-cert.pem, server-key.pem   (server side)
//                      ca-cert.pem, client-cert.pem, client-key.pem   (client side; the pair is optional)
//                      optional ca-crl.pem (both sides)
//   PSK file:          one `identity:hexkey` per line (psktool's format; qemu names it DIR/keys.psk)
//
// A private key file (server-key.pem, client-key.pem, PSK file) readable by group or others is refused
// (TlsConfigError), as ssh does: a key others can read proves nothing about who holds it.

import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { createSecureContext, type SecureContext } from 'node:tls';

export type TlsMode = 'off' | 'on' | 'require';
export const TLS_MODES: readonly TlsMode[] = ['off', 'on', 'require'];

export class TlsConfigError extends Error {
  readonly code = 'ERR_NBD_TLS_CONFIG';
  constructor(message: string) {
    super(message);
    this.name = 'TlsConfigError';
  }
}

/** Identities in one PSK file are bounded, as are key lengths (psktool writes 32 bytes by default). */
export const PSK_IDENTITIES_MAX = 65536;
export const PSK_IDENTITY_BYTES_MAX = 128;
export const PSK_KEY_BYTES_MAX = 256;
export const PSK_FILE_BYTES_MAX = 16 * 1024 * 1024;

/** TLS 1.3 only: every client we serve (libnbd, qemu, nbdkit: GnuTLS) speaks it, and PSK is clean there. */
export const TLS_MIN_VERSION = 'TLSv1.3' as const;

/** Refuse a private key file readable by group or others; also refuse a missing or non-regular file. */
export function checkKeyFileMode(path: string, what: string): void {
  let st;
  try {
    st = statSync(path);
  } catch (err) {
    throw new TlsConfigError(`${what} ${path}: ${(err as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (err as Error).message}`);
  }
  if (!st.isFile()) throw new TlsConfigError(`${what} ${path}: not a regular file`);
  if ((st.mode & 0o077) !== 0) {
    throw new TlsConfigError(
      `${what} ${path}: readable by group or others (mode ${(st.mode & 0o777).toString(8).padStart(4, '0')}); run chmod 600 ${path}`,
    );
  }
}

function readText(path: string, what: string, bytesMax = 1024 * 1024): string {
  let buf: Buffer;
  try {
    buf = readFileSync(path);
  } catch (err) {
    throw new TlsConfigError(`${what} ${path}: ${(err as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (err as Error).message}`);
  }
  if (buf.length > bytesMax) throw new TlsConfigError(`${what} ${path}: larger than ${bytesMax} bytes`);
  return buf.toString('utf8');
}

/** Parse psktool's `identity:hexkey` lines. Pure. Blank lines and `#` comments are skipped. */
export function parsePskText(text: string, source: string): Map<string, Buffer> {
  const keys = new Map<string, Buffer>();
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!.replace(/\r$/, '');
    if (line.trim() === '' || line.startsWith('#')) continue;
    const where = `${source} line ${i + 1}`;
    const colon = line.lastIndexOf(':');
    if (colon <= 0) throw new TlsConfigError(`${where}: expected identity:hexkey`);
    const identity = line.slice(0, colon);
    const hex = line.slice(colon + 1).trim();
    if (Buffer.byteLength(identity) > PSK_IDENTITY_BYTES_MAX) throw new TlsConfigError(`${where}: identity longer than ${PSK_IDENTITY_BYTES_MAX} bytes`);
    if (!/^([0-9a-fA-F]{2})+$/.test(hex)) throw new TlsConfigError(`${where}: key is not an even number of hex digits`);
    if (hex.length / 2 > PSK_KEY_BYTES_MAX) throw new TlsConfigError(`${where}: key longer than ${PSK_KEY_BYTES_MAX} bytes`);
    if (keys.has(identity)) throw new TlsConfigError(`${where}: identity "${identity}" given twice`);
    keys.set(identity, Buffer.from(hex, 'hex'));
    if (keys.size > PSK_IDENTITIES_MAX) throw new TlsConfigError(`${source}: more than ${PSK_IDENTITIES_MAX} identities`);
  }
  if (keys.size === 0) throw new TlsConfigError(`${source}: no identity:hexkey lines`);
  return keys;
}

/** Read a PSK file after checking its mode. */
export function readPskFile(path: string): Map<string, Buffer> {
  checkKeyFileMode(path, 'PSK file');
  return parsePskText(readText(path, 'PSK file', PSK_FILE_BYTES_MAX), path);
}

export interface ServerTlsSettings {
  readonly mode: TlsMode;
  /** Directory with ca-cert.pem, server-cert.pem, server-key.pem (X.509). */
  readonly certificatesDir?: string;
  /** psktool file; when given, PSK is used and certificates are not. */
  readonly pskFile?: string;
  /** X.509: ask for a client certificate and refuse clients without one signed by ca-cert.pem. */
  readonly verifyPeer: boolean;
}

/** What a handshake needs, loaded once and swapped whole on reload. */
export interface ServerTlsMaterial {
  readonly kind: 'x509' | 'psk';
  readonly secureContext: SecureContext;
  /** PSK identity -> key (kind 'psk'). */
  readonly pskKeys: ReadonlyMap<string, Buffer> | null;
  readonly verifyPeer: boolean;
  /** When it was read (for logs and `reload-tls` answers). */
  readonly loadedAt: Date;
}

/** Check settings without reading files (flag combinations). Throws TlsConfigError. */
export function checkServerTlsSettings(s: ServerTlsSettings): void {
  if (!TLS_MODES.includes(s.mode)) throw new TlsConfigError(`--tls ${String(s.mode)}: expected off, on or require`);
  if (s.mode === 'off') {
    if (s.certificatesDir !== undefined || s.pskFile !== undefined) {
      throw new TlsConfigError('--tls-certificates/--tls-psk given with --tls off (use --tls on or --tls require)');
    }
    if (s.verifyPeer) throw new TlsConfigError('--tls-verify-peer needs --tls on or --tls require');
    return;
  }
  if (s.certificatesDir === undefined && s.pskFile === undefined) {
    throw new TlsConfigError(`--tls ${s.mode} needs --tls-certificates DIR or --tls-psk FILE`);
  }
  if (s.verifyPeer && s.pskFile !== undefined) {
    throw new TlsConfigError('--tls-verify-peer applies to X.509 certificates; with --tls-psk every client proves its key already');
  }
}

/** Read the server's key material. Throws TlsConfigError naming the file and the problem. */
export function loadServerTls(s: ServerTlsSettings): ServerTlsMaterial {
  checkServerTlsSettings(s);
  if (s.pskFile !== undefined) {
    const pskKeys = readPskFile(s.pskFile);
    const secureContext = createSecureContext({ minVersion: TLS_MIN_VERSION });
    return { kind: 'psk', secureContext, pskKeys, verifyPeer: false, loadedAt: new Date() };
  }
  const dir = s.certificatesDir!;
  const keyPath = join(dir, 'server-key.pem');
  checkKeyFileMode(keyPath, 'server key');
  const key = readText(keyPath, 'server key');
  const cert = readText(join(dir, 'server-cert.pem'), 'server certificate');
  const caPath = join(dir, 'ca-cert.pem');
  let ca: string | undefined;
  try {
    ca = readText(caPath, 'CA certificate');
  } catch (err) {
    if (s.verifyPeer) throw err; // verifying clients needs the CA
    ca = undefined;
  }
  const crl = tryReadText(join(dir, 'ca-crl.pem'));
  let secureContext: SecureContext;
  try {
    secureContext = createSecureContext({
      minVersion: TLS_MIN_VERSION,
      key,
      cert,
      ...(ca !== undefined ? { ca } : {}),
      ...(crl !== undefined ? { crl } : {}),
    });
  } catch (err) {
    throw new TlsConfigError(`--tls-certificates ${dir}: ${(err as Error).message}`);
  }
  return { kind: 'x509', secureContext, pskKeys: null, verifyPeer: s.verifyPeer, loadedAt: new Date() };
}

function tryReadText(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return undefined;
  }
}

// ---- client side -------------------------------------------------------------------------------

export interface ClientTlsSettings {
  /** Directory with ca-cert.pem and optionally client-cert.pem + client-key.pem. */
  readonly certificatesDir?: string;
  /** psktool file; the identity is `username`. */
  readonly pskFile?: string;
  /** PSK identity (URI user@); default: the only identity in the file, else the login name. */
  readonly username?: string;
  /** Verify the server's certificate chain and host name (default true). */
  readonly verifyPeer: boolean;
}

export interface ClientTlsMaterial {
  readonly kind: 'x509' | 'psk' | 'system';
  readonly secureContext: SecureContext;
  readonly psk: { readonly identity: string; readonly key: Buffer } | null;
}

export function loadClientTls(s: ClientTlsSettings, loginName: () => string): ClientTlsMaterial {
  if (s.pskFile !== undefined) {
    const keys = readPskFile(s.pskFile);
    let identity = s.username;
    if (identity === undefined) identity = keys.size === 1 ? [...keys.keys()][0]! : loginName();
    const key = keys.get(identity);
    if (key === undefined) throw new TlsConfigError(`tls-psk-file ${s.pskFile}: no key for identity "${identity}"`);
    return { kind: 'psk', secureContext: createSecureContext({ minVersion: TLS_MIN_VERSION }), psk: { identity, key } };
  }
  if (s.certificatesDir === undefined) {
    // No directory: the system's CA store (Node's default) verifies the server.
    return { kind: 'system', secureContext: createSecureContext({ minVersion: TLS_MIN_VERSION }), psk: null };
  }
  const dir = s.certificatesDir;
  const ca = readText(join(dir, 'ca-cert.pem'), 'CA certificate');
  const certPath = join(dir, 'client-cert.pem');
  const keyPath = join(dir, 'client-key.pem');
  const cert = tryReadText(certPath);
  let key: string | undefined;
  if (cert !== undefined) {
    checkKeyFileMode(keyPath, 'client key');
    key = readText(keyPath, 'client key');
  }
  const crl = tryReadText(join(dir, 'ca-crl.pem'));
  try {
    return {
      kind: 'x509',
      secureContext: createSecureContext({
        minVersion: TLS_MIN_VERSION,
        ca,
        ...(cert !== undefined && key !== undefined ? { cert, key } : {}),
        ...(crl !== undefined ? { crl } : {}),
      }),
      psk: null,
    };
  } catch (err) {
    throw new TlsConfigError(`tls-certificates ${dir}: ${(err as Error).message}`);
  }
}
