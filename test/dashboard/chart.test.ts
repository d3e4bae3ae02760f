// scripts/bench/chart.js: a bench report becomes one SVG with a bar per server and job (height = ratio to
// nbdkit file, label = the absolute figure) and the resync panel; anything not measured says so.
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

describe('bench chart', () => {
  it('draws ratios to nbdkit with absolute labels, clips above 2x, and the resync panel', () => {
    const svg: string = renderBenchSvg(report);
    expect(svg.startsWith('<svg xmlns="http://www.w3.org/2000/svg"')).toBe(true);
    expect(svg.trimEnd().endsWith('</svg>')).toBe(true);
    const bars = [...svg.matchAll(/<rect x="[0-9.]+" y="([0-9.]+)" width="[0-9.]+" height="([0-9.]+)" fill="[^"]+" class="(ours|anchor)"><title>([^<]*)<\/title>/g)];
    expect(bars).toHaveLength(8); // 3 servers x 2 jobs, plus nbdkit (the ceiling) in the mirror panel
    const height = (label: string) => Number(bars.find((b) => b[4]!.startsWith(label))![2]);
    const one = height('nbdkit file randread-4k-qd1');
    expect(height('nbd-mirror linear randread-4k-qd1')).toBeCloseTo(one / 2, 1);
    expect(height('qemu-nbd randread-4k-qd1')).toBeCloseTo(one * 2, 1); // 25x, clipped at the 2x top
    expect(svg).toContain('25.0k');
    expect(svg).toContain('300 MB/s');
    expect(svg).toContain('(0.50x nbdkit)');
    expect(svg).toContain('200 MB/s');
    expect(svg).toContain('400 MB/s');
    // What was not measured is left out (no engine rate in this report).
    expect(svg).not.toContain('nbd-mirror engine rate');
    expect(svg).not.toMatch(/NaN|undefined/);
  });
});
