import { describe, expect, it } from 'vitest';
import { formatListenAddress, parseListenAddress, UNIX_SOCKET_PATH_BYTES_MAX } from '../../../src/control/listen-address.js';
import { UsageError } from '../../../src/control/usage-error.js';

describe('parseListenAddress', () => {
  it('parses tcp and unix forms', () => {
    expect(parseListenAddress('tcp:127.0.0.1:10809')).toEqual({ kind: 'tcp', host: '127.0.0.1', port: 10809 });
    expect(parseListenAddress('tcp:[::1]:0')).toEqual({ kind: 'tcp', host: '::1', port: 0 });
    expect(parseListenAddress('unix:/tmp/x.sock')).toEqual({ kind: 'unix', path: '/tmp/x.sock' });
    const rel = parseListenAddress('unix:rel.sock');
    expect(rel.kind === 'unix' && rel.path.startsWith('/')).toBe(true);
  });
  it('rejects bad forms with a message naming the input', () => {
    for (const [text, fragment] of [
      ['10809', 'expected unix:PATH or tcp:HOST:PORT'],
      ['tcp:127.0.0.1', 'expected tcp:HOST:PORT'],
      ['tcp:127.0.0.1:', 'port "" is not a number'],
      ['tcp:localhost:x', 'port "x" is not a number'],
      ['tcp:localhost:65536', 'above 65535'],
      ['tcp::10809', 'empty host'],
      ['tcp:::1:10809', 'IPv6 host in brackets'],
      ['unix:', 'empty socket path'],
      [`unix:/${'a'.repeat(UNIX_SOCKET_PATH_BYTES_MAX)}`, 'the limit is 107'],
    ] as const) {
      expect(() => parseListenAddress(text)).toThrow(UsageError);
      expect(() => parseListenAddress(text)).toThrow(fragment);
    }
  });
  it('formats back to the same text', () => {
    for (const t of ['tcp:127.0.0.1:10809', 'tcp:[::1]:5', 'unix:/run/a.sock']) {
      expect(formatListenAddress(parseListenAddress(t))).toBe(t);
    }
  });
});
