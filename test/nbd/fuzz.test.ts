// Property-based fuzzing of a real server on a unix socket (fast-check, fixed seeds so failures
// replay). Random and mutated bytes in the handshake and the transmission phase must never crash
// the server, hang a connection, or disturb an honest client working alongside; well-framed but
// semantically random requests must each get exactly one reply (the stream stays framed).

import { connect } from 'node:net';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NbdClient } from '../../src/nbd/client/client.js';
import { be, bytes, W } from '../unit/nbd/wire.js';
import { type Harness, pattern, startHarness } from './harness.js';

const SIZE = 1 << 20;
const CASE_TIMEOUT_MS = 3000;

let h: Harness;
let honest: NbdClient;
let honestRound = 0;

beforeAll(async () => {
  h = await startHarness({ disk: { sizeBytes: SIZE } }, { defaultExportName: 'disk', limits: { handshakeTimeoutMs: 2000 } });
  honest = await NbdClient.connect(h.uri('disk'));
});
afterAll(async () => {
  await honest?.close();
  await h?.close();
});

/** Send bytes on a fresh connection, half-close, collect everything until the server closes. */
function exchange(input: Buffer): Promise<{ out: Buffer; closed: boolean }> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    const s = connect({ path: h.socketPath });
    let done = false;
    const finish = (closed: boolean): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      s.destroy();
      resolve({ out: Buffer.concat(chunks), closed });
    };
    const timer = setTimeout(() => finish(false), CASE_TIMEOUT_MS);
    s.on('data', (c: Buffer) => chunks.push(c));
    s.on('error', () => undefined);
    s.on('close', () => finish(true));
    s.on('connect', () => s.end(input));
  });
}

/** The honest client still reads back what it writes (on a distinct region each round). */
async function honestStillWorks(): Promise<void> {
  const round = honestRound++;
  const off = 512 * 1024 + (round % 64) * 4096;
  const data = pattern(4096, round);
  await honest.write(data, off, { fua: false });
  const back = Buffer.alloc(4096);
  await honest.read(back, off);
  expect(back.equals(data)).toBe(true);
}

const GO = bytes(be(32, 3), W.option(8), W.option(10, bytes(be(32, 0), be(32, 1), be(32, 15), 'base:allocation')), W.option(7, bytes(be(32, 0), be(16, 0))));

const arbOption = fc.record({
  option: fc.oneof(fc.integer({ min: 0, max: 12 }), fc.integer({ min: 0, max: 0xffffffff })),
  data: fc.uint8Array({ maxLength: 64 }),
  lie: fc.option(fc.integer({ min: 0, max: 0xffffffff }), { freq: 4 }),
});

const arbRequest = fc.record({
  type: fc.oneof(fc.constantFrom(0, 1, 3, 4, 5, 6, 7), fc.integer({ min: 0, max: 0xffff })),
  flags: fc.oneof(fc.constant(0), fc.integer({ min: 0, max: 0xffff })),
  offset: fc.oneof(fc.integer({ min: 0, max: SIZE }), fc.bigInt({ min: 0n, max: (1n << 64n) - 1n })),
  length: fc.oneof(fc.integer({ min: 0, max: 70000 }), fc.integer({ min: 0, max: 0xffffffff })),
});

type Req = { type: number; flags: number; offset: number | bigint; length: number };

/** Well-framed: a WRITE carries exactly `length` payload bytes (so lengths stay small), never DISC. */
function framed(reqs: Req[]): { input: Buffer; cookies: number } {
  const parts: Buffer[] = [GO];
  reqs.forEach((r, i) => {
    const type = r.type === 2 ? 0 : r.type;
    const length = type === 1 ? r.length % 70000 : r.length;
    parts.push(W.request(r.flags, type, BigInt(i + 1), BigInt(r.offset), length));
    if (type === 1) parts.push(Buffer.alloc(length, i & 0xff));
  });
  parts.push(W.request(0, 2, 0n, 0, 0));
  return { input: bytes(...parts), cookies: reqs.length };
}

/** Split transmission output into replies; null if it is not a sequence of whole replies. */
function replyCookies(out: Buffer): number[] | null {
  const ack = bytes(be(64, 0x3e889045565a9n), be(32, 7), be(32, 1), be(32, 0));
  const at = out.indexOf(ack);
  if (at < 0) return null;
  let pos = at + ack.length;
  const done: number[] = [];
  while (pos < out.length) {
    if (out.length - pos < 16) return null;
    const magic = out.readUInt32BE(pos);
    if (magic === 0x67446698) {
      done.push(Number(out.readBigUInt64BE(pos + 8)));
      pos += 16;
    } else if (magic === 0x668e33ef) {
      if (out.length - pos < 20) return null;
      const flags = out.readUInt16BE(pos + 4);
      const len = out.readUInt32BE(pos + 16);
      if ((flags & 1) !== 0) done.push(Number(out.readBigUInt64BE(pos + 8)));
      pos += 20 + len;
    } else return null;
  }
  return pos === out.length ? done : null;
}

describe('fuzzing a real server', () => {
  it('random bytes in the handshake: no crash, no hang, honest client unaffected', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.oneof(
          fc.uint8Array({ maxLength: 300 }).map((a) => Buffer.from(a)),
          fc.tuple(fc.integer({ min: 0, max: 0xffffffff }), fc.array(arbOption, { maxLength: 6 })).map(([flags, opts]) =>
            bytes(
              be(32, flags & 0xff ? 3 : flags),
              ...opts.map((o) => bytes('IHAVEOPT', be(32, o.option), be(32, o.lie ?? o.data.length), Buffer.from(o.data))),
            ),
          ),
        ),
        async (input) => {
          const r = await exchange(input);
          expect(r.closed).toBe(true);
          await honestStillWorks();
        },
      ),
      { numRuns: 60, seed: 1 },
    );
  });

  it('well-framed random requests each get exactly one reply, in a stream that stays framed', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(arbRequest, { maxLength: 12 }), async (reqs) => {
        const { input, cookies } = framed(reqs);
        const r = await exchange(input);
        expect(r.closed).toBe(true);
        const got = replyCookies(r.out);
        expect(got).not.toBeNull();
        expect([...got!].sort((a, b) => a - b)).toEqual(Array.from({ length: cookies }, (_, i) => i + 1));
        await honestStillWorks();
      }),
      { numRuns: 60, seed: 2 },
    );
  });

  it('mutated and truncated transmission streams: no crash, no hang, honest client unaffected', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(arbRequest, { minLength: 1, maxLength: 8 }),
        fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { maxLength: 6 }),
        fc.option(fc.nat(), { freq: 3 }),
        async (reqs, flips, cut) => {
          const { input } = framed(reqs);
          const m = Buffer.from(input);
          for (const [at, v] of flips) m[GO.length + (at % Math.max(1, m.length - GO.length))] = v;
          const sent = cut === null ? m : m.subarray(0, GO.length + (cut % (m.length - GO.length + 1)));
          const r = await exchange(sent);
          expect(r.closed).toBe(true);
          await honestStillWorks();
        },
      ),
      { numRuns: 60, seed: 3 },
    );
    expect(h.server.stats().connections).toBeLessThanOrEqual(2);
  });
});
