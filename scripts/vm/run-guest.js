// Boots one test guest under qemu and turns its serial console into a result. Owns the host side of the
// console protocol (`TEST: step NAME`, `TEST: PASS`, `TEST: FAIL reason`, dmesg between `TEST: dmesg-begin`
// and `TEST: dmesg-end`), the time limit, and stopping qemu through its -pidfile.
//
// The test script and its environment reach the guest as a small uncompressed cpio appended to the cached
// image's initramfs (the kernel unpacks concatenated archives): /test/test.sh and /test/env.
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { cacheDir, ensureImage } from './build-image.js';
import { CpioWriter } from './cpio.js';

/** The host as the guest sees it with qemu user networking (host's 127.0.0.1 is reachable there). */
export const GUEST_HOST_ADDR = '10.0.2.2';
const DEFAULT_TIMEOUT_MS = 90_000;
/** MAC of the user-mode NIC (the guest's route to the NBD server); init finds it by this address. */
export const USER_NIC_MAC = '52:54:00:12:34:56';
const KVM_PROBE_TIMEOUT_MS = 20_000;
const SETPRIV = ['/usr/bin/setpriv', '/bin/setpriv'].find((p) => fs.existsSync(p));
const STOP_GRACE_MS = 2_000;
/**
 * After the guest's final line (PASS, or FAIL's dmesg block) it powers off by itself; under heavy host load
 * `poweroff -f` was seen to hang for minutes, so qemu is stopped after this grace period instead.
 */
const POWEROFF_GRACE_MS = 10_000;
const LOG_TAIL_LINES_MAX = 400;

/**
 * @typedef {object} GuestStep
 * @property {string} name
 * @property {number} startMs     ms since qemu started (host clock)
 * @property {number} durationMs  until the next step or the end
 */
/**
 * @typedef {object} GuestResult
 * @property {'pass'|'fail'|'timeout'|'crash'|'aborted'} outcome
 * @property {boolean} passed
 * @property {string|null} failReason
 * @property {GuestStep[]} steps
 * @property {string[]} dmesg      last dmesg lines the guest printed on failure
 * @property {string} log          the whole serial console
 * @property {string} logPath      where the console log was written
 * @property {number} wallMs
 * @property {number|null} bootMs  host time until the guest's `TEST: ready` line
 * @property {'tcg'|'kvm'} accel
 * @property {number} peakRssKiB   qemu's peak resident set (VmHWM), sampled on console output
 */

/**
 * qemu accelerator. NBDM_VM_ACCEL=tcg|kvm wins. Otherwise KVM only when /dev/kvm is usable, the CPU
 * advertises vmx/svm, and a probe boot under KVM once passed (cached per host kernel; on these machines
 * KVM hangs or aborts with "failed to set MSR 0x10a", so the default is TCG).
 * @returns {Promise<'tcg'|'kvm'>}
 */
export async function chooseAccel() {
  const forced = process.env.NBDM_VM_ACCEL;
  if (forced === 'tcg' || forced === 'kvm') return forced;
  if (forced) throw new Error(`NBDM_VM_ACCEL must be tcg or kvm, not "${forced}"`);
  if (!kvmLooksUsable()) return 'tcg';
  const probeFile = path.join(cacheDir(), `kvm-probe-${os.release()}.json`);
  try {
    return JSON.parse(fs.readFileSync(probeFile, 'utf8')).ok ? 'kvm' : 'tcg';
  } catch { /* not probed yet */ }
  const r = await runGuest({ script: '', env: { NBDM_MODE: 'probe' }, timeoutMs: KVM_PROBE_TIMEOUT_MS, accel: 'kvm' });
  fs.mkdirSync(cacheDir(), { recursive: true });
  fs.writeFileSync(probeFile, JSON.stringify({ ok: r.passed, outcome: r.outcome, wallMs: r.wallMs }));
  return r.passed ? 'kvm' : 'tcg';
}

