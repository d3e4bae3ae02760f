// openTable: linear export round trip over a real file, size checks naming device and sizes, and the
// all-or-nothing rule (every leg opened before a failure is closed again).
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FileLeg } from '../../../src/mirror/legs/file.js';
import type { Leg } from '../../../src/mirror/legs/leg.js';
import { LegOpenError } from '../../../src/mirror/legs/errors.js';
import { diskLogBytesMin, openTable, type LegOpener } from '../../../src/mirror/open.js';
import { parseTable } from '../../../src/mirror/table.js';

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'nbd-mirror-open-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function img(name: string, bytes: number): Promise<string> {
  const path = join(dir, name);
  await writeFile(path, Buffer.alloc(bytes));
  return path;
}

/** The default opener (real FileLegs), recording which legs are still open. */
function trackingOpener(): { open: LegOpener; openDevices: () => string[]; opens: () => number } {
  const live = new Set<Leg>();
  let count = 0;
  const open: LegOpener = async (device, offsetBytes, opts) => {
    const leg = await FileLeg.open(device, { offsetBytes, readOnly: opts.readOnly });
    count++;
    live.add(leg);
    const close = leg.close.bind(leg);
    leg.close = async () => {
      live.delete(leg);
      await close();
    };
    return leg;
  };
  return { open, openDevices: () => [...live].map((l) => l.device), opens: () => count };
}

