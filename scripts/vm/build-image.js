#!/usr/bin/env node
// Builds (or finds in the cache) a guest kernel + initramfs for the kernel tests: Debian packages fetched
// with `apt-get download` (never installed) into a cache outside git, unpacked with dpkg-deb -x, modules
// depmod'ed, the raw vmlinux cut out of the XZ bzImage (PVH boot, ~2 s faster under TCG), busybox-static
// /init. Owns the cache layout:
//   $NBDM_VM_CACHE (default ~/.cache/nbd-mirror/vm)/
//     debs/                         downloaded .deb files, reused across builds
//     kernel/<pkg>_<version>/       vmlinux, modules tree (depmod'ed) of one resolved kernel package
//     images/<name>-<hash>/         initrd.cpio + manifest.json; hash covers package versions, the image
//                                   spec and the guest scripts, so a new kernel/package version rebuilds
// Usage: node scripts/vm/build-image.js [ext4|gfs2]   (prints the manifest)
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { CpioWriter } from './cpio.js';
import { IMAGES, imageSpec, KERNEL_META_PACKAGE } from './images.js';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const BUILD_FORMAT_VERSION = 1; // bump when the image layout changes in a way the hash cannot see
const LOCK_WAIT_MS_MAX = 10 * 60_000;
const LOCK_STALE_MS = 15 * 60_000;
const IMAGES_KEPT_PER_NAME = 3;
const XZ_MAGIC = Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]);
/** Host packages the harness itself needs (python3 for lzma, kmod for depmod, qemu to boot). */
const HOST_PACKAGES = { 'qemu-system-x86_64': 'qemu-system-x86', depmod: 'kmod', python3: 'python3-minimal' };

export function cacheDir() {
  return process.env.NBDM_VM_CACHE || path.join(os.homedir(), '.cache', 'nbd-mirror', 'vm');
}

function log(msg) {
  if (process.env.NBDM_VM_QUIET !== '1') process.stderr.write(`[vm] ${msg}\n`);
}

function run(cmd, args, opts = {}) {
  return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], maxBuffer: 64 << 20, ...opts });
}

