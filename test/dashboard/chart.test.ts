// scripts/bench/chart.js: a bench report becomes one SVG with a bar per server and job (height = ratio to
// nbdkit file, label = the absolute figure) and the resync panel; anything not measured says so. Reports with
// job-major pairing (report.pairing) draw the paired ratio (median of the per-round ratios) with a min-max
// whisker; older reports the ratio of the medians.
import { describe, expect, it } from 'vitest';
// @ts-expect-error plain JS module without types
import { renderBenchSvg } from '../../scripts/bench/chart.js';

const job = (iops: number, bw: number) => ({ iops, bwBytesPerSec: bw, clatP50Us: 1, clatP99Us: 2 });
const report = {
  date: '2026-01-01T00:00:00.000Z',
  machine: { cpuModel: 'Test CPU', cpuCount: 2, node: 'v20', fio: 'fio-3', nbdkit: 'nbdkit 1', qemuNbd: 'qemu-nbd 7 (x)' },
  backingDir: '/dev/shm',
  rounds: 1,
  jobs: { 'randread-4k-qd1': { rw: 'randread', bs: '4k', iodepth: 1 }, 'read-1m-qd8': { rw: 'read', bs: '1m', iodepth: 8 } },
  servers: {
    linear: { jobs: { 'randread-4k-qd1': job(500, 0), 'read-1m-qd8': job(0, 300e6) } },
    nbdkit: { jobs: { 'randread-4k-qd1': job(1000, 0), 'read-1m-qd8': job(0, 600e6) } },
    'qemu-nbd': { jobs: { 'randread-4k-qd1': job(25000, 0), 'read-1m-qd8': job(0, 1500e6) } },
  },
  resync: { bytes: 2 ** 30, oursMBps: 200, engineReportedMBps: 0, nbdcopyMBps: 400 },
};

type Bar = { y: number; height: number; cls: string; title: string };
function bars(svg: string): Bar[] {
  return [...svg.matchAll(/<rect x="[0-9.]+" y="([0-9.]+)" width="[0-9.]+" height="([0-9.]+)" fill="[^"]+" class="(ours|anchor)"><title>([^<]*)<\/title>/g)].map((m) => ({
    y: Number(m[1]),
    height: Number(m[2]),
    cls: m[3]!,
    title: m[4]!,
  }));
}
const heightOf = (all: Bar[], label: string) => all.find((b) => b.title.startsWith(label))!.height;

/** A paired ratio as run.js writes it (fio.js pairedRatio). */
const ratio = (perRound: number[], ratioOfMedians: number) => {
  const sorted = [...perRound].sort((a, b) => a - b);
  return { median: sorted[1], min: sorted[0], max: sorted[2], perRound, ratioOfMedians };
};

// Three rounds of the 2-leg mirror group, where the paired median differs from the ratio of the medians.
const pairedReport = {
  ...report,
  rounds: 3,
  resync: { ...report.resync, endToEndRatioPaired: ratio([0.45, 0.55, 0.6], 0.5) },
  jobs: { 'randwrite-4k-qd32': { rw: 'randwrite', bs: '4k', iodepth: 32 } },
  servers: {
    'mirror-core': { jobs: { 'randwrite-4k-qd32': job(60000, 0) } },
    'mirror-disk': { jobs: { 'randwrite-4k-qd32': job(40000, 0) } },
    // Pooled over both of nbdkit's groups: not what the mirror panel's ratios or labels use.
    nbdkit: { jobs: { 'randwrite-4k-qd32': job(99000, 0) } },
    'qemu-quorum': { jobs: { 'randwrite-4k-qd32': job(20000, 0) } },
  },
  pairing: {
    method: 'job-major',
    groups: {
      mirror: {
        servers: ['mirror-core', 'mirror-disk', 'nbdkit', 'qemu-quorum'],
        base: 'nbdkit',
        jobs: {
          'randwrite-4k-qd32': {
            metric: 'iops',
            median: { 'mirror-core': 60000, 'mirror-disk': 40000, nbdkit: 80000, 'qemu-quorum': 20000 },
            ratios: {
              'mirror-core/nbdkit': ratio([0.7, 0.9, 1.1], 0.75),
              'mirror-disk/nbdkit': ratio([0.4, 0.5, 0.6], 0.5),
              'qemu-quorum/nbdkit': ratio([0.25, 0.25, 0.25], 0.25),
            },
          },
        },
      },
    },
  },
};

