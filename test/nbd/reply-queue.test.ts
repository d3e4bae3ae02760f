// Replies queued behind a stream write of the server's (transmission.ts: write/flushOut/streamWritten):
// while a reply is still in the stream (the kernel took only part of it, or TLS), later replies gather,
// successful simple replies in the reused reply buffer; they must all leave when that write is done.
//  - plain socket: 1 MiB READs the client does not read yet fill the socket, then 4 KiB WRITEs complete
//    behind them; once the client reads, every reply arrives;
//  - TLS: a burst of 4 KiB WRITEs in one write (a few TLS records, each completing its requests while
//    the previous replies are still being encrypted and sent): one reply each.
import { connect, type Socket } from 'node:net';
import { readFileSync } from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import * as C from '../../src/nbd/codec/constants.js';
import { requireTools } from '../helpers/tools.js';
import { startTlsHarness, type TlsHarness } from '../tls/harness.js';
import { pskOf, RawClient } from '../tls/raw-client.js';
import { be, bytes, successCookies, W } from '../unit/nbd/wire.js';
import { type Harness, MiB, pattern, startHarness } from './harness.js';

const GO = bytes(be(32, 3), W.option(8), W.option(7, bytes(be(32, 0), be(16, 0))));
const HANDSHAKE_REPLY_BYTES = 18 + 20 + (20 + 12) + (20 + 14) + 20; // greeting, SR ack, INFO_EXPORT, INFO_BLOCK_SIZE, ACK
/** A READ reply with structured replies negotiated (GO above asks for them): one OFFSET_DATA chunk. */
const READ_REPLY_PREFIX_BYTES = C.STRUCTURED_REPLY_HEADER_BYTES + 8;

let h: Harness | TlsHarness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

/** Collect everything the socket receives; resolves when `n` bytes arrived (rejects after 10 s). */
function receive(s: Socket | NodeJS.ReadableStream, n: number): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let have = 0;
  return new Promise<Buffer>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`received ${have} of ${n} bytes`)), 10_000);
    s.on('data', (d: Buffer) => {
      chunks.push(d);
      have += d.length;
      if (have >= n) {
        clearTimeout(timer);
        resolve(Buffer.concat(chunks));
      }
    });
  });
}

describe('replies queued behind a stream write', () => {
  it('plain socket: WRITE replies completing while large READ replies wait in the socket all arrive once the client reads', async () => {
    h = await startHarness({ disk: { sizeBytes: 16 * MiB } }, { defaultExportName: 'disk' });
    const s = connect({ path: h.socketPath });
    await new Promise<void>((r) => s.once('connect', () => r()));
    s.on('error', () => undefined);
    s.write(GO);
    const handshake = receive(s, HANDSHAKE_REPLY_BYTES);
    await handshake;
    s.removeAllListeners('data');
    s.pause();
    const reads = 8;
    const writes = 20;
    const parts: Buffer[] = [];
    for (let i = 0; i < reads; i++) parts.push(W.request(0, C.NBD_CMD_READ, BigInt(1 + i), i * MiB, MiB));
    s.write(Buffer.concat(parts));
    await new Promise((r) => setTimeout(r, 100)); // the read replies fill the socket
    const w: Buffer[] = [];
    for (let i = 0; i < writes; i++) w.push(W.request(0, C.NBD_CMD_WRITE, BigInt(100 + i), 8 * MiB + i * 4096, 4096), pattern(4096, i + 1));
    s.write(Buffer.concat(w));
    await new Promise((r) => setTimeout(r, 100)); // the writes complete behind the read replies
    const all = receive(s, reads * (READ_REPLY_PREFIX_BYTES + MiB) + writes * C.SIMPLE_REPLY_BYTES);
    s.resume();
    const got = await all;
    expect(got.length).toBe(reads * (READ_REPLY_PREFIX_BYTES + MiB) + writes * C.SIMPLE_REPLY_BYTES);
    expect(h.exports.get('disk')!.calls.write).toBe(writes);
    s.destroy();
  });

  it.skipIf(!requireTools('certtool', 'psktool'))('TLS: a burst of 4 KiB WRITEs in one write gets one reply each', async () => {
    const th = await startTlsHarness({ disk: { sizeBytes: 4 * MiB } }, { tls: (fx) => ({ mode: 'require', pskFile: fx.pskFile, verifyPeer: false }) });
    h = th;
    const c = await RawClient.open(th.socketPath);
    expect((await c.option(C.NBD_OPT_STARTTLS)).type).toBe(C.NBD_REP_ACK);
    const s = await c.upgrade({ psk: pskOf(th.fx.pskFile, 'alice', readFileSync(th.fx.pskFile, 'utf8')) });
    expect('transmissionFlags' in (await c.go('disk'))).toBe(true);
    const writes = 200;
    const all = receive(s, writes * C.SIMPLE_REPLY_BYTES);
    for (let burst = 0; burst < 4; burst++) {
      const parts: Buffer[] = [];
      for (let i = burst * 50; i < (burst + 1) * 50; i++) parts.push(W.request(0, C.NBD_CMD_WRITE, BigInt(1 + i), i * 4096, 4096), pattern(4096, i + 1));
      s.write(Buffer.concat(parts));
    }
    const got = await all;
    expect(new Set(successCookies(got)).size).toBe(writes);
    c.destroy();
  });
});
