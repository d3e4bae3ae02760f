// Progress display: plain lines (not a terminal) with rate and ETA from a fake clock; the cli-progress bar
// on a terminal; the status-line parser; and `nbd-mirror wait NAME --sync` against the real server while
// a resync runs onto a slow leg (nbdkit's delay filter), showing plain progress lines on stderr.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { afterAll, describe, expect, it } from 'vitest';
import { parseSyncCount, Progress } from '../../src/control/progress.js';
import { useTempDir } from '../helpers/e2e.js';
import { run } from '../helpers/run.js';
import { CLI_PATH, startServer } from '../helpers/server.js';
import { createSparseFile, MiB, sectorsOf } from '../helpers/tmp.js';
import { requireTools } from '../helpers/tools.js';

function capture(isTTY: boolean): { stream: PassThrough & { isTTY?: boolean; columns?: number; cursorTo?: unknown; clearLine?: unknown }; text: () => string } {
  const stream = new PassThrough() as PassThrough & { isTTY?: boolean; columns?: number; cursorTo?: unknown; clearLine?: unknown };
  let text = '';
  stream.on('data', (c: Buffer) => (text += c.toString()));
  if (isTTY) {
    stream.isTTY = true;
    stream.columns = 120;
    stream.cursorTo = (_x: number, _y?: number, cb?: () => void) => (cb?.(), true);
    stream.clearLine = (_d: number, cb?: () => void) => (cb?.(), true);
  }
  return { stream, text: () => text };
}

describe('Progress', () => {
  it('plain lines: the first at once, then at most every 5 s, and the last; rate and ETA from the samples', () => {
    let now = 0;
    const out = capture(false);
    const p = new Progress({ label: 'vol: sync', totalBytes: 100 * MiB, stream: out.stream, tty: false, nowMs: () => now });
    p.update(0);
    now = 1000;
    p.update(10 * MiB); // 10 MiB/s
    expect(p.rate).toBeCloseTo(10 * MiB, -3);
    expect(p.etaSec).toBeCloseTo(9, 5);
    now = 6000;
    p.update(60 * MiB);
    now = 7000;
    p.update(70 * MiB); // within 5 s of the last line: no line
    now = 10_000;
    p.update(100 * MiB);
    p.stop();
    const lines = out.text().trim().split('\n');
    expect(lines[0]).toBe('vol: sync: 0.0% (0 B of 100 MiB), ? B/s, ETA ?');
    expect(lines[1]).toMatch(/^vol: sync: 60\.0% \(60\.0 MiB of 100 MiB\), 10\.0 MiB\/s, ETA 4s$/);
    expect(lines[2]).toMatch(/^vol: sync: 100\.0% \(100 MiB of 100 MiB\), 10\.0 MiB\/s, ETA done$/);
    expect(lines).toHaveLength(3);
  });

  it('on a terminal: a cli-progress bar with percentage, rate and ETA', async () => {
    const out = capture(true);
    let now = 0;
    const p = new Progress({ label: 'vol: sync', totalBytes: 10 * MiB, stream: out.stream, tty: true, nowMs: () => now });
    now = 1000;
    p.update(5 * MiB);
    await new Promise((r) => setTimeout(r, 300)); // cli-progress redraws on its own timer
    p.stop();
    expect(out.text()).toMatch(/vol: sync \[█+░+\] 50% \| 5\.0 MiB of 10\.0 MiB \| .* \| ETA/);
  });

  it('parses the in-sync count of a mirror status line; not of a linear one', () => {
    expect(parseSyncCount('0 32768 mirror 2 /a /b 12/32 1 AA 1 core')).toEqual({ inSyncRegions: 12, regionCount: 32 });
    expect(parseSyncCount('0 32768 mirror 3 /x/1/2 nbd+unix:///?socket=/s 3/4 7/9 1 AAA 1 core')).toEqual({ inSyncRegions: 7, regionCount: 9 });
    expect(parseSyncCount('0 32768 linear')).toBeNull();
  });
});

const haveNbdkit = requireTools('nbdkit');
const dir = useTempDir('progress');
let nbdkit: ChildProcess | undefined;
afterAll(async () => {
  const child = nbdkit;
  if (child !== undefined && child.exitCode === null && child.signalCode === null) {
    const gone = new Promise((r) => child.once('exit', r));
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 3000); // it may wait for the mirror's connection
    await gone;
    clearTimeout(timer);
  }
});

describe.skipIf(!haveNbdkit)('nbd-mirror wait --sync', () => {
  it('prints progress lines on stderr while the resync runs, then "in sync" on stdout', async () => {
    const d = dir();
    const SIZE = 16 * MiB;
    const a = await createSparseFile(join(d, 'a.img'), SIZE);
    const sock = join(d, 'slow.sock');
    const pidFile = join(d, 'slow.pid');
    // The second leg answers each write after 60 ms: 512 regions of 32 KiB, 4 in flight, take ~8 s to copy.
    nbdkit = spawn('nbdkit', ['-f', '-U', sock, '-P', pidFile, '--filter=delay', 'memory', String(SIZE), 'wdelay=60ms'], { stdio: 'ignore' });
    const deadline = Date.now() + 10_000;
    while (!(existsSync(pidFile) && (await readFile(pidFile, 'utf8')).trim() === String(nbdkit.pid))) {
      if (Date.now() > deadline || nbdkit.exitCode !== null) throw new Error('nbdkit did not start');
      await new Promise((r) => setTimeout(r, 20));
    }
    const server = await startServer({
      dir: d,
      tables: [{ table: `0 ${sectorsOf(SIZE)} mirror core 1 64 2 ${a} 0 nbd+unix:///?socket=${sock} 0`, name: 'vol' }],
    });
    try {
      const r = await run(process.execPath, [CLI_PATH, 'wait', 'vol', '--sync', '--timeout', '60', '--control', server.controlPath], { allowFailure: true, timeoutMs: 90_000 });
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout).toBe('vol: in sync (512/512 regions)\n');
      const lines = r.stderr.trim().split('\n').filter((l) => l.startsWith('vol: sync: '));
      expect(lines.length, r.stderr).toBeGreaterThanOrEqual(2);
      expect(lines.at(-1)).toMatch(/^vol: sync: 100\.0% \(16\.0 MiB of 16\.0 MiB\), [0-9.]+ (B|KiB|MiB)\/s, ETA done$/);
      // Already in sync: no progress at all.
      const again = await run(process.execPath, [CLI_PATH, 'wait', 'vol', '--sync', '--control', server.controlPath], { allowFailure: true });
      expect(again.code).toBe(0);
      expect(again.stderr).toBe('');
    } finally {
      await server.stop();
    }
  });
});