describe('bench chart', () => {
  it('draws ratios to nbdkit with absolute labels, clips above 2x, and the resync panel', () => {
    const svg: string = renderBenchSvg(report);
    expect(svg.startsWith('<svg xmlns="http://www.w3.org/2000/svg"')).toBe(true);
    expect(svg.trimEnd().endsWith('</svg>')).toBe(true);
    const all = bars(svg);
    expect(all).toHaveLength(8); // 3 servers x 2 jobs, plus nbdkit (the ceiling) in the mirror panel
    const one = heightOf(all, 'nbdkit file randread-4k-qd1');
    expect(heightOf(all, 'nbd-mirror linear randread-4k-qd1')).toBeCloseTo(one / 2, 1);
    expect(heightOf(all, 'qemu-nbd randread-4k-qd1')).toBeCloseTo(one * 2, 1); // 25x, clipped at the 2x top
    expect(svg).toContain('25.0k');
    expect(svg).toContain('300 MB/s');
    expect(svg).toContain('(0.50x nbdkit)');
    expect(svg).toContain('200 MB/s (0.50x nbdcopy)');
    expect(svg).toContain('200 MB/s');
    expect(svg).toContain('400 MB/s');
    // A report without pairing: no whiskers, and the header says medians.
    expect(svg).not.toContain('class="range"');
    expect(svg).toContain('median of 1');
    // What was not measured is left out (no engine rate in this report).
    expect(svg).not.toContain('nbd-mirror engine rate');
    expect(svg).not.toMatch(/NaN|undefined/);
  });

  it('draws the paired median with a min-max whisker, labels with the group median, and the target line', () => {
    const svg: string = renderBenchSvg(pairedReport);
    const all = bars(svg);
    const one = heightOf(all, 'nbdkit file randwrite-4k-qd32');
    // Heights are the paired medians (0.9, 0.5), not the ratios of the medians (0.75, 0.5) nor servers.nbdkit's.
    expect(heightOf(all, 'nbd-mirror mirror (core log) randwrite-4k-qd32') / one).toBeCloseTo(0.9, 2);
    expect(heightOf(all, 'nbd-mirror mirror (disk log) randwrite-4k-qd32') / one).toBeCloseTo(0.5, 2);
    expect(svg).toContain('nbd-mirror mirror (core log) randwrite-4k-qd32: 60.0k (0.90x nbdkit, paired median; rounds 0.70-1.10x)');
    expect(svg).toContain('nbdkit file randwrite-4k-qd32: 80.0k'); // the mirror group's nbdkit, not the pooled 99.0k
    expect(svg).not.toContain('99.0k');
    expect(all).toHaveLength(4); // the single-file group was not run: its panel does not show nbdkit alone
    expect(svg).toContain('not in this run');
    // Whiskers span min..max on the same scale as the bars: 0.7..1.1 for the core log, none where min = max.
    const whiskers = [...svg.matchAll(/<line x1="[0-9.]+" x2="[0-9.]+" y1="([0-9.]+)" y2="([0-9.]+)" class="range"\/>/g)].map((m) => [Number(m[1]), Number(m[2])]);
    expect(whiskers).toHaveLength(2);
    const core = all.find((b) => b.title.startsWith('nbd-mirror mirror (core log)'))!;
    const base = core.y + core.height;
    expect((base - whiskers[0]![0]!) / one).toBeCloseTo(1.1, 2);
    expect((base - whiskers[0]![1]!) / one).toBeCloseTo(0.7, 2);
    expect(svg).toContain('class="target"');
    expect(svg).toContain('target 0.8x (issue 4)');
    expect(svg).toContain('median of 3 paired rounds, whisker min-max');
    expect(svg).toContain('vs nbdkit file, paired');
    expect(svg).toContain('200 MB/s (0.55x nbdcopy, paired; rounds 0.45-0.60x)');
    expect(svg).not.toMatch(/NaN|undefined/);
  });
});
