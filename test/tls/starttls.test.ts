// STARTTLS as proto.md says it, against a real NbdServer with real TLS (keys from certtool/psktool):
// TLS_REQD before the upgrade under require (LIST, GO, STRUCTURED_REPLY; EXPORT_NAME disconnects),
// option state reset by the upgrade, STARTTLS twice, STARTTLS with data, plaintext after the upgrade,
// failed TLS handshakes (wrong key, unknown identity, another CA, no client cert) closing only that
// connection with nothing read or written; our own client over nbds+unix with PSK and X.509.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as C from '../../src/nbd/codec/constants.js';
import { NbdClient } from '../../src/nbd/client/client.js';
import { requireTools } from '../helpers/tools.js';
import { MiB, startTlsHarness, type TlsHarness } from './harness.js';
import { pskOf, RawClient, type RawReply } from './raw-client.js';
import { pattern } from '../nbd/harness.js';

const ok = requireTools('certtool', 'psktool');

function isReply(x: unknown): x is RawReply {
  return typeof x === 'object' && x !== null && 'type' in x;
}

describe.skipIf(!ok)('STARTTLS with --tls require and PSK', () => {
  let h: TlsHarness;
  let alice: { identity: string; key: Buffer };
  beforeAll(async () => {
    h = await startTlsHarness({ disk: { sizeBytes: 4 * MiB }, other: { sizeBytes: 1 * MiB } }, { tls: (fx) => ({ mode: 'require', pskFile: fx.pskFile, verifyPeer: false }) });
    alice = pskOf(h.fx.pskFile, 'alice', readFileSync(h.fx.pskFile, 'utf8'));
  });
  afterAll(async () => h?.close());

  const untouched = (): void => {
    for (const e of h.exports.values()) {
      expect(e.calls.read).toBe(0);
      expect(e.calls.write).toBe(0);
    }
  };

  it('every option before STARTTLS but ABORT gets TLS_REQD; LIST names nothing', async () => {
    const c = await RawClient.open(h.socketPath);
    expect((await c.option(C.NBD_OPT_STRUCTURED_REPLY)).type).toBe(C.NBD_REP_ERR_TLS_REQD);
    const l = await c.list();
    expect(isReply(l) && l.type).toBe(C.NBD_REP_ERR_TLS_REQD);
    expect(isReply(l) && l.data.toString()).not.toMatch(/disk|other/);
    const g = await c.go('disk');
    expect(isReply(g) && g.type).toBe(C.NBD_REP_ERR_TLS_REQD);
    const i = await c.go('disk', C.NBD_OPT_INFO);
    expect(isReply(i) && i.type).toBe(C.NBD_REP_ERR_TLS_REQD);
    expect((await c.option(C.NBD_OPT_SET_META_CONTEXT, Buffer.alloc(8))).type).toBe(C.NBD_REP_ERR_TLS_REQD);
    expect((await c.option(C.NBD_OPT_ABORT)).type).toBe(C.NBD_REP_ACK);
    await c.closed;
    untouched();
  });

  it('EXPORT_NAME before STARTTLS disconnects (it cannot be refused with a reply)', async () => {
    const c = await RawClient.open(h.socketPath);
    c.send(C.NBD_OPT_EXPORT_NAME, Buffer.from('disk'));
    await c.closed;
    untouched();
  });

  it('STARTTLS with data is INVALID; then the upgrade works, haggling starts afresh; STARTTLS twice is INVALID', async () => {
    const c = await RawClient.open(h.socketPath);
    expect((await c.option(C.NBD_OPT_STARTTLS, Buffer.from('x'))).type).toBe(C.NBD_REP_ERR_INVALID);
    expect((await c.option(C.NBD_OPT_STARTTLS)).type).toBe(C.NBD_REP_ACK);
    await c.upgrade({ psk: alice });
    expect((await c.option(C.NBD_OPT_STARTTLS)).type).toBe(C.NBD_REP_ERR_INVALID);
    expect(await c.list()).toEqual(['disk', 'other']);
    const g = await c.go('disk', C.NBD_OPT_INFO);
    expect(isReply(g)).toBe(false);
    expect((await c.option(C.NBD_OPT_ABORT)).type).toBe(C.NBD_REP_ACK);
    c.destroy();
  });

  it('plaintext after the upgrade closes that connection; the server keeps serving', async () => {
    const c = await RawClient.open(h.socketPath);
    expect((await c.option(C.NBD_OPT_STARTTLS)).type).toBe(C.NBD_REP_ACK);
    await c.upgrade({ psk: alice });
    // Bypass TLS: write a plaintext option on the raw socket under the TLS layer.
    c.plain.write(Buffer.from('IHAVEOPT\0\0\0\x03\0\0\0\0'));
    await c.closed;
    const client = await NbdClient.connect(`nbds+unix://alice@/disk?socket=${h.socketPath}&tls-psk-file=${h.fx.pskFile}`);
    expect(client.sizeBytes).toBe(4 * MiB);
    await client.close();
  });

  it('pipelined plaintext right after STARTTLS (before our reply) closes the connection', async () => {
    const c = await RawClient.open(h.socketPath);
    c.raw.write(Buffer.concat([Buffer.from('IHAVEOPT\0\0\0\x05\0\0\0\0'), Buffer.from('IHAVEOPT\0\0\0\x03\0\0\0\0')]));
    await c.closed;
    expect(h.log.find(/bytes sent after STARTTLS/).length).toBeGreaterThan(0);
  });

  it('our client: writes and reads back over nbds+unix with PSK', async () => {
    const client = await NbdClient.connect(`nbds+unix://alice@/disk?socket=${h.socketPath}&tls-psk-file=${h.fx.pskFile}`);
    const data = pattern(1 * MiB, 7);
    await client.write(data, 512 * 1024, { fua: false });
    const back = Buffer.alloc(1 * MiB);
    await client.read(back, 512 * 1024);
    expect(back.equals(data)).toBe(true);
    await client.close();
  });

  it('refused: wrong key, unknown identity, plaintext client; each names the cause; nothing read or written', async () => {
    const e = h.exports.get('other')!;
    const before = { ...e.calls };
    const tryUri = async (uri: string): Promise<string> => {
      try {
        const c = await NbdClient.connect(uri, { connectTimeoutMs: 10_000 });
        await c.close();
        return 'connected';
      } catch (err) {
        return (err as Error).message;
      }
    };
    expect(await tryUri(`nbds+unix://alice@/other?socket=${h.socketPath}&tls-psk-file=${h.fx.pskWrong}`)).toMatch(/TLS-PSK handshake as "alice" failed/);
    expect(await tryUri(`nbds+unix://carol@/other?socket=${h.socketPath}&tls-psk-file=${h.fx.pskCarol}`)).toMatch(/TLS-PSK handshake as "carol" failed/);
    expect(await tryUri(`nbd+unix:///other?socket=${h.socketPath}`)).toMatch(/refused \(0x80000005\)/);
    expect(e.calls).toEqual(before);
    await new Promise((r) => setTimeout(r, 100));
    const errs = h.log.find(/TLS handshake failed/).map((l) => String(l.fields['err']));
    expect(errs).toContain('unknown PSK identity "carol"');
    expect(errs).toContain('wrong PSK key for identity "alice"');
  });
});

