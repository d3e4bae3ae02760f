#!/usr/bin/env node
// TLS benchmark: our server (`serve --tls require`, linear export of a file) against
// `nbdkit --tls=require file` on the same file, same jobs, same client; prints each figure and the
// ratio ours/nbdkit (target >= 0.8x).
//
//   fio (nbd engine: libnbd) 1M seq read QD8, 1M seq write QD8, 4K randwrite QD32, over X.509:
//     fio's engine only takes a URI and libnbd refuses tls-psk-file=/tls-certificates= in a URI unless
//     the program allows local files (fio does not), so fio finds the client certificates where libnbd
//     looks by default: $HOME/.pki/libnbd (HOME points into the work dir for the fio run).
//   nbdcopy (which allows local files) 1M requests x8 write and read, over TLS-PSK (tls-psk-file=).
// First it prints the TLS session each server negotiates with libnbd (protocol, cipher).
//
// Usage: node scripts/bench/tls.js [--size-mib 256] [--runtime 5] [--json out.json]
// Everything lives in a temp dir, removed at the end; servers are stopped by their PID.
import { execFileSync, spawn } from 'node:child_process';
import { copyFileSync, writeFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { privateBuildCopy } from './build.js';
import { runFio } from './fio.js';
import { setCli, startServer } from './servers.js';
import { makePki } from './tls-pki.js';

const args = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = args.indexOf(name);
  return i < 0 ? dflt : args[i + 1];
};
const SIZE_BYTES = Number(opt('--size-mib', '256')) * 1024 * 1024;
const RUNTIME_SEC = Number(opt('--runtime', '5'));
const JSON_OUT = opt('--json', undefined);
const FIO_JOBS = ['read-1m-qd8', 'write-1m-qd8', 'randwrite-4k-qd32'];

function serverDef(kind, auth, ctx) {
  const socket = join(ctx.dir, `${kind}-${auth}.sock`);
  const pidFile = join(ctx.dir, `${kind}-${auth}.pid`);
  const tlsArgsOurs = auth === 'psk' ? ['--tls', 'require', '--tls-psk', ctx.pki.psk] : ['--tls', 'require', '--tls-certificates', ctx.pki.server];
  const tlsArgsKit = auth === 'psk' ? ['--tls=require', `--tls-psk=${ctx.pki.psk}`] : ['--tls=require', `--tls-certificates=${ctx.pki.server}`];
  if (kind === 'nbdkit') {
    return { command: 'nbdkit', args: ['-f', '-U', socket, '-P', pidFile, ...tlsArgsKit, 'file', ctx.file], socket, pidFile };
  }
  const table = `0 ${SIZE_BYTES / 512} linear ${ctx.file} 0`;
  return {
    command: process.execPath,
    args: [ctx.cli, 'serve', '--quiet', '--log-level', 'warn', '--table', table, '--listen', `unix:${socket}`, '--pid-file', pidFile, '--control', join(ctx.dir, `${kind}-${auth}.ctl`), '--dashboard', '0', ...tlsArgsOurs],
    socket,
    pidFile,
  };
}

/**
 * The TLS session each server negotiates with libnbd (nbdinfo), from the servers' own debug output:
 * nbdkit -D nbdkit.tls.session=1 prints "(TLS1.3)-(kx)-(sig)-(cipher)", ours logs protocol and cipher.
 * Measured 2026-11-25, the same cipher on both servers each time, so the rows compare like with like:
 * X.509 (the fio rows): TLS1.3 AES-256-GCM (nbdkit: ECDHE-SECP256R1, ECDSA-SECP256R1-SHA256; ours:
 * TLS_AES_256_GCM_SHA384); PSK (the nbdcopy rows): TLS1.3 CHACHA20-POLY1305 on both (libnbd's preference).
 */
