// `nbd-mirror verify NAME [--repair] [--json]` against a real `nbd-mirror serve` over file legs: data
// written through a real client (qemu-io), a byte corrupted in one leg file behind the server's back
// once its region is clean, verify reports that region (exit 1), --repair fixes it (exit 0, legs equal),
// --json parses, verify during fio writes finds nothing on a healthy mirror, a second concurrent verify
// is refused, a linear volume has nothing to verify (exit 2); the dashboard's Verify button (chromium)
// runs the same API and shows the result.
import { spawn } from 'node:child_process';
import { mkdir, open, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ControlClient } from '../../src/control/client.js';
import { useTempDir } from '../helpers/e2e.js';
import { run } from '../helpers/run.js';
import { linearTable, mirrorTable } from '../helpers/tables.js';
import { createSparseFile, MiB } from '../helpers/tmp.js';
import { requireTools } from '../helpers/tools.js';
import { startWithControl, sleep, waitFor } from './control-helpers.js';
import { dashboardUrlOf, freePort, launchChromium, requireChromium } from '../dashboard/dashboard-helpers.js';

const SIZE = 16 * MiB;
const REGION_BYTES = 512 * 1024; // mirrorTable's default region (1024 sectors)
const REGION_COUNT = SIZE / REGION_BYTES;
/** The engine clears an idle region after cleanDelayMs (1 s); wait a little longer. */
const CLEAN_WAIT_MS = 1500;
const dir = useTempDir('control-verify');
const haveTools = requireTools('qemu-io', 'fio');

async function mirrorVolume(sub: string) {
  const d = join(dir(), sub);
  await mkdir(d);
  const legs = [await createSparseFile(join(d, 'leg0.img'), SIZE), await createSparseFile(join(d, 'leg1.img'), SIZE)];
  const c = await startWithControl(d, { tables: [{ table: mirrorTable({ legs, sizeBytes: SIZE, sync: 'nosync' }), name: 'vol' }] });
  return { d, legs, c };
}

async function flipByte(file: string, offsetBytes: number): Promise<void> {
  const fh = await open(file, 'r+');
  try {
    const b = Buffer.alloc(1);
    await fh.read(b, 0, 1, offsetBytes);
    b[0] = b[0]! ^ 0xff;
    await fh.write(b, 0, 1, offsetBytes);
    await fh.sync();
  } finally {
    await fh.close();
  }
}