/** Is /dev/kvm there, usable, and does the CPU advertise virtualisation? */
export function kvmLooksUsable() {
  try {
    fs.accessSync('/dev/kvm', fs.constants.R_OK | fs.constants.W_OK);
    return /\b(vmx|svm)\b/.test(fs.readFileSync('/proc/cpuinfo', 'utf8'));
  } catch {
    return false;
  }
}

/**
 * qemu command line for an image.
 * @param {{ vmlinux: string, initrd: string, memMiB: number }} image
 * @param {{ accel: 'tcg'|'kvm', initrd?: string, pidFile: string, serial: string[], append?: string,
 *           memMiB?: number, extraArgs?: string[], userMac?: string }} o
 */
export function qemuArgs(image, o) {
  const tcg = o.accel !== 'kvm';
  const args = [
    // tb-size=32: a 32 MiB translation cache instead of the default 1 GiB keeps the RSS near 235 MB.
    '-accel', tcg ? 'tcg,tb-size=32' : 'kvm', '-cpu', process.env.NBDM_VM_CPU ?? (tcg ? 'max' : 'host'),
    '-smp', '1', '-m', String(o.memMiB ?? image.memMiB),
    '-nodefaults', '-no-user-config', '-display', 'none', '-no-reboot',
    '-kernel', image.vmlinux, '-initrd', o.initrd ?? image.initrd,
    // no_timer_check: a descheduled TCG vCPU on a loaded host failed the IO-APIC timer check at boot
    // ("Kernel panic - not syncing: IO-APIC + timer doesn't work!"), seen once at load ~12.
    '-append', `console=ttyS0 quiet panic=-1 no_timer_check ${o.append ?? ''}`.trim(),
    '-netdev', 'user,id=n0', '-device', `virtio-net-pci,netdev=n0,romfile=,mac=${o.userMac ?? USER_NIC_MAC}`,
    ...o.serial, '-pidfile', o.pidFile,
    ...(o.extraArgs ?? []),
  ];
  return args;
}

/** Writes `base initramfs + overlay cpio (files)` to `out`. */
export function writeInitrdWithOverlay(baseInitrd, files, out) {
  const cpio = new CpioWriter();
  cpio.add({ kind: 'dir', path: '/test' });
  for (const [p, data, mode] of files) cpio.add({ kind: 'file', path: p, data: Buffer.from(data), mode: mode ?? 0o644 });
  const base = fs.readFileSync(baseInitrd);
  const pad = Buffer.alloc((4 - (base.length % 4)) % 4);
  fs.writeFileSync(out, Buffer.concat([base, pad, cpio.finish()]));
}

