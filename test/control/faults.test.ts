// Fault scenarios: one mirror leg is served by nbdkit's error filter (EIO on every request once its
// trigger file exists). With handle_errors the failed write is HELD; repair (automatic with
// --repair-policy, or by hand with suspend --noflush / reload / resume) completes it without an error
// to the client. Without handle_errors, writes succeed while one leg lives and an event is raised.
import { spawn } from 'node:child_process';
import { mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { useTempDir } from '../helpers/e2e.js';
import { runFioVerify } from '../helpers/fio.js';
import { createSparseFile, MiB, sectorsOf } from '../helpers/tmp.js';
import { requireTools } from '../helpers/tools.js';
import { ControlClient } from '../../src/control/client.js';
import { startNbdkitErrorLeg, type NbdkitLeg } from './nbdkit-leg.js';
import { sleep, startWithControl, waitFor, type Controlled } from './control-helpers.js';

const SIZE = 16 * MiB;
const SECTORS = sectorsOf(SIZE);
const dir = useTempDir('control-faults');
const haveTools = requireTools('nbdkit', 'qemu-io', 'fio');
const nbdkits: NbdkitLeg[] = [];

afterEach(async () => {
  for (const n of nbdkits.splice(0)) await n.stop();
});

interface Setup {
  d: string;
  fileLeg: string;
  bad: NbdkitLeg;
  c: Controlled;
  events: Record<string, unknown>[];
  closeEvents(): void;
}

async function setup(sub: string, opts: { handleErrors: boolean; controlArgs?: string[] }): Promise<Setup> {
  const d = join(dir(), sub);
  await mkdir(d);
  const fileLeg = await createSparseFile(join(d, 'a.img'), SIZE);
  const bad = await startNbdkitErrorLeg(d, 'b', SIZE);
  nbdkits.push(bad);
  const features = opts.handleErrors ? ' 1 handle_errors' : '';
  const table = `0 ${SECTORS} mirror core 2 1024 nosync 2 ${fileLeg} 0 ${bad.uri} 0${features}`;
  const c = await startWithControl(d, { tables: [{ table, name: 'vol' }], controlArgs: opts.controlArgs ?? [] });
  // Follow the event stream from here on (the hello arrives before anything is armed).
  const events: Record<string, unknown>[] = [];
  const ws = await new ControlClient({ kind: 'unix', path: c.controlPath }).events('vol', (ev) => events.push(ev));
  return { d, fileLeg, bad, c, events, closeEvents: () => ws.close() };
}

const kinds = (events: Record<string, unknown>[]) => events.map((e) => e.kind);

describe.skipIf(!haveTools)('leg failure under a mirror', () => {
  it('handle_errors + --repair-policy remove: fio verify sees no error, the volume ends linear on the good leg', async () => {
    const s = await setup('auto-remove', { handleErrors: true, controlArgs: ['--repair-policy', 'remove'] });
    expect((await s.c.ctl('status', 'vol')).stdout).toContain(' 1 AA 1 core');
    await s.bad.arm();
    const fio = await runFioVerify({ uri: s.c.server.uri('vol'), dir: s.d, numJobs: 2, sliceBytes: 4 * MiB, iodepth: 8 });
    expect(fio.errors).toBe(0);
    expect(fio.writtenBytes).toBeGreaterThan(4 * MiB);
    expect(fio.readBytes).toBe(fio.writtenBytes);
    expect((await s.c.ctl('table', 'vol')).stdout).toBe(`0 ${SECTORS} linear ${s.fileLeg} 0\n`);
    expect((await s.c.ctl('status', 'vol')).stdout).toBe(`0 ${SECTORS} linear\n`);
    const k = kinds(s.events);
    expect(k).toContain('leg-failed');
    expect(k).toContain('write-held');
    for (const step of ['repair-start', 'suspend', 'reload', 'resume', 'repair-done']) expect(k).toContain(step);
    expect(k.indexOf('leg-failed')).toBeLessThan(k.indexOf('repair-start'));
    expect(k.indexOf('repair-start')).toBeLessThan(k.indexOf('repair-done'));
    const info = await s.c.json<{ eventNr: number; heldWrites: number; legs: unknown[] }>('info', 'vol');
    expect(info.eventNr).toBeGreaterThanOrEqual(1);
    expect(info.heldWrites).toBe(0);
    expect(info.legs).toHaveLength(1);
    s.closeEvents();
    await s.c.server.stop();
  });

  it('by hand: a held write waits through suspend --noflush / reload / resume and then succeeds', async () => {
    const s = await setup('manual', { handleErrors: true });
    await s.bad.arm();
    const child = spawn('qemu-io', ['-f', 'raw', '-c', 'write -P 0x3c 2M 64k', s.c.server.uri('vol')], { stdio: 'ignore' });
    let exitCode: number | null | undefined;
    const exited = new Promise<number | null>((r) => child.on('exit', (code) => r((exitCode = code))));
    try {
      await waitFor('a held write', async () => (await s.c.info('vol')).heldWrites >= 1);
      expect((await s.c.ctl('status', 'vol')).stdout).toMatch(/ 1 A[DF] 1 core\n$/);
      expect((await s.c.ctl('suspend', '--noflush', 'vol')).code).toBe(0);
      expect((await s.c.ctl('reload', 'vol', `0 ${SECTORS} linear ${s.fileLeg} 0`)).code).toBe(0);
      const mid = await s.c.json<{ state: string; heldWrites: number; tablesPresent: { inactive: boolean } }>('info', 'vol');
      expect(mid).toMatchObject({ state: 'SUSPENDED', tablesPresent: { inactive: true } });
      expect(mid.heldWrites).toBeGreaterThanOrEqual(1);
      await sleep(200);
      expect(exitCode, 'the held write must not complete before resume').toBeUndefined();
      const r = await s.c.json<{ swapped: boolean; heldWritesReissued: number }>('resume', 'vol');
      expect(r.swapped).toBe(true);
      expect(r.heldWritesReissued).toBeGreaterThanOrEqual(1);
      expect(await exited).toBe(0);
    } finally {
      child.kill('SIGKILL');
    }
    const k = kinds(s.events);
    expect(k.slice(k.indexOf('suspend'))).toEqual(expect.arrayContaining(['suspend', 'reload', 'resume']));
    s.closeEvents();
    await s.c.server.stop();
    const bytes = await readFile(s.fileLeg);
    expect(bytes.subarray(2 * MiB, 2 * MiB + 64 * 1024).every((b) => b === 0x3c)).toBe(true);
  });

  it('nbd-mirror repair: drops the failed leg while a write is held; the write then succeeds', async () => {
    const s = await setup('repair-cmd', { handleErrors: true });
    const healthy = await s.c.ctl('repair', 'vol');
    expect(healthy.code).toBe(0);
    expect(healthy.stdout).toBe('vol: no failed leg: nothing to repair\n');
    await s.bad.arm();
    const child = spawn('qemu-io', ['-f', 'raw', '-c', 'write -P 0x6b 3M 64k', s.c.server.uri('vol')], { stdio: 'ignore' });
    const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
    try {
      await waitFor('a held write', async () => (await s.c.info('vol')).heldWrites >= 1);
      const r = await s.c.ctl('repair', 'vol');
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout).toBe(`vol: removed ${s.bad.uri}; added -; 1 held writes completed\nvol: table now: 0 ${SECTORS} linear ${s.fileLeg} 0\n`);
      expect(await exited).toBe(0);
    } finally {
      child.kill('SIGKILL');
    }
    const k = kinds(s.events);
    expect(k.indexOf('repair-start')).toBeLessThan(k.indexOf('repair-done'));
    s.closeEvents();
    await s.c.server.stop();
    const bytes = await readFile(s.fileLeg);
    expect(bytes.subarray(3 * MiB, 3 * MiB + 64 * 1024).every((b) => b === 0x6b)).toBe(true);
  });

  it('by hand: a flushing suspend fails the held write with EIO instead', async () => {
    const s = await setup('flushing', { handleErrors: true });
    await s.bad.arm();
    const child = spawn('qemu-io', ['-f', 'raw', '-c', 'write -P 0x11 0 4k', s.c.server.uri('vol')], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout!.on('data', (b: Buffer) => (out += b.toString()));
    child.stderr!.on('data', (b: Buffer) => (out += b.toString()));
    const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
    try {
      await waitFor('a held write', async () => (await s.c.info('vol')).heldWrites >= 1);
      const suspended = await s.c.ctl('suspend', 'vol');
      expect(suspended.code, suspended.stderr).toBe(0);
      // The held write was failed with EIO by the flushing suspend (nothing is held any more). The client's
      // closing FLUSH then waits for resume (the volume is suspended), as it would on dm.
      expect((await s.c.json<{ heldWrites: number; state: string }>('info', 'vol'))).toMatchObject({ heldWrites: 0, state: 'SUSPENDED' });
      expect((await s.c.ctl('resume', 'vol')).code).toBe(0);
      expect(await exited).toBe(1);
      expect(out).toMatch(/write failed: Input\/output error/);
    } finally {
      child.kill('SIGKILL');
    }
    s.closeEvents();
    await s.c.server.stop();
  });

  it('without handle_errors: the write succeeds on the surviving leg, the leg is marked D and an event is raised', async () => {
    const s = await setup('no-handle-errors', { handleErrors: false });
    const before = (await s.c.json<{ eventNr: number }>('info', 'vol')).eventNr;
    const waiting = s.c.ctl('wait', 'vol', String(before));
    await sleep(300);
    await s.bad.arm();
    const w = await new Promise<number | null>((resolve) => {
      const child = spawn('qemu-io', ['-f', 'raw', '-c', 'write -P 0x77 0 64k', s.c.server.uri('vol')], { stdio: 'ignore' });
      child.on('exit', resolve);
    });
    expect(w).toBe(0);
    const waited = await waiting;
    expect(waited.code).toBe(0);
    expect(Number(/Event number: +(\d+)/.exec(waited.stdout)?.[1])).toBeGreaterThan(before);
    expect((await s.c.ctl('status', 'vol')).stdout).toMatch(/ 1 A[DF] 1 core\n$/);
    expect(kinds(s.events)).toContain('leg-failed');
    expect(kinds(s.events)).not.toContain('write-held');
    s.closeEvents();
    await s.c.server.stop();
    const bytes = await readFile(s.fileLeg);
    expect(bytes.subarray(0, 64 * 1024).every((b) => b === 0x77)).toBe(true);
  });

  it('--repair-policy allocate: the failed leg is replaced by the spare, which is resynced', async () => {
    const d = join(dir(), 'allocate-pre');
    await mkdir(d);
    const spare = await createSparseFile(join(d, 'spare.img'), SIZE);
    const s = await setup('allocate', { handleErrors: true, controlArgs: ['--repair-policy', 'allocate', '--spare', spare] });
    await s.bad.arm();
    const fio = await runFioVerify({ uri: s.c.server.uri('vol'), dir: s.d, numJobs: 2, sliceBytes: 2 * MiB, iodepth: 4 });
    expect(fio.errors).toBe(0);
    // nosync is dropped: the spare holds none of the data.
    expect((await s.c.ctl('table', 'vol')).stdout).toBe(`0 ${SECTORS} mirror core 1 1024 2 ${s.fileLeg} 0 ${spare} 0 1 handle_errors\n`);
    await waitFor('the spare to be in sync', async () => / 32\/32 1 AA 1 core\n$/.test((await s.c.status('vol'))));
    s.closeEvents();
    await s.c.server.stop();
    const [a, b] = await Promise.all([readFile(s.fileLeg), readFile(spare)]);
    expect(a.equals(b)).toBe(true);
  });
});
