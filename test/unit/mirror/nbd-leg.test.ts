// NbdLeg against a real server (nbdkit's memory plugin) through the real NbdClient: the table offset,
// errors from nbdkit's error filter arriving as ExportError with their errno, and connection loss
// (nbdkit killed while reads wait in its delay filter) rejecting every pending operation with EIO.
import { afterEach, describe, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { NbdClient } from '../../../src/nbd/client/client.js';
import { ExportError } from '../../../src/nbd/export.js';
import { NbdLeg } from '../../../src/mirror/legs/nbd.js';
import { LegOpenError } from '../../../src/mirror/legs/errors.js';
import { openTable } from '../../../src/mirror/open.js';
import { parseTable } from '../../../src/mirror/table.js';
import { makeTempDir, removeTempDir } from '../../helpers/tmp.js';
import { requireTool } from '../../helpers/tools.js';

const haveNbdkit = requireTool('nbdkit');

interface Nbdkit {
  proc: ChildProcess;
  uri: string;
}

const started: ChildProcess[] = [];
const dirs: string[] = [];

afterEach(async () => {
  for (const p of started.splice(0)) {
    if (p.exitCode === null && p.signalCode === null) {
      const exited = new Promise((res) => p.once('exit', res));
      p.kill('SIGTERM');
      await exited;
    }
  }
  for (const d of dirs.splice(0)) await removeTempDir(d);
});

/** Start nbdkit on a unix socket; ready once its pid file exists (nbdkit writes it after listening). */
async function startNbdkit(args: string[]): Promise<Nbdkit> {
  const dir = await makeTempDir('nbd-mirror-nbdleg-');
  dirs.push(dir);
  const sock = join(dir, 'nbdkit.sock');
  const pidFile = join(dir, 'nbdkit.pid');
  const proc = spawn('nbdkit', ['-f', '--exit-with-parent', '-U', sock, '-P', pidFile, ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
  started.push(proc);
  let stderr = '';
  proc.stderr?.on('data', (c: Buffer) => (stderr += c.toString()));
  for (let i = 0; i < 200 && !existsSync(pidFile); i++) {
    if (proc.exitCode !== null) throw new Error(`nbdkit exited ${proc.exitCode}: ${stderr}`);
    await new Promise((r) => setTimeout(r, 25));
  }
  if (!existsSync(pidFile)) throw new Error(`nbdkit not ready after 5 s: ${stderr}`);
  return { proc, uri: `nbd+unix:///?socket=${sock}` };
}

function pattern(length: number, seed: number): Buffer {
  const b = Buffer.alloc(length);
  for (let i = 0; i < length; i++) b[i] = (i * 13 + seed) & 0xff;
  return b;
}

describe.skipIf(!haveNbdkit)('NbdLeg over nbdkit', () => {
  it('reads and writes at the table offset; zero, trim and flush reach the server', async () => {
    const srv = await startNbdkit(['memory', '4M']);
    const leg = await NbdLeg.open(srv.uri, { offsetBytes: 65536 });
    const check = await NbdClient.connect(srv.uri);
    try {
      expect(leg.device).toBe(srv.uri);
      expect(leg.deviceBytes).toBe(4 * 1024 * 1024);
      expect(leg.sizeBytes).toBe(4 * 1024 * 1024 - 65536);
      await leg.write(pattern(8192, 1), 1000, { fua: true });
      const back = Buffer.alloc(8192);
      await leg.read(back, 1000);
      expect(back.equals(pattern(8192, 1))).toBe(true);
      const raw = Buffer.alloc(8192);
      await check.read(raw, 65536 + 1000);
      expect(raw.equals(pattern(8192, 1))).toBe(true);
      await leg.zero(1000, 100, { mayTrim: false });
      await leg.trim(5000, 4096); // advisory: must just succeed
      await leg.flush();
      await check.read(raw, 65536 + 1000);
      expect(raw.subarray(0, 100).every((b) => b === 0)).toBe(true);
      expect(raw.subarray(100, 4000).equals(pattern(8192, 1).subarray(100, 4000))).toBe(true);
    } finally {
      await check.close();
      await leg.close();
    }
  });

  it("nbdkit's error filter: the errno arrives as an ExportError naming the URI", async () => {
    const srv = await startNbdkit(['--filter=error', 'memory', '1M', 'error-pwrite=ENOSPC', 'error-pwrite-rate=100%']);
    const leg = await NbdLeg.open(srv.uri, { offsetBytes: 0 });
    try {
      const err = await leg.write(Buffer.alloc(512), 0, { fua: false }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(ExportError);
      expect((err as ExportError).errno).toBe('ENOSPC');
      expect((err as ExportError).message).toContain(srv.uri);
      await leg.read(Buffer.alloc(512), 0); // reads are unaffected
    } finally {
      await leg.close();
    }
  });

  it('connection loss rejects every pending operation with EIO', async () => {
    const srv = await startNbdkit(['--filter=delay', 'memory', '1M', 'delay-read=10']);
    const leg = await NbdLeg.open(srv.uri, { offsetBytes: 4096 });
    const pending = Array.from({ length: 4 }, (_, i) =>
      leg.read(Buffer.alloc(512), i * 512).then(
        () => 'ok',
        (e: unknown) => e,
      ),
    );
    await new Promise((r) => setTimeout(r, 200)); // requests are sitting in the delay filter
    const exited = new Promise((res) => srv.proc.once('exit', res));
    srv.proc.kill('SIGKILL');
    await exited;
    const results = await Promise.all(pending);
    for (const r of results) {
      expect(r).toBeInstanceOf(ExportError);
      expect((r as ExportError).errno).toBe('EIO');
    }
    // and later operations fail too, promptly
    await expect(leg.write(Buffer.alloc(1), 0, { fua: false })).rejects.toMatchObject({ errno: 'EIO' });
    await leg.close().catch(() => {});
  });

  it('openTable opens NBD URIs as NbdLeg; a dead URI is a LegOpenError naming it', async () => {
    const srv = await startNbdkit(['memory', '1M']);
    const exp = await openTable(parseTable(`0 1024 linear ${srv.uri} 1024`));
    try {
      expect(exp.capabilities().sizeBytes).toBe(512 * 1024);
      await exp.write(pattern(4096, 9), 0, { fua: false });
      const b = Buffer.alloc(4096);
      await exp.read(b, 0);
      expect(b.equals(pattern(4096, 9))).toBe(true);
    } finally {
      await exp.close();
    }
    const tooBig = await openTable(parseTable(`0 2048 linear ${srv.uri} 1`)).catch((e: unknown) => e);
    expect(tooBig).toBeInstanceOf(LegOpenError);
    expect((tooBig as Error).message).toContain(`leg device '${srv.uri}' is too small`);
    const dead = 'nbd+unix:///?socket=/nonexistent/nbd.sock';
    const err = await openTable(parseTable(`0 8 linear ${dead} 0`)).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(LegOpenError);
    expect((err as Error).message).toContain(`cannot connect to leg '${dead}'`);
  });
});
