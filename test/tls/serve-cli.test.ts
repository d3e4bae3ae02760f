// The real `nbd-mirror serve` CLI with TLS: a 2-leg mirror whose second leg is
// `nbdkit --tls=require --tls-psk=FILE file F` over nbds+unix, served with --tls require --tls-psk,
// fio verify through fio's nbd engine, then the legs compared byte for byte.
// Key reloads (reload-tls message, SIGHUP) without dropping a connected client; a group-readable key
// refused at start; a remote leg that cannot prove itself fails the table load, saying why.
// The connect hints serve prints under --tls: nbds+unix URIs (PSK and X.509) and a qemu-img line that work
// as printed.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { appendFile, chmod, mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { NbdClient } from '../../src/nbd/client/client.js';
import { useTempDir } from '../helpers/e2e.js';
import { runFioVerify } from '../helpers/fio.js';
import { waitInSync } from '../helpers/mirror.js';
import { run } from '../helpers/run.js';
import { CLI_PATH, startServer } from '../helpers/server.js';
import { linearTable, mirrorTable } from '../helpers/tables.js';
import { createSparseFile, MiB } from '../helpers/tmp.js';
import { requireTools } from '../helpers/tools.js';
import { makeTlsFixtures } from './fixtures.js';

const ok = requireTools('fio', 'cmp', 'nbdkit', 'nbdinfo', 'certtool', 'psktool', 'qemu-img');

/** Split a printed hint line as sh would (bare words and '...' quoting, which is all the hints use). */
function shellWords(line: string): string[] {
  const words: string[] = [];
  const re = /\s*((?:'[^']*'|[^\s'])+)/g;
  for (const m of line.matchAll(re)) words.push(m[1]!.replace(/'([^']*)'/g, '$1'));
  return words;
}

