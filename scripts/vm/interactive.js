#!/usr/bin/env node
// `npm run vm -- --volume nbd://127.0.0.1:PORT/NAME`: boots the ext4 test guest with an interactive shell
// on this terminal (serial console on stdio; Ctrl-A x quits qemu, Ctrl-A c its monitor) and /dev/nbd0
// attached by the kernel's nbd-client to the running volume. Owns only argument handling and the
// foreground qemu; image building and the qemu command line come from build-image.js / run-guest.js.
// With qemu user networking the guest reaches the host's 127.0.0.1 at 10.0.2.2; other hosts are reached
// through the host's own routing. Unix-socket URIs cannot be reached from the guest.
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Command } from 'commander';
import { ensureImage } from './build-image.js';
import {
  chooseAccel, envFile, GUEST_HOST_ADDR, qemuArgs, stopQemu, USER_NIC_MAC, writeInitrdWithOverlay,
} from './run-guest.js';

const NBD_DEFAULT_PORT = 10809;
const LOOPBACK_HOSTS = new Set(['127.0.0.1', 'localhost', '[::1]', '::1']);

/** nbd://host[:port][/export] -> what the guest connects to. */
export function guestTarget(uri) {
  let u;
  try { u = new URL(uri); } catch { throw new Error(`bad --volume "${uri}": expected nbd://HOST[:PORT]/EXPORT`); }
  if (u.protocol !== 'nbd:') {
    throw new Error(`bad --volume "${uri}": only nbd:// (TCP) URIs can be reached from the guest`);
  }
  const host = LOOPBACK_HOSTS.has(u.hostname) ? GUEST_HOST_ADDR : u.hostname;
  const port = u.port ? Number(u.port) : NBD_DEFAULT_PORT;
  const exportName = decodeURIComponent(u.pathname.replace(/^\//, ''));
  return { host, port, exportName };
}

async function main() {
  const program = new Command('vm')
    .description('boot a test guest with a shell and /dev/nbd0 attached to a running volume')
    .option('--volume <uri>', 'nbd://127.0.0.1:PORT/EXPORT of a running server (omit: no /dev/nbd0)')
    .option('--image <name>', 'guest image (ext4, gfs2)', 'ext4')
    .option('--mem <MiB>', 'guest memory in MiB', (v) => Number(v))
    .parse(process.argv);
  const o = program.opts();
  const target = o.volume ? guestTarget(o.volume) : null;
  const image = ensureImage(o.image);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nbdm-vm-shell-'));
  const initrd = path.join(dir, 'initrd.img');
  const pidFile = path.join(dir, 'qemu.pid');
  const env = { NBDM_MODE: 'shell', NBDM_NBD_HOST: target?.host ?? GUEST_HOST_ADDR, NBDM_USER_MAC: USER_NIC_MAC };
  if (target) Object.assign(env, { NBDM_NBD_PORT: target.port, NBDM_NBD_EXPORT: target.exportName });
  writeInitrdWithOverlay(image.initrd, [['/test/env', envFile(env)]], initrd);
  const accel = await chooseAccel();
  const args = qemuArgs(image, { accel, initrd, pidFile, serial: ['-serial', 'mon:stdio'], memMiB: o.mem });
  process.stderr.write(`[vm] booting ${image.name} guest (${accel}, kernel ${image.kernelVersion})` +
    `${target ? `, /dev/nbd0 -> nbd://${target.host}:${target.port}/${target.exportName}` : ''}; Ctrl-A x quits\n`);
  const child = spawn('qemu-system-x86_64', args, { stdio: 'inherit' });
  const cleanup = async () => {
    await stopQemu(pidFile);
    fs.rmSync(dir, { recursive: true, force: true });
  };
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
    process.on(sig, () => { void cleanup().then(() => process.exit(130)); });
  }
  const code = await new Promise((resolve) => {
    child.on('error', (e) => { process.stderr.write(`[vm] cannot start qemu: ${e.message}\n`); resolve(1); });
    child.on('close', (c) => resolve(c ?? 1));
  });
  await cleanup();
  process.exitCode = Number(code);
}

if (process.argv[1] && path.resolve(process.argv[1]) === path.resolve(new URL(import.meta.url).pathname)) {
  main().catch((e) => { process.stderr.write(`vm: ${e.message}\n`); process.exit(2); });
}
