// The TLS data path of the server (the fast paths of src/nbd/server/direct-read.ts lendTlsReads and
// src/nbd/tls/tls-writes.ts), against a real NbdServer over TLS-PSK:
//  - WRITE payloads are decrypted straight into their buffers (directReadBytes counts them), with
//    mixed sizes around TLS record boundaries, many in flight; everything reads back byte-exact while
//    several large read replies are queued at once (the split writev);
//  - 4 KiB writes whose payload is a record of its own (libnbd) are decrypted straight into their
//    buffers too, and their small replies (gathered while one is in the socket) each arrive once;
//  - backpressure still holds over TLS: a client blasting 1 MiB writes at a slow export meets the
//    pause, and held payload stays within inFlightBytesMax + requestBytesMax;
//  - large READ replies (1 MiB and odd sizes, many in flight, simple and structured replies) arrive
//    byte-exact, with the connection's send buffer widened (widenSendBuffer, through the addon);
//  - splitLargeTlsWrites on a plain Writable: large chunks alone (the largest in pieces), small runs
//    batched, one callback; widenSendBuffer on a connected socket raises SO_SNDBUF, never lowers it.
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer, connect as netConnect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { afterEach, describe, expect, it } from 'vitest';
import * as C from '../../src/nbd/codec/constants.js';
import { NbdClient } from '../../src/nbd/client/client.js';
import { fastIo, setFastIoForTests } from '../../src/nbd/server/fast-io.js';
import { splitLargeTlsWrites, TLS_WRITE_ALONE_BYTES_MIN, TLS_WRITE_PIECE_BYTES } from '../../src/nbd/tls/tls-writes.js';
import { SEND_BUFFER_BYTES, widenSendBuffer } from '../../src/nbd/server/send-buffer.js';
import { requireTools } from '../helpers/tools.js';
import { pattern } from '../nbd/harness.js';
import { successCookies, W } from '../unit/nbd/wire.js';
import { MiB, startTlsHarness, type TlsHarness } from './harness.js';
import { pskOf, RawClient } from './raw-client.js';

const ok = requireTools('certtool', 'psktool');

let h: TlsHarness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