describe.skipIf(!haveTools)('verify', () => {
  it('reports a corrupted region (exit 1), --repair fixes it (exit 0, legs equal), --json parses', async () => {
    const { legs, c } = await mirrorVolume('corrupt');
    await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 0 4M', '-c', 'write -P 0xa5 8M 1M', c.server.uri('vol')]);
    await sleep(CLEAN_WAIT_MS);

    const clean = await c.ctl('verify', 'vol');
    expect(clean.code, clean.stderr).toBe(0);
    expect(clean.stdout).toContain(`vol: verify done: ${REGION_COUNT} of ${REGION_COUNT} regions checked`);
    expect(clean.stdout).toContain('vol: no mismatches');

    // Region 5 (2.5 MiB..3 MiB) and region 17 (8.5 MiB..9 MiB) on leg 1; region 6 too (a range).
    await flipByte(legs[1]!, 5 * REGION_BYTES + 1234);
    await flipByte(legs[1]!, 6 * REGION_BYTES + 7);
    await flipByte(legs[1]!, 17 * REGION_BYTES + 4096);
    const bad = await c.ctl('verify', 'vol');
    expect(bad.code, bad.stderr).toBe(1);
    expect(bad.stdout).toContain('vol: 3 mismatched regions: 5-6,17');
    // Not a terminal: plain progress lines on stderr.
    expect(bad.stderr).toMatch(/vol: verify: [0-9.]+% \(/);

    const j = await c.json<{ mismatchedRegions: number[]; mismatchRanges: string; regionsChecked: number; repaired: number; cancelled: null | string }>('verify', 'vol');
    expect(j).toMatchObject({ mismatchedRegions: [5, 6, 17], mismatchRanges: '5-6,17', regionsChecked: REGION_COUNT, repaired: 0, cancelled: null });

    const fix = await c.ctl('verify', 'vol', '--repair');
    expect(fix.code, fix.stderr).toBe(0);
    expect(fix.stdout).toContain('vol: 3 mismatched regions: 5-6,17');
    expect(fix.stdout).toContain('vol: 3 regions repaired');
    const [a, b] = await Promise.all(legs.map((l) => readFile(l)));
    expect(a!.equals(b!)).toBe(true);
    await run('cmp', [legs[0]!, legs[1]!]);

    const after = await c.ctl('verify', 'vol');
    expect(after.code).toBe(0);
    expect(after.stdout).toContain('vol: no mismatches');
    // The mismatches were streamed as warnings and logged by the server.
    expect(c.server.output()).toMatch(/verify-mismatch/);
  });

  it('while fio writes: no mismatches on a healthy mirror; a second verify is refused; refusals', async () => {
    const { d, c } = await mirrorVolume('busy');
    const api = new ControlClient({ kind: 'unix', path: c.controlPath });
    const job = join(d, 'writes.fio');
    await writeFile(
      job,
      ['[w]', 'ioengine=nbd', `uri=${c.server.uri('vol')}`, 'rw=randwrite', 'bs=4k-64k', 'bs_unaligned=0', 'iodepth=8', `size=${SIZE}`, 'time_based=1', 'runtime=6', ''].join('\n'),
    );
    const fio = spawn('fio', [job], { stdio: 'ignore', cwd: d });
    const fioDone = new Promise<number | null>((resolve) => fio.on('exit', (code) => resolve(code)));
    try {
      await sleep(500);
      const seen: Record<string, unknown>[] = [];
      // The second verify is sent straight through the API (no process start) the moment the first one's
      // verify-start arrives, so it meets the first run still going even on a fast or loaded machine.
      let second: Promise<{ code: string; message: string } | null> | undefined;
      const ws = await api.events('vol', (ev) => {
        seen.push(ev);
        if (ev.kind === 'verify-start' && second === undefined) {
          second = api.post('/v1/volumes/vol/verify', {}).then(
            () => null,
            (e: unknown) => e as { code: string; message: string },
          );
        }
      });
      const first = c.ctl('verify', 'vol', '--json');
      await waitFor('verify-start on the event stream', async () => second !== undefined);
      expect(await second).toMatchObject({ code: 'EBUSY', message: 'a verify of "vol" is already running' });
      const r = await first;
      expect(r.code, r.stderr).toBe(0);
      const result = JSON.parse(r.stdout) as { mismatchedRegions: number[]; regionsChecked: number; regionsSkipped: number };
      expect(result.mismatchedRegions).toEqual([]);
      expect(result.regionsChecked + result.regionsSkipped).toBe(REGION_COUNT);
      expect(result.regionsChecked).toBeGreaterThan(0);
      const prog = seen.filter((e) => e.kind === 'verify-progress').map((e) => e.data as { regionsDone: number; regionCount: number; mismatches: number; bytesPerSec: number | null });
      expect(prog.length).toBeGreaterThanOrEqual(2);
      expect(prog.at(-1)).toMatchObject({ regionsDone: REGION_COUNT, regionCount: REGION_COUNT, mismatches: 0 });
      expect(seen.some((e) => e.kind === 'verify-done')).toBe(true);
      ws.terminate();
      expect(fio.exitCode ?? 'running').toBe('running'); // the verify ran while writes did
    } finally {
      const code = await fioDone;
      expect(code).toBe(0);
    }
    // A verify after the writes settled: still clean, legs equal.
    await sleep(CLEAN_WAIT_MS);
    const again = await c.ctl('verify', 'vol');
    expect(again.code, again.stderr).toBe(0);
    expect(again.stdout).toContain('vol: no mismatches');

    const unknown = await c.ctl('verify', 'nope');
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toContain('no volume named "nope"');
  });

  it('a linear volume: nothing to verify (exit 2); a suspended volume is refused', async () => {
    const d = join(dir(), 'linear');
    await mkdir(d);
    const f = await createSparseFile(join(d, 'lin.img'), SIZE);
    const lin = await startWithControl(d, { tables: [{ table: linearTable(f, SIZE), name: 'lin' }] });
    const r = await lin.ctl('verify', 'lin');
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('nothing to verify: "lin" is linear');
    await lin.server.stop();

    const { c } = await mirrorVolume('suspended');
    expect((await c.ctl('suspend', 'vol')).code).toBe(0);
    const s = await c.ctl('verify', 'vol');
    expect(s.code).toBe(1);
    expect(s.stderr).toContain('is suspended');
    expect((await c.ctl('resume', 'vol')).code).toBe(0);
  });
});

describe.skipIf(!haveTools)('verify cancelled', () => {
  it('a suspend during a verify cancels it (exit 1, "cancelled"); the volume resumes and serves; a shutdown during a verify exits cleanly', async () => {
    const big = 512 * MiB; // sparse: reading it is quick, but not instant
    const d = join(dir(), 'cancel');
    await mkdir(d);
    const legs = [await createSparseFile(join(d, 'leg0.img'), big), await createSparseFile(join(d, 'leg1.img'), big)];
    const c = await startWithControl(d, { tables: [{ table: mirrorTable({ legs, sizeBytes: big, sync: 'nosync' }), name: 'vol' }] });
    const api = new ControlClient({ kind: 'unix', path: c.controlPath });
    const seen: Record<string, unknown>[] = [];
    const ws = await api.events('vol', (ev) => seen.push(ev));
    try {
      const verify = c.ctl('verify', 'vol');
      await waitFor('verify under way', async () => seen.some((e) => e.kind === 'verify-progress' && (e.data as { regionsDone: number }).regionsDone > 0), 20_000, 10);
      await api.post('/v1/volumes/vol/suspend', { noflush: false });
      const r = await verify;
      expect(r.code, r.stdout + r.stderr).toBe(1);
      expect(r.stdout).toMatch(/vol: verify cancelled \(volume suspend(ed)?\): [0-9]+ of 1024 regions checked/);
      const done = seen.find((e) => e.kind === 'verify-done')?.data as { cancelled: string; regionsChecked: number };
      expect(done.cancelled).toMatch(/suspend/);
      expect(done.regionsChecked).toBeLessThan(1024);
      await api.post('/v1/volumes/vol/resume', {});
      await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x11 0 64k', '-c', 'read -P 0x11 0 64k', c.server.uri('vol')]);
      // A new verify runs after the cancelled one; a server shutdown (SIGTERM) during it stops it and the
      // server still exits 0 (stop() asserts that).
      const mark = seen.length;
      const again = c.ctl('verify', 'vol');
      await waitFor('the second verify under way', async () => seen.slice(mark).some((e) => e.kind === 'verify-progress' && (e.data as { regionsDone: number }).regionsDone > 0), 20_000, 10);
      await c.server.stop();
      const r2 = await again;
      expect(r2.code, r2.stdout + r2.stderr).toBe(1);
      expect(c.server.output()).not.toMatch(/leg-failed/); // no verify read raced the legs' close
    } finally {
      ws.terminate();
    }
  });
});

describe.skipIf(!(haveTools && requireChromium()))('verify from the dashboard', () => {
  it('the Verify button runs the verify API and shows the result (clean, then the mismatched region); no progress rows in the timeline', async () => {
    const d = join(dir(), 'dash');
    await mkdir(d);
    const legs = [await createSparseFile(join(d, 'leg0.img'), SIZE), await createSparseFile(join(d, 'leg1.img'), SIZE)];
    const port = await freePort();
    const c = await startWithControl(d, {
      tables: [{ table: mirrorTable({ legs, sizeBytes: SIZE, sync: 'nosync' }), name: 'vol' }],
      extraArgs: ['--dashboard', String(port)],
    });
    const url = await dashboardUrlOf(c.server);
    await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 0 2M', c.server.uri('vol')]);
    await sleep(CLEAN_WAIT_MS);
    const browser = await launchChromium();
    try {
      const page = await browser.newPage();
      await page.goto(url);
      const card = page.locator('section.volume[data-volume="vol"]');
      const button = card.locator('button[data-action="verify"]');
      await waitFor('the Verify button enabled', async () => (await button.count()) === 1 && !(await button.isDisabled()), 20_000);
      const result = card.locator('.verify-result');
      await button.click();
      await waitFor('a clean verify result', async () => (await result.getAttribute('data-state')) === 'clean', 20_000);
      expect(await result.textContent()).toContain(`${REGION_COUNT}/${REGION_COUNT} regions checked; no mismatches`);

      await flipByte(legs[0]!, 3 * REGION_BYTES + 100);
      await button.click();
      await waitFor('a mismatch result', async () => (await result.getAttribute('data-state')) === 'mismatch', 20_000);
      expect(await result.getAttribute('data-mismatches')).toBe('3');
      expect(await result.textContent()).toContain('1 mismatched: 3');
      const kinds = await page.$$eval('#timeline tbody tr', (rows) => rows.map((r) => (r as HTMLElement).dataset.kind ?? ''));
      expect(kinds).toContain('verify-mismatch');
      expect(kinds).toContain('verify-done');
      expect(kinds).not.toContain('verify-progress');
    } finally {
      await browser.close();
    }
  });
});