async function negotiated(kind, auth, ctx) {
  const def = serverDef(kind, auth, ctx);
  const args = kind === 'nbdkit' ? ['-v', '-D', 'nbdkit.tls.session=1', ...def.args] : def.args.map((a) => (a === 'warn' ? 'debug' : a));
  let stderr = '';
  const srv = await startServer({ ...def, args }, { onStderr: (t) => (stderr += t) });
  try {
    const uri = auth === 'psk' ? `nbds+unix://bench@/?socket=${def.socket}&tls-psk-file=${ctx.pki.psk}` : `nbds+unix:///?socket=${def.socket}`;
    execFileSync('nbdinfo', ['--size', uri], { env: { ...process.env, HOME: ctx.pki.home }, stdio: ['ignore', 'ignore', 'pipe'] });
    await new Promise((r) => setTimeout(r, 200)); // the server's log line may trail the client's exit
  } finally {
    await srv.stop();
  }
  if (kind === 'nbdkit') return /TLS session: (\S+)/.exec(stderr)?.[1] ?? 'unknown (no session line)';
  const m = /"protocol":"([^"]+)","cipher":"([^"]+)"/.exec(stderr);
  return m === null ? 'unknown (no session line)' : `${m[1]} ${m[2]}`;
}

function runNbdcopy(argv) {
  const t0 = process.hrtime.bigint();
  return new Promise((resolve, reject) => {
    const c = spawn('nbdcopy', argv, { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    c.stderr.on('data', (d) => (stderr = (stderr + d).slice(-4096)));
    c.on('close', (code) => {
      if (code !== 0) reject(new Error(`nbdcopy ${argv.join(' ')} failed: ${stderr}`));
      else resolve(Number(process.hrtime.bigint() - t0) / 1e9);
    });
  });
}

async function measure(kind, ctx) {
  const out = {};
  // fio over X.509
  {
    const def = serverDef(kind, 'x509', ctx);
    const srv = await startServer(def);
    try {
      const prevHome = process.env.HOME;
      process.env.HOME = ctx.pki.home; // fio (spawned by runFio) inherits it: libnbd finds $HOME/.pki/libnbd
      try {
        const r = await runFio({ workDir: ctx.dir, label: `${kind}-x509`, uri: `nbds+unix:///?socket=${def.socket}`, sizeBytes: SIZE_BYTES, runtimeSec: RUNTIME_SEC, jobs: FIO_JOBS });
        for (const [job, v] of Object.entries(r)) out[`fio ${job} (x509)`] = { bwMiBs: v.bwBytesPerSec / 1048576, iops: v.iops };
      } finally {
        process.env.HOME = prevHome;
      }
    } finally {
      await srv.stop();
    }
  }
  // nbdcopy over PSK
  {
    const def = serverDef(kind, 'psk', ctx);
    const srv = await startServer(def);
    try {
      const uri = `nbds+unix://bench@/?socket=${def.socket}&tls-psk-file=${ctx.pki.psk}`;
      const common = ['--connections=1', '--requests=8', '--request-size=1048576', '--flush'];
      const w = await runNbdcopy([...common, ctx.src, uri]);
      const r = await runNbdcopy([...common.filter((a) => a !== '--flush'), uri, 'null:']);
      out['nbdcopy write 1M x8 (psk)'] = { bwMiBs: SIZE_BYTES / 1048576 / w };
      out['nbdcopy read 1M x8 (psk)'] = { bwMiBs: SIZE_BYTES / 1048576 / r };
    } finally {
      await srv.stop();
    }
  }
  return out;
}

async function main() {
  const dir = mkdtempSync(join(tmpdir(), 'nbdm-bench-tls-'));
  try {
    const cli = privateBuildCopy(dir);
    setCli(cli);
    const pki = makePki(join(dir, 'pki'));
    const file = join(dir, 'a.img');
    const src = join(dir, 'src.img');
    execFileSync('fio', ['--name=fill', `--filename=${file}`, '--rw=write', '--bs=1m', `--size=${SIZE_BYTES}`, '--output=/dev/null'], { cwd: dir });
    copyFileSync(file, src);
    const ctx = { dir, cli, pki, file, src };
    for (const auth of ['x509', 'psk']) {
      for (const kind of ['nbdkit', 'ours']) console.log(`negotiated (${auth}) ${kind.padEnd(6)}: ${await negotiated(kind, auth, ctx)}`);
    }
    const results = {};
    for (const kind of ['nbdkit', 'ours']) results[kind] = await measure(kind, ctx);
    const rows = [];
    for (const key of Object.keys(results.nbdkit)) {
      const a = results.ours[key];
      const b = results.nbdkit[key];
      rows.push({ test: key, oursMiBs: +a.bwMiBs.toFixed(1), nbdkitMiBs: +b.bwMiBs.toFixed(1), ratio: +(a.bwMiBs / b.bwMiBs).toFixed(2), ...(a.iops ? { oursIops: a.iops, nbdkitIops: b.iops } : {}) });
    }
    console.log(`TLS benchmark: ${SIZE_BYTES / 1048576} MiB file, fio ${RUNTIME_SEC}s per job; ratio = ours / nbdkit (target >= 0.8)`);
    for (const r of rows) {
      const iops = r.oursIops !== undefined ? `  (${r.oursIops} vs ${r.nbdkitIops} IOPS)` : '';
      console.log(`  ${r.test.padEnd(34)} ours ${String(r.oursMiBs).padStart(8)} MiB/s  nbdkit ${String(r.nbdkitMiBs).padStart(8)} MiB/s  ratio ${r.ratio.toFixed(2)}x${iops}`);
    }
    if (JSON_OUT !== undefined) writeFileSync(JSON_OUT, `${JSON.stringify({ date: new Date().toISOString(), sizeBytes: SIZE_BYTES, runtimeSec: RUNTIME_SEC, rows }, null, 2)}\n`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((e) => {
  console.error(e instanceof Error ? e.message : e);
  process.exit(1);
});