/** Shell-quotes env values for /test/env. */
export function envFile(env) {
  return Object.entries(env)
    .map(([k, v]) => {
      if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(k)) throw new Error(`bad env name ${k}`);
      return `export ${k}='${String(v).replace(/'/g, `'\\''`)}'`;
    })
    .join('\n') + '\n';
}

/** Parses a console log into steps, outcome and dmesg. Pure. */
export function parseConsole(text) {
  const steps = [];
  let outcome = null;
  let failReason = null;
  const dmesg = [];
  let inDmesg = false;
  for (const raw of text.split(/\r?\n/)) {
    const line = raw.replace(/\r/g, '');
    if (inDmesg) {
      if (/TEST: dmesg-end/.test(line)) inDmesg = false;
      else dmesg.push(line);
      continue;
    }
    const m = /TEST: (step|PASS|FAIL|dmesg-begin)\s?(.*)$/.exec(line);
    if (!m) continue;
    if (m[1] === 'step') steps.push(m[2]);
    else if (m[1] === 'PASS') outcome = 'pass';
    else if (m[1] === 'FAIL') { outcome = 'fail'; failReason = m[2]; }
    else inDmesg = true;
  }
  return { steps, outcome, failReason, dmesg };
}

/** VmHWM of the qemu named by pidFile, in KiB (0 if unknown). */
function qemuPeakRssKiB(pidFile) {
  try {
    const pid = fs.readFileSync(pidFile, 'utf8').trim();
    const m = /VmHWM:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) : 0;
  } catch {
    return 0;
  }
}

/** Kills the qemu whose pid is in pidFile (if it is still running). */
export async function stopQemu(pidFile, signal = 'SIGTERM') {
  let pid;
  try { pid = Number(fs.readFileSync(pidFile, 'utf8').trim()); } catch { return; }
  if (!(pid > 0)) return;
  const alive = () => { try { process.kill(pid, 0); return true; } catch { return false; } };
  if (!alive()) return;
  try { process.kill(pid, signal); } catch { return; }
  const t0 = Date.now();
  while (alive() && Date.now() - t0 < STOP_GRACE_MS) await new Promise((r) => setTimeout(r, 50));
  if (alive()) try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
}

/**
 * Boots `image` with `script` as /test/test.sh and waits for it to power off.
 * @param {{ image?: string, script: string, env?: Record<string,string|number>, timeoutMs?: number,
 *           memMiB?: number, workDir?: string, onLine?: (line: string) => void, extraArgs?: string[],
 *           accel?: 'tcg'|'kvm', killOn?: RegExp, abort?: AbortSignal }} opts
 * killOn: SIGKILL qemu as soon as a console line matches (a client machine that dies: no DISC, no FIN
 * from a clean guest shutdown, requests possibly in flight).
 * abort: stop qemu when it fires (e.g. the other node of a pair failed; outcome 'aborted' unless the
 * guest already reported PASS/FAIL).
 * @returns {Promise<GuestResult>}
 */
export async function runGuest(opts) {
  const image = ensureImage(opts.image ?? 'ext4');
  const ownDir = !opts.workDir;
  const dir = opts.workDir ?? fs.mkdtempSync(path.join(os.tmpdir(), 'nbdm-guest-'));
  const initrd = path.join(dir, 'initrd.img');
  const pidFile = path.join(dir, 'qemu.pid');
  const logPath = path.join(dir, 'console.log');
  fs.rmSync(pidFile, { force: true });
  const env = { NBDM_MODE: 'test', NBDM_NBD_HOST: GUEST_HOST_ADDR, NBDM_USER_MAC: USER_NIC_MAC, ...(opts.env ?? {}) };
  writeInitrdWithOverlay(image.initrd, [['/test/test.sh', opts.script, 0o755], ['/test/env', envFile(env)]], initrd);

  const accel = opts.accel ?? (await chooseAccel());
  const args = qemuArgs(image, {
    accel, initrd, pidFile, serial: ['-serial', 'stdio'], memMiB: opts.memMiB, extraArgs: opts.extraArgs,
  });
  const t0 = Date.now();
  // setpriv --pdeathsig: qemu gets SIGKILL if this process dies (e.g. a test worker killed on timeout);
  // setpriv execs qemu, so the pid in -pidfile is still the one to stop.
  const [cmd, cmdArgs] = SETPRIV ? [SETPRIV, ['--pdeathsig', 'KILL', 'qemu-system-x86_64', ...args]] : ['qemu-system-x86_64', args];
  const child = spawn(cmd, cmdArgs, { stdio: ['ignore', 'pipe', 'pipe'] });
  // If this process exits first (a killed test worker), take the guest down with it.
  const killOnExit = () => {
    try { process.kill(Number(fs.readFileSync(pidFile, 'utf8').trim()), 'SIGKILL'); } catch { /* gone */ }
  };
  process.on('exit', killOnExit);
  const logStream = fs.createWriteStream(logPath);
  let text = '';
  let stderr = '';
  let partial = '';
  /** @type {{ name: string, startMs: number }[]} */
  const stepTimes = [];
  let bootMs = null;
  let peakRssKiB = 0;
  let killed = false;
  /** @type {NodeJS.Timeout|undefined} */
  let finalTimer;
  child.stdout.on('data', (chunk) => {
    logStream.write(chunk);
    const s = chunk.toString('utf8');
    text += s;
    partial += s;
    const lines = partial.split('\n');
    partial = lines.pop() ?? '';
    const now = Date.now() - t0;
    peakRssKiB = Math.max(peakRssKiB, qemuPeakRssKiB(pidFile));
    for (const line of lines) {
      const m = /TEST: step (.*)$/.exec(line.replace(/\r/g, ''));
      if (m) stepTimes.push({ name: m[1], startMs: now });
      if (bootMs === null && /TEST: ready/.test(line)) bootMs = now;
      if (opts.killOn?.test(line) && !killed) { killed = true; void stopQemu(pidFile, 'SIGKILL'); }
      if (!finalTimer && /TEST: (PASS|dmesg-end)/.test(line)) {
        finalTimer = setTimeout(() => void stopQemu(pidFile), POWEROFF_GRACE_MS);
      }
      opts.onLine?.(line);
    }
  });
  child.stderr.on('data', (c) => { stderr += c.toString('utf8'); });

  const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  let timedOut = false;
  const exited = new Promise((resolve) => child.on('close', (code, signal) => resolve({ code, signal })));
  const timer = setTimeout(() => { timedOut = true; void stopQemu(pidFile); }, timeoutMs);
  let aborted = false;
  const onAbort = () => { aborted = true; void stopQemu(pidFile); };
  if (opts.abort?.aborted) onAbort();
  else opts.abort?.addEventListener('abort', onAbort, { once: true });
  const spawnError = new Promise((resolve) => child.on('error', (e) => resolve(e)));
  const first = await Promise.race([exited, spawnError]);
  clearTimeout(timer);
  clearTimeout(finalTimer);
  opts.abort?.removeEventListener('abort', onAbort);
  if (first instanceof Error) throw new Error(`cannot start qemu-system-x86_64: ${first.message}`);
  const { code } = /** @type {{code: number|null}} */ (first);
  await stopQemu(pidFile); // normally already gone; never leave a guest behind
  process.off('exit', killOnExit);
  await new Promise((r) => logStream.end(r));
  const wallMs = Date.now() - t0;

  const parsed = parseConsole(text);
  let outcome = parsed.outcome ?? (timedOut ? 'timeout' : 'crash');
  if (timedOut && parsed.outcome === null) outcome = 'timeout';
  if (aborted && !timedOut && parsed.outcome === null) outcome = 'aborted';
  let failReason = parsed.failReason;
  if (outcome === 'aborted') failReason = 'stopped by the caller (abort signal)';
  if (outcome === 'timeout') failReason = `guest did not finish within ${timeoutMs} ms`;
  if (outcome === 'crash') failReason = `qemu exited (code ${code}) without a TEST: PASS/FAIL line${stderr ? `: ${stderr.trim()}` : ''}`;
  const steps = stepTimes.map((s, i) => ({
    name: s.name, startMs: s.startMs, durationMs: (stepTimes[i + 1]?.startMs ?? wallMs) - s.startMs,
  }));
  if (stderr.trim()) fs.writeFileSync(path.join(dir, 'qemu.stderr'), stderr);
  if (ownDir && outcome === 'pass') fs.rmSync(dir, { recursive: true, force: true });
  else fs.rmSync(initrd, { force: true });
  return {
    outcome, passed: outcome === 'pass', failReason, steps, dmesg: parsed.dmesg, accel, peakRssKiB,
    log: text.split('\n').slice(-LOG_TAIL_LINES_MAX).join('\n'), logPath, wallMs, bootMs,
  };
}

/** One-line-per-step summary plus the console tail, for attaching to a failed test. */
export function describeResult(r) {
  const steps = r.steps.map((s) => `  ${s.name}: ${s.durationMs} ms`).join('\n');
  return `guest ${r.outcome}${r.failReason ? `: ${r.failReason}` : ''} after ${r.wallMs} ms` +
    ` (boot ${r.bootMs ?? '?'} ms, ${r.accel}, qemu peak RSS ${Math.round(r.peakRssKiB / 1024)} MiB)\nsteps:\n${steps}\nconsole (${r.logPath}):\n${r.log}`;
}
