// Throw-away TLS key material for the TLS benchmarks (tls.js, cpu.js): a CA, a server and a client
// certificate made with certtool (gnutls-bin), a psktool key, and libnbd's default client certificate
// directory under a private HOME (fio's nbd engine takes only a URI, and libnbd refuses
// tls-certificates= in a URI unless the program allows local files, which fio does not).
import { execFileSync } from 'node:child_process';
import { chmodSync, copyFileSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

function certtool(a) {
  execFileSync('certtool', a, { stdio: ['ignore', 'ignore', 'pipe'] });
}
function tmpl(dir, name, lines) {
  const p = join(dir, name);
  writeFileSync(p, `${lines.join('\n')}\n`);
  return p;
}

/** Returns { server: DIR (nbdkit/qemu layout), client: DIR, home: HOME for fio, psk: FILE (identity "bench") }. */
export function makePki(dir) {
  const server = join(dir, 'server');
  const client = join(dir, 'client');
  mkdirSync(server, { recursive: true });
  mkdirSync(client, { recursive: true });
  const caKey = join(server, 'ca-key.pem');
  const caCert = join(server, 'ca-cert.pem');
  certtool(['--generate-privkey', '--key-type=ecdsa', '--outfile', caKey]);
  certtool(['--generate-self-signed', '--load-privkey', caKey, '--template', tmpl(server, 'ca.info', ['cn = bench CA', 'ca', 'cert_signing_key', 'expiration_days = 2']), '--outfile', caCert]);
  for (const [d, prefix, lines] of [
    [server, 'server', ['cn = localhost', 'dns_name = localhost', 'tls_www_server']],
    [client, 'client', ['cn = bench', 'tls_www_client']],
  ]) {
    const key = join(d, `${prefix}-key.pem`);
    certtool(['--generate-privkey', '--key-type=ecdsa', '--outfile', key]);
    chmodSync(key, 0o600);
    certtool(['--generate-certificate', '--load-ca-certificate', caCert, '--load-ca-privkey', caKey, '--load-privkey', key, '--template', tmpl(d, `${prefix}.info`, [...lines, 'expiration_days = 2', 'signing_key', 'encryption_key']), '--outfile', join(d, `${prefix}-cert.pem`)]);
  }
  copyFileSync(caCert, join(client, 'ca-cert.pem'));
  const home = join(dir, 'home');
  const libnbdDir = join(home, '.pki', 'libnbd');
  mkdirSync(libnbdDir, { recursive: true });
  for (const f of ['ca-cert.pem', 'client-cert.pem', 'client-key.pem']) copyFileSync(join(client, f), join(libnbdDir, f));
  const psk = join(dir, 'keys.psk');
  execFileSync('psktool', ['-u', 'bench', '-p', psk], { stdio: 'ignore' });
  chmodSync(psk, 0o600);
  return { server, client, home, psk };
}
