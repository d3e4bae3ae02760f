// Real TLS clients against our server: libnbd (nbdinfo, nbdcopy) over nbds+unix:// and nbds:// with
// PSK and X.509 (tls-psk-file=, tls-certificates=), qemu-img with tls-creds-psk / tls-creds-x509;
// a plaintext client refused under require; an identity not allowed on an export refused with the
// right error and a log line, and nothing read or written. Keys made in the test by psktool/certtool.
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { run } from '../helpers/run.js';
import { requireTools } from '../helpers/tools.js';
import { pattern } from '../nbd/harness.js';
import { MiB, startTlsHarness, type TlsHarness } from './harness.js';

const ok = requireTools('certtool', 'psktool', 'nbdinfo', 'nbdcopy', 'qemu-img');

describe.skipIf(!ok)('real clients over TLS-PSK (--tls require, --allow)', () => {
  let h: TlsHarness;
  beforeAll(async () => {
    h = await startTlsHarness(
      { disk: { sizeBytes: 8 * MiB }, secret: { sizeBytes: 1 * MiB } },
      { tls: (fx) => ({ mode: 'require', pskFile: fx.pskFile, verifyPeer: false }), allow: ['secret=psk:bob'], tcp: true },
    );
  });
  afterAll(async () => h?.close());

  const unixUri = (name: string, user = 'alice', file = h.fx.pskFile): string => `nbds+unix://${user}@/${name}?socket=${h.socketPath}&tls-psk-file=${file}`;
  const tcpUri = (name: string, user = 'alice'): string => `nbds://${user}@127.0.0.1:${h.port}/${name}?tls-psk-file=${h.fx.pskFile}`;

  it('nbdinfo over nbds+unix and nbds:// sees the export; --list shows only what the identity may open', async () => {
    for (const uri of [unixUri('disk'), tcpUri('disk')]) {
      const j = JSON.parse((await run('nbdinfo', ['--json', uri])).stdout) as { exports: { 'export-size': number }[] };
      expect(j.exports[0]!['export-size']).toBe(8 * MiB);
    }
    const names = async (user: string): Promise<string[]> =>
      (JSON.parse((await run('nbdinfo', ['--list', '--json', unixUri('', user)])).stdout) as { exports: { 'export-name': string }[] }).exports.map((e) => e['export-name']).sort();
    expect(await names('alice')).toEqual(['disk']);
    expect(await names('bob')).toEqual(['disk', 'secret']);
  });

  it('nbdcopy writes over nbds+unix and reads back over nbds://', async () => {
    const src = join(h.dir, 'src.img');
    const back = join(h.dir, 'back.img');
    const data = pattern(8 * MiB, 11);
    await writeFile(src, data);
    await run('nbdcopy', [src, unixUri('disk')]);
    await run('nbdcopy', [tcpUri('disk'), back]);
    expect((await readFile(back)).equals(data)).toBe(true);
  });

  it('qemu-img info and convert with tls-creds-psk (keys.psk in the dir)', async () => {
    const obj = `tls-creds-psk,id=tls0,endpoint=client,dir=${h.fx.pskAliceDir},username=alice`;
    const info = await run('qemu-img', ['info', '--output=json', '--object', obj, '--image-opts', `driver=nbd,path=${h.socketPath},export=disk,tls-creds=tls0`]);
    expect((JSON.parse(info.stdout) as { 'virtual-size': number })['virtual-size']).toBe(8 * MiB);
    const src = join(h.dir, 'q.img');
    const data = pattern(8 * MiB, 12);
    await writeFile(src, data);
    await run('qemu-img', ['convert', '-n', '-f', 'raw', '--object', obj, src, '--target-image-opts', `driver=nbd,server.type=inet,server.host=127.0.0.1,server.port=${h.port},export=disk,tls-creds=tls0`]);
    const back = Buffer.alloc(8 * MiB);
    await h.exports.get('disk')!.read(back, 0);
    expect(back.equals(data)).toBe(true);
  });

  it('refused: plaintext client (TLS required), wrong key, unknown identity, identity not allowed on the export', async () => {
    const secret = h.exports.get('secret')!;
    const before = { ...secret.calls };
    const plain = await run('nbdinfo', [`nbd+unix:///disk?socket=${h.socketPath}`], { allowFailure: true });
    expect(plain.code).not.toBe(0);
    // libnbd words NBD_REP_ERR_TLS_REQD as ENOTSUP (as against nbdkit --tls=require)
    expect(plain.stderr, plain.stderr).toMatch(/TLS|not supported/i);
    const wrong = await run('nbdinfo', [unixUri('disk', 'alice', h.fx.pskWrong)], { allowFailure: true });
    expect(wrong.code).not.toBe(0);
    expect(wrong.stderr, wrong.stderr).toMatch(/TLS|handshake|decrypt|gnutls/i);
    const carol = await run('nbdinfo', [unixUri('disk', 'carol', h.fx.pskCarol)], { allowFailure: true });
    expect(carol.code).not.toBe(0);
    const denied = await run('nbdcopy', [unixUri('secret', 'alice'), join(h.dir, 'x.img')], { allowFailure: true });
    expect(denied.code).not.toBe(0);
    expect(denied.stderr, denied.stderr).toMatch(/policy|not allowed|permi|denied/i);
    const qemuDenied = await run(
      'qemu-img',
      ['info', '--object', `tls-creds-psk,id=tls0,endpoint=client,dir=${h.fx.pskAliceDir},username=alice`, '--image-opts', `driver=nbd,path=${h.socketPath},export=secret,tls-creds=tls0`],
      { allowFailure: true },
    );
    expect(qemuDenied.code).not.toBe(0);
    expect(secret.calls).toEqual(before);
    const refusals = h.log.find(/export refused by policy/);
    expect(refusals.length).toBeGreaterThanOrEqual(2);
    expect(String(refusals[0]!.fields['peer'])).toMatch(/psk identity "alice"/);
    expect(String(refusals[0]!.fields['reason'])).toMatch(/matches none of psk:bob/);
    // bob may: the rule admits him
    await run('nbdinfo', [unixUri('secret', 'bob')]);
  });
});

