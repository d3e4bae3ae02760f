// The idle poll (src/nbd/server/idle-poll.ts) against real clients in other processes (a client in this
// process could not send while the server spins): an in-process NbdServer whose export answers at once
// (SETTLED_OK, as page-cached legs do), with a 1 ms window so the spin catches requests even on a loaded
// machine (and the CPU contention check is forced off). The addon's spinRead is wrapped (setFastIoForTests)
// to count what the spin saw.
//  - fio QD1 write+verify and qemu-io pattern writes/reads: every byte right, and the spin caught requests;
//  - a client that sends its next request and EOF right after a reply: the request is answered, the
//    connection ends cleanly, the server serves the next client; the spin saw the EOF;
//  - a read error met by the spin destroys that connection only;
//  - an idle connection stops spinning: the server's process CPU stays low over a second of idle, and the
//    next request (long after) sets the window to 0 and is not followed by a spin;
//  - pollMaxUs 0: no spin at all, same bytes;
//  - other tasks wanting every CPU (forced): no spin, same bytes.
import { spawn } from 'node:child_process';
import { constants } from 'node:os';
import { afterEach, describe, expect, it } from 'vitest';
import { SETTLED_OK } from '../../src/nbd/export.js';
import { setCpuContentionForTests } from '../../src/nbd/server/cpu-contention.js';
import { type FastIo, fastIo, setFastIoForTests } from '../../src/nbd/server/fast-io.js';
import type { ServerLimits } from '../../src/nbd/server/limits.js';
import { runFioVerify } from '../helpers/fio.js';
import { run } from '../helpers/run.js';
import { IN_CI, requireTools } from '../helpers/tools.js';
import { type Harness, MiB, startHarness } from './harness.js';

const ok = requireTools('fio', 'qemu-io', 'python3');
const real = fastIo();
const canSpin = real?.spinRead !== undefined;

it('the fast-io addon has spinRead (required under CI)', () => {
  if (IN_CI) expect(canSpin).toBe(true);
});

/** What the wrapped spinRead returned, by kind. */
interface SpinLog {
  calls: number;
  caught: number;
  eof: number;
  timedOut: number;
  /** Return this (a -errno) from the next call instead of reading. */
  failNext: number;
}

let h: Harness | undefined;
afterEach(async () => {
  setFastIoForTests(undefined);
  setCpuContentionForTests(null);
  await h?.close();
  h = undefined;
});

async function start(limits: Partial<ServerLimits>, log: SpinLog): Promise<Harness> {
  const io = real!;
  const wrapped: FastIo = {
    read: io.read.bind(io),
    write: io.write.bind(io),
    spinRead: (fd, buf, offset, length, spinNs) => {
      log.calls++;
      if (log.failNext !== 0) {
        const e = log.failNext;
        log.failNext = 0;
        return e;
      }
      const n = io.spinRead!(fd, buf, offset, length, spinNs);
      if (n > 0) log.caught++;
      else if (n === 0) log.eof++;
      else log.timedOut++;
      return n;
    },
  };
  setFastIoForTests(wrapped);
  setCpuContentionForTests(false); // spin even on a busy machine (CI): what is tested here is the spin
  const harness = await startHarness({ disk: { sizeBytes: 16 * MiB } }, { limits });
  // Answer at once, as the mirror does for page-cached legs (MemoryExport applies the call synchronously).
  const disk = harness.exports.get('disk')!;
  const read = disk.read.bind(disk);
  const write = disk.write.bind(disk);
  disk.read = (target, off) => {
    void read(target, off);
    return SETTLED_OK;
  };
  disk.write = (data, off, flags) => {
    void write(data, off, flags);
    return SETTLED_OK;
  };
  return harness;
}

const newLog = (): SpinLog => ({ calls: 0, caught: 0, eof: 0, timedOut: 0, failNext: 0 });
const polledReads = (x: Harness): number => x.server.stats().transmissions.reduce((n, t) => n + t.polledReads, 0); // live connections

