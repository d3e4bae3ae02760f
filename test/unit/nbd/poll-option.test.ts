// serve --poll-max-us (src/control/serve-tls.ts -> ServerLimits.pollMaxUs): 32 by default (qemu's 32 us),
// 0 turns the idle poll off, NBD_MIRROR_POLL_MAX_US is the fallback when the flag is absent, and a bad or
// too large value is a usage error naming where it came from. resolveLimits accepts 0 for it only.
import { afterEach, describe, expect, it } from 'vitest';
import { POLL_MAX_US_ENV, serveServerOptions } from '../../../src/control/serve-tls.js';
import { DEFAULT_SERVER_LIMITS, POLL_MAX_US_LIMIT, resolveLimits } from '../../../src/nbd/server/limits.js';
import { CapturingLogger } from '../../tls/harness.js';

const base = { tls: 'off' as const, tlsVerifyPeer: false, allow: [] as string[] };
const saved = process.env[POLL_MAX_US_ENV];
afterEach(() => {
  if (saved === undefined) delete process.env[POLL_MAX_US_ENV];
  else process.env[POLL_MAX_US_ENV] = saved;
});

describe('--poll-max-us', () => {
  it('defaults to 32; the flag sets it; 0 is off', () => {
    delete process.env[POLL_MAX_US_ENV];
    const log = new CapturingLogger();
    expect(DEFAULT_SERVER_LIMITS.pollMaxUs).toBe(32);
    expect(serveServerOptions(base, ['d'], log).limits.pollMaxUs).toBe(32);
    expect(serveServerOptions({ ...base, pollMaxUs: '0' }, ['d'], log).limits.pollMaxUs).toBe(0);
    expect(serveServerOptions({ ...base, pollMaxUs: '100' }, ['d'], log).limits.pollMaxUs).toBe(100);
  });

  it('the environment variable is the fallback; the flag wins', () => {
    const log = new CapturingLogger();
    process.env[POLL_MAX_US_ENV] = '0';
    expect(serveServerOptions(base, ['d'], log).limits.pollMaxUs).toBe(0);
    expect(serveServerOptions({ ...base, pollMaxUs: '16' }, ['d'], log).limits.pollMaxUs).toBe(16);
    process.env[POLL_MAX_US_ENV] = 'lots';
    expect(() => serveServerOptions(base, ['d'], log)).toThrow(`${POLL_MAX_US_ENV}=lots: expected a non-negative integer`);
  });

  it('refuses a negative, fractional or too large value; other limits still refuse 0', () => {
    delete process.env[POLL_MAX_US_ENV];
    const log = new CapturingLogger();
    expect(() => serveServerOptions({ ...base, pollMaxUs: '-1' }, ['d'], log)).toThrow(/--poll-max-us -1: expected a non-negative integer/);
    expect(() => serveServerOptions({ ...base, pollMaxUs: '1.5' }, ['d'], log)).toThrow(/--poll-max-us 1.5/);
    expect(() => serveServerOptions({ ...base, pollMaxUs: String(POLL_MAX_US_LIMIT + 1) }, ['d'], log)).toThrow(`--poll-max-us ${POLL_MAX_US_LIMIT + 1}: expected a non-negative integer up to ${POLL_MAX_US_LIMIT}`);
    expect(() => resolveLimits({ pollMaxUs: -1 })).toThrow(/pollMaxUs must be a non-negative integer/);
    expect(() => resolveLimits({ connectionsMax: 0 })).toThrow(/connectionsMax must be a positive integer/);
    expect(resolveLimits({ pollMaxUs: 0 }).pollMaxUs).toBe(0);
  });
});
