// Engine micro-benchmark (not a test): CPU per write of the mirror engine alone, no NBD, no fio, so a
// hot-path change in src/mirror can be judged on a noisy shared machine. Writes of BS bytes at random
// aligned offsets, QD in flight, issued in batches like one socket read's worth of requests.
//   node test/sim/engine-bench.mjs [DIST=dist] [KIND=core] [WRITES=200000] [BS=4096] [QD=32]
//   KIND: linear | core | disk (FileLegs on /dev/shm, 256 MiB each)
//         null-linear | null-core | null-disk (legs that complete at once: the engine's own cost)
// Prints CPU (user+sys) per write; compare two builds side by side (DIST=/path/to/other/dist).
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { join, resolve } from 'node:path';

const [distArg = 'dist', kind = 'core', nArg = '200000', bsArg = '4096', qdArg = '32'] = process.argv.slice(2);
const dist = resolve(distArg);
const { FileLeg } = await import(`${dist}/mirror/legs/file.js`);
const { LinearExport } = await import(`${dist}/mirror/linear.js`);
const { createMirror } = await import(`${dist}/mirror/mirror.js`);
const { CoreLog } = await import(`${dist}/mirror/log/core.js`);
const { DiskLog } = await import(`${dist}/mirror/log/disk.js`);

const SIZE_BYTES = 256 * 1024 * 1024;
const REGION_BYTES = 512 * 1024;
const N = Number(nArg);
const BS = Number(bsArg);
const QD = Number(qdArg);
const WARMUP_WRITES = Math.min(20000, N);

/** A leg whose I/O completes at once (Leg.writeNow / readNow), to measure the engine alone. */
class NullLeg {
  constructor(device) {
    this.device = device;
    this.sizeBytes = SIZE_BYTES;
  }
  readNow() {
    return null;
  }
  writeNow() {
    return null;
  }
  async read() {}
  async write() {}
  async flush() {}
  async trim() {}
  async zero() {}
  async close() {}
}

const dir = mkdtempSync('/dev/shm/nbdm-engine-bench-');
try {
  const nul = kind.startsWith('null');
  const openLeg = async (name) => {
    if (nul) return new NullLeg(`/null/${name}`);
    execFileSync('truncate', ['-s', String(SIZE_BYTES), join(dir, name)]);
    return FileLeg.open(join(dir, name), { offsetBytes: 0 });
  };
  const a = await openLeg('a.img');
  const legsOpened = [a];
  let exp;
  if (kind.endsWith('linear')) {
    exp = new LinearExport(a, { lengthBytes: SIZE_BYTES });
  } else {
    const b = await openLeg('b.img');
    legsOpened.push(b);
    let log;
    if (kind.endsWith('disk')) {
      execFileSync('truncate', ['-s', '1M', join(dir, 'log')]);
      log = new DiskLog({ device: await FileLeg.open(join(dir, 'log'), { offsetBytes: 0 }), regionSizeBytes: REGION_BYTES, lengthBytes: SIZE_BYTES, sync: 'nosync' });
    } else {
      log = new CoreLog({ regionSizeBytes: REGION_BYTES, lengthBytes: SIZE_BYTES, sync: 'nosync' });
    }
    exp = await createMirror({ legs: [a, b], log, regionSizeBytes: REGION_BYTES, lengthBytes: SIZE_BYTES, handleErrors: false, keepLog: false });
  }
  const bufs = Array.from({ length: QD }, (_, i) => Buffer.alloc(BS, i + 1));
  let x = 12345;
  const rnd = () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x;
  };
  const blocks = SIZE_BYTES / BS;
  const run = (n) =>
    new Promise((done) => {
      let issued = 0;
      let completed = 0;
      let scheduled = false;
      const batch = () => {
        scheduled = false;
        const k = Math.min(QD - (issued - completed), n - issued);
        for (let i = 0; i < k; i++) {
          exp.write(bufs[issued % QD], (rnd() % blocks) * BS, { fua: false }).then(() => {
            if (++completed === n) done();
            else if (!scheduled && issued < n && issued - completed < QD / 2) {
              scheduled = true;
              setImmediate(batch);
            }
          });
          issued++;
        }
      };
      batch();
    });
  await run(WARMUP_WRITES);
  const c0 = process.cpuUsage();
  const t0 = process.hrtime.bigint();
  await run(N);
  const c = process.cpuUsage(c0);
  const wallUs = Number(process.hrtime.bigint() - t0) / 1000;
  console.log(
    `${kind} bs ${BS} qd ${QD}: cpu ${((c.user + c.system) / N).toFixed(2)} us/write ` +
      `(user ${(c.user / N).toFixed(2)}, sys ${(c.system / N).toFixed(2)}), wall ${(wallUs / N).toFixed(2)} us/write`,
  );
  if (!nul) console.log(`  leg sync/pool calls: ${legsOpened.map((l) => `${l.syncStats.syncCalls}/${l.syncStats.poolCalls} (backoffs ${l.syncStats.backoffs})`).join(', ')}`);
  await exp.close();
} finally {
  rmSync(dir, { recursive: true, force: true });
}
