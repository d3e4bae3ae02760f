// Starts the real `nbd-mirror serve` CLI (bin/nbd-mirror.js, built by test/global-setup.ts) on a unix
// socket in a temp directory, as nbdkit's tests/functions.sh start_nbdkit does:
// - ready = the pid file exists (the CLI writes it only after every export is open and every address
//   listens) and names the process we spawned;
// - stop() sends SIGTERM and FAILS if the server has not exited within STOP_TIMEOUT_MS (it is then
//   killed with SIGKILL so nothing leaks) or if it exits non-zero;
// - only processes started here are ever signalled, by PID.
// Use `stopAllServers()` in afterEach/afterAll so a failing test still cleans up.
import { spawn, type ChildProcess } from 'node:child_process';
import { readFile, rm } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { makeTempDir, removeTempDir } from './tmp.js';

export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
/**
 * The CLI under test: test/global-setup.ts builds a private copy and sets NBD_MIRROR_CLI to it (set it
 * yourself to test another build, e.g. an installed one); bin/nbd-mirror.js (dist/) only as a fallback.
 */
export const CLI_PATH = process.env.NBD_MIRROR_CLI ?? join(REPO_ROOT, 'bin', 'nbd-mirror.js');
export const READY_TIMEOUT_MS = 30_000;
export const STOP_TIMEOUT_MS = 20_000;
const READY_POLL_MS = 20;
/** Keep the tail of the server's output for error messages; bounded. */
const OUTPUT_BYTES_MAX = 256 * 1024;

export interface TableArg {
  readonly table: string;
  readonly name?: string;
}

export interface StartOptions {
  readonly tables?: readonly TableArg[];
  readonly tableFile?: string;
  readonly readOnly?: boolean;
  readonly extraArgs?: readonly string[];
  /** Reuse a directory (restart after a crash); otherwise a fresh temp dir owned by the handle. */
  readonly dir?: string;
  /** Socket and pid file names in dir: LABEL.sock, LABEL.pid (default "nbd"); several servers per dir. */
  readonly label?: string;
  readonly env?: NodeJS.ProcessEnv;
}

export interface ExitStatus {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
}

export interface ServerHandle {
  readonly pid: number;
  readonly dir: string;
  readonly socketPath: string;
  /** The server's control socket (nbd-mirror status/message --control PATH). */
  readonly controlPath: string;
  readonly args: readonly string[];
  /** nbd+unix URI of an export ("" = the default export). */
  uri(exportName?: string): string;
  /** The server's stdout and stderr so far (bounded tail), for assertions and error messages. */
  output(): string;
  readonly exited: Promise<ExitStatus>;
  hasExited(): boolean;
  /** SIGTERM, wait, assert a clean exit (code 0); SIGKILL + throw if SIGTERM is ignored. */
  stop(): Promise<void>;
  /** SIGKILL (a crash), then wait for the process to be gone. */
  crash(): Promise<ExitStatus>;
}

const live = new Set<ServerHandle>();
const ownedDirs = new Set<string>();

export function nbdUnixUri(socketPath: string, exportName = ''): string {
  return `nbd+unix:///${encodeURIComponent(exportName)}?socket=${socketPath}`;
}

