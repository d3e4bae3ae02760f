// Legs: FileLeg on real temp files (read/write/short file/zero/trim/flush, offsets, errors naming the
// device), MemoryLeg, and the FaultyLeg/DelayedLeg wrappers driven by a seeded random source and a
// manual scheduler.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { mkdtemp, readFile, rm, truncate, writeFile, mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ExportError } from '../../../src/nbd/export.js';
import { FileLeg, deviceNumbers, ZERO_CHUNK_BYTES } from '../../../src/mirror/legs/file.js';
import { LegOpenError, errnoFor, toExportError } from '../../../src/mirror/legs/errors.js';
import { MemoryLeg } from '../../../src/mirror/legs/memory.js';
import { FaultyLeg, type InjectedFault } from '../../../src/mirror/legs/faulty.js';
import { DelayedLeg } from '../../../src/mirror/legs/delayed.js';
import { NbdLeg, isNbdUri, type NbdClientLike } from '../../../src/mirror/legs/nbd.js';
import { existsSync } from 'node:fs';
import { run } from '../../helpers/run.js';
import { requireTool, unmet } from '../../helpers/tools.js';
import { ManualScheduler } from '../../../src/mirror/scheduler.js';
import { xorshift32 } from '../../helpers/xorshift.js';

// Loop devices need root and /dev/loop-control (a missing one fails under CI=true, skips locally).
const haveLoop =
  requireTool('losetup') &&
  (process.getuid?.() === 0 ? true : unmet('root (for losetup)', 'run the tests as root')) &&
  (existsSync('/dev/loop-control') ? true : unmet('/dev/loop-control', 'modprobe loop, or give the container loop devices'));

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'nbd-mirror-legs-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

function pattern(length: number, seed: number): Buffer {
  const b = Buffer.alloc(length);
  for (let i = 0; i < length; i++) b[i] = (i * 31 + seed * 7 + (i >> 8)) & 0xff;
  return b;
}

