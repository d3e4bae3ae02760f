// TLS fixtures for the TLS tests, made fresh in each test directory with the real tools (certtool and
// psktool from gnutls-bin), laid out as nbdkit, qemu and libnbd expect:
//   DIR/server/   ca-cert.pem server-cert.pem server-key.pem         (our server, nbdkit --tls-certificates)
//   DIR/client/   ca-cert.pem client-cert.pem client-key.pem         (libnbd tls-certificates=, qemu tls-creds-x509)
//   DIR/noclient/ ca-cert.pem                                         (verifies the server, presents no cert)
//   DIR/other/    client certs signed by a second CA (and that CA)    (must be refused)
//   DIR/psk/keys.psk       alice + bob                                 (server; qemu wants keys.psk in a dir)
//   DIR/psk-alice/keys.psk alice only;  DIR/psk-wrong/keys.psk alice with a wrong key
//   DIR/psk-carol/keys.psk carol (unknown to the server)
import { execFileSync } from 'node:child_process';
import { chmodSync, mkdirSync, writeFileSync, copyFileSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

export interface TlsFixtures {
  readonly dir: string;
  readonly serverDir: string;
  readonly clientDir: string;
  readonly noClientDir: string;
  readonly otherDir: string;
  readonly pskFile: string;
  readonly pskAliceDir: string;
  readonly pskWrongDir: string;
  readonly pskCarolDir: string;
  readonly pskAlice: string;
  readonly pskWrong: string;
  readonly pskCarol: string;
}

function certtool(args: string[]): void {
  execFileSync('certtool', args, { stdio: ['ignore', 'ignore', 'pipe'] });
}

function template(dir: string, name: string, lines: string[]): string {
  const p = join(dir, name);
  writeFileSync(p, `${lines.join('\n')}\n`);
  return p;
}

function makeCa(dir: string, cn: string): { cert: string; key: string } {
  const key = join(dir, 'ca-key.pem');
  const cert = join(dir, 'ca-cert.pem');
  certtool(['--generate-privkey', '--key-type=ecdsa', '--outfile', key]);
  certtool(['--generate-self-signed', '--load-privkey', key, '--template', template(dir, 'ca.info', [`cn = ${cn}`, 'ca', 'cert_signing_key', 'expiration_days = 30']), '--outfile', cert]);
  chmodSync(key, 0o600);
  return { cert, key };
}

function makeLeaf(dir: string, ca: { cert: string; key: string }, prefix: 'server' | 'client', cn: string): void {
  const key = join(dir, `${prefix}-key.pem`);
  certtool(['--generate-privkey', '--key-type=ecdsa', '--outfile', key]);
  chmodSync(key, 0o600);
  const lines = ['organization = nbd-mirror test', `cn = ${cn}`, 'expiration_days = 30', 'signing_key', 'encryption_key'];
  if (prefix === 'server') lines.push('dns_name = localhost', 'ip_address = 127.0.0.1', 'tls_www_server');
  else lines.push('tls_www_client');
  certtool([
    '--generate-certificate',
    '--load-ca-certificate', ca.cert,
    '--load-ca-privkey', ca.key,
    '--load-privkey', key,
    '--template', template(dir, `${prefix}.info`, lines),
    '--outfile', join(dir, `${prefix}-cert.pem`),
  ]);
}

function psk(dir: string, user: string): string {
  mkdirSync(dir, { recursive: true });
  const file = join(dir, 'keys.psk');
  execFileSync('psktool', ['-u', user, '-p', file], { stdio: 'ignore' });
  chmodSync(file, 0o600);
  return file;
}

export function makeTlsFixtures(dir: string): TlsFixtures {
  const serverDir = join(dir, 'server');
  const clientDir = join(dir, 'client');
  const noClientDir = join(dir, 'noclient');
  const otherDir = join(dir, 'other');
  for (const d of [serverDir, clientDir, noClientDir, otherDir]) mkdirSync(d, { recursive: true });
  const ca = makeCa(serverDir, 'nbd-mirror test CA');
  makeLeaf(serverDir, ca, 'server', 'localhost');
  makeLeaf(clientDir, ca, 'client', 'alice');
  copyFileSync(ca.cert, join(clientDir, 'ca-cert.pem'));
  copyFileSync(ca.cert, join(noClientDir, 'ca-cert.pem'));
  // A second CA signing a client cert with the same subject: must be refused all the same.
  const other = makeCa(otherDir, 'some other CA');
  makeLeaf(otherDir, other, 'client', 'alice');
  // The other dir verifies our server with the right CA, but presents a client cert from the other CA.
  copyFileSync(other.cert, join(otherDir, 'other-ca-cert.pem'));
  copyFileSync(ca.cert, join(otherDir, 'ca-cert.pem'));

  const pskDir = join(dir, 'psk');
  const pskFile = psk(pskDir, 'alice');
  execFileSync('psktool', ['-u', 'bob', '-p', pskFile], { stdio: 'ignore' });
  const aliceLine = readFileSync(pskFile, 'utf8').split('\n').find((l) => l.startsWith('alice:'))!;
  const pskAliceDir = join(dir, 'psk-alice');
  mkdirSync(pskAliceDir);
  const pskAlice = join(pskAliceDir, 'keys.psk');
  writeFileSync(pskAlice, `${aliceLine}\n`, { mode: 0o600 });
  const pskWrongDir = join(dir, 'psk-wrong');
  const pskWrong = psk(pskWrongDir, 'alice'); // same identity, another random key
  const pskCarolDir = join(dir, 'psk-carol');
  const pskCarol = psk(pskCarolDir, 'carol');
  return { dir, serverDir, clientDir, noClientDir, otherDir, pskFile, pskAliceDir, pskWrongDir, pskCarolDir, pskAlice, pskWrong, pskCarol };
}
