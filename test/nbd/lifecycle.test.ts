// Server lifecycle and connection-level limits over real unix sockets: close() finishes in-flight
// requests before closing; a stalled handshake times out; connectionsMax refuses extra clients;
// a protocol violation on one connection leaves the others alone.

import { connect } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { NbdClient } from '../../src/nbd/client/client.js';
import { resolveLimits } from '../../src/nbd/server/limits.js';
import { be, bytes, W } from '../unit/nbd/wire.js';
import { type Harness, MiB, startHarness } from './harness.js';

let h: Harness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

function closedWithin(path: string, input: Buffer, ms: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ path });
    const t = setTimeout(() => {
      s.destroy();
      resolve(false);
    }, ms);
    s.on('error', () => undefined);
    s.on('data', () => undefined);
    s.on('close', () => {
      clearTimeout(t);
      resolve(true);
    });
    s.on('connect', () => s.write(input));
  });
}

describe('server lifecycle', () => {
  it('close() lets in-flight requests finish, then closes connections', async () => {
    h = await startHarness({ d: { sizeBytes: MiB, delayMs: 300 } }, { defaultExportName: 'd' });
    const c = await NbdClient.connect(h.uri());
    const inflight = [c.write(Buffer.alloc(4096, 1), 0, { fua: false }), c.read(Buffer.alloc(4096), 0)];
    await new Promise((r) => setTimeout(r, 50));
    await h.server.close();
    await expect(Promise.all(inflight)).resolves.toBeDefined();
    expect(h.server.stats().connections).toBe(0);
    await expect(c.read(Buffer.alloc(1), 0)).rejects.toMatchObject({ errno: 'EIO' });
    await c.close();
  });

  it('a handshake that stalls is cut after handshakeTimeoutMs', async () => {
    h = await startHarness({ d: { sizeBytes: MiB } }, { limits: { handshakeTimeoutMs: 200 } });
    expect(await closedWithin(h.socketPath, bytes(be(32, 3)), 2000)).toBe(true);
  });

  it('connectionsMax refuses extra clients, others keep working', async () => {
    h = await startHarness({ d: { sizeBytes: MiB } }, { defaultExportName: 'd', limits: { connectionsMax: 2 } });
    const a = await NbdClient.connect(h.uri());
    const b = await NbdClient.connect(h.uri());
    await expect(NbdClient.connect(h.uri())).rejects.toMatchObject({ errno: 'EIO' });
    await a.write(Buffer.from('x'), 0, { fua: false });
    await b.read(Buffer.alloc(1), 0);
    await Promise.all([a.close(), b.close()]);
  });

  it('a framing violation disconnects only that client', async () => {
    h = await startHarness({ d: { sizeBytes: MiB } }, { defaultExportName: 'd' });
    const good = await NbdClient.connect(h.uri());
    const GO = bytes(be(32, 3), W.option(7, bytes(be(32, 0), be(16, 0))));
    expect(await closedWithin(h.socketPath, bytes(GO, be(32, 0xbadbad), Buffer.alloc(24)), 2000)).toBe(true);
    await good.write(Buffer.from('still here'), 0, { fua: true });
    const back = Buffer.alloc(10);
    await good.read(back, 0);
    expect(back.toString()).toBe('still here');
    await good.close();
  });

  it('limits are validated', () => {
    expect(() => resolveLimits({ requestBytesMax: 0 })).toThrow(/requestBytesMax/);
    expect(() => resolveLimits({ writeBufferedBytesMax: 1024 })).toThrow(/writeBufferedBytesMax/);
    expect(() => resolveLimits({ optionBytesMax: 100 })).toThrow(/optionBytesMax/);
    expect(resolveLimits({}).requestBytesMax).toBe(32 * MiB);
  });
});