describe('FileLeg', () => {
  it('reads and writes at the table offset, size excludes the offset', async () => {
    const path = join(dir, 'leg.img');
    await writeFile(path, Buffer.alloc(64 * 1024));
    const leg = await FileLeg.open(path, { offsetBytes: 4096 });
    try {
      expect(leg.device).toBe(path);
      expect(leg.deviceBytes).toBe(64 * 1024);
      expect(leg.sizeBytes).toBe(60 * 1024);
      expect(leg.isBlockDevice).toBe(false);
      const data = pattern(8192, 1);
      await leg.write(data, 1000, { fua: false });
      await leg.write(pattern(512, 2), 20000, { fua: true });
      const back = Buffer.alloc(8192);
      await leg.read(back, 1000);
      expect(back.equals(data)).toBe(true);
      // The bytes land at offset + 1000 in the file, nothing before the offset is touched.
      const file = await readFile(path);
      expect(file.subarray(4096 + 1000, 4096 + 1000 + 8192).equals(data)).toBe(true);
      expect(file.subarray(0, 4096 + 1000).every((b) => b === 0)).toBe(true);
      expect(file.subarray(4096 + 20000, 4096 + 20512).equals(pattern(512, 2))).toBe(true);
      await leg.flush();
    } finally {
      await leg.close();
    }
  });

  it('a file that shrank after open reads zeros past EOF (within sizeBytes)', async () => {
    const path = join(dir, 'short.img');
    await writeFile(path, pattern(16384, 3));
    const leg = await FileLeg.open(path, { offsetBytes: 0 });
    try {
      await truncate(path, 10000);
      const back = Buffer.alloc(8192, 0xee);
      await leg.read(back, 6000); // 4000 bytes of data, then EOF
      expect(back.subarray(0, 4000).equals(pattern(16384, 3).subarray(6000, 10000))).toBe(true);
      expect(back.subarray(4000).every((b) => b === 0)).toBe(true);
      const tail = Buffer.alloc(1000, 0xee);
      await leg.read(tail, 15000); // wholly past EOF
      expect(tail.every((b) => b === 0)).toBe(true);
    } finally {
      await leg.close();
    }
  });

  it('zero writes zeros across several chunks, leaving neighbours intact; trim is a documented no-op', async () => {
    const size = 3 * ZERO_CHUNK_BYTES;
    const path = join(dir, 'zero.img');
    await writeFile(path, pattern(size, 4));
    const leg = await FileLeg.open(path, { offsetBytes: 512 });
    try {
      const off = 100;
      const len = 2 * ZERO_CHUNK_BYTES + 12345;
      await leg.zero(off, len, { mayTrim: false });
      await leg.zero(0, 10, { mayTrim: true });
      const file = await readFile(path);
      const src = pattern(size, 4);
      expect(file.subarray(512 + 10, 512 + off).equals(src.subarray(512 + 10, 512 + off))).toBe(true);
      expect(file.subarray(512, 512 + 10).every((b) => b === 0)).toBe(true);
      expect(file.subarray(512 + off, 512 + off + len).every((b) => b === 0)).toBe(true);
      expect(file.subarray(512 + off + len).equals(src.subarray(512 + off + len))).toBe(true);
      // trim: advisory, leaves data as it was (so all legs of a mirror stay identical)
      await leg.trim(off + len, 1000);
      const after = await readFile(path);
      expect(after.subarray(512 + off + len, 512 + off + len + 1000).equals(src.subarray(512 + off + len, 512 + off + len + 1000))).toBe(true);
      await leg.flush();
    } finally {
      await leg.close();
    }
  });

  it('many concurrent writes and reads at distinct offsets', async () => {
    const path = join(dir, 'conc.img');
    await writeFile(path, Buffer.alloc(1024 * 1024));
    const leg = await FileLeg.open(path, { offsetBytes: 0 });
    try {
      await Promise.all(Array.from({ length: 64 }, (_, i) => leg.write(pattern(4096, i), i * 16384, { fua: i % 8 === 0 })));
      const bufs = Array.from({ length: 64 }, () => Buffer.alloc(4096));
      await Promise.all(bufs.map((b, i) => leg.read(b, i * 16384)));
      bufs.forEach((b, i) => expect(b.equals(pattern(4096, i))).toBe(true));
    } finally {
      await leg.close();
    }
  });

  it('close waits for in-flight I/O before closing the file descriptors', async () => {
    const path = join(dir, 'drain.img');
    await writeFile(path, pattern(1024 * 1024, 6));
    const leg = await FileLeg.open(path, { offsetBytes: 0 });
    const bufs = Array.from({ length: 32 }, () => Buffer.alloc(32768));
    const reads = bufs.map((b, i) => leg.read(b, i * 32768));
    const writes = Array.from({ length: 8 }, (_, i) => leg.write(pattern(4096, 100 + i), i * 4096, { fua: i % 2 === 0 }));
    await leg.close();
    await Promise.all([...reads, ...writes]);
    bufs.forEach((b, i) => expect(b.equals(pattern(1024 * 1024, 6).subarray(i * 32768, (i + 1) * 32768))).toBe(true));
    await expect(leg.read(Buffer.alloc(1), 0)).rejects.toMatchObject({ errno: 'EIO' });
  });

  it('open errors name the device', async () => {
    const missing = join(dir, 'missing.img');
    await expect(FileLeg.open(missing, { offsetBytes: 0 })).rejects.toSatisfy(
      (e: unknown) => e instanceof LegOpenError && e.device === missing && e.message.includes(`'${missing}'`) && e.code === 'ENOENT',
    );
    const sub = join(dir, 'adir');
    await mkdir(sub);
    const err = await FileLeg.open(sub, { offsetBytes: 0 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(LegOpenError);
    expect((err as Error).message).toContain(`'${sub}'`);
    const chr = await FileLeg.open('/dev/null', { offsetBytes: 0 }).catch((e: unknown) => e);
    expect(chr).toBeInstanceOf(LegOpenError);
    expect((chr as Error).message).toMatch(/'\/dev\/null' is neither a regular file nor a block device/);
  });

  it('read-only leg: reads work, writes reject with EPERM', async () => {
    const path = join(dir, 'ro.img');
    await writeFile(path, pattern(4096, 5));
    const leg = await FileLeg.open(path, { offsetBytes: 0, readOnly: true });
    try {
      const b = Buffer.alloc(100);
      await leg.read(b, 10);
      expect(b.equals(pattern(4096, 5).subarray(10, 110))).toBe(true);
      await expect(leg.write(Buffer.alloc(10), 0, { fua: true })).rejects.toMatchObject({ errno: 'EPERM' });
    } finally {
      await leg.close();
    }
  });

  it('I/O after close rejects with ExportError naming the device; close is idempotent', async () => {
    const path = join(dir, 'closed.img');
    await writeFile(path, Buffer.alloc(4096));
    const leg = await FileLeg.open(path, { offsetBytes: 0 });
    await leg.close();
    await leg.close();
    const err = await leg.read(Buffer.alloc(10), 0).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ExportError);
    expect((err as ExportError).message).toContain(path);
    await expect(leg.flush()).rejects.toBeInstanceOf(ExportError);
  });

  it('deviceNumbers decodes Linux dev_t', () => {
    expect(deviceNumbers(0x0801)).toEqual({ major: 8, minor: 1 }); // sda1
    expect(deviceNumbers(0xfd04)).toEqual({ major: 253, minor: 4 });
    // major 259 (blkext), minor 300: new encoding puts minor bits above bit 20
    const dev = (259n & 0xfffn) << 8n | (300n & 0xffn) | ((300n & ~0xffn) << 12n);
    expect(deviceNumbers(dev)).toEqual({ major: 259, minor: 300 });
  });

  it('a block device (loop device over a temp file): size from sysfs, I/O at an offset, FUA, flush', async () => {
    if (!haveLoop) return;
    const backing = join(dir, 'loop.img');
    await writeFile(backing, Buffer.alloc(4 * 1024 * 1024));
    const { stdout } = await run('losetup', ['--find', '--show', backing]);
    const loopDev = stdout.trim();
    try {
      const leg = await FileLeg.open(loopDev, { offsetBytes: 1024 * 1024 });
      try {
        expect(leg.isBlockDevice).toBe(true);
        expect(leg.deviceBytes).toBe(4 * 1024 * 1024);
        expect(leg.sizeBytes).toBe(3 * 1024 * 1024);
        await leg.write(pattern(65536, 8), 4096, { fua: true });
        await leg.zero(4096, 512, { mayTrim: false });
        await leg.flush();
        const back = Buffer.alloc(65536);
        await leg.read(back, 4096);
        expect(back.subarray(0, 512).every((b) => b === 0)).toBe(true);
        expect(back.subarray(512).equals(pattern(65536, 8).subarray(512))).toBe(true);
      } finally {
        await leg.close();
      }
    } finally {
      await run('losetup', ['-d', loopDev]);
    }
    const file = await readFile(backing);
    expect(file.subarray(1024 * 1024 + 4096 + 512, 1024 * 1024 + 4096 + 65536).equals(pattern(65536, 8).subarray(512))).toBe(true);
  });
});

describe('errors', () => {
  it('maps system codes to NBD errnos', () => {
    expect(errnoFor('ENOSPC')).toBe('ENOSPC');
    expect(errnoFor('EDQUOT')).toBe('ENOSPC');
    expect(errnoFor('EROFS')).toBe('EPERM');
    expect(errnoFor('EBADF')).toBe('EIO');
    expect(errnoFor(undefined)).toBe('EIO');
    const e = toExportError(Object.assign(new Error('disk full'), { code: 'ENOSPC' }), '/dev/x', 'write');
    expect(e.errno).toBe('ENOSPC');
    expect(e.message).toBe('/dev/x: write: disk full');
  });
});

describe('MemoryLeg', () => {
  it('read/write/zero/trim and the volatile cache model', async () => {
    const leg = new MemoryLeg({ device: 'm0', sizeBytes: 8192, volatileCache: true });
    await leg.write(pattern(1000, 1), 100, { fua: false });
    await leg.write(pattern(100, 2), 5000, { fua: true });
    const b = Buffer.alloc(1000);
    await leg.read(b, 100);
    expect(b.equals(pattern(1000, 1))).toBe(true);
    leg.crash(); // unflushed write lost, FUA write kept
    await leg.read(b, 100);
    expect(b.every((x) => x === 0)).toBe(true);
    const c = Buffer.alloc(100);
    await leg.read(c, 5000);
    expect(c.equals(pattern(100, 2))).toBe(true);
    await leg.write(pattern(1000, 3), 100, { fua: false });
    await leg.flush();
    leg.crash();
    await leg.read(b, 100);
    expect(b.equals(pattern(1000, 3))).toBe(true);
    await leg.trim(100, 10); // no-op by default
    await leg.read(b, 100);
    expect(b.equals(pattern(1000, 3))).toBe(true);
    await leg.zero(100, 10, { mayTrim: false });
    await leg.read(b, 100);
    expect(b.subarray(0, 10).every((x) => x === 0)).toBe(true);
    expect(leg.counts).toMatchObject({ write: 3, flush: 1, trim: 1, zero: 1 });
    await leg.close();
    await expect(leg.read(b, 0)).rejects.toMatchObject({ errno: 'EIO' });
  });

  it('trimZeroes zeroes trimmed ranges', async () => {
    const leg = new MemoryLeg({ sizeBytes: 100, initial: Buffer.alloc(100, 7), trimZeroes: true });
    await leg.trim(10, 20);
    expect(leg.bytes.subarray(10, 30).every((x) => x === 0)).toBe(true);
    expect(leg.bytes[9]).toBe(7);
    expect(leg.bytes[30]).toBe(7);
  });
});

describe('FaultyLeg', () => {
  it('armed op fails before reaching the inner leg; disarm restores; each fault is reported', async () => {
    const inner = new MemoryLeg({ device: 'm1', sizeBytes: 4096 });
    const faults: InjectedFault[] = [];
    const leg = new FaultyLeg(inner, { onFault: (f) => faults.push(f) });
    expect(leg.device).toBe('m1');
    expect(leg.sizeBytes).toBe(4096);
    await leg.write(pattern(10, 1), 0, { fua: false });
    leg.arm('write', { errno: 'ENOSPC' });
    const err = await leg.write(pattern(10, 2), 0, { fua: false }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ExportError);
    expect((err as ExportError).errno).toBe('ENOSPC');
    expect((err as ExportError).message).toContain('m1');
    expect(inner.bytes.subarray(0, 10).equals(pattern(10, 1))).toBe(true); // not written
    await leg.read(Buffer.alloc(10), 0); // reads unaffected
    expect(faults).toEqual([
      { seq: 1, device: 'm1', op: 'write', offsetBytes: 0, lengthBytes: 10, errno: 'ENOSPC', when: 'before' },
    ]);
    leg.disarm('write');
    await leg.write(pattern(10, 3), 0, { fua: false });
    expect(inner.bytes.subarray(0, 10).equals(pattern(10, 3))).toBe(true);
    expect(leg.injectedCount).toBe(1);
  });

  it("'after' performs the operation and still reports the error; ranges limit faults", async () => {
    const inner = new MemoryLeg({ sizeBytes: 4096 });
    const leg = new FaultyLeg(inner, { rules: { write: { when: 'after' }, read: { range: { offsetBytes: 1000, lengthBytes: 100 } } } });
    await expect(leg.write(pattern(10, 4), 50, { fua: false })).rejects.toMatchObject({ errno: 'EIO' });
    expect(inner.bytes.subarray(50, 60).equals(pattern(10, 4))).toBe(true);
    await leg.read(Buffer.alloc(100), 900); // ends at 1000: no overlap
    await leg.read(Buffer.alloc(100), 1100); // starts at the end: no overlap
    await expect(leg.read(Buffer.alloc(2), 1099)).rejects.toMatchObject({ errno: 'EIO' });
    leg.arm('all', { errno: 'EPERM' });
    await expect(leg.flush()).rejects.toMatchObject({ errno: 'EPERM' });
    await expect(leg.trim(0, 1)).rejects.toMatchObject({ errno: 'EPERM' });
    await expect(leg.zero(0, 1, { mayTrim: true })).rejects.toMatchObject({ errno: 'EPERM' });
    leg.disarm();
    await leg.flush();
  });

  it('fractional rate follows the seeded random source, reproducibly', async () => {
    async function run(seed: number): Promise<boolean[]> {
      const leg = new FaultyLeg(new MemoryLeg({ sizeBytes: 4096 }), { random: xorshift32(seed), rules: { read: { ratePerOp: 0.3 } } });
      const out: boolean[] = [];
      for (let i = 0; i < 2000; i++) out.push(await leg.read(Buffer.alloc(1), 0).then(() => true, () => false));
      return out;
    }
    const a = await run(42);
    expect(await run(42)).toEqual(a);
    const failures = a.filter((ok) => !ok).length;
    // Binomial(2000, 0.3): mean 600, sd ~20.5; 6 sd either side.
    expect(failures).toBeGreaterThan(600 - 123);
    expect(failures).toBeLessThan(600 + 123);
    expect(() => new FaultyLeg(new MemoryLeg({ sizeBytes: 1 })).arm('read', { ratePerOp: 0.5 })).toThrow(/random source/);
  });

  it('can be armed while I/O is in flight: operations started later fail', async () => {
    const sched = new ManualScheduler();
    const inner = new DelayedLeg(new MemoryLeg({ sizeBytes: 4096 }), { scheduler: sched, latencyMs: 10 });
    const leg = new FaultyLeg(inner);
    const first = leg.write(pattern(4, 1), 0, { fua: false });
    leg.arm('write');
    const second = leg.write(pattern(4, 2), 8, { fua: false }).then(() => 'ok', (e: ExportError) => e.errno);
    sched.advance(10);
    await first;
    expect(await second).toBe('EIO');
  });
});

describe('DelayedLeg', () => {
  it('completes only when the scheduler reaches the latency; per-op latency; order follows delays', async () => {
    const sched = new ManualScheduler();
    const inner = new MemoryLeg({ sizeBytes: 4096 });
    const leg = new DelayedLeg(inner, { scheduler: sched, latencyMs: { write: 5, read: 20 } });
    const order: string[] = [];
    const r = leg.read(Buffer.alloc(1), 0).then(() => order.push('read'));
    const w = leg.write(Buffer.from([9]), 0, { fua: false }).then(() => order.push('write'));
    const f = leg.flush().then(() => order.push('flush')); // no latency for flush
    await f;
    await Promise.resolve();
    expect(order).toEqual(['flush']);
    sched.advance(4);
    await new Promise((res) => setImmediate(res));
    expect(order).toEqual(['flush']);
    sched.advance(1);
    await w;
    expect(order).toEqual(['flush', 'write']);
    sched.advance(15);
    await r;
    expect(order).toEqual(['flush', 'write', 'read']);
    leg.setLatency((op) => (op === 'zero' ? 3 : 0));
    const z = leg.zero(0, 1, { mayTrim: false });
    sched.advance(3);
    await z;
    expect(inner.bytes[0]).toBe(0);
  });
});

describe('NbdLeg (over a fake client object; real-server tests live with the protocol client)', () => {
  function fakeClient(sizeBytes: number) {
    const calls: string[] = [];
    const client: NbdClientLike = {
      sizeBytes,
      read: async (t, o) => void calls.push(`read ${t.length}@${o}`),
      write: async (d, o, f) => void calls.push(`write ${d.length}@${o} fua=${f.fua}`),
      flush: async () => void calls.push('flush'),
      trim: async (o, l) => void calls.push(`trim ${l}@${o}`),
      zero: async (o, l, f) => void calls.push(`zero ${l}@${o} mayTrim=${f.mayTrim}`),
      close: async () => void calls.push('close'),
    };
    return { client, calls };
  }

  it('applies the offset, keeps FUA, names the URI in errors', async () => {
    const { client, calls } = fakeClient(1 << 20);
    const leg = await NbdLeg.open('nbd://127.0.0.1:1/x', { offsetBytes: 4096, connect: async () => client });
    expect(leg.sizeBytes).toBe((1 << 20) - 4096);
    await leg.read(Buffer.alloc(10), 0);
    await leg.write(Buffer.alloc(10), 100, { fua: true });
    await leg.trim(5, 6);
    await leg.zero(7, 8, { mayTrim: false });
    await leg.flush();
    await leg.close();
    expect(calls).toEqual(['read 10@4096', 'write 10@4196 fua=true', 'trim 6@4101', 'zero 8@4103 mayTrim=false', 'flush', 'close']);
    client.read = async () => {
      throw new Error('socket hang up');
    };
    const leg2 = await NbdLeg.open('nbd://127.0.0.1:1/y', { offsetBytes: 0, connect: async () => client });
    const err = await leg2.read(Buffer.alloc(1), 0).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ExportError);
    expect((err as ExportError).errno).toBe('EIO');
    expect((err as ExportError).message).toContain('nbd://127.0.0.1:1/y');
  });

  it('connection failure is a LegOpenError naming the URI', async () => {
    const err = await NbdLeg.open('nbd+unix:///e?socket=/nonexistent', {
      offsetBytes: 0,
      connect: async () => {
        throw Object.assign(new Error('connect ENOENT'), { code: 'ENOENT' });
      },
    }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(LegOpenError);
    expect((err as Error).message).toContain("'nbd+unix:///e?socket=/nonexistent'");
    expect(isNbdUri('nbd://h/e')).toBe(true);
    expect(isNbdUri('nbds+unix:///e?socket=/s')).toBe(true);
    expect(isNbdUri('/dev/sda')).toBe(false);
    expect(isNbdUri('nbd.img')).toBe(false);
  });
});
