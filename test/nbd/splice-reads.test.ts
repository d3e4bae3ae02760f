// Large READ replies spliced leg file -> pipe -> socket (native/splice, src/nbd/server/splice.ts,
// Export.spliceRead): a real NbdServer in-process serving mirror and linear tables on tmpfs legs (splice
// needs a memory file system), read by real clients (nbdcopy, qemu-io, our NbdClient). Every read is compared
// byte for byte with the leg file; a counting pass-through export proves the splice path was taken. The addon
// is optional for the product, but CI builds it: there its absence fails.
import { exec, execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { mkdtemp, rm, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { IoCounters, MeteredExport } from '../../src/control/metrics.js';
import { VolumeExport } from '../../src/control/volume-export.js';
import { FileLeg } from '../../src/mirror/legs/file.js';
import { FaultyLeg } from '../../src/mirror/legs/faulty.js';
import { openTable } from '../../src/mirror/open.js';
import { parseTable } from '../../src/mirror/table.js';
import { NbdClient } from '../../src/nbd/client/client.js';
import type { Export, SplicePipe } from '../../src/nbd/export.js';
import { NbdServer } from '../../src/nbd/server/server.js';
import { SPLICE_PIPES_PER_CONNECTION_MAX, splicePipesOpen } from '../../src/nbd/server/splice-pipes.js';
import { loadSpliceIo, setSpliceIoForTests } from '../../src/nbd/server/splice.js';
import { SPLICE_READ_BYTES_MIN } from '../../src/nbd/server/transmission.js';
import { IN_CI, requireTools } from '../helpers/tools.js';
import { MiB, pattern } from './harness.js';

const io = loadSpliceIo();
// Asynchronous: the server runs in this process and must keep serving while the tool runs.
const run = promisify(execFile);
const sh = promisify(exec);
const SHM = '/dev/shm';
const tools = requireTools('nbdcopy', 'qemu-io');
const SIZE = 16 * MiB;

it('the splice addon is built (required under CI)', () => {
  if (IN_CI) expect(io, 'native/splice not built: run scripts/build-native.sh').not.toBeNull();
});

/** Passes everything through; counts the READs the inner export spliced. */
function counting(inner: Export): Export & { spliced: number } {
  const e = {
    spliced: 0,
    capabilities: () => inner.capabilities(),
    read: (t: Buffer, o: number) => inner.read(t, o),
    spliceRead(p: SplicePipe, o: number, l: number): boolean {
      const ok = inner.spliceRead !== undefined && inner.spliceRead(p, o, l);
      if (ok) e.spliced++;
      return ok;
    },
    write: (d: Buffer, o: number, f: { fua: boolean }) => inner.write(d, o, f),
    flush: () => inner.flush(),
    trim: (o: number, l: number, f: { fua: boolean }) => inner.trim(o, l, f),
    zero: (o: number, l: number, f: { fua: boolean; mayTrim: boolean; fastZero: boolean }) => inner.zero(o, l, f),
    cache: (o: number, l: number) => inner.cache(o, l),
    blockStatus: (o: number, l: number) => inner.blockStatus(o, l),
    close: () => inner.close(),
  };
  return e;
}

function openFds(): number {
  return readdirSync('/proc/self/fd').length;
}

describe.skipIf(io === null || !existsSync(SHM) || !tools)('spliced READ replies', () => {
  let dir: string;
  let server: NbdServer;
  let sock: string;
  const exps = new Map<string, Export & { spliced: number }>();
  let volume: VolumeExport;
  let counters: IoCounters;
  let a: string; // mirror leg 0 (default), 1: b
  let b: string;
  let lin: string;

  beforeAll(async () => {
    setSpliceIoForTests(io);
    dir = await mkdtemp(join(SHM, 'nbdm-splice-'));
    a = join(dir, 'a.img');
    b = join(dir, 'b.img');
    lin = join(dir, 'lin.img');
    const data = pattern(SIZE, 7);
    await writeFile(a, data);
    await writeFile(b, data);
    await writeFile(lin, pattern(SIZE + 4096, 9));
    const sectors = SIZE / 512;
    const mirror = await openTable(parseTable(`0 ${sectors} mirror core 2 1024 nosync 2 ${a} 0 ${b} 0`), {});
    volume = new VolumeExport(mirror);
    counters = new IoCounters();
    exps.set('mirror', counting(new MeteredExport(volume, counters)));
    // Offset 8 sectors into the file (page-aligned), and one at 1 sector (unaligned: a 1 MiB read spans 257 pages).
    exps.set('linear', counting(await openTable(parseTable(`0 ${sectors} linear ${lin} 8`), {})));
    exps.set('linear-odd', counting(await openTable(parseTable(`0 ${sectors} linear ${lin} 1`), {})));
    // Default leg a, leg b zeros, no nosync: every region is out of sync and must be read from a.
    const c = join(dir, 'c.img');
    const z = join(dir, 'z.img');
    await writeFile(c, data);
    await writeFile(z, Buffer.alloc(SIZE));
    exps.set('unsynced', counting(await openTable(parseTable(`0 ${sectors} mirror core 2 1024 sync 2 ${c} 0 ${z} 0`), { mirror: { resync: { autoStart: false } } })));
    // Leg 0 fails every read (FaultyLeg cannot splice), leg 1 is a FileLeg.
    const f0 = join(dir, 'f0.img');
    const f1 = join(dir, 'f1.img');
    await writeFile(f0, data);
    await writeFile(f1, data);
    exps.set(
      'faulty',
      counting(
        await openTable(parseTable(`0 ${sectors} mirror core 2 1024 nosync 2 ${f0} 0 ${f1} 0`), {
          openLeg: async (device, offsetBytes) => {
            const leg = await FileLeg.open(device, { offsetBytes });
            return device === f0 ? new FaultyLeg(leg, { rules: { read: { errno: 'EIO', ratePerOp: 1, when: 'before' } } }) : leg;
          },
        }),
      ),
    );
    const shrink = join(dir, 'shrink.img');
    await writeFile(shrink, data);
    exps.set('shrink', counting(await openTable(parseTable(`0 ${sectors} linear ${shrink} 0`), {})));
    sock = join(dir, 'nbd.sock');
    server = new NbdServer({ exports: new Map([...exps].map(([k, e]) => [k, { export: e }])) });
    await server.listen({ kind: 'unix', path: sock });
  });

  afterAll(async () => {
    await server?.close();
    for (const e of exps.values()) await e.close().catch(() => {});
    if (dir !== undefined) await rm(dir, { recursive: true, force: true });
    setSpliceIoForTests(undefined);
  });

  afterEach(() => {
    for (const e of exps.values()) e.spliced = 0;
  });

  const uri = (name: string): string => `nbd+unix:///${name}?socket=${sock}`;

  it('nbdcopy of a mirror and of a linear table at 1 MiB x 8 in flight: byte-exact, spliced', async () => {
    const out = join(dir, 'out.img');
    await run('nbdcopy', ['--request-size=1048576', '--requests=8', uri('mirror'), out]);
    await run('cmp', [out, a]);
    expect(exps.get('mirror')!.spliced).toBeGreaterThanOrEqual(SIZE / MiB / 2);
    expect(counters.requests[0]).toBeGreaterThanOrEqual(SIZE / MiB); // MeteredExport counts spliced reads too
    await run('nbdcopy', ['--request-size=1048576', '--requests=8', uri('linear'), out]);
    await run('cmp', ['-i', '4096:0', '-n', String(SIZE), lin, out]);
    expect(exps.get('linear')!.spliced).toBeGreaterThan(0);
  });

  it('more large reads in flight than a connection has pipes: spliced and copied replies never interleave', async () => {
    const out = join(dir, 'out16.img');
    for (let i = 0; i < 3; i++) {
      await run('nbdcopy', ['--request-size=1048576', '--requests=32', uri('mirror'), out]);
      await run('cmp', [out, a]);
    }
  });

  it('sizes around the threshold and unaligned ranges, simple and structured replies, interleaved with small reads', async () => {
    const want = readFileSync(a);
    const wantLin = readFileSync(lin);
    const T = SPLICE_READ_BYTES_MIN;
    const ranges: [number, number][] = [
      [0, T - 1],
      [4096, T],
      [3 * MiB + 1, T + 1],
      [5 * MiB - 511, 1 * MiB - 4096],
      [7 * MiB, MiB],
      [9 * MiB + 12345, 700_001],
      [SIZE - MiB, MiB],
    ];
    for (const structuredReplies of [false, true]) {
      for (const name of ['mirror', 'linear', 'linear-odd']) {
        const c = await NbdClient.connect(uri(name), { structuredReplies });
        try {
          const reads: Promise<void>[] = [];
          const checks: [Buffer, number][] = [];
          // Eight large reads in flight with small ones between them: each reply must carry its own bytes.
          for (let round = 0; round < 3; round++) {
            for (const [off, len] of ranges) {
              const big = Buffer.alloc(len);
              reads.push(c.read(big, off));
              checks.push([big, off]);
              const small = Buffer.alloc(4096);
              const so = (off + 8 * MiB) % (SIZE - 4096);
              reads.push(c.read(small, so));
              checks.push([small, so]);
            }
          }
          await Promise.all(reads);
          const src = name === 'mirror' ? want : wantLin;
          const base = name === 'mirror' ? 0 : name === 'linear' ? 4096 : 512;
          for (const [buf, off] of checks) expect(buf.equals(src.subarray(base + off, base + off + buf.length))).toBe(true);
        } finally {
          await c.close();
        }
      }
    }
    expect(exps.get('mirror')!.spliced).toBeGreaterThan(0);
    expect(exps.get('linear-odd')!.spliced).toBeGreaterThan(0); // the ranges under a pipe's pages
  });

  it('qemu-io reads of every size compare with the leg', async () => {
    const cmds: string[] = [];
    const want = readFileSync(a);
    for (const [off, len] of [[0, MiB], [MiB + 512, 200 * 1024], [2 * MiB, 128 * 1024]] as const) {
      cmds.push('-c', `read -v ${off} ${len}`);
      void want;
    }
    const r = (await run('qemu-io', ['-f', 'raw', '-r', ...cmds, uri('mirror')], { maxBuffer: 64 * MiB })).stdout;
    // -v dumps hex: compare the first line of each dump with the leg's bytes there.
    for (const off of [0, MiB + 512, 2 * MiB]) {
      const line = r.split('\n').find((l) => l.startsWith(`${off.toString(16).padStart(8, '0')}:`))!;
      const hex = [...want.subarray(off, off + 16)].map((x) => x.toString(16).padStart(2, '0')).join(' ');
      expect(line).toContain(hex);
    }
    expect(exps.get('mirror')!.spliced).toBeGreaterThan(0);
  });

  it('reads of unsynced regions come from the default leg', async () => {
    const c = await NbdClient.connect(uri('unsynced'));
    try {
      const want = readFileSync(a);
      for (const off of [0, 3 * MiB, 10 * MiB + 4096]) {
        const buf = Buffer.alloc(MiB);
        await c.read(buf, off);
        expect(buf.equals(want.subarray(off, off + MiB))).toBe(true);
      }
    } finally {
      await c.close();
    }
    expect(exps.get('unsynced')!.spliced).toBe(3);
  });

  it('a leg whose reads fail: the ordinary read path fails it and reads the other leg', async () => {
    const c = await NbdClient.connect(uri('faulty'));
    try {
      const want = readFileSync(a);
      for (let i = 0; i < 6; i++) {
        const buf = Buffer.alloc(MiB);
        await c.read(buf, i * MiB);
        expect(buf.equals(want.subarray(i * MiB, (i + 1) * MiB))).toBe(true);
      }
    } finally {
      await c.close();
    }
  });

  it('a leg file that shrank: the splice comes up short, the ordinary read zero-fills past its end', async () => {
    await truncate(join(dir, 'shrink.img'), 8 * MiB + 4096);
    const c = await NbdClient.connect(uri('shrink'));
    try {
      const want = readFileSync(a);
      const before = Buffer.alloc(MiB);
      await c.read(before, 7 * MiB);
      expect(before.equals(want.subarray(7 * MiB, 8 * MiB))).toBe(true);
      const across = Buffer.alloc(MiB);
      await c.read(across, 8 * MiB);
      expect(across.subarray(0, 4096).equals(want.subarray(8 * MiB, 8 * MiB + 4096))).toBe(true);
      expect(across.subarray(4096).every((x) => x === 0)).toBe(true);
    } finally {
      await c.close();
    }
    expect(exps.get('shrink')!.spliced).toBe(1); // the read inside the file; the other declined
  });

  it('a suspended volume: the spliced path declines and the read waits for the resume', async () => {
    await volume.suspend('all');
    const c = await NbdClient.connect(uri('mirror'));
    try {
      const buf = Buffer.alloc(MiB);
      let done = false;
      const p = c.read(buf, 2 * MiB).then(() => (done = true));
      await new Promise((r) => setTimeout(r, 100));
      expect(done).toBe(false);
      volume.resume();
      await p;
      expect(buf.equals(readFileSync(a).subarray(2 * MiB, 3 * MiB))).toBe(true);
    } finally {
      await c.close();
    }
  });

  it('a client that reads slowly: pipes stay bounded, every byte arrives', async () => {
    const out = join(dir, 'slow.img');
    let maxPipes = 0;
    const t = setInterval(() => (maxPipes = Math.max(maxPipes, splicePipesOpen())), 5);
    try {
      // nbdcopy to a pipe nobody reads for a while: it stops reading its socket, our replies back up.
      await sh(`nbdcopy --request-size=1048576 --requests=16 '${uri('mirror')}' - | (sleep 1; cat > '${out}')`);
    } finally {
      clearInterval(t);
    }
    await run('cmp', [out, a]);
    expect(maxPipes).toBeGreaterThan(0);
    expect(maxPipes).toBeLessThanOrEqual(SPLICE_PIPES_PER_CONNECTION_MAX);
  });

  it('many connections, some dropped with spliced replies queued: no pipe and no fd left behind', async () => {
    const fds = openFds();
    for (let i = 0; i < 20; i++) {
      const c = await NbdClient.connect(uri(i % 2 === 0 ? 'mirror' : 'linear'));
      const reads = [0, 1, 2, 3, 4, 5, 6, 7].map((k) => c.read(Buffer.alloc(MiB), k * MiB));
      if (i % 3 === 0) {
        (c as unknown as { socket: { destroy(): void } }).socket.destroy(); // gone with replies in flight
        await Promise.allSettled(reads);
      } else {
        await Promise.all(reads);
        await c.close();
      }
    }
    await new Promise((r) => setTimeout(r, 300));
    expect(splicePipesOpen()).toBe(0);
    expect(openFds()).toBe(fds);
  });

  it('server shutdown with spliced replies queued: they are all sent first (last test: closes the server)', async () => {
    const c = await NbdClient.connect(uri('mirror'));
    const want = readFileSync(a);
    const bufs = [0, 1, 2, 3, 4, 5, 6, 7].map(() => Buffer.alloc(MiB));
    const reads = bufs.map((x, k) => c.read(x, k * MiB));
    await new Promise((r) => setTimeout(r, 5)); // the requests are in
    const closed = server.close();
    await Promise.all(reads);
    for (const [k, x] of bufs.entries()) expect(x.equals(want.subarray(k * MiB, (k + 1) * MiB))).toBe(true);
    await c.close().catch(() => {});
    await closed;
    expect(splicePipesOpen()).toBe(0);
  });
});
