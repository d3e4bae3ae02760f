// A mirror with one local leg and one remote leg served by nbdkit (memory plugin under its error filter).
// Writes reach both legs; when the filter starts failing writes (trigger file created while I/O runs),
// the remote leg is failed with dm's health letter D, a leg-failed event is logged, and — without
// handle_errors — the client's writes still succeed from the surviving leg, whose bytes are correct.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { readRange } from '../helpers/crash.js';
import { useTempDir } from '../helpers/e2e.js';
import { mirrorStatus, waitInSync } from '../helpers/mirror.js';
import { run } from '../helpers/run.js';
import { startServer } from '../helpers/server.js';
import { mirrorTable } from '../helpers/tables.js';
import { createSparseFile, MiB } from '../helpers/tmp.js';
import { requireTools } from '../helpers/tools.js';

const ok = requireTools('nbdkit', 'nbdinfo', 'qemu-io');
const dir = useTempDir('remote-leg');
const SIZE = 32 * MiB;
const NBDKIT_READY_MS = 10_000;

let nbdkit: ChildProcess | undefined;
afterAll(async () => {
  if (nbdkit !== undefined && nbdkit.exitCode === null) {
    const gone = new Promise((r) => nbdkit!.once('exit', r));
    nbdkit.kill('SIGTERM');
    await gone;
  }
});

async function startNbdkit(socket: string, pidFile: string, trigger: string): Promise<void> {
  nbdkit = spawn(
    'nbdkit',
    ['-f', '-U', socket, '-P', pidFile, '--filter=error', 'memory', `${SIZE}`, 'error-pwrite=EIO', 'error-pwrite-rate=100%', `error-pwrite-file=${trigger}`],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  const deadline = Date.now() + NBDKIT_READY_MS;
  while (!(existsSync(pidFile) && existsSync(socket))) {
    if (nbdkit.exitCode !== null || Date.now() > deadline) throw new Error('nbdkit did not start');
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe.skipIf(!ok)('mirror with a remote leg that starts failing writes', () => {
  it('fails the remote leg (D), keeps serving from the local leg', async () => {
    const remoteSock = join(dir(), 'nbdkit.sock');
    const trigger = join(dir(), 'fail-writes');
    await startNbdkit(remoteSock, join(dir(), 'nbdkit.pid'), trigger);
    const local = await createSparseFile(join(dir(), 'local.img'), SIZE);
    const remote = `nbd+unix:///?socket=${remoteSock}`;
    const table = mirrorTable({ legs: [local, remote], sizeBytes: SIZE, regionSectors: 1024 });
    const server = await startServer({ dir: dir(), tables: [{ table }] });
    expect((await waitInSync(server)).health).toBe('AA');

    const io = (cmd: string) => run('qemu-io', ['-f', 'raw', '-c', cmd, server.uri()]);
    await io('write -P 0x11 0 1M');
    // The remote leg really holds the data: read it from nbdkit directly.
    await run('qemu-io', ['-f', 'raw', '-c', 'read -P 0x11 0 1M', remote]);

    await writeFile(trigger, '');
    await io('write -P 0x22 4M 1M'); // acknowledged: the local leg took it (no handle_errors)
    const status = await mirrorStatus(server);
    expect(status.health).toBe('AD');
    await io('read -P 0x22 4M 1M');
    await io('read -P 0x11 0 1M');
    await server.stop();

    expect((await readRange(local, 4 * MiB, MiB)).every((b) => b === 0x22)).toBe(true);
    const events = server
      .output()
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as { event?: string; legIndex?: number });
    expect(events.some((e) => e.event === 'leg-failed' && e.legIndex === 1)).toBe(true);
  });
});