async function hintLines(server: { output(): string }, until: RegExp): Promise<string[]> {
  const deadline = Date.now() + 10_000;
  while (!until.test(server.output()) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  return server.output().split('\n').map((l) => l.trim());
}
const dir = useTempDir('tls-serve');

interface Nbdkit {
  readonly socket: string;
  stop(): Promise<void>;
}

async function startNbdkitTls(d: string, name: string, args: readonly string[]): Promise<Nbdkit> {
  const socket = join(d, `${name}.sock`);
  const pidFile = join(d, `${name}.pid`);
  const child: ChildProcess = spawn('nbdkit', ['-f', '-U', socket, '-P', pidFile, ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (c: Buffer) => {
    if (stderr.length < 65536) stderr += c.toString();
  });
  const exited = new Promise<void>((r) => child.on('exit', () => r()));
  const deadline = Date.now() + 10_000;
  while (!(existsSync(pidFile) && readFileSync(pidFile, 'utf8').trim() === String(child.pid))) {
    if (child.exitCode !== null || Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`nbdkit did not start: ${stderr}`);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  return {
    socket,
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        const t = setTimeout(() => child.kill('SIGKILL'), 5000);
        await exited;
        clearTimeout(t);
      }
    },
  };
}

const NUM_JOBS = 2;
const SLICE_BYTES = 8 * MiB;
const SIZE = NUM_JOBS * SLICE_BYTES;

describe.skipIf(!ok)('serve --tls with a TLS remote leg', () => {
  it('2-leg mirror, second leg nbdkit --tls=require over nbds+unix: fio verify, legs identical', async () => {
    const d = join(dir(), 'mirror');
    await mkdir(d);
    const fx = makeTlsFixtures(join(d, 'pki'));
    const local = await createSparseFile(join(d, 'leg0.img'), SIZE);
    const remoteFile = await createSparseFile(join(d, 'leg1.img'), SIZE);
    const kit = await startNbdkitTls(d, 'leg1', ['--tls=require', `--tls-psk=${fx.pskFile}`, 'file', remoteFile]);
    try {
      const legUri = `nbds+unix://bob@/?socket=${kit.socket}&tls-psk-file=${fx.pskFile}`;
      const table = mirrorTable({ legs: [local, legUri], sizeBytes: SIZE, regionSectors: 256 });
      // --tls on: fio's nbd engine (libnbd) refuses tls-psk-file= in a URI (nbd_set_uri_allow_local_file is
      // not called by fio), so fio speaks plaintext to us; the leg below us is TLS either way.
      const server = await startServer({ dir: d, tables: [{ table }], extraArgs: ['--tls', 'on', '--tls-psk', fx.pskFile] });
      const uri = server.uri();
      const info = await run('nbdinfo', ['--size', `nbds+unix://alice@/?socket=${server.socketPath}&tls-psk-file=${fx.pskFile}`]);
      expect(info.stdout.trim()).toBe(String(SIZE));
      const fio = await runFioVerify({ uri, dir: d, numJobs: NUM_JOBS, sliceBytes: SLICE_BYTES, iodepth: 16 });
      expect(fio.errors).toBe(0);
      expect(fio.readBytes).toBe(fio.writtenBytes);
      expect(fio.writtenBytes).toBeGreaterThan(0.7 * SIZE);
      const status = await waitInSync(server);
      expect(status.health).toBe('AA');
      await server.stop();
      await run('cmp', [local, remoteFile]);
    } finally {
      await kit.stop();
    }
  });

  it('a remote leg that cannot prove itself never receives a byte; the table load says why', async () => {
    const d = join(dir(), 'badleg');
    await mkdir(d);
    const fx = makeTlsFixtures(join(d, 'pki'));
    const local = await createSparseFile(join(d, 'leg0.img'), 4 * MiB);
    const remoteFile = await createSparseFile(join(d, 'leg1.img'), 4 * MiB);
    // nbdkit serves X.509 with our CA's server cert; the leg trusts only the other CA -> verification fails.
    const kit = await startNbdkitTls(d, 'leg1', ['--tls=require', `--tls-certificates=${fx.serverDir}`, 'file', remoteFile]);
    try {
      const trustOther = join(d, 'trust-other');
      await mkdir(trustOther);
      await run('cp', [join(fx.otherDir, 'other-ca-cert.pem'), join(trustOther, 'ca-cert.pem')]);
      for (const [legUri, why] of [
        [`nbds+unix:///?socket=${kit.socket}&tls-certificates=${trustOther}`, /certificate|verify/i],
        [`nbds+unix:///?socket=${kit.socket}&tls-certificates=${fx.noClientDir}&tls-hostname=wrong.example`, /Hostname|altnames|wrong\.example/i],
        [`nbd+unix:///?socket=${kit.socket}`, /0x80000005|TLS/i],
      ] as const) {
        const table = mirrorTable({ legs: [local, legUri], sizeBytes: 4 * MiB, regionSectors: 256 });
        const r = await run(process.execPath, [CLI_PATH, 'serve', '--table', table, '--listen', `unix:${join(d, 'x.sock')}`, '--control', join(d, 'c.sock')], {
          allowFailure: true,
          timeoutMs: 30_000,
        });
        expect(r.code, r.stderr).toBe(2);
        expect(r.stderr).toMatch(why);
      }
      // hostname verification passes with the right name (localhost), so the leg itself is fine
      const good = await NbdClient.connect(`nbds+unix:///?socket=${kit.socket}&tls-certificates=${fx.noClientDir}`);
      await good.close();
    } finally {
      await kit.stop();
    }
    // The file behind the refused legs was never written.
    const st = await readFile(remoteFile);
    expect(st.every((b) => b === 0)).toBe(true);
  });

  it('reload-tls and SIGHUP re-read the PSK file without dropping a connected client; a group-readable key is refused', async () => {
    const d = join(dir(), 'reload');
    await mkdir(d);
    const fx = makeTlsFixtures(join(d, 'pki'));
    const img = await createSparseFile(join(d, 'disk.img'), 4 * MiB);
    const keys = join(d, 'keys.psk');
    await run('cp', [fx.pskAlice, keys]);
    await chmod(keys, 0o644);
    const refused = await run(process.execPath, [CLI_PATH, 'serve', '--table', linearTable(img, 4 * MiB), '--listen', `unix:${join(d, 'y.sock')}`, '--tls', 'require', '--tls-psk', keys], {
      allowFailure: true,
    });
    expect(refused.code).toBe(2);
    expect(refused.stderr).toMatch(/readable by group or others.*chmod 600/);
    await chmod(keys, 0o600);

    const server = await startServer({ dir: d, tables: [{ table: linearTable(img, 4 * MiB), name: 'volume' }], extraArgs: ['--tls', 'require', '--tls-psk', keys] });
    const uri = (user: string, file: string): string => `nbds+unix://${user}@/volume?socket=${server.socketPath}&tls-psk-file=${file}`;
    const aliceConn = await NbdClient.connect(uri('alice', fx.pskAlice));
    await expect(NbdClient.connect(uri('carol', fx.pskCarol))).rejects.toThrow(/carol/);
    await appendFile(keys, readFileSync(fx.pskCarol, 'utf8'));
    const msg = await run(process.execPath, [CLI_PATH, 'message', 'volume', 'reload-tls', '--control', server.controlPath]);
    expect(msg.stdout).toMatch(/reloaded 2 PSK identities/);
    const carolConn = await NbdClient.connect(uri('carol', fx.pskCarol));
    await carolConn.write(Buffer.alloc(4096, 7), 0, { fua: true });
    await carolConn.close();
    // SIGHUP: replace the file with bob only
    await run('sh', ['-c', `grep '^bob:' ${fx.pskFile} > ${keys}`]);
    process.kill(server.pid, 'SIGHUP');
    const deadline = Date.now() + 10_000;
    while (!/reloaded 1 PSK identities|TLS keys reloaded \(1 PSK/.test(server.output()) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    await expect(NbdClient.connect(uri('carol', fx.pskCarol))).rejects.toThrow(/carol/);
    const bob = await NbdClient.connect(uri('bob', fx.pskFile));
    await bob.close();
    // A broken file on reload keeps the old keys
    await appendFile(keys, 'garbage line\n');
    const bad = await run(process.execPath, [CLI_PATH, 'message', 'volume', 'reload-tls', '--control', server.controlPath], { allowFailure: true });
    expect(bad.code).not.toBe(0);
    expect(`${bad.stdout}${bad.stderr}`).toMatch(/expected identity:hexkey.*old keys stay/);
    // alice, connected before both reloads, still works
    const back = Buffer.alloc(4096);
    await aliceConn.read(back, 0);
    expect(back.every((b) => b === 7)).toBe(true);
    await aliceConn.close();
    await server.stop();
  });

  it('connect hints under --tls: the printed nbds+unix URI (PSK identity and key file, or certificates) and qemu-img line work as printed', async () => {
    const d = join(dir(), 'hints');
    await mkdir(d);
    const fx = makeTlsFixtures(join(d, 'pki'));
    const img = await createSparseFile(join(d, 'disk.img'), 4 * MiB);
    // PSK: a file with one identity, named keys.psk (qemu's name), so every printed line works as is.
    const psk = await startServer({ dir: d, label: 'psk', tables: [{ table: linearTable(img, 4 * MiB), name: 'volume' }], extraArgs: ['--tls', 'require', '--tls-psk', fx.pskAlice] });
    try {
      const lines = await hintLines(psk, /connect with:[\s\S]*qemu-img.*\n/);
      const nbdinfoLine = lines.find((l) => l.startsWith('nbdinfo '));
      expect(nbdinfoLine).toBe(`nbdinfo 'nbds+unix://alice@/volume?socket=${psk.socketPath}&tls-psk-file=${fx.pskAlice}'`);
      expect(lines.some((l) => /nbd\+unix:/.test(l))).toBe(false); // no plaintext URI under require
      const [cmd, ...args] = shellWords(nbdinfoLine!);
      expect((await run(cmd!, ['--size', ...args])).stdout.trim()).toBe(String(4 * MiB));
      const qemuLine = lines.find((l) => l.startsWith('qemu-img info '))!;
      expect(qemuLine).toMatch(/tls-creds-psk,id=tls0,endpoint=client,dir=.*,username=alice/);
      const [qcmd, ...qargs] = shellWords(qemuLine);
      expect((await run(qcmd!, qargs)).stdout).toMatch(/virtual size: 4 MiB/);
    } finally {
      await psk.stop();
    }
    // X.509 under --tls on: the nbds URI names the certificate directory; the plaintext lines follow.
    const x509 = await startServer({ dir: d, label: 'x509', tables: [{ table: linearTable(img, 4 * MiB), name: 'volume' }], extraArgs: ['--tls', 'on', '--tls-certificates', fx.serverDir] });
    try {
      const lines = await hintLines(x509, /plaintext is allowed too[\s\S]*modprobe.*\n/);
      const nbdinfoLine = lines.find((l) => l.startsWith('nbdinfo ') && l.includes('nbds+unix'));
      expect(nbdinfoLine).toBe(`nbdinfo 'nbds+unix:///volume?socket=${x509.socketPath}&tls-certificates=${fx.serverDir}'`);
      const [cmd, ...args] = shellWords(nbdinfoLine!);
      expect((await run(cmd!, ['--size', ...args])).stdout.trim()).toBe(String(4 * MiB));
      expect(lines).toContain(`nbdinfo 'nbd+unix:///volume?socket=${x509.socketPath}'`); // --tls on: plaintext too
    } finally {
      await x509.stop();
    }
  });
});
