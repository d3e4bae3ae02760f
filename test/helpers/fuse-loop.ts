// A kernel block device for an NBD export without the nbd module: nbdfuse exposes the export as a file,
// losetup makes it a loop device. Everything attached is remembered so that detachAll() undoes it in
// reverse order (umount, losetup -d, fusermount3 -u) even after a failed test. Every cleanup step is
// bounded: a stuck device fails the test instead of hanging it.
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { run } from './run.js';

const NBDFUSE_READY_MS = 10_000;
const CLEANUP_STEP_MS = 15_000;
/** A detached loop device lets go of the FUSE file a moment later on a busy machine. */
const FUSE_UNMOUNT_TRIES = 25;
const FUSE_UNMOUNT_RETRY_MS = 200;
const NBDFUSE_EXIT_MS = 5000;

const quietly = (cmd: string, args: string[]) =>
  run(cmd, args, { allowFailure: true, timeoutMs: CLEANUP_STEP_MS }).catch(() => ({ code: -1, stdout: '', stderr: '' }));

export class FuseLoops {
  private readonly mounted: string[] = [];
  private readonly loops: string[] = [];
  private readonly fuses: { mountpoint: string; child: ChildProcess }[] = [];

  /** nbdfuse URI at `where`, then a loop device over its file; returns the loop device path. */
  async attach(uri: string, where: string): Promise<string> {
    await mkdir(where, { recursive: true });
    const child = spawn('nbdfuse', [where, uri], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr!.on('data', (c) => (stderr += c));
    this.fuses.push({ mountpoint: where, child });
    const file = join(where, 'nbd');
    const deadline = Date.now() + NBDFUSE_READY_MS;
    while (!existsSync(file)) {
      if (child.exitCode !== null || Date.now() > deadline) throw new Error(`nbdfuse did not expose ${file}: ${stderr}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    const loop = (await run('losetup', ['-f', '--show', file])).stdout.trim();
    this.loops.push(loop);
    return loop;
  }

  async mount(device: string, where: string, opts: string[] = [], timeoutMs = 30_000): Promise<void> {
    await mkdir(where, { recursive: true });
    await run('mount', [...opts, device, where], { timeoutMs });
    this.mounted.push(where);
  }

  /** Unmounts the most recent mount (errors are the test's). */
  async umount(timeoutMs = 30_000): Promise<void> {
    await run('umount', [this.mounted.pop()!], { timeoutMs });
  }

  async detachAll(): Promise<void> {
    while (this.mounted.length > 0) await quietly('umount', [this.mounted.pop()!]);
    while (this.loops.length > 0) await quietly('losetup', ['-d', this.loops.pop()!]);
    while (this.fuses.length > 0) {
      const f = this.fuses.pop()!;
      let unmounted = false;
      for (let i = 0; i < FUSE_UNMOUNT_TRIES && !unmounted; i++) {
        unmounted = (await quietly('fusermount3', ['-u', f.mountpoint])).code === 0;
        if (!unmounted) await new Promise((r) => setTimeout(r, FUSE_UNMOUNT_RETRY_MS));
      }
      // Lazily, so no stale FUSE mount is left to block removing the temp dir.
      if (!unmounted) await quietly('fusermount3', ['-u', '-z', f.mountpoint]);
      if (f.child.exitCode === null) {
        const exited = new Promise((r) => f.child.once('exit', r));
        const timer = setTimeout(() => f.child.kill('SIGKILL'), NBDFUSE_EXIT_MS);
        await exited;
        clearTimeout(timer);
      }
    }
  }
}

/** sha256 of each named file under root. */
export async function checksums(root: string, names: string[]): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const n of names) out[n] = createHash('sha256').update(await readFile(join(root, n))).digest('hex');
  return out;
}
