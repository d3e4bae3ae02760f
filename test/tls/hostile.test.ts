// Hostile clients against a TLS-requiring server: 1000 idle handshakes, slowloris option bytes,
// oversized options, replayed STARTTLS, too many connections from one address. Each hits a named limit
// with a log line; the server stays up, keeps serving an honest TLS client, and memory stays bounded.
import { connect, type Socket } from 'node:net';
import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as C from '../../src/nbd/codec/constants.js';
import { NbdClient } from '../../src/nbd/client/client.js';
import { requireTools } from '../helpers/tools.js';
import { MiB, startTlsHarness, type TlsHarness } from './harness.js';
import { pskOf, RawClient } from './raw-client.js';

const ok = requireTools('certtool', 'psktool');
const IDLE_CONNECTIONS = 1000;
const HANDSHAKE_TIMEOUT_MS = 3000;

function openUnix(path: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = connect({ path });
    s.once('connect', () => resolve(s));
    s.once('error', reject);
  });
}

function openTcp(port: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = connect({ host: '127.0.0.1', port });
    s.once('connect', () => resolve(s));
    s.once('error', reject);
  });
}

describe.skipIf(!ok)('hostile clients', () => {
  let h: TlsHarness;
  const honest = async (): Promise<void> => {
    const c = await NbdClient.connect(`nbds+unix://alice@/disk?socket=${h.socketPath}&tls-psk-file=${h.fx.pskFile}`, { connectTimeoutMs: 10_000 });
    const buf = Buffer.alloc(65536, 0x5a);
    await c.write(buf, 0, { fua: false });
    const back = Buffer.alloc(65536);
    await c.read(back, 0);
    expect(back.equals(buf)).toBe(true);
    await c.close();
  };
  beforeAll(async () => {
    h = await startTlsHarness(
      { disk: { sizeBytes: 4 * MiB } },
      {
        tls: (fx) => ({ mode: 'require', pskFile: fx.pskFile, verifyPeer: false }),
        tcp: true,
        // all unix clients here share one uid (one peer when the SO_PEERCRED addon is built)
        limits: { handshakeTimeoutMs: HANDSHAKE_TIMEOUT_MS, connectionsMax: IDLE_CONNECTIONS + 50, connectionsPerPeerMax: IDLE_CONNECTIONS + 50, optionBytesMax: 8192 },
      },
    );
  });
  afterAll(async () => h?.close());

  it(`${IDLE_CONNECTIONS} idle handshakes: an honest client is served meanwhile, all are cut at the handshake timeout, memory bounded`, async () => {
    global.gc?.();
    const rssBefore = process.memoryUsage().rss;
    const sockets: Socket[] = [];
    for (let i = 0; i < IDLE_CONNECTIONS; i++) {
      const s = await openUnix(h.socketPath);
      s.on('error', () => undefined);
      s.resume(); // read (and drop) the greeting, so the server's close is seen
      sockets.push(s);
    }
    const closed = sockets.map((s) => new Promise<void>((r) => s.once('close', () => r())));
    expect(h.server.stats().connections).toBeGreaterThanOrEqual(IDLE_CONNECTIONS - 5);
    await honest();
    const rssGrowthBytes = process.memoryUsage().rss - rssBefore;
    // Both ends live in this process: 2000 sockets, each side a few KiB. Far below one buffer per option.
    expect(rssGrowthBytes).toBeLessThan(150 * MiB);
    await Promise.all(closed);
    expect(h.log.find(/handshake timed out/).length).toBeGreaterThanOrEqual(IDLE_CONNECTIONS);
    for (let i = 0; i < 100 && h.server.stats().connections > 0; i++) await new Promise((r) => setTimeout(r, 20));
    expect(h.server.stats().connections).toBe(0);
    await honest();
  });

  it('slowloris: an option trickled a byte at a time is cut at the handshake timeout', async () => {
    const c = await RawClient.open(h.socketPath);
    const header = Buffer.alloc(16);
    header.write('IHAVEOPT', 0, 'latin1');
    header.writeUInt32BE(C.NBD_OPT_STARTTLS, 8);
    header.writeUInt32BE(4000, 12);
    let sent = 0;
    const timer = setInterval(() => {
      if (sent < header.length) c.plain.write(header.subarray(sent, ++sent));
      else c.plain.write(Buffer.from([0]));
    }, 50);
    const t0 = Date.now();
    await c.closed;
    clearInterval(timer);
    expect(Date.now() - t0).toBeLessThan(HANDSHAKE_TIMEOUT_MS + 2000);
    await honest();
  });

  it('an option longer than optionBytesMax disconnects before its data is read, naming the limit', async () => {
    const c = await RawClient.open(h.socketPath);
    const header = Buffer.alloc(16);
    header.write('IHAVEOPT', 0, 'latin1');
    header.writeUInt32BE(C.NBD_OPT_GO, 8);
    header.writeUInt32BE(0x7fffffff, 12);
    c.plain.write(header);
    await c.closed;
    expect(h.log.find(/exceeds optionBytesMax/).length).toBe(1);
    await honest();
  });

  it('replayed STARTTLS after the upgrade: INVALID each time, then the options limit disconnects', async () => {
    const alice = pskOf(h.fx.pskFile, 'alice', readFileSync(h.fx.pskFile, 'utf8'));
    const c = await RawClient.open(h.socketPath);
    expect((await c.option(C.NBD_OPT_STARTTLS)).type).toBe(C.NBD_REP_ACK);
    await c.upgrade({ psk: alice });
    let invalid = 0;
    try {
      for (let i = 0; i < 300; i++) {
        const r = await c.option(C.NBD_OPT_STARTTLS);
        expect(r.type).toBe(C.NBD_REP_ERR_INVALID);
        invalid++;
      }
    } catch {
      // the server hung up: the options limit
    }
    expect(invalid).toBe(256 - 1);
    await c.closed;
    expect(h.log.find(/more than 256 options/).length).toBe(1);
    await honest();
  });

  it('connections per peer: the 21st from 127.0.0.1 is refused with a log line; other peers are unaffected', async () => {
    const p = await startTlsHarness({ disk: { sizeBytes: 1 * MiB } }, { tls: () => h.tls!.settings, fixtures: h.fx, tcp: true, limits: { connectionsPerPeerMax: 20 } });
    const sockets: Socket[] = [];
    for (let i = 0; i < 30; i++) {
      const s = await openTcp(p.port);
      s.on('error', () => undefined);
      sockets.push(s);
    }
    await new Promise((r) => setTimeout(r, 200));
    const refusedLines = p.log.find(/connectionsPerPeerMax reached/);
    expect(refusedLines.length).toBe(10);
    expect(String(refusedLines[0]!.fields['peer'])).toMatch(/127\.0\.0\.1/);
    const c = await NbdClient.connect(`nbds+unix://alice@/disk?socket=${p.socketPath}&tls-psk-file=${h.fx.pskFile}`); // unix: another peer
    await c.close();
    for (const s of sockets) s.destroy();
    await p.close();
  });
});
