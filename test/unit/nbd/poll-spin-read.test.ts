// The fast-io addon's spinRead (native/fast-io), what the idle poll spins with: on a non-blocking socket it
// returns -EAGAIN after about spinNs with nothing to read, the bytes when they come (also when they come
// during the spin, from another process), 0 at EOF, -errno for a bad fd, and throws a RangeError for a range
// outside the buffer. Required under CI.
import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, connect, type Server, type Socket } from 'node:net';
import { constants, tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, expect, it } from 'vitest';
import { fastIo } from '../../../src/nbd/server/fast-io.js';
import { IN_CI } from '../../helpers/tools.js';

const spinRead = fastIo()?.spinRead?.bind(fastIo());

let cleanup: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanup.reverse()) await c();
  cleanup = [];
});

/** A unix socket pair: the accepted end (not reading: we read its fd) and the client end. */
async function pair(): Promise<{ fd: number; client: Socket }> {
  const dir = await mkdtemp(join(tmpdir(), 'nbd-mirror-spin-'));
  const path = join(dir, 's.sock');
  let accepted!: Socket;
  const server: Server = createServer({ pauseOnConnect: true }, (s) => (accepted = s));
  await new Promise<void>((r) => server.listen(path, r));
  const client = connect(path);
  await new Promise<void>((r) => client.once('connect', () => r()));
  while (accepted === undefined) await new Promise((r) => setTimeout(r, 1));
  cleanup.push(async () => {
    client.destroy();
    accepted.destroy();
    await new Promise<void>((r) => server.close(() => r()));
    await rm(dir, { recursive: true, force: true });
  });
  const fd = (accepted as unknown as { _handle: { fd: number } })._handle.fd;
  return { fd, client };
}

it('spinRead is in the addon (required under CI)', () => {
  if (IN_CI) expect(spinRead).toBeDefined();
});

it.skipIf(spinRead === undefined)('nothing to read: -EAGAIN after about spinNs; bytes already there: at once', async () => {
  const { fd, client } = await pair();
  const buf = Buffer.alloc(64);
  const t0 = process.hrtime.bigint();
  expect(spinRead!(fd, buf, 0, 64, 2_000_000)).toBe(-constants.errno.EAGAIN);
  const ns = Number(process.hrtime.bigint() - t0);
  expect(ns).toBeGreaterThanOrEqual(2_000_000);
  expect(ns).toBeLessThan(1_000_000_000); // bounded (generous: a loaded machine)
  client.write('hello');
  await new Promise((r) => setTimeout(r, 20));
  expect(spinRead!(fd, buf, 10, 54, 0)).toBe(5);
  expect(buf.subarray(10, 15).toString()).toBe('hello');
  client.end();
  await new Promise((r) => setTimeout(r, 20));
  expect(spinRead!(fd, buf, 0, 64, 1_000_000)).toBe(0); // EOF
  expect(() => spinRead!(fd, buf, 60, 10, 0)).toThrow(RangeError);
  expect(spinRead!(-1, buf, 0, 64, 0)).toBe(-constants.errno.EBADF);
});

it.skipIf(spinRead === undefined)('bytes sent while it spins (by another process) end the spin', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'nbd-mirror-spin-'));
  const path = join(dir, 's.sock');
  let accepted: Socket | undefined;
  const server: Server = createServer({ pauseOnConnect: true }, (s) => (accepted = s));
  await new Promise<void>((r) => server.listen(path, r));
  // The client is another process: it connects, then writes 50 ms later, while this thread spins.
  const writer = spawn(process.execPath, ['-e', `const s = require('net').connect(${JSON.stringify(path)}); s.on('connect', () => setTimeout(() => s.end('late'), 50));`], { stdio: 'ignore' });
  cleanup.push(async () => {
    writer.kill();
    accepted?.destroy();
    await new Promise<void>((r) => server.close(() => r()));
    await rm(dir, { recursive: true, force: true });
  });
  while (accepted === undefined) await new Promise((r) => setTimeout(r, 1));
  const fd = (accepted as unknown as { _handle: { fd: number } })._handle.fd;
  const buf = Buffer.alloc(64);
  const t0 = process.hrtime.bigint();
  const n = spinRead!(fd, buf, 0, 64, 10_000_000_000); // up to 10 s
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  expect(n).toBe(4);
  expect(buf.subarray(0, 4).toString()).toBe('late');
  expect(ms).toBeLessThan(9000);
});
