// serve --send-buffer-bytes (src/control/serve-tls.ts -> ServerLimits.sendBufferBytes, applied by
// src/nbd/server/send-buffer.ts to every unix-socket connection): 1 MiB by default, 0 leaves the system
// default, NBD_MIRROR_SEND_BUFFER_BYTES is the fallback when the flag is absent, and a bad or too large value
// is a usage error naming where it came from. The TLS-only variable of session 7 is refused with its new name.
import { afterEach, describe, expect, it } from 'vitest';
import { serveServerOptions } from '../../../src/control/serve-tls.js';
import { DEFAULT_SERVER_LIMITS, resolveLimits } from '../../../src/nbd/server/limits.js';
import { OLD_TLS_SEND_BUFFER_ENV, SEND_BUFFER_BYTES, SEND_BUFFER_BYTES_MAX, SEND_BUFFER_ENV } from '../../../src/nbd/server/send-buffer.js';
import { CapturingLogger } from '../../tls/harness.js';

const base = { tls: 'off' as const, tlsVerifyPeer: false, allow: [] as string[] };
const saved = [SEND_BUFFER_ENV, OLD_TLS_SEND_BUFFER_ENV].map((k) => [k, process.env[k]] as const);
afterEach(() => {
  for (const [k, v] of saved) {
    if (v === undefined) delete process.env[k];
    else process.env[k] = v;
  }
});
const log = new CapturingLogger();

describe('--send-buffer-bytes', () => {
  it('defaults to 1 MiB; the flag sets it; 0 and the largest allowed are accepted', () => {
    delete process.env[SEND_BUFFER_ENV];
    expect(SEND_BUFFER_BYTES).toBe(1024 * 1024);
    expect(DEFAULT_SERVER_LIMITS.sendBufferBytes).toBe(SEND_BUFFER_BYTES);
    expect(serveServerOptions(base, ['d'], log).limits.sendBufferBytes).toBe(SEND_BUFFER_BYTES);
    expect(serveServerOptions({ ...base, sendBufferBytes: '0' }, ['d'], log).limits.sendBufferBytes).toBe(0);
    expect(serveServerOptions({ ...base, sendBufferBytes: '262144' }, ['d'], log).limits.sendBufferBytes).toBe(262144);
    expect(serveServerOptions({ ...base, sendBufferBytes: String(SEND_BUFFER_BYTES_MAX) }, ['d'], log).limits.sendBufferBytes).toBe(SEND_BUFFER_BYTES_MAX);
  });

  it('the environment variable is the fallback; the flag wins', () => {
    process.env[SEND_BUFFER_ENV] = '0';
    expect(serveServerOptions(base, ['d'], log).limits.sendBufferBytes).toBe(0);
    expect(serveServerOptions({ ...base, sendBufferBytes: '524288' }, ['d'], log).limits.sendBufferBytes).toBe(524288);
  });

  it('refuses what is not a byte count up to the maximum, naming the flag or the variable', () => {
    delete process.env[SEND_BUFFER_ENV];
    for (const bad of ['lots', '-1', '1.5', '1M', String(SEND_BUFFER_BYTES_MAX + 1)]) {
      expect(() => serveServerOptions({ ...base, sendBufferBytes: bad }, ['d'], log)).toThrow(
        `--send-buffer-bytes ${bad}: expected a non-negative integer up to ${SEND_BUFFER_BYTES_MAX}`,
      );
      process.env[SEND_BUFFER_ENV] = bad;
      expect(() => serveServerOptions(base, ['d'], log)).toThrow(`${SEND_BUFFER_ENV}=${bad}: expected a non-negative integer up to ${SEND_BUFFER_BYTES_MAX}`);
      delete process.env[SEND_BUFFER_ENV];
    }
    expect(() => resolveLimits({ sendBufferBytes: SEND_BUFFER_BYTES_MAX + 1 })).toThrow(/sendBufferBytes must be at most/);
    expect(resolveLimits({ sendBufferBytes: 0 }).sendBufferBytes).toBe(0);
  });

  it(`${OLD_TLS_SEND_BUFFER_ENV} (session 7's TLS-only name) is refused with the new name, whatever its value`, () => {
    for (const v of ['1048576', '0', '']) {
      process.env[OLD_TLS_SEND_BUFFER_ENV] = v;
      expect(() => serveServerOptions(base, ['d'], log)).toThrow(`${OLD_TLS_SEND_BUFFER_ENV} was renamed ${SEND_BUFFER_ENV}`);
    }
  });
});
