// Our NbdClient against nbdkit, the reference server: every command, block status, and errors
// injected by nbdkit's error filter come back as ExportError with the right errno.

import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NbdClient } from '../../src/nbd/client/client.js';
import * as C from '../../src/nbd/codec/constants.js';
import { ExportError, EXTENT_HOLE, EXTENT_ZERO } from '../../src/nbd/export.js';
import { requireTools } from '../helpers/tools.js';
import { MiB, pattern } from './harness.js';

const ok = requireTools('nbdkit');

async function startNbdkit(dir: string, name: string, args: string[]): Promise<{ sock: string; proc: ChildProcess }> {
  const sock = join(dir, `${name}.sock`);
  const pidFile = join(dir, `${name}.pid`);
  const proc = spawn('nbdkit', ['-f', '-U', sock, '-P', pidFile, ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
  for (let i = 0; i < 100 && !existsSync(pidFile); i++) await new Promise((r) => setTimeout(r, 50));
  if (!existsSync(pidFile)) throw new Error(`nbdkit ${args.join(' ')} did not start`);
  return { sock, proc };
}

async function stop(proc: ChildProcess): Promise<void> {
  if (proc.exitCode !== null) return;
  const exited = new Promise<void>((r) => proc.once('exit', () => r()));
  proc.kill('SIGTERM');
  const t = setTimeout(() => proc.kill('SIGKILL'), 5000);
  await exited;
  clearTimeout(t);
}

describe.skipIf(!ok)('NbdClient against nbdkit', () => {
  let dir: string;
  const procs: ChildProcess[] = [];
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'nbd-client-kit-'));
  });
  afterAll(async () => {
    await Promise.all(procs.map(stop));
    await rm(dir, { recursive: true, force: true });
  });

  it('reads, writes, zeroes, trims, flushes and reports extents against nbdkit memory', async () => {
    const { sock, proc } = await startNbdkit(dir, 'mem', ['memory', '64M']);
    procs.push(proc);
    const c = await NbdClient.connect(`nbd+unix:///?socket=${sock}`);
    expect(c.sizeBytes).toBe(64 * MiB);
    expect(c.negotiated.structuredReplies).toBe(true);
    expect(c.negotiated.baseAllocationContextId).not.toBeNull();
    const data = pattern(3 * MiB + 5, 9);
    await c.write(data, MiB, { fua: true });
    const back = Buffer.alloc(data.length);
    await c.read(back, MiB);
    expect(back.equals(data)).toBe(true);
    await Promise.all(Array.from({ length: 64 }, (_, i) => c.write(pattern(4096, i), 32 * MiB + i * 8192, { fua: false })));
    const bufs = await Promise.all(
      Array.from({ length: 64 }, async (_, i) => {
        const b = Buffer.alloc(4096);
        await c.read(b, 32 * MiB + i * 8192);
        return b;
      }),
    );
    bufs.forEach((b, i) => expect(b.equals(pattern(4096, i))).toBe(true));
    await c.flush();
    await c.zero(MiB, 4096, { fua: false, mayTrim: true });
    const z = Buffer.alloc(4096, 1);
    await c.read(z, MiB);
    expect(z.equals(Buffer.alloc(4096))).toBe(true);
    const ext = await c.blockStatus(48 * MiB, MiB);
    expect(ext[0]!.flags & (EXTENT_HOLE | EXTENT_ZERO)).toBe(EXTENT_HOLE | EXTENT_ZERO);
    const ext2 = await c.blockStatus(2 * MiB, 4096);
    expect(ext2[0]!.flags & EXTENT_HOLE).toBe(0);
    await c.trim(2 * MiB, MiB, { fua: false });
    await expect(c.read(Buffer.alloc(10), 64 * MiB - 5)).rejects.toMatchObject({ errno: 'EINVAL' });
    await c.close();
  });

  it('errors injected by nbdkit error filter come back as ExportError with that errno', async () => {
    const { sock, proc } = await startNbdkit(dir, 'err', ['--filter=error', 'memory', '1M', 'error=ENOSPC', 'error-pwrite-rate=1', 'error-pread=EIO', 'error-pread-rate=1']);
    procs.push(proc);
    const c = await NbdClient.connect(`nbd+unix:///?socket=${sock}`);
    const w = await c.write(Buffer.alloc(512), 0, { fua: false }).catch((e: unknown) => e);
    expect(w).toBeInstanceOf(ExportError);
    expect((w as ExportError).errno).toBe('ENOSPC');
    await expect(c.read(Buffer.alloc(512), 0)).rejects.toMatchObject({ errno: 'EIO' });
    await c.close();
  });

  it('falls back sensibly against a server without structured replies (nbdkit --no-sr)', async () => {
    const file = join(dir, 'f.img');
    await writeFile(file, pattern(MiB, 5));
    const { sock, proc } = await startNbdkit(dir, 'nosr', ['--no-sr', 'file', file]);
    procs.push(proc);
    const c = await NbdClient.connect(`nbd+unix:///?socket=${sock}`);
    expect(c.negotiated.structuredReplies).toBe(false);
    expect(c.transmissionFlags & C.NBD_FLAG_SEND_DF).toBe(0);
    const b = Buffer.alloc(MiB);
    await c.read(b, 0);
    expect(b.equals(pattern(MiB, 5))).toBe(true);
    expect(await c.blockStatus(0, 4096)).toEqual([{ lengthBytes: 4096, flags: 0 }]);
    await c.close();
  });

  it('a server crash rejects in-flight requests with EIO; a graceful shutdown with ESHUTDOWN or EIO', async () => {
    for (const signal of ['SIGKILL', 'SIGTERM'] as const) {
      const { sock, proc } = await startNbdkit(dir, `slow-${signal}`, ['--filter=delay', 'memory', '1M', 'rdelay=2']);
      const c = await NbdClient.connect(`nbd+unix:///?socket=${sock}`);
      const reads = Array.from({ length: 4 }, () => c.read(Buffer.alloc(512), 0).then(() => null, (e: unknown) => e));
      await new Promise((r) => setTimeout(r, 100));
      const exited = new Promise((r) => proc.once('exit', r));
      proc.kill(signal);
      await exited;
      for (const e of await Promise.all(reads)) {
        expect(e).toBeInstanceOf(ExportError);
        expect(signal === 'SIGKILL' ? ['EIO'] : ['EIO', 'ESHUTDOWN']).toContain((e as ExportError).errno);
      }
      await expect(c.read(Buffer.alloc(1), 0)).rejects.toBeInstanceOf(ExportError);
      await c.close();
    }
  });
});
