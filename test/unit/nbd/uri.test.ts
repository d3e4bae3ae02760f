// NBD URI parsing per doc/uri.md: the spec's own examples, unix sockets, IPv6, and bad URIs
// rejected with a message naming the problem.

import { describe, expect, it } from 'vitest';
import { formatNbdUri, NbdUriError, parseNbdUri } from '../../../src/nbd/uri.js';

describe('parseNbdUri', () => {
  it.each([
    ['nbd://example.com/disk', 'disk'],
    ['nbd://example.com/', ''],
    ['nbd://example.com', ''],
    ['nbd://example.com//disk', '/disk'],
    ['nbd://example.com/hello%20world', 'hello world'],
  ])('%s has export name %j (spec table)', (uri, name) => {
    expect(parseNbdUri(uri)).toEqual({ kind: 'tcp', host: 'example.com', port: 10809, exportName: name });
  });

  it('parses ports, IPv6 and userinfo', () => {
    expect(parseNbdUri('nbd://127.0.0.1:1234/x')).toEqual({ kind: 'tcp', host: '127.0.0.1', port: 1234, exportName: 'x' });
    expect(parseNbdUri('nbd://[::1]:1234/x')).toEqual({ kind: 'tcp', host: '::1', port: 1234, exportName: 'x' });
    expect(parseNbdUri('nbd://[::1]/x')).toEqual({ kind: 'tcp', host: '::1', port: 10809, exportName: 'x' });
    expect(parseNbdUri('nbd://user@host:5/')).toEqual({ kind: 'tcp', host: 'host', port: 5, exportName: '' });
  });

  it('parses unix sockets, keeping + and decoding %', () => {
    expect(parseNbdUri('nbd+unix:///disk?socket=/tmp/a+b.sock')).toEqual({ kind: 'unix', socketPath: '/tmp/a+b.sock', exportName: 'disk' });
    expect(parseNbdUri('nbd+unix:///?socket=/tmp/x%20y')).toEqual({ kind: 'unix', socketPath: '/tmp/x y', exportName: '' });
    expect(parseNbdUri('NBD+UNIX:///e?socket=s&x-foo=1&tls-type=anon')).toEqual({ kind: 'unix', socketPath: 's', exportName: 'e' });
  });

  it.each([
    ['', /expected scheme/],
    ['disk', /expected scheme/],
    ['http://host/x', /unknown scheme "http"/],
    ['nbds://host/x?tls-verify-peer=maybe', /tls-verify-peer must be/],
    ['nbd://host/x?tls-psk-file=/k', /needs a TLS scheme/],
    ['nbd+vsock://1/x', /vsock/],
    ['nbd+unix:///x', /needs \?socket=PATH/],
    ['nbd+unix:///x?socket=', /needs \?socket=PATH/],
    ['nbd+unix://host/x?socket=s', /take no host/],
    ['nbd://host/x?socket=s', /only valid with nbd\+unix/],
    ['nbd:///x', /need a host/],
    ['nbd://host:0/x', /bad port "0"/],
    ['nbd://host:99999/x', /bad port/],
    ['nbd://host:12a/x', /bad port/],
    ['nbd://[::1/x', /unterminated/],
    ['nbd://host/%zz', /percent-encoding/],
    ['nbd://host/a%00b', /NUL/],
    ['nbd://host/x?bogus=1', /unknown query parameter "bogus"/],
    ['nbd+unix:///x?socket=a&socket=b', /given twice/],
  ])('rejects %j', (uri, re) => {
    expect(() => parseNbdUri(uri)).toThrow(NbdUriError);
    expect(() => parseNbdUri(uri)).toThrow(re);
  });

  it('formats back to an equivalent URI', () => {
    for (const uri of ['nbd://h:99/a%20b', 'nbd+unix:///x/y?socket=/tmp/s%20t', 'nbd://[::1]/', 'nbd://h/']) {
      expect(parseNbdUri(formatNbdUri(parseNbdUri(uri)))).toEqual(parseNbdUri(uri));
    }
  });
});
