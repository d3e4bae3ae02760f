// The control CLI against a real `nbd-mirror serve` process: dmsetup's output formats (ls, status,
// table, info), --json, the socket's 0600 mode, suspend/resume with a real client (qemu-io) whose
// request waits while suspended, reloads refused with the running table untouched, and wait on an event.
import { spawn } from 'node:child_process';
import { mkdir, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { NbdClient } from '../../src/nbd/client/client.js';
import { useTempDir } from '../helpers/e2e.js';
import { run } from '../helpers/run.js';
import { CLI_PATH } from '../helpers/server.js';
import { linearTable, mirrorTable } from '../helpers/tables.js';
import { createSparseFile, MiB, sectorsOf } from '../helpers/tmp.js';
import { requireTools } from '../helpers/tools.js';
import { startWithControl, sleep, waitFor, type Controlled } from './control-helpers.js';

const SIZE = 16 * MiB;
const SECTORS = sectorsOf(SIZE);
const dir = useTempDir('control-cli');
const haveTools = requireTools('qemu-io');

async function mirrorVolume(sub: string, opts: { legs?: number; sync?: 'nosync'; extra?: string[] } = {}) {
  const d = join(dir(), sub);
  await mkdir(d);
  const legs: string[] = [];
  for (let i = 0; i < (opts.legs ?? 2); i++) legs.push(await createSparseFile(join(d, `leg${i}.img`), SIZE));
  const table = mirrorTable({ legs, sizeBytes: SIZE, ...(opts.sync ? { sync: opts.sync } : {}) });
  const c = await startWithControl(d, { tables: [{ table, name: 'vol' }], extraArgs: opts.extra ?? [] });
  return { d, legs, table, c };
}

describe('formats', () => {
  it('ls, status, table, info in dmsetup form; --json parses; socket mode 0600', async () => {
    const { legs, c } = await mirrorVolume('formats', { sync: 'nosync' });
    const mode = (await stat(c.controlPath)).mode & 0o777;
    expect(mode.toString(8)).toBe('600');

    const ls = await c.ctl('ls');
    expect(ls.code).toBe(0);
    expect(ls.stdout).toBe('vol\t(mirror)\n');

    const status = await c.ctl('status', 'vol');
    expect(status.stdout).toBe(`0 ${SECTORS} mirror 2 ${legs[0]} ${legs[1]} 32/32 1 AA 1 core\n`);
    const all = await c.ctl('status');
    expect(all.stdout).toBe(`vol: 0 ${SECTORS} mirror 2 ${legs[0]} ${legs[1]} 32/32 1 AA 1 core\n`);

    const table = await c.ctl('table', 'vol');
    expect(table.stdout).toBe(`0 ${SECTORS} mirror core 2 1024 nosync 2 ${legs[0]} 0 ${legs[1]} 0\n`);

    const info = await c.ctl('info', 'vol');
    expect(info.stdout).toMatch(/^Name: {14}vol\nState: {13}ACTIVE\nTables present: {4}LIVE\n/);
    expect(info.stdout).toMatch(/\nEvent number: {6}\d+\n/);
    expect(info.stdout).toMatch(/\nNumber of targets: 1\n/);
    // Open count: NBD connections in transmission with this export, as dmsetup counts openers.
    expect(info.stdout).toMatch(/\nOpen count: {8}0\n/);
    const clients = [await NbdClient.connect(c.server.uri('vol')), await NbdClient.connect(c.server.uri('vol'))];
    try {
      expect((await c.info('vol')).openCount).toBe(2);
      expect((await c.ctl('info', 'vol')).stdout).toMatch(/\nOpen count: {8}2\n/);
      await clients.pop()!.close();
      await waitFor('open count back to 1 after a DISC', async () => (await c.info('vol')).openCount === 1);
    } finally {
      for (const cl of clients) await cl.close();
    }
    await waitFor('open count back to 0', async () => (await c.info('vol')).openCount === 0);

    const j = await c.json<{ name: string; state: string; tablesPresent: { live: boolean; inactive: boolean }; legs: { health: string }[] }>('info', 'vol');
    expect(j.name).toBe('vol');
    expect(j.state).toBe('ACTIVE');
    expect(j.tablesPresent).toEqual({ live: true, inactive: false });
    expect(j.legs.map((l) => l.health)).toEqual(['A', 'A']);
    const jl = await c.json<{ volumes: { name: string; target: string }[] }>('ls');
    expect(jl.volumes.map((v) => [v.name, v.target])).toEqual([['vol', 'mirror']]);
    const js = await c.json<{ status: string }>('status', 'vol');
    expect(js.status).toBe(status.stdout.trim());

    // Errors: unknown volume, missing argument, bad message; exit non-zero with a message naming it.
    const unknown = await c.ctl('status', 'nope');
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toContain('no volume named "nope" (volumes: vol)');
    const ju = await c.json<{ error: { code: string } }>('info', 'nope');
    expect(ju.error.code).toBe('ENOENT');
    const noName = await c.ctl('suspend');
    expect(noName.code).not.toBe(0);
    const badMsg = await c.ctl('message', 'vol', 'resync_rate', 'fast');
    expect(badMsg.code).toBe(2);
    expect(badMsg.stderr).toContain('"fast" is not a non-negative integer');
    const okMsg = await c.ctl('message', 'vol', '0', 'resync_rate', '1048576');
    expect(okMsg.code).toBe(0);
    const badWait = await c.ctl('wait', 'vol', 'x');
    expect(badWait.code).toBe(2);
    expect(badWait.stderr).toContain('event_nr must be a non-negative integer');
    await c.server.stop();
  });

  it('a linear volume: status has no params, message is refused', async () => {
    const d = join(dir(), 'linear');
    await mkdir(d);
    const f = await createSparseFile(join(d, 'lin.img'), SIZE);
    const c = await startWithControl(d, { tables: [{ table: linearTable(f, SIZE), name: 'lin' }] });
    expect((await c.ctl('status', 'lin')).stdout).toBe(`0 ${SECTORS} linear\n`);
    expect((await c.ctl('table', 'lin')).stdout).toBe(`0 ${SECTORS} linear ${f} 0\n`);
    const m = await c.ctl('message', 'lin', 'resync_rate', '1');
    expect(m.code).toBe(1);
    expect(m.stderr).toContain('takes no messages');
    // `events` prints the hello, then each event as a JSON line; --count 2 exits after suspend + resume.
    const child = spawn(process.execPath, [CLI_PATH, 'events', 'lin', '--count', '2', '--control', c.controlPath], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout!.on('data', (b: Buffer) => (out += b.toString()));
    const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
    try {
      await waitFor('the hello line', async () => out.includes('\n'));
      expect((await c.ctl('suspend', 'lin')).code).toBe(0);
      expect((await c.ctl('resume', 'lin')).code).toBe(0);
      expect(await exited).toBe(0);
    } finally {
      child.kill('SIGKILL');
    }
    const lines = out.trim().split('\n').map((l) => JSON.parse(l) as { kind: string; volume?: string });
    expect(lines.map((l) => l.kind)).toEqual(['hello', 'suspend', 'resume']);
    expect(lines[1]!.volume).toBe('lin');
    await c.server.stop();
  });
});

describe('TCP control listener', () => {
  it('127.0.0.1 only, bearer token required', async () => {
    const d = join(dir(), 'tcp');
    await mkdir(d);
    const f = await createSparseFile(join(d, 'lin.img'), SIZE);
    const tokenFile = join(d, 'token');
    await writeFile(tokenFile, 'a-long-enough-secret-token\n', { mode: 0o600 });
    const wrongFile = join(d, 'wrong');
    await writeFile(wrongFile, 'not-the-right-token-at-all\n');
    const c = await startWithControl(d, { tables: [{ table: linearTable(f, SIZE), name: 'lin' }], controlArgs: ['--control-tcp', '0', '--control-token-file', tokenFile] });
    const m = /control API on tcp:\/\/127\.0\.0\.1:(\d+)/.exec(c.server.output());
    expect(m, c.server.output()).not.toBeNull();
    const url = `tcp://127.0.0.1:${m![1]}`;
    const ok = await run(process.execPath, [CLI_PATH, 'ls', '--control', url, '--control-token-file', tokenFile], { allowFailure: true });
    expect(ok.stdout).toBe('lin\t(linear)\n');
    const bad = await run(process.execPath, [CLI_PATH, 'ls', '--control', url, '--control-token-file', wrongFile], { allowFailure: true });
    expect(bad.code).toBe(1);
    expect(bad.stderr).toContain('missing or wrong bearer token');
    const none = await run(process.execPath, [CLI_PATH, 'ls', '--control', url], { allowFailure: true });
    expect(none.code).toBe(2);
    expect(none.stderr).toContain('needs --control-token-file');
    await c.server.stop();
    // A short token is refused at start.
    await writeFile(tokenFile, 'short\n');
    const refused = await run(process.execPath, [CLI_PATH, 'serve', '--listen', `unix:${join(d, 'x.sock')}`, '--control', join(d, 'x.ctl'), '--table', linearTable(f, SIZE), '--control-tcp', '0', '--control-token-file', tokenFile], { allowFailure: true });
    expect(refused.code).toBe(2);
    expect(refused.stderr).toContain('token is shorter than 16 characters');
  });
});

describe.skipIf(!haveTools)('suspend / resume / reload', () => {
  it('a write waits while suspended and completes on resume; both legs get it', async () => {
    const { legs, c } = await mirrorVolume('suspend', { sync: 'nosync' });
    expect((await c.ctl('suspend', 'vol')).code).toBe(0);
    expect((await c.json<{ state: string }>('info', 'vol')).state).toBe('SUSPENDED');
    const child = spawn('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 1M 64k', c.server.uri('vol')], { stdio: 'ignore' });
    let exitCode: number | null | undefined;
    const exited = new Promise<number | null>((r) => child.on('exit', (code) => r((exitCode = code))));
    try {
      await waitFor('the write to queue', async () => (await c.info('vol')).queuedRequests >= 1);
      await sleep(300);
      expect(exitCode, 'qemu-io must still be waiting while the volume is suspended').toBeUndefined();
      expect((await c.ctl('resume', 'vol')).code).toBe(0);
      expect(await exited).toBe(0);
    } finally {
      child.kill('SIGKILL');
    }
    expect((await c.json<{ state: string }>('info', 'vol')).state).toBe('ACTIVE');
    await c.server.stop();
    for (const leg of legs) {
      const bytes = await readFile(leg);
      expect(bytes.subarray(1 * MiB, 1 * MiB + 64 * 1024).every((b) => b === 0x5a)).toBe(true);
    }
  });

  it('reload refused for a bad table, a size change, a missing leg: the running table is untouched', async () => {
    const { d, legs, c } = await mirrorVolume('reload', { sync: 'nosync' });
    const before = (await c.ctl('table', 'vol')).stdout;
    const bad = await c.ctl('reload', 'vol', `0 ${SECTORS} mirror core 2 1024 2 ${legs[0]} 0`);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/table: token 7 '2' .*expected 'sync' or 'nosync'/);
    const size = await c.ctl('reload', 'vol', `0 ${SECTORS / 2} linear ${legs[0]} 0`);
    expect(size.code).toBe(2);
    expect(size.stderr).toContain(`table length ${SECTORS / 2} sectors differs from the live table's ${SECTORS} sectors`);
    const missing = join(d, 'missing.img');
    const leg = await c.ctl('reload', 'vol', `0 ${SECTORS} mirror core 2 1024 nosync 2 ${legs[0]} 0 ${missing} 0`);
    expect(leg.code).toBe(2);
    expect(leg.stderr).toContain(`cannot open ${missing}`);
    const small = await createSparseFile(join(d, 'small.img'), 1 * MiB);
    const tooSmall = await c.ctl('reload', 'vol', `0 ${SECTORS} mirror core 2 1024 nosync 2 ${legs[0]} 0 ${small} 0`);
    expect(tooSmall.code).toBe(2);
    expect(tooSmall.stderr).toContain(`leg ${small} is too small`);
    // Nothing changed: same table, no inactive table, still active and serving.
    expect((await c.ctl('table', 'vol')).stdout).toBe(before);
    const info = await c.json<{ state: string; tablesPresent: { inactive: boolean } }>('info', 'vol');
    expect(info.state).toBe('ACTIVE');
    expect(info.tablesPresent.inactive).toBe(false);
    expect((await c.ctl('table', 'vol', '--inactive')).code).toBe(2);

    // A good reload is inactive until resume, then live (table --inactive shows it meanwhile).
    const third = await createSparseFile(join(d, 'leg2.img'), SIZE);
    const next = `0 ${SECTORS} mirror core 1 1024 3 ${legs[0]} 0 ${legs[1]} 0 ${third} 0`;
    expect((await c.ctl('reload', 'vol', next)).code).toBe(0);
    expect((await c.ctl('info', 'vol')).stdout).toContain('Tables present:    LIVE & INACTIVE\n');
    const inactive = await c.ctl('table', 'vol', '--inactive');
    expect(inactive.stdout, inactive.stderr).toBe(`${next}\n`);
    expect((await c.ctl('table', 'vol')).stdout).toBe(before);
    const r = await c.json<{ swapped: boolean; how: string }>('resume', 'vol');
    expect(r).toMatchObject({ swapped: true, how: 'in-place' });
    expect((await c.ctl('table', 'vol')).stdout).toBe(`${next}\n`);
    // The new leg is resynced from the others.
    await waitFor('the new leg to be in sync', async () => /32\/32 1 AAA/.test((await c.status('vol'))));
    await c.server.stop();
  });

  it('wait returns on an event (in-sync after a reload adds a leg); --timeout gives up', async () => {
    const { d, legs, c } = await mirrorVolume('wait');
    // A core log without nosync resyncs at start and raises in-sync: event number 1.
    await waitFor('first in-sync', async () => (await c.info('vol')).eventNr >= 1);
    const nr = (await c.json<{ eventNr: number }>('info', 'vol')).eventNr;
    const already = await c.ctl('wait', 'vol', '0');
    expect(already.stdout).toBe(`Event number:      ${nr}\n`);
    const timeout = await c.ctl('wait', 'vol', '--timeout', '0.2');
    expect(timeout.code).toBe(1);
    expect(timeout.stderr).toContain('no event after event number');

    const waiting = c.ctl('wait', 'vol', String(nr));
    await sleep(200);
    const third = await createSparseFile(join(d, 'leg2.img'), SIZE);
    expect((await c.ctl('reload', 'vol', `0 ${SECTORS} mirror core 1 1024 3 ${legs[0]} 0 ${legs[1]} 0 ${third} 0`)).code).toBe(0);
    expect((await c.ctl('resume', 'vol')).code).toBe(0);
    const w = await waiting;
    expect(w.code).toBe(0);
    expect(w.stdout).toBe(`Event number:      ${nr + 1}\n`);
    await c.server.stop();
  });
});