describe('openTable: linear', () => {
  it('round trip: writes through the export land at the offset in the file', async () => {
    const path = await img('a.img', 1024 * 1024);
    const exp = await openTable(parseTable(`0 1024 linear ${path} 8`));
    try {
      const caps = exp.capabilities();
      expect(caps).toMatchObject({
        sizeBytes: 1024 * 512,
        readOnly: false,
        canFlush: true,
        canFua: true,
        canTrim: true,
        canZero: true,
        canMultiConn: true,
        blockSizeMin: 1,
        blockSizePreferred: 4096,
        blockSizeMax: 32 * 1024 * 1024,
      });
      const data = Buffer.alloc(10000);
      for (let i = 0; i < data.length; i++) data[i] = (i * 7) & 0xff;
      await exp.write(data, 3000, { fua: true });
      const back = Buffer.alloc(10000);
      await exp.read(back, 3000);
      expect(back.equals(data)).toBe(true);
      await exp.zero(3000, 100, { fua: true, mayTrim: false, fastZero: false });
      await expect(exp.zero(0, 1, { fua: false, mayTrim: true, fastZero: true })).rejects.toMatchObject({ errno: 'ENOTSUP' });
      await exp.trim(0, 512, { fua: false });
      await exp.flush();
      await exp.cache(0, 4096);
      expect(await exp.blockStatus(512, 4096)).toEqual([{ lengthBytes: 4096, flags: 0 }]);
      const file = await readFile(path);
      expect(file.subarray(8 * 512 + 3100, 8 * 512 + 13000).equals(data.subarray(100))).toBe(true);
      expect(file.subarray(8 * 512 + 3000, 8 * 512 + 3100).every((b) => b === 0)).toBe(true);
    } finally {
      await exp.close();
    }
    await expect(exp.read(Buffer.alloc(1), 0)).rejects.toMatchObject({ errno: 'ESHUTDOWN' });
  });

  it('read-only opens the file read-only and advertises it', async () => {
    const path = await img('ro.img', 4096);
    const exp = await openTable(parseTable(`0 8 linear ${path} 0`), { readOnly: true });
    try {
      expect(exp.capabilities().readOnly).toBe(true);
      await expect(exp.write(Buffer.alloc(1), 0, { fua: false })).rejects.toMatchObject({ errno: 'EPERM' });
    } finally {
      await exp.close();
    }
  });

  it('a leg too small is refused with the device and both sizes, and nothing stays open', async () => {
    const path = await img('small.img', 100 * 512);
    const t = trackingOpener();
    const err = await openTable(parseTable(`0 96 linear ${path} 8`), { openLeg: t.open }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(LegOpenError);
    expect((err as LegOpenError).device).toBe(path);
    expect((err as Error).message).toBe(
      `leg device '${path}' is too small: the table needs 49152 bytes (96 sectors) from offset 4096 bytes (8 sectors), ` +
        `i.e. a device of at least 53248 bytes, but it has 51200 bytes`,
    );
    expect(t.opens()).toBe(1);
    expect(t.openDevices()).toEqual([]);
    // exactly big enough is fine
    const ok = await openTable(parseTable(`0 92 linear ${path} 8`), { openLeg: t.open });
    await ok.close();
    expect(t.openDevices()).toEqual([]);
  });
});

describe('openTable: mirror', () => {
  it('one leg too small among three: refused, the others are closed again', async () => {
    const a = await img('a.img', 64 * 1024);
    const b = await img('b.img', 16 * 1024);
    const c = await img('c.img', 64 * 1024);
    const t = trackingOpener();
    const err = await openTable(parseTable(`0 64 mirror core 1 16 3 ${a} 0 ${b} 0 ${c} 0`), { openLeg: t.open }).catch(
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(LegOpenError);
    expect((err as Error).message).toMatch(new RegExp(`leg device '${b}' is too small: the table needs 32768 bytes .* but it has 16384 bytes`));
    expect(t.opens()).toBe(3);
    expect(t.openDevices()).toEqual([]);
  });

  it('a missing leg: error names it, the legs that opened are closed', async () => {
    const a = await img('a.img', 64 * 1024);
    const missing = join(dir, 'nope.img');
    const t = trackingOpener();
    const err = await openTable(parseTable(`0 64 mirror core 1 16 2 ${a} 0 ${missing} 0`), { openLeg: t.open }).catch(
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(LegOpenError);
    expect((err as Error).message).toContain(`'${missing}'`);
    expect(t.openDevices()).toEqual([]);
  });

  it('disk log device too small: refused naming the log device; everything closed', async () => {
    const a = await img('a.img', 1024 * 1024);
    const b = await img('b.img', 1024 * 1024);
    const log = await img('log.img', 512);
    const t = trackingOpener();
    // 2048 sectors / 2-sector regions = 1024 regions -> 1024 + 128 bytes, rounded up to a 4 KiB block
    expect(diskLogBytesMin(1024)).toBe(4096);
    const err = await openTable(parseTable(`0 2048 mirror disk 2 ${log} 2 2 ${a} 0 ${b} 0`), { openLeg: t.open }).catch(
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(LegOpenError);
    expect((err as Error).message).toBe(
      `log device '${log}' is too small: the table needs 4096 bytes (8 sectors), i.e. a device of at least 4096 bytes, but it has 512 bytes`,
    );
    expect(t.opens()).toBe(3);
    expect(t.openDevices()).toEqual([]);
  });

  it('core-log mirror: writes reach every leg file at its offset; close closes every leg', async () => {
    const a = await img('a.img', 128 * 1024);
    const b = await img('b.img', 128 * 1024 + 4096);
    const t = trackingOpener();
    const exp = await openTable(parseTable(`0 256 mirror core 2 64 nosync 2 ${a} 0 ${b} 8`), { openLeg: t.open });
    try {
      expect(exp.capabilities().sizeBytes).toBe(256 * 512);
      const data = Buffer.alloc(40000, 0x5a);
      await exp.write(data, 1000, { fua: false });
      await exp.flush();
      const back = Buffer.alloc(40000);
      await exp.read(back, 1000);
      expect(back.equals(data)).toBe(true);
      const fa = await readFile(a);
      const fb = await readFile(b);
      expect(fa.subarray(1000, 41000).equals(data)).toBe(true);
      expect(fb.subarray(4096 + 1000, 4096 + 41000).equals(data)).toBe(true);
    } finally {
      await exp.close();
    }
    expect(t.openDevices()).toEqual([]);
  });

  it('disk-log mirror: the log device is opened, written, and closed with the mirror', async () => {
    const a = await img('a.img', 128 * 1024);
    const b = await img('b.img', 128 * 1024);
    const log = await img('log.img', 64 * 1024);
    const t = trackingOpener();
    const exp = await openTable(parseTable(`0 256 mirror disk 3 ${log} 64 nosync 2 ${a} 0 ${b} 0 1 handle_errors`), { openLeg: t.open });
    try {
      await exp.write(Buffer.alloc(512, 1), 0, { fua: true });
      await exp.flush();
    } finally {
      await exp.close();
    }
    expect(t.openDevices()).toEqual([]);
    const header = await readFile(log);
    expect(header.readUInt32LE(0)).toBe(0x4d695272); // "MiRr"
  });

  it('a cluster table runs with a local log of the same kind and says so', async () => {
    const a = await img('a.img', 64 * 1024);
    const b = await img('b.img', 64 * 1024);
    const t = trackingOpener();
    const warnings: string[] = [];
    const spec = parseTable(`0 64 mirror userspace 3 my-uuid clustered-core 16 2 ${a} 0 ${b} 0`);
    const exp = await openTable(spec, { openLeg: t.open, warn: (m) => warnings.push(m) });
    try {
      expect(warnings).toHaveLength(1);
      expect(warnings[0]).toMatch(/cluster log \(uuid 'my-uuid'\).*local core log/);
      expect(exp.capabilities().sizeBytes).toBe(64 * 512);
    } finally {
      await exp.close();
    }
    expect(t.openDevices()).toEqual([]);
  });

  it('a failure while building the log still closes every leg and the log device', async () => {
    const a = await img('a.img', 64 * 1024);
    const b = await img('b.img', 64 * 1024);
    const log = await img('log.img', 64 * 1024);
    const t = trackingOpener();
    const err = await openTable(parseTable(`0 64 mirror disk 2 ${log} 16 2 ${a} 0 ${b} 0`), {
      openLeg: t.open,
      openLog: async () => {
        throw new Error('log refused');
      },
    }).catch((e: unknown) => e);
    expect((err as Error).message).toBe('log refused');
    expect(t.opens()).toBe(3);
    expect(t.openDevices()).toEqual([]);
  });
});
