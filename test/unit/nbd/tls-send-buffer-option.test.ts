// NBD_MIRROR_TLS_SEND_BUFFER_BYTES (src/nbd/tls/tls-writes.ts): the send buffer asked for on a TLS
// connection's unix socket. Unset: 1 MiB; 0: leave the system default; a bad or too large value is refused
// when `serve` starts (a usage error naming the variable), not silently replaced on each connection.
import { afterEach, describe, expect, it } from 'vitest';
import { serveServerOptions } from '../../../src/control/serve-tls.js';
import { TLS_SEND_BUFFER_BYTES, TLS_SEND_BUFFER_BYTES_MAX, TLS_SEND_BUFFER_ENV, tlsSendBufferBytes } from '../../../src/nbd/tls/tls-writes.js';
import { CapturingLogger } from '../../tls/harness.js';

const base = { tls: 'off' as const, tlsVerifyPeer: false, allow: [] as string[] };
const saved = process.env[TLS_SEND_BUFFER_ENV];
afterEach(() => {
  if (saved === undefined) delete process.env[TLS_SEND_BUFFER_ENV];
  else process.env[TLS_SEND_BUFFER_ENV] = saved;
});

describe(TLS_SEND_BUFFER_ENV, () => {
  it('unset: 1 MiB; a number of bytes; 0 (off) and the largest allowed', () => {
    delete process.env[TLS_SEND_BUFFER_ENV];
    expect(tlsSendBufferBytes()).toBe(TLS_SEND_BUFFER_BYTES);
    process.env[TLS_SEND_BUFFER_ENV] = '262144';
    expect(tlsSendBufferBytes()).toBe(262144);
    process.env[TLS_SEND_BUFFER_ENV] = '0';
    expect(tlsSendBufferBytes()).toBe(0);
    process.env[TLS_SEND_BUFFER_ENV] = String(TLS_SEND_BUFFER_BYTES_MAX);
    expect(serveServerOptions(base, ['d'], new CapturingLogger()).limits).toBeDefined();
  });

  it('serve refuses a value that is not a byte count, naming the variable', () => {
    const log = new CapturingLogger();
    for (const bad of ['lots', '-1', '1.5', '1M', String(TLS_SEND_BUFFER_BYTES_MAX + 1)]) {
      process.env[TLS_SEND_BUFFER_ENV] = bad;
      expect(() => serveServerOptions(base, ['d'], log)).toThrow(`${TLS_SEND_BUFFER_ENV}=${bad}: expected an integer from 0 to ${TLS_SEND_BUFFER_BYTES_MAX}`);
    }
  });
});
