// TLS URIs (nbds, nbds+unix) as libnbd writes them: user@ is the PSK identity, tls-* query parameters.
import { describe, expect, it } from 'vitest';
import { formatNbdUri, parseNbdUri } from '../../src/nbd/uri.js';

describe('nbds URIs', () => {
  it('parses nbds with PSK identity, certificates and verify-peer', () => {
    expect(parseNbdUri('nbds://alice@host:1234/disk?tls-psk-file=/k/keys.psk')).toEqual({
      kind: 'tcp', host: 'host', port: 1234, exportName: 'disk', tls: { verifyPeer: true, pskFile: '/k/keys.psk', username: 'alice' },
    });
    expect(parseNbdUri('nbds+unix:///d?socket=/s.sock&tls-certificates=/pki&tls-verify-peer=false')).toEqual({
      kind: 'unix', socketPath: '/s.sock', exportName: 'd', tls: { verifyPeer: false, certificatesDir: '/pki' },
    });
    expect(parseNbdUri('nbds+unix://bob@/d?socket=/s&tls-psk-file=/f')).toMatchObject({ tls: { username: 'bob', pskFile: '/f' } });
    expect(parseNbdUri('nbds://h/')).toEqual({ kind: 'tcp', host: 'h', port: 10809, exportName: '', tls: { verifyPeer: true } });
  });
  it('plaintext URIs carry no tls and refuse tls-* parameters', () => {
    expect(parseNbdUri('nbd://h/x')).not.toHaveProperty('tls');
    expect(() => parseNbdUri('nbd+unix:///x?socket=/s&tls-certificates=/d')).toThrow(/needs a TLS scheme/);
    expect(() => parseNbdUri('nbds://h/x?tls-certificates=/a&tls-psk-file=/b')).toThrow(/not both/);
    expect(() => parseNbdUri('nbds+unix://host/x?socket=/s')).toThrow(/take no host/);
  });
  it('formats back to an equivalent URI', () => {
    for (const uri of ['nbds://alice@h:99/a?tls-psk-file=/k', 'nbds+unix:///x?socket=/s&tls-certificates=/p&tls-verify-peer=false', 'nbds://h/?tls-hostname=srv']) {
      expect(parseNbdUri(formatNbdUri(parseNbdUri(uri)))).toEqual(parseNbdUri(uri));
    }
  });
});
