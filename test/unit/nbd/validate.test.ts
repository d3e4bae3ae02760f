// validateRequest: each rejection rule with the NBD error it must produce, over a real server
// Connection. Rejected writes keep the stream framed (their payload is consumed).

import { describe, expect, it } from 'vitest';
import { be, bytes, sortedReplies, W } from './wire.js';
import { runScript } from './server-harness.js';
import type { MemoryExportOptions } from '../../helpers/memory-export.js';

const SIZE = 1 << 20;
const meta = bytes(be(32, 0), be(32, 1), be(32, 15), 'base:allocation');

/** Handshake with (or without) structured replies + base:allocation, GO "". */
function handshake(structured: boolean, withMeta = structured): Buffer {
  return bytes(
    be(32, 3),
    structured ? W.option(8) : Buffer.alloc(0),
    withMeta ? W.option(10, meta) : Buffer.alloc(0),
    W.option(7, bytes(be(32, 0), be(16, 0))),
  );
}

/** Transmission-phase output: everything after the GO's final ACK. */
function transmissionOut(out: Buffer): Buffer {
  const ack = bytes(be(64, 0x3e889045565a9n), be(32, 7), be(32, 1), be(32, 0));
  const at = out.indexOf(ack);
  expect(at).toBeGreaterThan(0);
  return out.subarray(at + ack.length);
}

/** Error codes per cookie from simple replies or error chunks. */
function errorsByCookie(t: Buffer): Map<number, number> {
  const m = new Map<number, number>();
  for (const hex of sortedReplies(t)) {
    const b = Buffer.from(hex, 'hex');
    const cookie = Number(b.readBigUInt64BE(b.readUInt32BE(0) === 0x67446698 ? 8 : 8));
    if (b.readUInt32BE(0) === 0x67446698) m.set(cookie, b.readUInt32BE(4));
    else m.set(cookie, b.readUInt16BE(6) & 0x8000 ? b.readUInt32BE(20) : 0);
  }
  return m;
}

async function errors(structured: boolean, requests: Buffer[], exportOptions: Partial<MemoryExportOptions> = {}, withMeta = structured) {
  const r = await runScript(bytes(handshake(structured, withMeta), ...requests, W.request(0, 2, 0n, 0, 0)), { exportOptions });
  expect(r.destroyed).toBe(false);
  return { map: errorsByCookie(transmissionOut(r.out)), exp: r.exp };
}

describe('validateRequest', () => {
  it('range, length and flag rules', async () => {
    const { map, exp } = await errors(true, [
      W.request(0, 0, 1n, SIZE - 1, 2), // read past end: EINVAL
      W.request(0, 1, 2n, SIZE - 1, 2), // write past end: ENOSPC
      Buffer.alloc(2),
      W.request(0, 6, 3n, SIZE, 1), // zero past end: ENOSPC
      W.request(0, 4, 4n, 0xffff_ffff_ffff_0000n, 1), // trim at absurd offset: EINVAL
      W.request(0, 0, 5n, 0, 0), // zero-length read: EINVAL
      W.request(0, 3, 6n, 1, 0), // flush with offset: EINVAL
      W.request(0, 99, 7n, 0, 1), // unknown command: EINVAL
      W.request(0x40, 0, 8n, 0, 1), // unknown flag: EINVAL
      W.request(2, 0, 9n, 0, 1), // NO_HOLE on read: EINVAL
      W.request(8, 6, 10n, 0, 1), // REQ_ONE on zero: EINVAL
      W.request(4, 0, 11n, 0, 1), // DF on read with structured replies: ok
      W.request(1, 0, 12n, 0, 1), // FUA on read (SEND_FUA advertised): ok
      W.request(0x10 | 2, 6, 13n, 0, 4096), // FAST_ZERO|NO_HOLE -> export says ENOTSUP
      W.request(0, 0, 14n, 0, 1 << 25), // read of exactly the max payload... but beyond the 1 MiB export: EINVAL
      W.request(0, 7, 15n, 0, SIZE), // block status over everything: ok
      W.request(8, 7, 16n, 0, SIZE), // REQ_ONE: ok
    ]);
    expect(Object.fromEntries(map)).toEqual({
      1: 22, 2: 28, 3: 28, 4: 22, 5: 22, 6: 22, 7: 22, 8: 22, 9: 22, 10: 22, 11: 0, 12: 0, 13: 95, 14: 22, 15: 0, 16: 0,
    });
    expect(exp.calls.write).toBe(0); // nothing rejected reached the export
    expect(exp.calls.zero).toBe(1);
  });

  it('read-only export: writes, trims and zeroes are EPERM, reads fine', async () => {
    const { map, exp } = await errors(
      true,
      [W.request(0, 1, 1n, 0, 3), Buffer.from('abc'), W.request(0, 4, 2n, 0, 1), W.request(0, 6, 3n, 0, 1), W.request(0, 0, 4n, 0, 1)],
      { readOnly: true },
    );
    expect(map.get(1)).toBe(1);
    expect(map.get(2)).toBe(1);
    expect(map.get(3)).toBe(1);
    expect(map.get(4)).toBe(0);
    expect(exp.calls.write).toBe(0);
  });

  it('capabilities not advertised are EINVAL: flush, trim, zero, cache, FUA, FAST_ZERO', async () => {
    const { map } = await errors(
      true,
      [W.request(0, 3, 1n, 0, 0), W.request(0, 4, 2n, 0, 1), W.request(0, 6, 3n, 0, 1), W.request(0, 5, 4n, 0, 1), W.request(1, 1, 5n, 0, 1), Buffer.from('x')],
      { canFlush: false, canTrim: false, canZero: false, canCache: false, canFua: false },
    );
    expect(Object.fromEntries(map)).toEqual({ 1: 22, 2: 22, 3: 22, 4: 22, 5: 22 });
  });

  it('without structured replies: DF is EINVAL and block status without meta context is EINVAL', async () => {
    const { map } = await errors(false, [W.request(4, 0, 1n, 0, 1), W.request(0, 7, 2n, 0, 1)]);
    expect(map.get(1)).toBe(22);
    expect(map.get(2)).toBe(22);
    const r2 = await errors(true, [W.request(0, 7, 3n, 0, 1)], {}, false);
    expect(r2.map.get(3)).toBe(22);
  });

  it('block sizes: misaligned requests are EINVAL when the export has a minimum', async () => {
    const { map } = await errors(true, [W.request(0, 0, 1n, 1, 512), W.request(0, 0, 2n, 512, 100), W.request(0, 0, 3n, 512, 512)], {
      blockSizeMin: 512,
    });
    expect(Object.fromEntries(map)).toEqual({ 1: 22, 2: 22, 3: 0 });
  });

  it('a write above the maximum payload is discarded and EINVAL; the stream stays framed', async () => {
    const big = 128 * 1024;
    const { map, exp } = await errors(true, [W.request(0, 1, 1n, 0, big), Buffer.alloc(big, 7), W.request(0, 1, 2n, 0, 2), Buffer.from('ok')], {
      blockSizeMax: 64 * 1024,
    });
    expect(Object.fromEntries(map)).toEqual({ 1: 22, 2: 0 });
    expect(exp.calls.write).toBe(1);
  });

  it('a write too large to even discard, or a bad magic, disconnects', async () => {
    let r = await runScript(bytes(handshake(true), W.request(0, 1, 1n, 0, 0xffff_ffff)), { endInput: false });
    expect(r.destroyed).toBe(true);
    r = await runScript(bytes(handshake(true), be(32, 0x12345678), Buffer.alloc(24)), { endInput: false });
    expect(r.destroyed).toBe(true);
  });
});