export async function startServer(opts: StartOptions): Promise<ServerHandle> {
  const dir = opts.dir ?? (await makeTempDir('nbd-mirror-e2e-'));
  if (opts.dir === undefined) ownedDirs.add(dir);
  const label = opts.label ?? 'nbd';
  const socketPath = join(dir, `${label}.sock`);
  const pidFile = join(dir, `${label}.pid`);
  const controlPath = join(dir, `${label}.ctl`);
  await rm(pidFile, { force: true });
  // --dashboard 0: no TCP dashboard listener (tests use unix sockets only; several servers run at once).
  const args = ['serve', '--listen', `unix:${socketPath}`, '--pid-file', pidFile, '--control', controlPath, '--dashboard', '0'];
  for (const t of opts.tables ?? []) {
    args.push('--table', t.table);
    if (t.name !== undefined) args.push('--name', t.name);
  }
  if (opts.tableFile !== undefined) args.push('--table-file', opts.tableFile);
  if (opts.readOnly) args.push('--read-only');
  args.push(...(opts.extraArgs ?? []));

  if (!existsSync(CLI_PATH)) throw new Error(`${CLI_PATH} is missing: test/global-setup.ts should have built it`);
  const child = spawn(process.execPath, [CLI_PATH, ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, ...opts.env },
  });
  let outputText = '';
  const collect = (c: Buffer) => {
    outputText += c.toString();
    if (outputText.length > OUTPUT_BYTES_MAX) outputText = outputText.slice(-OUTPUT_BYTES_MAX);
  };
  child.stdout!.on('data', collect);
  child.stderr!.on('data', collect);
  let exitedFlag = false;
  const exited = new Promise<ExitStatus>((resolveExit) => {
    child.on('exit', (code, signal) => {
      exitedFlag = true;
      resolveExit({ code, signal });
    });
  });
  const pid = child.pid;
  if (pid === undefined) throw new Error(`could not spawn ${CLI_PATH}`);

  const handle: ServerHandle = {
    pid,
    dir,
    socketPath,
    controlPath,
    args,
    uri: (name = '') => nbdUnixUri(socketPath, name),
    output: () => outputText,
    exited,
    hasExited: () => exitedFlag,
    stop: () => stopChild(child, handle),
    crash: async () => {
      if (!exitedFlag) child.kill('SIGKILL');
      const status = await exited;
      live.delete(handle);
      return status;
    },
  };
  live.add(handle);

  const deadline = Date.now() + READY_TIMEOUT_MS;
  for (;;) {
    if (exitedFlag) {
      live.delete(handle);
      const s = await exited;
      throw new Error(`server exited before it was ready (code ${s.code}, signal ${s.signal})\nargs: ${args.join(' ')}\n${outputText}`);
    }
    const pidText = await readFile(pidFile, 'utf8').catch(() => '');
    if (pidText.trim() === String(pid)) break;
    if (Date.now() > deadline) {
      await stopChild(child, handle).catch(() => undefined);
      throw new Error(`server not ready after ${READY_TIMEOUT_MS} ms (no pid file ${pidFile})\n${outputText}`);
    }
    await new Promise((r) => setTimeout(r, READY_POLL_MS));
  }
  return handle;
}

async function stopChild(child: ChildProcess, handle: ServerHandle): Promise<void> {
  live.delete(handle);
  if (handle.hasExited()) return;
  child.kill('SIGTERM');
  let timer: NodeJS.Timeout | undefined;
  const timedOut = new Promise<'timeout'>((r) => (timer = setTimeout(() => r('timeout'), STOP_TIMEOUT_MS)));
  const result = await Promise.race([handle.exited, timedOut]);
  clearTimeout(timer);
  if (result === 'timeout') {
    child.kill('SIGKILL');
    await handle.exited;
    throw new Error(`server pid ${handle.pid} ignored SIGTERM for ${STOP_TIMEOUT_MS} ms (killed)\n${handle.output()}`);
  }
  if (result.code !== 0) {
    throw new Error(`server pid ${handle.pid} exited with code ${result.code} signal ${result.signal} on SIGTERM\n${handle.output()}`);
  }
}

/** Stop every server still running (each must honour SIGTERM) and remove the temp dirs we made. */
export async function stopAllServers(): Promise<void> {
  const errors: unknown[] = [];
  for (const h of [...live]) {
    await h.stop().catch((e: unknown) => errors.push(e));
  }
  for (const d of [...ownedDirs]) {
    ownedDirs.delete(d);
    await removeTempDir(d);
  }
  if (errors.length > 0) throw errors[0];
}