/**
 * A minimal NBD client in python (another process): old-style NBD_OPT_EXPORT_NAME, then `script` lines run
 * against socket s with helpers req(type, cookie, off, len, payload) and reply(n).
 */
async function python(socketPath: string, script: string): Promise<string> {
  const prog = `
import socket, struct, sys, time
def recvn(s, n):
    b = b''
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            raise EOFError('server closed after %d of %d bytes' % (len(b), n))
        b += c
    return b
def connect():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(${JSON.stringify(socketPath)})
    recvn(s, 18)
    s.sendall(struct.pack('>I', 3))
    s.sendall(b'IHAVEOPT' + struct.pack('>II', 1, 4) + b'disk')
    recvn(s, 10)
    return s
def req(s, typ, cookie, off, length, payload=b''):
    s.sendall(struct.pack('>IHHQQI', 0x25609513, 0, typ, cookie, off, length) + payload)
def reply(s, n):
    r = recvn(s, 16 + n)
    magic, err, cookie = struct.unpack('>IIQ', r[:16])
    assert magic == 0x67446698 and err == 0, (magic, err)
    return cookie, r[16:]
${script}
`;
  const r = await run('python3', ['-c', prog], { timeoutMs: 60_000 });
  return r.stdout;
}

describe.skipIf(!ok || !canSpin)('idle poll', () => {
  it('QD1 fio write+verify and qemu-io patterns: every byte right, and the spin caught requests', async () => {
    const log = newLog();
    h = await start({ pollMaxUs: 1000 }, log);
    const fio = await runFioVerify({ uri: h.uri('disk'), dir: h.dir, numJobs: 1, sliceBytes: 2 * MiB, iodepth: 1, bs: '4k' });
    expect(fio.errors).toBe(0);
    expect(fio.readBytes).toBe(2 * MiB);
    const cmds: string[] = [];
    for (let i = 0; i < 64; i++) cmds.push('-c', `write -P ${i + 1} ${8 * MiB + i * 4096} 4k`);
    for (let i = 0; i < 64; i++) cmds.push('-c', `read -P ${i + 1} ${8 * MiB + i * 4096} 4k`);
    const q = await run('qemu-io', ['-f', 'raw', ...cmds, h.uri('disk')]);
    expect(q.stdout).not.toMatch(/Pattern verification failed|error|failed/i);
    expect(q.stdout.match(/^read 4096\/4096/gm)?.length).toBe(64);
    expect(log.caught).toBeGreaterThan(0);
  });

  it('the next request and EOF right after a reply: answered, then a clean end; the spin saw the EOF', async () => {
    const log = newLog();
    h = await start({ pollMaxUs: 1000 }, log);
    const out = await python(
      h.socketPath,
      `
for i in range(40):
    s = connect()
    for k in range(20):  # short gaps: the window grows (it starts at 0 on each connection)
        req(s, 0, 100 + k, 0, 4096)
        reply(s, 4096)
    req(s, 1, 1, i * 4096, 4096, bytes([i + 1]) * 4096)  # WRITE
    reply(s, 0)
    req(s, 0, 2, i * 4096, 4096)  # READ right after the reply: the server may be spinning
    cookie, data = reply(s, 4096)
    assert cookie == 2 and data == bytes([i + 1]) * 4096, i
    s.shutdown(socket.SHUT_WR)  # EOF right after a reply
    assert s.recv(1) == b'', 'the server ends the connection'
    s.close()
print('ok')
`,
    );
    expect(out.trim()).toBe('ok');
    const deadline = Date.now() + 5000;
    while (h.server.stats().connections > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    expect(h.server.stats().connections).toBe(0);
    expect(log.caught).toBeGreaterThan(0);
    expect(log.eof).toBeGreaterThan(0);
  });

  it('a read error met by the spin ends that connection only', async () => {
    const log = newLog();
    h = await start({ pollMaxUs: 1000 }, log);
    log.failNext = -constants.errno.ECONNRESET;
    const out = await python(
      h.socketPath,
      `
s = connect()
try:
    for k in range(200):  # the window grows; the first spin meets the (injected) error: connection dropped
        req(s, 0, k, 0, 4096)
        reply(s, 4096)
    print('still open')
except (EOFError, BrokenPipeError, ConnectionResetError):
    print('closed')
t = connect()
req(t, 0, 3, 0, 4096)
print(reply(t, 4096)[0])
`,
    );
    expect(out.trim().split('\n')).toEqual(['closed', '3']);
    expect(log.failNext).toBe(0);
  });

  it('an idle connection stops spinning: low CPU over an idle second; the next request resets the window', async () => {
    const log = newLog();
    h = await start({ pollMaxUs: 1000 }, log);
    const harness = h;
    const child = spawn(
      'python3',
      [
        '-c',
        `
import socket, struct, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(${JSON.stringify(h.socketPath)})
def recvn(n):
    b = b''
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c: sys.exit(1)
        b += c
    return b
recvn(18); s.sendall(struct.pack('>I', 3)); s.sendall(b'IHAVEOPT' + struct.pack('>II', 1, 4) + b'disk'); recvn(10)
def burst(n):
    for i in range(n):
        s.sendall(struct.pack('>IHHQQI', 0x25609513, 0, 0, i, i * 4096, 4096)); recvn(16 + 4096)
burst(200)
print('idle', flush=True)
sys.stdin.readline()
burst(1)
print('one', flush=True)
sys.stdin.readline()
`,
      ],
      { stdio: ['pipe', 'pipe', 'inherit'] },
    );
    try {
      const lines: string[] = [];
      let waiters: (() => void)[] = [];
      child.stdout.on('data', (d: Buffer) => {
        lines.push(...d.toString().trim().split('\n'));
        for (const w of waiters) w();
        waiters = [];
      });
      const waitFor = async (word: string): Promise<void> => {
        while (!lines.includes(word)) await new Promise<void>((r) => waiters.push(r));
      };
      await waitFor('idle');
      expect(log.caught).toBeGreaterThan(0);
      await new Promise((r) => setTimeout(r, 20)); // the last reply's spin (at most 1 ms) is over
      const calls = log.calls;
      const cpu = process.cpuUsage();
      await new Promise((r) => setTimeout(r, 1000));
      const used = process.cpuUsage(cpu);
      // Spinning through the idle second would cost ~1 s of CPU; idle, this process uses a few ms.
      expect((used.user + used.system) / 1e6).toBeLessThan(0.3);
      expect(log.calls).toBe(calls);
      child.stdin.write('\n');
      await waitFor('one');
      // The request after the idle second came later than the max: the window is 0, nothing spun.
      expect(harness.server.stats().transmissions[0]!.pollWindowNs).toBe(0);
      expect(log.calls).toBe(calls);
      child.stdin.write('\n');
    } finally {
      child.kill();
    }
  });

  it('CPUs wanted by other tasks: no spin, same bytes', async () => {
    const log = newLog();
    h = await start({ pollMaxUs: 1000 }, log);
    setCpuContentionForTests(true);
    const fio = await runFioVerify({ uri: h.uri('disk'), dir: h.dir, numJobs: 1, sliceBytes: 1 * MiB, iodepth: 1, bs: '4k' });
    expect(fio.errors).toBe(0);
    expect(fio.readBytes).toBe(1 * MiB);
    expect(log.calls).toBe(0);
  });

  it('pollMaxUs 0: no spin, same bytes', async () => {
    const log = newLog();
    h = await start({ pollMaxUs: 0 }, log);
    const fio = await runFioVerify({ uri: h.uri('disk'), dir: h.dir, numJobs: 1, sliceBytes: 1 * MiB, iodepth: 1, bs: '4k' });
    expect(fio.errors).toBe(0);
    expect(fio.readBytes).toBe(1 * MiB);
    expect(log.calls).toBe(0);
    expect(polledReads(h)).toBe(0);
  });
});
