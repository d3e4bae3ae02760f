// Small WRITE payloads handed to the export as views of the server's reused read buffer (direct-read.ts:
// hold/release): the buffer is not read into again until the export has settled every write viewing it.
// The export here looks at `data` only when it completes, long after the server read more requests, so a
// read buffer reused too early shows up as wrong bytes on disk. Two shapes: bursts (many payloads per
// read buffer) and one request per read with more requests held than SCRATCH_HELD_MAX buffers (the rest
// are copied out), each write with its own pattern, read back after. And writes the export completes
// before write() returns (it returns SETTLED_OK: answered at once, the read buffer reusable at once) mixed
// with late ones.
import { afterEach, describe, expect, it } from 'vitest';
import * as C from '../../src/nbd/codec/constants.js';
import { SCRATCH_HELD_MAX } from '../../src/nbd/server/direct-read.js';
import { SETTLED_OK, type WriteFlags } from '../../src/nbd/export.js';
import { RawClient } from '../tls/raw-client.js';
import { successCookies, W } from '../unit/nbd/wire.js';
import { type Harness, pattern, startHarness } from './harness.js';

let h: Harness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

const BLOCK = 4096;

/** The export copies `data` only `lateMs` after the call (and settles then). */
function applyLate(h: Harness, lateMs: number): void {
  const disk = h.exports.get('disk')!;
  const write = disk.write.bind(disk);
  disk.write = (data: Buffer, off: number, flags: WriteFlags): Promise<void> =>
    new Promise<void>((r) => setTimeout(r, lateMs)).then(() => write(data, off, flags));
}

async function connectDisk(h: Harness): Promise<{ c: RawClient; replies: () => Buffer }> {
  const c = await RawClient.open(h.socketPath);
  expect('transmissionFlags' in (await c.go('disk'))).toBe(true);
  const chunks: Buffer[] = [];
  c.raw.on('data', (d: Buffer) => chunks.push(d));
  return { c, replies: () => Buffer.concat(chunks) };
}

async function until(cond: () => boolean): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 5));
  }
}

async function expectPatterns(h: Harness, n: number, seedBase: number): Promise<void> {
  const disk = h.exports.get('disk')!;
  for (let i = 0; i < n; i++) {
    const back = Buffer.alloc(BLOCK);
    await disk.read(back, i * BLOCK);
    expect(back.equals(pattern(BLOCK, seedBase + i)), `write ${i}`).toBe(true);
  }
}

describe('write payloads viewing the read buffer', () => {
  it('bursts of pipelined 4 KiB writes completing late: every write lands with its own bytes', async () => {
    h = await startHarness({ disk: { sizeBytes: 4 * 1024 * 1024 } });
    applyLate(h, 30);
    const { c, replies } = await connectDisk(h);
    const writes = 120; // under inFlightRequestsMax: all held at once, over several 64 KiB reads
    for (let burst = 0; burst < 4; burst++) {
      const parts: Buffer[] = [];
      for (let i = burst * 30; i < (burst + 1) * 30; i++) parts.push(W.request(0, C.NBD_CMD_WRITE, BigInt(i + 1), i * BLOCK, BLOCK), pattern(BLOCK, 1000 + i));
      c.raw.write(Buffer.concat(parts));
      await new Promise((r) => setTimeout(r, 2));
    }
    await until(() => replies().length >= writes * C.SIMPLE_REPLY_BYTES);
    expect(new Set(successCookies(replies())).size).toBe(writes);
    await expectPatterns(h, writes, 1000);
    c.raw.destroy();
  });

  it('writes done before write() returned (SETTLED_OK) between late ones: each answered once, every write lands', async () => {
    h = await startHarness({ disk: { sizeBytes: 4 * 1024 * 1024 } });
    const disk = h.exports.get('disk')!;
    const write = disk.write.bind(disk);
    let now = 0;
    disk.write = (data: Buffer, off: number, flags: WriteFlags): Promise<void> => {
      if ((off / BLOCK) % 3 === 2) return new Promise<void>((r) => setTimeout(r, 20)).then(() => write(data, off, flags));
      now++;
      void write(Buffer.from(data), off, flags); // copied now: the server may reuse `data` once we return
      return SETTLED_OK;
    };
    const { c, replies } = await connectDisk(h);
    const writes = 150;
    for (let burst = 0; burst < 5; burst++) {
      const parts: Buffer[] = [];
      for (let i = burst * 30; i < (burst + 1) * 30; i++) parts.push(W.request(0, C.NBD_CMD_WRITE, BigInt(i + 1), i * BLOCK, BLOCK), pattern(BLOCK, 7000 + i));
      c.raw.write(Buffer.concat(parts));
      await new Promise((r) => setTimeout(r, 2));
    }
    await until(() => replies().length >= writes * C.SIMPLE_REPLY_BYTES);
    await new Promise((r) => setTimeout(r, 30));
    expect(replies().length).toBe(writes * C.SIMPLE_REPLY_BYTES);
    expect(new Set(successCookies(replies())).size).toBe(writes);
    expect(now).toBe(100);
    await expectPatterns(h, writes, 7000);
    c.raw.destroy();
  });

  it(`one write per read, more held than ${SCRATCH_HELD_MAX} read buffers: the rest are copied, all land intact`, async () => {
    h = await startHarness({ disk: { sizeBytes: 4 * 1024 * 1024 } });
    applyLate(h, 400);
    const { c, replies } = await connectDisk(h);
    const writes = SCRATCH_HELD_MAX + 8;
    for (let i = 0; i < writes; i++) {
      c.raw.write(Buffer.concat([W.request(0, C.NBD_CMD_WRITE, BigInt(i + 1), i * BLOCK, BLOCK), pattern(BLOCK, 5000 + i)]));
      await new Promise((r) => setTimeout(r, 3)); // its own read, on a loaded machine most of the time
    }
    await until(() => replies().length >= writes * C.SIMPLE_REPLY_BYTES);
    expect(new Set(successCookies(replies())).size).toBe(writes);
    await expectPatterns(h, writes, 5000);
    c.raw.destroy();
  });
});
