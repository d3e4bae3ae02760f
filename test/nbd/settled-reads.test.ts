// settled-reads.test.ts — reads the export completes before read() returns (it returns SETTLED_OK: page-cached
// legs) are answered at once, mixed with late ones: every read answered once, with its own bytes.
import { afterEach, describe, expect, it } from 'vitest';
import * as C from '../../src/nbd/codec/constants.js';
import { SETTLED_OK } from '../../src/nbd/export.js';
import { RawClient } from '../tls/raw-client.js';
import { W } from '../unit/nbd/wire.js';
import { type Harness, pattern, startHarness } from './harness.js';

let h: Harness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

const BLOCK = 4096;
const READS = 90;

describe('reads done before read() returned', () => {
  it('SETTLED_OK between late reads: each answered once with its own data', async () => {
    h = await startHarness({ disk: { sizeBytes: 4 * 1024 * 1024 } });
    const disk = h.exports.get('disk')!;
    for (let i = 0; i < READS; i++) await disk.write(pattern(BLOCK, 9000 + i), i * BLOCK, { fua: false });
    const read = disk.read.bind(disk);
    let now = 0;
    disk.read = (target: Buffer, off: number): Promise<void> => {
      if ((off / BLOCK) % 3 === 2) return new Promise<void>((r) => setTimeout(r, 20)).then(() => read(target, off));
      now++;
      target.set(pattern(BLOCK, 9000 + off / BLOCK)); // filled on the caller's stack, as a page-cached leg does
      return SETTLED_OK;
    };
    const c = await RawClient.open(h.socketPath);
    expect('transmissionFlags' in (await c.go('disk'))).toBe(true);
    const chunks: Buffer[] = [];
    c.raw.on('data', (d: Buffer) => chunks.push(d));
    for (let burst = 0; burst < 3; burst++) {
      const parts: Buffer[] = [];
      for (let i = burst * 30; i < (burst + 1) * 30; i++) parts.push(W.request(0, C.NBD_CMD_READ, BigInt(i + 1), i * BLOCK, BLOCK));
      c.raw.write(Buffer.concat(parts));
      await new Promise((r) => setTimeout(r, 2));
    }
    const replyBytes = C.SIMPLE_REPLY_BYTES + BLOCK;
    const deadline = Date.now() + 10_000;
    while (Buffer.concat(chunks).length < READS * replyBytes && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
    await new Promise((r) => setTimeout(r, 30));
    const all = Buffer.concat(chunks);
    expect(all.length).toBe(READS * replyBytes);
    const seen = new Set<number>();
    for (let pos = 0; pos < all.length; pos += replyBytes) {
      expect(all.readUInt32BE(pos)).toBe(C.NBD_SIMPLE_REPLY_MAGIC);
      expect(all.readUInt32BE(pos + 4), 'no error').toBe(0);
      const i = Number(all.readBigUInt64BE(pos + 8)) - 1;
      seen.add(i);
      expect(all.subarray(pos + C.SIMPLE_REPLY_BYTES, pos + replyBytes).equals(pattern(BLOCK, 9000 + i)), `read ${i}'s bytes`).toBe(true);
    }
    expect(seen.size).toBe(READS);
    expect(now).toBe(60);
    c.raw.destroy();
  });
});
