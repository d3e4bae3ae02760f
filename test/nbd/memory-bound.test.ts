// Bounded memory under hostile clients, measured on a real server over a unix socket:
//  - a client blasting large WRITEs faster than the export completes them: the server pauses
//    the socket, so payload bytes held never exceed inFlightBytesMax + requestBytesMax;
//  - a client sending many READs and never reading the replies: the server stops issuing work
//    once writeBufferedBytesMax is queued, so buffered reply bytes and export calls stay bounded,
//    and everything completes once the client reads again.
// Tolerances: one request beyond each budget may be admitted (the check is before a header),
// and array-buffer memory is sampled after a forced GC, with room for one extra maximum-size
// request and the socket's own read buffers.

import { connect, type Socket } from 'node:net';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { afterEach, describe, expect, it } from 'vitest';
import { be, bytes, W } from '../unit/nbd/wire.js';
import { type Harness, MiB, startHarness } from './harness.js';

const GO = bytes(be(32, 3), W.option(8), W.option(7, bytes(be(32, 0), be(16, 0))));
const HANDSHAKE_REPLY_BYTES = 18 + 20 + (20 + 12) + (20 + 14) + 20; // greeting, SR ack, INFO_EXPORT, INFO_BLOCK_SIZE, ACK

// A full GC before each memory sample, so garbage not yet collected is not counted as held.
setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

let h: Harness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

async function open(path: string): Promise<Socket> {
  const s = connect({ path });
  await new Promise<void>((r) => s.once('connect', () => r()));
  s.on('error', () => undefined);
  return s;
}

async function readExactly(s: Socket, n: number): Promise<void> {
  let have = 0;
  await new Promise<void>((resolve) => {
    const onData = (c: Buffer): void => {
      have += c.length;
      if (have >= n) {
        s.off('data', onData);
        s.pause();
        resolve();
      }
    };
    s.on('data', onData);
  });
}

describe('bounded memory', () => {
  it('huge writes from a fast client: held payload stays within inFlightBytesMax + requestBytesMax', async () => {
    const limits = { requestBytesMax: 4 * MiB, inFlightBytesMax: 8 * MiB, inFlightRequestsMax: 64, writeBufferedBytesMax: MiB };
    h = await startHarness({ disk: { sizeBytes: 64 * MiB, delayMs: 50 } }, { defaultExportName: 'disk', limits });
    const s = await open(h.socketPath);
    s.write(GO);
    await readExactly(s, HANDSHAKE_REPLY_BYTES);
    s.resume(); // drain replies as they come; the pressure here is the export's slowness
    const payload = Buffer.alloc(4 * MiB, 0x5a);
    let maxHeld = 0;
    let maxArrayBuffers = 0;
    // Allocate the export's own storage first: it is data, not buffering.
    await h.exports.get('disk')!.zero(0, 64 * MiB, { fua: false, mayTrim: false, fastZero: false });
    gc();
    const base = process.memoryUsage().arrayBuffers;
    let ticks = 0;
    let pausedSamples = 0;
    const sampler = setInterval(() => {
      const t = h!.server.stats().transmissions[0];
      if (t !== undefined) maxHeld = Math.max(maxHeld, t.inFlightBytes);
      if (t?.paused === true) pausedSamples++;
      if (++ticks % 10 === 0) {
        gc();
        maxArrayBuffers = Math.max(maxArrayBuffers, process.memoryUsage().arrayBuffers - base);
      }
    }, 5);
    // A fixed amount (well past every budget), so a slow machine changes the duration, not the test.
    const writes = 40;
    for (let sent = 0; sent < writes; sent++) {
      s.write(W.request(0, 1, BigInt(sent + 1), (sent % 16) * 4 * MiB, payload.length));
      const ok = s.write(payload); // the same buffer every time: the client side allocates nothing
      if (!ok) await new Promise((r) => s.once('drain', r));
    }
    clearInterval(sampler);
    s.destroy();
    expect(maxHeld).toBeGreaterThan(0);
    expect(maxHeld).toBeLessThanOrEqual(limits.inFlightBytesMax + limits.requestBytesMax);
    // Server-side buffers (held payloads + the socket's own) stay far below what was sent.
    expect(maxArrayBuffers).toBeLessThan(limits.inFlightBytesMax + 3 * limits.requestBytesMax + 16 * MiB);
    expect(pausedSamples).toBeGreaterThan(0); // backpressure engaged: the socket was paused
  });

  it('a client that never reads replies: buffered replies and issued work stay bounded; all complete once it reads', async () => {
    const limits = { writeBufferedBytesMax: 2 * MiB, inFlightBytesMax: 8 * MiB, inFlightRequestsMax: 128 };
    h = await startHarness({ disk: { sizeBytes: 64 * MiB } }, { defaultExportName: 'disk', limits });
    const exp = h.exports.get('disk')!;
    const s = await open(h.socketPath);
    s.write(GO);
    await readExactly(s, HANDSHAKE_REPLY_BYTES);
    const readBytes = 256 * 1024;
    const n = 400; // 100 MiB of replies requested with 11 KiB of requests
    s.write(bytes(...Array.from({ length: n }, (_, i) => W.request(0, 0, BigInt(i + 1), (i % 64) * readBytes, readBytes))));
    await new Promise((r) => setTimeout(r, 700));
    const t = h.server.stats().transmissions[0]!;
    expect(t.paused).toBe(true);
    expect(t.writeBufferedBytes).toBeLessThanOrEqual(limits.writeBufferedBytesMax + limits.inFlightBytesMax + readBytes + 28);
    // Reads issued: what is buffered in Node, plus the kernel socket buffers, plus one budget.
    const issuedBound = (limits.writeBufferedBytesMax + limits.inFlightBytesMax + 8 * MiB) / readBytes;
    expect(exp.calls.read).toBeLessThan(issuedBound);
    expect(exp.calls.read).toBeLessThan(n);
    // Liveness: read everything; all n replies arrive.
    const want = n * (20 + 8 + readBytes);
    let got = 0;
    await new Promise<void>((resolve) => {
      s.on('data', (c: Buffer) => {
        got += c.length;
        if (got >= want) resolve();
      });
      s.resume();
    });
    expect(got).toBe(want);
    expect(exp.calls.read).toBe(n);
    s.destroy();
  });
});
