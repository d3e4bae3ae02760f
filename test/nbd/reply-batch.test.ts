// Small replies gathered while an earlier one is still in the socket (transmission.ts: REPLY_BATCH_*):
// a client pipelining many small requests and then NBD_CMD_DISC in one burst gets exactly one reply
// per request, each well-formed, before the server closes the connection (the gathered replies are
// flushed before the connection ends, not dropped), and the data is where the writes put it. Both with the
// fast-io addon's reply writes (when built) and with node:fs's writeSync (the fallback without the addon).
import { afterEach, describe, expect, it } from 'vitest';
import * as C from '../../src/nbd/codec/constants.js';
import { RawClient } from '../tls/raw-client.js';
import { successCookies, W } from '../unit/nbd/wire.js';
import { setFastIoForTests } from '../../src/nbd/server/fast-io.js';
import { type Harness, pattern, startHarness } from './harness.js';

let h: Harness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
  setFastIoForTests(undefined);
});

describe.each([
  ['the fast-io addon (when built)', false],
  ['node:fs (no addon)', true],
])('gathered small replies, written through %s', (_name, withoutAddon) => {
  it('a burst of pipelined 4 KiB writes, flushes and a DISC: one reply per request, all sent before the close', async () => {
    if (withoutAddon) setFastIoForTests(null);
    h = await startHarness({ disk: { sizeBytes: 4 * 1024 * 1024 } });
    const c = await RawClient.open(h.socketPath);
    expect('transmissionFlags' in (await c.go('disk'))).toBe(true);
    const s = c.raw;
    const chunks: Buffer[] = [];
    s.on('data', (d: Buffer) => chunks.push(d));
    const ended = new Promise<void>((resolve) => s.once('close', () => resolve()));
    const writes = 300;
    const burst: Buffer[] = [];
    for (let i = 0; i < writes; i++) {
      burst.push(W.request(0, C.NBD_CMD_WRITE, BigInt(i + 1), i * 4096, 4096), pattern(4096, i + 1));
      if (i % 50 === 49) burst.push(W.request(0, C.NBD_CMD_FLUSH, BigInt(100_000 + i), 0, 0));
    }
    burst.push(W.request(0, C.NBD_CMD_DISC, 0n, 0, 0));
    s.write(Buffer.concat(burst));
    await ended;
    const all = Buffer.concat(chunks);
    const expected = writes + Math.floor(writes / 50);
    expect(all.length).toBe(expected * C.SIMPLE_REPLY_BYTES);
    expect(new Set(successCookies(all)).size).toBe(expected);
    const disk = h.exports.get('disk')!;
    expect(disk.calls.write).toBe(writes);
    for (const i of [0, 1, 149, writes - 1]) {
      const back = Buffer.alloc(4096);
      await disk.read(back, i * 4096);
      expect(back.equals(pattern(4096, i + 1)), `write ${i}`).toBe(true);
    }
  });
});