describe.skipIf(!ok)('STARTTLS with --tls on (optional) and X.509 with --tls-verify-peer', () => {
  let h: TlsHarness;
  beforeAll(async () => {
    h = await startTlsHarness({ disk: { sizeBytes: 2 * MiB } }, { tls: (fx) => ({ mode: 'on', certificatesDir: fx.serverDir, verifyPeer: true }) });
  });
  afterAll(async () => h?.close());

  it('plaintext is allowed under "on"; structured replies negotiated before STARTTLS are forgotten after it', async () => {
    const plain = await NbdClient.connect(`nbd+unix:///disk?socket=${h.socketPath}`);
    expect(plain.sizeBytes).toBe(2 * MiB);
    await plain.close();
    const c = await RawClient.open(h.socketPath);
    expect((await c.option(C.NBD_OPT_STRUCTURED_REPLY)).type).toBe(C.NBD_REP_ACK);
    const before = await c.go('disk', C.NBD_OPT_INFO);
    expect(!isReply(before) && (before.transmissionFlags & C.NBD_FLAG_SEND_DF) !== 0).toBe(true);
    expect((await c.option(C.NBD_OPT_STARTTLS)).type).toBe(C.NBD_REP_ACK);
    const dir = h.fx.clientDir;
    await c.upgrade({ ca: readFileSync(join(dir, 'ca-cert.pem')), cert: readFileSync(join(dir, 'client-cert.pem')), key: readFileSync(join(dir, 'client-key.pem')) });
    const after = await c.go('disk', C.NBD_OPT_INFO);
    expect(!isReply(after) && (after.transmissionFlags & C.NBD_FLAG_SEND_DF)).toBe(0);
    expect((await c.option(C.NBD_OPT_STRUCTURED_REPLY)).type).toBe(C.NBD_REP_ACK); // not "already negotiated"
    c.destroy();
  });

  it('our client over X.509: verified both ways; a client cert from another CA or none is refused', async () => {
    const uri = (dir: string, extra = ''): string => `nbds+unix:///disk?socket=${h.socketPath}&tls-certificates=${dir}${extra}`;
    const c = await NbdClient.connect(uri(h.fx.clientDir));
    await c.write(Buffer.alloc(4096, 1), 0, { fua: true });
    await c.close();
    const writes = h.exports.get('disk')!.calls.write;
    await expect(NbdClient.connect(uri(h.fx.otherDir))).rejects.toThrow(/TLS|closed|alert/i);
    await expect(NbdClient.connect(uri(h.fx.noClientDir))).rejects.toThrow(/TLS|closed|alert|certificate/i);
    expect(h.exports.get('disk')!.calls.write).toBe(writes);
    await new Promise((r) => setTimeout(r, 100));
    expect(h.log.find(/client certificate not accepted|certificate/).length).toBeGreaterThan(0);
  });

  it('our client refuses a server whose certificate does not carry the expected host name, or comes from another CA', async () => {
    await expect(NbdClient.connect(`nbds+unix:///disk?socket=${h.socketPath}&tls-certificates=${h.fx.clientDir}&tls-hostname=evil.example`)).rejects.toThrow(
      /Hostname|altnames|evil\.example/i,
    );
    // The "other" CA cannot vouch for our server: a client trusting only it refuses.
    const otherTrust = join(h.dir, 'trust-other');
    const { mkdirSync, copyFileSync } = await import('node:fs');
    mkdirSync(otherTrust);
    copyFileSync(join(h.fx.otherDir, 'other-ca-cert.pem'), join(otherTrust, 'ca-cert.pem'));
    await expect(NbdClient.connect(`nbds+unix:///disk?socket=${h.socketPath}&tls-certificates=${otherTrust}`)).rejects.toThrow(/certificate|verify/i);
  });
});