describe.skipIf(!ok)('real clients over X.509 (--tls require --tls-verify-peer, dn: rule)', () => {
  let h: TlsHarness;
  beforeAll(async () => {
    h = await startTlsHarness(
      { disk: { sizeBytes: 4 * MiB }, alices: { sizeBytes: 1 * MiB }, nobodys: { sizeBytes: 1 * MiB } },
      {
        tls: (fx) => ({ mode: 'require', certificatesDir: fx.serverDir, verifyPeer: true }),
        allow: ['alices=dn:CN=alice,O=nbd-mirror test', 'nobodys=dn:CN=mallory,O=nbd-mirror test'],
        tcp: true,
      },
    );
  });
  afterAll(async () => h?.close());

  it('nbdinfo and nbdcopy over nbds+unix and nbds:// with tls-certificates=', async () => {
    const unix = `nbds+unix:///disk?socket=${h.socketPath}&tls-certificates=${h.fx.clientDir}`;
    const tcp = `nbds://localhost:${h.port}/disk?tls-certificates=${h.fx.clientDir}`;
    const src = join(h.dir, 's.img');
    const data = pattern(4 * MiB, 3);
    await writeFile(src, data);
    await run('nbdcopy', [src, unix]);
    await run('nbdcopy', [tcp, join(h.dir, 'b.img')]);
    expect((await readFile(join(h.dir, 'b.img'))).equals(data)).toBe(true);
    await run('nbdinfo', [`nbds+unix:///alices?socket=${h.socketPath}&tls-certificates=${h.fx.clientDir}`]);
    const denied = await run('nbdinfo', [`nbds+unix:///nobodys?socket=${h.socketPath}&tls-certificates=${h.fx.clientDir}`], { allowFailure: true });
    expect(denied.code).not.toBe(0);
    expect(h.exports.get('nobodys')!.calls.read).toBe(0);
  });

  it('nbdcopy reads with 1 MiB requests, 8 in flight, over X.509: byte-exact', async () => {
    const data = pattern(4 * MiB, 21);
    await h.exports.get('disk')!.write(data, 0, { fua: false });
    const back = join(h.dir, 'big-back.img');
    await run('nbdcopy', ['--request-size=1048576', '--requests=8', `nbds+unix:///disk?socket=${h.socketPath}&tls-certificates=${h.fx.clientDir}`, back]);
    expect((await readFile(back)).equals(data)).toBe(true);
  });

  it('qemu-img with tls-creds-x509 over unix and TCP', async () => {
    const obj = `tls-creds-x509,id=tls0,endpoint=client,dir=${h.fx.clientDir}`;
    const a = await run('qemu-img', ['info', '--output=json', '--object', obj, '--image-opts', `driver=nbd,path=${h.socketPath},export=disk,tls-creds=tls0,tls-hostname=localhost`]);
    expect((JSON.parse(a.stdout) as { 'virtual-size': number })['virtual-size']).toBe(4 * MiB);
    const b = await run('qemu-img', ['info', '--output=json', '--object', obj, '--image-opts', `driver=nbd,server.type=inet,server.host=127.0.0.1,server.port=${h.port},export=disk,tls-creds=tls0`]);
    expect((JSON.parse(b.stdout) as { 'virtual-size': number })['virtual-size']).toBe(4 * MiB);
  });

  it('refused: a client certificate from another CA, and a client with no certificate', async () => {
    const before = h.exports.get('disk')!.calls.read;
    // libnbd: tls-certificates dir whose client cert is signed by the other CA (ca-cert.pem still trusts our server)
    const other = await run('nbdinfo', ['--content', `nbds+unix:///disk?socket=${h.socketPath}&tls-certificates=${h.fx.otherDir}`], { allowFailure: true });
    expect(other.code).not.toBe(0);
    const none = await run('nbdinfo', ['--content', `nbds+unix:///disk?socket=${h.socketPath}&tls-certificates=${h.fx.noClientDir}`], { allowFailure: true });
    expect(none.code).not.toBe(0);
    expect(h.exports.get('disk')!.calls.read).toBe(before);
    const errs = h.log.find(/TLS handshake failed/).map((l) => String(l.fields['err']));
    expect(errs.some((e) => /client certificate not accepted|certificate/.test(e))).toBe(true);
  });
});