function which(cmd) {
  const r = spawnSync('sh', ['-c', `command -v ${cmd}`], { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim() : null;
}

/**
 * Installs the harness's host packages when missing (root only; otherwise says what is missing).
 * @param {Record<string, string>} [extra] more command -> Debian package pairs (e.g. what a test uses)
 */
export function ensureHostTools(extra = {}) {
  const wanted = { ...HOST_PACKAGES, ...extra };
  const missing = Object.entries(wanted).filter(([cmd]) => !which(cmd) && !fs.existsSync(`/sbin/${cmd}`) && !fs.existsSync(`/usr/sbin/${cmd}`));
  if (missing.length === 0) return;
  const pkgs = [...new Set(missing.map(([, pkg]) => pkg))];
  if (process.getuid?.() !== 0) {
    throw new Error(`kernel tests need host packages ${pkgs.join(' ')} (run scripts/install-deps.sh as root)`);
  }
  log(`installing host packages ${pkgs.join(' ')}`);
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  run('apt-get', ['install', '-y', '-qq', '--no-install-recommends', ...pkgs], { env, stdio: 'inherit' });
}

/** Candidate versions of packages, from apt's lists (apt-get update once when something is unknown). */
function resolveVersions(pkgs) {
  const parse = () => {
    const out = run('apt-cache', ['policy', ...pkgs]);
    const versions = new Map();
    let current = null;
    for (const line of out.split('\n')) {
      const head = /^(\S+):$/.exec(line);
      if (head) { current = head[1]; continue; }
      const cand = /^\s+Candidate:\s+(\S+)/.exec(line);
      if (cand && current && cand[1] !== '(none)') versions.set(current, cand[1]);
    }
    return versions;
  };
  let versions = parse();
  if (pkgs.some((p) => !versions.has(p)) && process.getuid?.() === 0) {
    log('apt-get update (unknown packages)');
    run('apt-get', ['update', '-qq']);
    versions = parse();
  }
  const unknown = pkgs.filter((p) => !versions.has(p));
  if (unknown.length) throw new Error(`apt knows no candidate for: ${unknown.join(' ')}`);
  return versions;
}

const APT_LISTS_DIR = '/var/lib/apt/lists';

/**
 * The kernel package (first) and `pkgs` with their candidate versions. apt-cache takes seconds here
 * (Debian's container images disable apt's binary cache), so the answer is memoised on disk, keyed by
 * the apt lists' names, sizes and mtimes: a new `apt-get update` re-resolves, and a new kernel version
 * then gives a new image hash (rebuild).
 * @returns {Map<string, string>}
 */
function resolveAll(pkgs) {
  const listsKey = (() => {
    try {
      return fs.readdirSync(APT_LISTS_DIR).filter((f) => /_(Packages|InRelease)/.test(f)).map((f) => {
        const st = fs.statSync(path.join(APT_LISTS_DIR, f));
        return `${f}:${st.size}:${st.mtimeMs}`;
      }).join('|');
    } catch { return `no-lists-${Date.now()}`; }
  })();
  const key = hashOf([KERNEL_META_PACKAGE, pkgs, listsKey]);
  const memo = path.join(cacheDir(), 'resolved', `${key}.json`);
  try {
    return new Map(JSON.parse(fs.readFileSync(memo, 'utf8')));
  } catch { /* not resolved with these lists yet */ }
  const kernelPkg = resolveKernelPackage();
  const versions = resolveVersions([kernelPkg, ...pkgs]);
  fs.mkdirSync(path.dirname(memo), { recursive: true });
  fs.writeFileSync(memo, JSON.stringify([...versions]));
  return versions;
}

function resolveKernelPackage() {
  const out = run('apt-cache', ['depends', KERNEL_META_PACKAGE]);
  const m = /Depends:\s+(linux-image-\d\S*)/.exec(out);
  if (!m) throw new Error(`cannot resolve ${KERNEL_META_PACKAGE}: ${out}`);
  return m[1];
}

const debFileName = (pkg, version) => `${pkg}_${version.replace(/:/g, '%3a')}_`;

/** Downloads the .debs not yet in the cache; returns pkg -> .deb path. */
function fetchDebs(versions) {
  const debsDir = path.join(cacheDir(), 'debs');
  fs.mkdirSync(debsDir, { recursive: true });
  const have = fs.readdirSync(debsDir);
  const found = new Map();
  const missing = [];
  for (const [pkg, version] of versions) {
    const prefix = debFileName(pkg, version);
    const file = have.find((f) => f.startsWith(prefix) && f.endsWith('.deb'));
    if (file) found.set(pkg, path.join(debsDir, file));
    else missing.push(`${pkg}=${version}`);
  }
  if (missing.length) {
    const tmp = fs.mkdtempSync(path.join(debsDir, '.dl-'));
    const t0 = Date.now();
    const download = () => spawnSync('apt-get', ['download', '-q', ...missing], { cwd: tmp, encoding: 'utf8' });
    let r = download();
    if (r.status !== 0 && process.getuid?.() === 0) {
      log('apt-get download failed; apt-get update and retry');
      run('apt-get', ['update', '-qq']);
      r = download();
    }
    if (r.status !== 0) throw new Error(`apt-get download ${missing.join(' ')} failed:\n${r.stderr}`);
    for (const f of fs.readdirSync(tmp)) fs.renameSync(path.join(tmp, f), path.join(debsDir, f));
    fs.rmSync(tmp, { recursive: true, force: true });
    log(`downloaded ${missing.length} packages in ${Date.now() - t0} ms`);
    return fetchDebs(versions);
  }
  return found;
}

/** Cuts the raw ELF vmlinux out of an XZ-compressed bzImage (python's lzma; stops at the stream end). */
function extractVmlinux(bzImage, out) {
  const data = fs.readFileSync(bzImage);
  const at = data.indexOf(XZ_MAGIC);
  if (at < 0) throw new Error(`${bzImage}: no XZ stream (kernel not XZ-compressed?)`);
  const py = [
    'import lzma,sys',
    'd=open(sys.argv[1],"rb").read()[int(sys.argv[2]):]',
    'o=lzma.LZMADecompressor().decompress(d)',
    'open(sys.argv[3],"wb").write(o)',
  ].join('\n');
  run('python3', ['-c', py, bzImage, String(at), out]);
  const head = Buffer.alloc(4);
  const fd = fs.openSync(out, 'r');
  fs.readSync(fd, head, 0, 4, 0);
  fs.closeSync(fd);
  if (!head.equals(Buffer.from([0x7f, 0x45, 0x4c, 0x46]))) throw new Error(`${out}: not an ELF file`);
}

/**
 * Unpacked + depmod'ed kernel of one resolved package version: the raw vmlinux, modules.dep and friends,
 * and only the modules (with their dependencies) that some image in images.js loads (~5 MB instead of
 * ~400 MB). Rebuilt when the package version changes or an image wants a module it does not hold.
 */
function ensureKernel(kernelPkg, version, debPath) {
  const dir = path.join(cacheDir(), 'kernel', `${kernelPkg}_${version.replace(/:/g, '%3a')}`);
  const manifestPath = path.join(dir, 'kernel.json');
  const wanted = [...new Set(Object.values(IMAGES).flatMap((i) => i.modules))].sort();
  if (fs.existsSync(manifestPath)) {
    const manifest = JSON.parse(fs.readFileSync(manifestPath, 'utf8'));
    if (wanted.every((m) => manifest.modules?.includes(m))) return { dir, ...manifest };
  }
  const t0 = Date.now();
  const tmp = `${dir}.tmp-${process.pid}`;
  const full = fs.mkdtempSync(path.join(os.tmpdir(), 'nbdm-kernel-'));
  try {
    fs.rmSync(tmp, { recursive: true, force: true });
    run('dpkg-deb', ['-x', debPath, full]);
    const kver = fs.readdirSync(path.join(full, 'lib', 'modules'))[0];
    if (!kver) throw new Error(`${debPath}: no lib/modules`);
    run('depmod', ['-b', full, kver]);
    const fullMods = path.join(full, 'lib', 'modules', kver);
    const keepMods = path.join(tmp, 'lib', 'modules', kver);
    fs.mkdirSync(keepMods, { recursive: true });
    for (const f of fs.readdirSync(fullMods)) {
      if (f.startsWith('modules.')) fs.copyFileSync(path.join(fullMods, f), path.join(keepMods, f));
    }
    for (const rel of moduleLoadOrder(readModulesDep(fullMods), wanted)) {
      fs.mkdirSync(path.dirname(path.join(keepMods, rel)), { recursive: true });
      fs.copyFileSync(path.join(fullMods, rel), path.join(keepMods, rel));
    }
    extractVmlinux(path.join(full, 'boot', `vmlinuz-${kver}`), path.join(tmp, 'vmlinux'));
    const manifest = { kernelVersion: kver, package: kernelPkg, packageVersion: version, modules: wanted };
    fs.writeFileSync(path.join(tmp, 'kernel.json'), JSON.stringify(manifest, null, 2));
    fs.rmSync(dir, { recursive: true, force: true });
    fs.renameSync(tmp, dir);
    log(`kernel ${kver} unpacked, depmod'ed, vmlinux extracted in ${Date.now() - t0} ms`);
    return { dir, ...manifest };
  } finally {
    fs.rmSync(full, { recursive: true, force: true });
  }
}

/** modules.dep of a kernel tree: module name -> { path, deps (paths) }. */
function readModulesDep(modulesDir) {
  const map = new Map();
  for (const line of fs.readFileSync(path.join(modulesDir, 'modules.dep'), 'utf8').split('\n')) {
    const m = /^([^:]+):\s*(.*)$/.exec(line);
    if (!m) continue;
    const name = path.basename(m[1]).replace(/\.ko(\.\w+)?$/, '').replace(/-/g, '_');
    map.set(name, { path: m[1], deps: m[2] ? m[2].split(/\s+/) : [] });
  }
  return map;
}

/** Module paths in load order: each wanted module after its dependencies (modules.dep), no repeats. */
function moduleLoadOrder(depMap, wanted) {
  const byPath = new Map([...depMap.values()].map((e) => [e.path, e]));
  const order = [];
  const visit = (p) => {
    if (order.includes(p)) return;
    const entry = byPath.get(p);
    if (!entry) throw new Error(`module ${p} not in modules.dep`);
    for (const d of [...entry.deps].reverse()) visit(d);
    order.push(p);
  };
  for (const name of wanted) {
    const e = depMap.get(name);
    if (!e) throw new Error(`module ${name} not found (built in? not in this kernel?)`);
    visit(e.path);
  }
  return order;
}

const MODULE_SIG_MAGIC = Buffer.from('~Module signature appended~\n');
const MODULE_SIG_INFO_BYTES = 12; // struct module_signature; sig_len is its last field (big-endian u32)

/**
 * Drops a module's appended signature. The kernel then loads it unverified (Debian does not enforce
 * signatures; it only taints), which saves the RSA + SHA work per module that is slow under TCG.
 */
export function stripModuleSignature(ko) {
  if (ko.length < MODULE_SIG_MAGIC.length + MODULE_SIG_INFO_BYTES) return ko;
  const magicAt = ko.length - MODULE_SIG_MAGIC.length;
  if (!ko.subarray(magicAt).equals(MODULE_SIG_MAGIC)) return ko;
  const infoAt = magicAt - MODULE_SIG_INFO_BYTES;
  const sigBytes = ko.readUInt32BE(infoAt + 8);
  const end = infoAt - sigBytes;
  if (end <= 0) throw new Error('module signature longer than the module');
  return ko.subarray(0, end);
}

/** Shared libraries (and the ELF interpreter) a binary needs: [sourcePath, imagePath]. */
function libraryClosure(binaries, unpackDir) {
  const libDirs = ['lib/x86_64-linux-gnu', 'usr/lib/x86_64-linux-gnu', 'lib', 'usr/lib']
    .map((d) => path.join(unpackDir, d)).filter((d) => fs.existsSync(d));
  const env = { ...process.env, LD_LIBRARY_PATH: libDirs.join(':') };
  const libs = new Map();
  for (const bin of binaries) {
    const out = run('ldd', [bin], { env });
    if (/not a dynamic executable/.test(out)) continue;
    for (const line of out.split('\n')) {
      const arrow = /=>\s+(\/\S+)/.exec(line);
      const interp = /^\s*(\/\S+)\s+\(/.exec(line);
      const missing = /^\s*(\S+) => not found/.exec(line);
      if (missing) throw new Error(`${bin}: library ${missing[1]} not found`);
      const src = arrow?.[1] ?? interp?.[1];
      if (!src) continue;
      let dest = src.startsWith(unpackDir) ? src.slice(unpackDir.length) : src;
      if (interp) dest = src; // keep the interpreter where the ELF header says it is
      libs.set(dest, src);
    }
  }
  return libs;
}

function hashOf(parts) {
  const h = createHash('sha256');
  for (const p of parts) h.update(typeof p === 'string' ? p : JSON.stringify(p)).update('\0');
  return h.digest('hex').slice(0, 16);
}

function withLock(fn) {
  const lockDir = path.join(cacheDir(), '.lock');
  fs.mkdirSync(cacheDir(), { recursive: true });
  const t0 = Date.now();
  for (;;) {
    try {
      fs.mkdirSync(lockDir);
      fs.writeFileSync(path.join(lockDir, 'pid'), String(process.pid));
      break;
    } catch (e) {
      if (/** @type {any} */ (e).code !== 'EEXIST') throw e;
      let stale = false;
      try {
        const st = fs.statSync(lockDir);
        const pid = Number(fs.readFileSync(path.join(lockDir, 'pid'), 'utf8'));
        stale = Date.now() - st.mtimeMs > LOCK_STALE_MS || (pid > 0 && !pidAlive(pid));
      } catch { /* lock vanished or pid not written yet */ }
      if (stale) { fs.rmSync(lockDir, { recursive: true, force: true }); continue; }
      if (Date.now() - t0 > LOCK_WAIT_MS_MAX) throw new Error(`timed out waiting for ${lockDir}`);
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 200);
    }
  }
  try { return fn(); } finally { fs.rmSync(lockDir, { recursive: true, force: true }); }
}

function pidAlive(pid) {
  try { process.kill(pid, 0); return true; } catch (e) { return /** @type {any} */ (e).code === 'EPERM'; }
}

/**
 * Returns the cached image for `name`, building what is missing.
 * @param {string} name
 * @returns {{ name: string, vmlinux: string, initrd: string, kernelVersion: string, memMiB: number, dir: string }}
 */
export function ensureImage(name) {
  const spec = imageSpec(name);
  ensureHostTools();
  const versions = resolveAll(spec.packages);
  const kernelPkg = [...versions.keys()].find((p) => p.startsWith('linux-image-'));
  const guestFiles = ['init.sh', 'guest-lib.sh', 'build-image.js', 'cpio.js'].map((f) => fs.readFileSync(path.join(HERE, f), 'utf8'));
  const hash = hashOf([BUILD_FORMAT_VERSION, [...versions].sort(), spec, ...guestFiles]);
  const dir = path.join(cacheDir(), 'images', `${name}-${hash}`);
  const manifestPath = path.join(dir, 'manifest.json');
  const load = () => JSON.parse(fs.readFileSync(manifestPath, 'utf8'));
  if (fs.existsSync(manifestPath)) return load();
  return withLock(() => {
    if (fs.existsSync(manifestPath)) return load();
    const t0 = Date.now();
    const debs = fetchDebs(versions);
    const kernel = ensureKernel(kernelPkg, versions.get(kernelPkg), debs.get(kernelPkg));
    const work = fs.mkdtempSync(path.join(os.tmpdir(), `nbdm-vm-${name}-`));
    try {
      const unpack = path.join(work, 'unpack');
      for (const pkg of spec.packages) run('dpkg-deb', ['-x', debs.get(pkg), unpack]);
      const initrd = buildInitramfs(spec, kernel, unpack);
      const tmpDir = `${dir}.tmp-${process.pid}`;
      fs.rmSync(tmpDir, { recursive: true, force: true });
      fs.mkdirSync(tmpDir, { recursive: true });
      fs.writeFileSync(path.join(tmpDir, 'initrd.cpio'), initrd);
      const manifest = {
        name, dir, vmlinux: path.join(kernel.dir, 'vmlinux'), initrd: path.join(dir, 'initrd.cpio'),
        kernelVersion: kernel.kernelVersion, kernelPackage: `${kernelPkg}=${versions.get(kernelPkg)}`,
        memMiB: spec.memMiB, packages: Object.fromEntries(versions),
      };
      fs.writeFileSync(path.join(tmpDir, 'manifest.json'), JSON.stringify(manifest, null, 2));
      fs.mkdirSync(path.dirname(dir), { recursive: true });
      fs.renameSync(tmpDir, dir);
      log(`image ${name} built in ${Date.now() - t0} ms (${(initrd.length / 1048576).toFixed(1)} MiB): ${dir}`);
      pruneCache(name, versions);
      return manifest;
    } finally {
      fs.rmSync(work, { recursive: true, force: true });
    }
  });
}

/**
 * Keeps the cache bounded: the newest IMAGES_KEPT_PER_NAME images of `name`, kernels some kept image uses,
 * and for each package of this build only the .deb of its current version.
 */
function pruneCache(name, versions) {
  const imagesDir = path.join(cacheDir(), 'images');
  const mine = fs.readdirSync(imagesDir).filter((d) => d.startsWith(`${name}-`) && !d.includes('.tmp-'))
    .map((d) => ({ d, mtimeMs: fs.statSync(path.join(imagesDir, d)).mtimeMs }))
    .sort((a, b) => b.mtimeMs - a.mtimeMs);
  for (const { d } of mine.slice(IMAGES_KEPT_PER_NAME)) fs.rmSync(path.join(imagesDir, d), { recursive: true, force: true });
  const kernelsInUse = new Set();
  for (const d of fs.readdirSync(imagesDir)) {
    try { kernelsInUse.add(path.dirname(JSON.parse(fs.readFileSync(path.join(imagesDir, d, 'manifest.json'), 'utf8')).vmlinux)); }
    catch { /* being built */ }
  }
  const kernelsDir = path.join(cacheDir(), 'kernel');
  for (const d of fs.readdirSync(kernelsDir)) {
    const full = path.join(kernelsDir, d);
    if (!d.includes('.tmp-') && !kernelsInUse.has(full)) fs.rmSync(full, { recursive: true, force: true });
  }
  const debsDir = path.join(cacheDir(), 'debs');
  for (const f of fs.readdirSync(debsDir)) {
    for (const [pkg, version] of versions) {
      if (f.startsWith(`${pkg}_`) && !f.startsWith(debFileName(pkg, version))) fs.rmSync(path.join(debsDir, f), { force: true });
    }
  }
}

/** Assembles the initramfs: busybox applets, binaries + libraries, modules, /init. Returns the cpio bytes. */
function buildInitramfs(spec, kernel, unpack) {
  const cpio = new CpioWriter();
  const dirs = new Set();
  const mkdirp = (p) => {
    const parts = p.split('/').filter(Boolean);
    for (let i = 1; i <= parts.length; i++) {
      const d = `/${parts.slice(0, i).join('/')}`;
      if (!dirs.has(d)) { dirs.add(d); cpio.add({ kind: 'dir', path: d, mode: d === '/tmp' ? 0o1777 : 0o755 }); }
    }
  };
  const files = new Map(); // image path -> entry (later entries win: real tools over busybox applets)
  const put = (entry) => { mkdirp(path.posix.dirname(entry.path)); files.set(entry.path, entry); };

  for (const d of ['/proc', '/sys', '/dev', '/tmp', '/run', '/mnt', '/root', '/etc/nbdm', '/lib/nbdm', '/test',
    '/var/tmp', '/usr/bin', '/usr/sbin', '/sbin', '/bin', ...(spec.extraDirs ?? [])]) mkdirp(d);
  cpio.add({ kind: 'chardev', path: '/dev/console', major: 5, minor: 1 });
  cpio.add({ kind: 'chardev', path: '/dev/null', major: 1, minor: 3, mode: 0o666 });

  const busybox = path.join(unpack, 'bin', 'busybox');
  put({ kind: 'file', path: '/bin/busybox', data: fs.readFileSync(busybox), mode: 0o755 });
  for (const applet of run(busybox, ['--list-full']).split('\n').filter(Boolean)) {
    const p = `/${applet}`;
    if (p !== '/bin/busybox') put({ kind: 'symlink', path: p, target: '/bin/busybox' });
  }

  const binSources = [];
  for (const bin of spec.binaries) {
    const src = [path.join(unpack, bin), path.join(unpack, 'usr', bin)].find((p) => fs.existsSync(p));
    if (!src) throw new Error(`image ${spec.name}: ${bin} not in its packages`);
    const st = fs.lstatSync(src);
    if (st.isSymbolicLink()) {
      put({ kind: 'symlink', path: bin, target: fs.readlinkSync(src) }); // e.g. mkfs.ext4 -> mke2fs
      continue;
    }
    put({ kind: 'file', path: bin, data: fs.readFileSync(src), mode: 0o755 });
    binSources.push(src);
  }
  for (const [dest, src] of libraryClosure(binSources, unpack)) {
    put({ kind: 'file', path: dest, data: fs.readFileSync(src), mode: 0o755 });
  }
  for (const f of spec.etcFiles ?? []) put({ kind: 'file', path: f, data: fs.readFileSync(path.join(unpack, f)) });
  put({ kind: 'file', path: '/etc/passwd', data: Buffer.from('root:x:0:0:root:/root:/bin/sh\n') });
  put({ kind: 'file', path: '/etc/group', data: Buffer.from('root:x:0:\n') });
  put({ kind: 'file', path: '/etc/profile', data: Buffer.from('export PS1="guest# "\n') });

  // Modules: only those the image loads, plus a depmod'ed index so request_module()/modprobe work.
  const kver = kernel.kernelVersion;
  const modulesDir = path.join(kernel.dir, 'lib', 'modules', kver);
  const order = moduleLoadOrder(readModulesDep(modulesDir), spec.modules);
  const modStage = fs.mkdtempSync(path.join(os.tmpdir(), 'nbdm-mods-'));
  try {
    const stageMods = path.join(modStage, 'lib', 'modules', kver);
    for (const m of order) {
      fs.mkdirSync(path.dirname(path.join(stageMods, m)), { recursive: true });
      fs.writeFileSync(path.join(stageMods, m), stripModuleSignature(fs.readFileSync(path.join(modulesDir, m))));
    }
    for (const f of ['modules.builtin', 'modules.builtin.modinfo', 'modules.order']) {
      fs.copyFileSync(path.join(modulesDir, f), path.join(stageMods, f));
    }
    run('depmod', ['-b', modStage, kver]);
    const walk = (rel) => {
      for (const ent of fs.readdirSync(path.join(stageMods, rel), { withFileTypes: true })) {
        const r = path.posix.join(rel, ent.name);
        if (ent.isDirectory()) walk(r);
        else put({ kind: 'file', path: `/lib/modules/${kver}/${r}`, data: fs.readFileSync(path.join(stageMods, r)) });
      }
    };
    walk('');
  } finally {
    fs.rmSync(modStage, { recursive: true, force: true });
  }
  put({ kind: 'file', path: '/etc/nbdm/modules', data: Buffer.from(`${order.join('\n')}\n`) });
  put({ kind: 'file', path: '/etc/nbdm/image', data: Buffer.from(`${spec.name}\n`) });
  put({ kind: 'file', path: '/init', data: fs.readFileSync(path.join(HERE, 'init.sh')), mode: 0o755 });
  put({ kind: 'file', path: '/lib/nbdm/lib.sh', data: fs.readFileSync(path.join(HERE, 'guest-lib.sh')) });

  for (const entry of files.values()) cpio.add(entry);
  // Uncompressed: gunzip of ~16 MB costs the TCG guest more than qemu loading the bigger file.
  return cpio.finish();
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const manifest = ensureImage(process.argv[2] ?? 'ext4');
  process.stdout.write(`${JSON.stringify(manifest, null, 2)}\n`);
}