describe.skipIf(!ok)('TLS data path', () => {
  it('mixed-size writes in flight decrypt straight into their buffers; concurrent reads return the same bytes', async () => {
    h = await startTlsHarness({ disk: { sizeBytes: 32 * MiB } }, { tls: (fx) => ({ mode: 'require', pskFile: fx.pskFile, verifyPeer: false }) });
    const client = await NbdClient.connect(`nbds+unix://alice@/disk?socket=${h.socketPath}&tls-psk-file=${h.fx.pskFile}`);
    const sizes = [512, 4096, 16 * 1024 - 512, 16 * 1024, 16 * 1024 + 512, 64 * 1024 + 512, 1 * MiB, 1 * MiB - 512, 3 * MiB];
    const writes: { off: number; data: Buffer }[] = [];
    let off = 0;
    for (let round = 0; round < 3; round++) {
      for (const [i, n] of sizes.entries()) {
        writes.push({ off, data: pattern(n, 100 * round + i + 1) });
        off += n + 512;
      }
    }
    expect(off).toBeLessThan(32 * MiB);
    await Promise.all(writes.map((w) => client.write(w.data, w.off, { fua: false })));
    const t = h.server.stats().transmissions[0]!;
    // Every payload byte of >= 16 KiB left to read goes straight into its buffer; the rest via scratch.
    expect(t.directReadBytes).toBeGreaterThan(0.9 * writes.reduce((a, w) => a + w.data.length, 0));
    const backs = writes.map((w) => Buffer.alloc(w.data.length));
    await Promise.all(writes.map((w, i) => client.read(backs[i]!, w.off)));
    for (const [i, w] of writes.entries()) expect(backs[i]!.equals(w.data), `write ${i} (${w.data.length} bytes at ${w.off})`).toBe(true);
    await client.close();
  });

  it('4 KiB writes sent as a header record then a payload record (as libnbd does), many in flight: each payload decrypted straight into its buffer, one reply each, data intact', async () => {
    h = await startTlsHarness({ disk: { sizeBytes: 4 * MiB } }, { tls: (fx) => ({ mode: 'require', pskFile: fx.pskFile, verifyPeer: false }) });
    const c = await RawClient.open(h.socketPath);
    expect((await c.option(C.NBD_OPT_STARTTLS)).type).toBe(C.NBD_REP_ACK);
    const s = await c.upgrade({ psk: pskOf(h.fx.pskFile, 'alice', readFileSync(h.fx.pskFile, 'utf8')) });
    expect('transmissionFlags' in (await c.go('disk'))).toBe(true);
    const writes = 96;
    const replies: Buffer[] = [];
    let have = 0;
    const allReplies = new Promise<void>((resolve) => {
      s.on('data', (d: Buffer) => {
        replies.push(d);
        have += d.length;
        if (have >= writes * C.SIMPLE_REPLY_BYTES) resolve();
      });
    });
    const writeRecord = (b: Buffer): Promise<void> => new Promise((resolve, reject) => s.write(b, (err) => (err ? reject(err) : resolve())));
    // Each write() waits for the previous one to be flushed, so each is its own TLS record; the server
    // answers while later requests are still coming (replies complete while others are in the socket).
    for (let i = 0; i < writes; i++) {
      await writeRecord(W.request(0, C.NBD_CMD_WRITE, BigInt(1000 + i), i * 4096, 4096));
      await writeRecord(pattern(4096, i + 1));
    }
    await allReplies;
    const all = Buffer.concat(replies);
    expect(all.length).toBe(writes * C.SIMPLE_REPLY_BYTES);
    expect(new Set(successCookies(all)).size).toBe(writes);
    expect(h.server.stats().transmissions[0]!.directReadBytes).toBe(writes * 4096);
    const disk = h.exports.get('disk')!;
    for (let i = 0; i < writes; i++) {
      const back = Buffer.alloc(4096);
      await disk.read(back, i * 4096);
      expect(back.equals(pattern(4096, i + 1)), `write ${i}`).toBe(true);
    }
    c.destroy();
  });

  it('large reads over TLS, many in flight, simple and structured replies: byte-exact, with the send buffer widened', async () => {
    const io = fastIo();
    const kept: number[] = [];
    if (io?.setSendBuffer !== undefined) {
      const set = io.setSendBuffer.bind(io);
      setFastIoForTests({ ...io, setSendBuffer: (fd: number, bytes: number): number => {
        const r = set(fd, bytes);
        kept.push(r);
        return r;
      } });
    }
    try {
      h = await startTlsHarness({ disk: { sizeBytes: 24 * MiB } }, { tls: (fx) => ({ mode: 'require', pskFile: fx.pskFile, verifyPeer: false }) });
      const data = pattern(24 * MiB, 7);
      await h.exports.get('disk')!.write(data, 0, { fua: false });
      const sizes = [1 * MiB, 1 * MiB, 3 * MiB, 1 * MiB - 512, 256 * 1024 + 512, 1 * MiB + 4096, 16 * 1024 + 1, 512];
      for (const structuredReplies of [true, false]) {
        const client = await NbdClient.connect(`nbds+unix://alice@/disk?socket=${h.socketPath}&tls-psk-file=${h.fx.pskFile}`, { structuredReplies });
        for (let round = 0; round < 2; round++) {
          const reads: Promise<void>[] = [];
          const got: { off: number; buf: Buffer }[] = [];
          let off = round * 512;
          for (let k = 0; k < 12; k++) {
            const n = sizes[k % sizes.length]!;
            const buf = Buffer.alloc(n);
            got.push({ off, buf });
            reads.push(client.read(buf, off));
            off = (off + n + 4096) % (20 * MiB);
          }
          await Promise.all(reads);
          for (const g of got) expect(g.buf.equals(data.subarray(g.off, g.off + g.buf.length)), `read at ${g.off} of ${g.buf.length} (structured ${structuredReplies})`).toBe(true);
        }
        await client.close();
      }
      if (io?.setSendBuffer !== undefined) {
        expect(kept.length).toBe(2);
        for (const r of kept) expect(r).toBeGreaterThan(0);
      }
    } finally {
      setFastIoForTests(undefined);
    }
  });

  it('a client blasting 1 MiB writes at a slow export over TLS meets backpressure: held payload stays bounded', async () => {
    const limits = { requestBytesMax: 1 * MiB, inFlightBytesMax: 4 * MiB, inFlightRequestsMax: 64, writeBufferedBytesMax: 1 * MiB };
    h = await startTlsHarness({ disk: { sizeBytes: 16 * MiB, delayMs: 40 } }, { tls: (fx) => ({ mode: 'require', pskFile: fx.pskFile, verifyPeer: false }), limits });
    const c = await RawClient.open(h.socketPath);
    expect((await c.option(C.NBD_OPT_STARTTLS)).type).toBe(C.NBD_REP_ACK);
    const s = await c.upgrade({ psk: pskOf(h.fx.pskFile, 'alice', readFileSync(h.fx.pskFile, 'utf8')) });
    const go = await c.go('disk');
    expect('transmissionFlags' in go).toBe(true);
    const payload = Buffer.alloc(1 * MiB, 0x5a);
    let maxHeld = 0;
    let pausedSamples = 0;
    const sampler = setInterval(() => {
      const t = h!.server.stats().transmissions[0];
      if (t !== undefined) maxHeld = Math.max(maxHeld, t.inFlightBytes);
      if (t?.paused === true) pausedSamples++;
    }, 5);
    const writes = 24;
    for (let i = 0; i < writes; i++) {
      s.write(W.request(0, 1, BigInt(i + 1), (i % 16) * MiB, payload.length));
      if (!s.write(payload)) await new Promise((r) => s.once('drain', r));
    }
    // Let the last ones land before sampling stops.
    const deadline = Date.now() + 10_000;
    while (h.exports.get('disk')!.calls.write < writes && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    clearInterval(sampler);
    expect(h.exports.get('disk')!.calls.write).toBe(writes);
    expect(maxHeld).toBeGreaterThan(0);
    expect(maxHeld).toBeLessThanOrEqual(limits.inFlightBytesMax + limits.requestBytesMax);
    expect(pausedSamples).toBeGreaterThan(0);
    c.destroy();
  });
});

describe('splitLargeTlsWrites', () => {
  it('writes chunks of a full record or more alone (longer than a piece: in pieces), batches runs of small ones, calls back once', async () => {
    const calls: number[][] = [];
    const w = new Writable({
      write(chunk: Buffer, _enc, cb) {
        calls.push([chunk.length]);
        setImmediate(cb);
      },
      writev(chunks, cb) {
        calls.push(chunks.map((c) => (c.chunk as Buffer).length));
        setImmediate(cb);
      },
    });
    expect(splitLargeTlsWrites(w)).toBe(true);
    const w3 = new Writable({
      write(chunk: Buffer, _enc, cb) {
        calls.push([chunk.length]);
        setImmediate(cb);
      },
      writev: (_chunks, cb) => cb(),
    });
    splitLargeTlsWrites(w3);
    const big = TLS_WRITE_ALONE_BYTES_MIN;
    const sizes = [16, 16, big, 16, big + 1, big * 64, 16, 16, 16];
    let done = 0;
    w.cork();
    for (const n of sizes) w.write(Buffer.alloc(n), () => done++);
    w.uncork();
    await new Promise<void>((r) => w.end(r));
    expect(done).toBe(sizes.length);
    // big * 64 (1 MiB) goes in TLS_WRITE_PIECE_BYTES pieces, one after the other.
    const pieces = Array.from({ length: (big * 64) / TLS_WRITE_PIECE_BYTES }, () => [TLS_WRITE_PIECE_BYTES]);
    expect(pieces.length).toBeGreaterThan(1);
    expect(calls).toEqual([[16, 16], [big], [16], [big + 1], ...pieces, [16, 16, 16]]);
    // A lone write (no cork) longer than a piece: pieces too, one callback.
    calls.length = 0;
    let lone = 0;
    await new Promise<void>((r) => w3.write(Buffer.alloc(TLS_WRITE_PIECE_BYTES * 2 + 5), () => (lone++, r())));
    expect(calls).toEqual([[TLS_WRITE_PIECE_BYTES], [TLS_WRITE_PIECE_BYTES], [5]]);
    expect(lone).toBe(1);
    // Only small chunks: one writev, as before.
    calls.length = 0;
    const w2 = new Writable({ write: (_c, _e, cb) => cb(), writev: (chunks, cb) => (calls.push(chunks.map((c) => (c.chunk as Buffer).length)), cb()) });
    splitLargeTlsWrites(w2);
    w2.cork();
    for (let i = 0; i < 5; i++) w2.write(Buffer.alloc(100));
    w2.uncork();
    await new Promise<void>((r) => w2.end(r));
    expect(calls).toEqual([[100, 100, 100, 100, 100]]);
  });
});


describe('widenSendBuffer', () => {
  it('raises SO_SNDBUF of a connected unix socket (reported doubled, up to the cap), never lowers it; TCP or no addon: null', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'nbdm-sndbuf-'));
    const path = join(dir, 's');
    const accepted = new Promise<Socket>((resolve) => {
      const srv = createServer((s) => {
        srv.close();
        resolve(s);
      });
      srv.listen(path);
    });
    await new Promise((r) => setTimeout(r, 20));
    const c = netConnect(path);
    const s = await accepted;
    try {
      const io = fastIo();
      if (io?.setSendBuffer === undefined) {
        expect(widenSendBuffer(s, SEND_BUFFER_BYTES)).toBeNull();
        return;
      }
      const small = widenSendBuffer(s, 64 * 1024)!; // already at least that (the default): left alone
      expect(small).toBeGreaterThan(0);
      const wide = widenSendBuffer(s, SEND_BUFFER_BYTES)!;
      expect(wide).toBeGreaterThanOrEqual(small);
      expect(wide).toBeLessThanOrEqual(2 * SEND_BUFFER_BYTES);
      expect(widenSendBuffer(s, 64 * 1024)).toBe(wide); // never lowered
      expect(widenSendBuffer(s, 0)).toBeNull();
      setFastIoForTests(null);
      expect(widenSendBuffer(s, SEND_BUFFER_BYTES)).toBeNull();
      setFastIoForTests(undefined);
      // TCP: left to the kernel's autotuning.
      const tcp = await new Promise<{ a: Socket; b: Socket; close: () => void }>((resolve) => {
        const srv = createServer((b) => resolve({ a, b, close: () => srv.close() }));
        let a: Socket;
        srv.listen(0, '127.0.0.1', () => {
          a = netConnect((srv.address() as { port: number }).port, '127.0.0.1');
        });
      });
      try {
        expect(widenSendBuffer(tcp.b, SEND_BUFFER_BYTES)).toBeNull();
      } finally {
        tcp.a.destroy();
        tcp.b.destroy();
        tcp.close();
      }
    } finally {
      setFastIoForTests(undefined);
      c.destroy();
      s.destroy();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
