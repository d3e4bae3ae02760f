// Helpers for the pool tests that drive the real CLI: run a command, hash every device's metadata area
// (to prove a refused command wrote nothing), make sparse devices, and the common set-up / teardown of a
// test's directory (poolDir, createPool, removePoolDir).
import { createHash } from 'node:crypto';
import { open } from 'node:fs/promises';
import { join } from 'node:path';
import { run } from '../helpers/run.js';
import { CLI_PATH, stopAllServers } from '../helpers/server.js';
import { createSparseFile, makeTempDir, MiB, removeTempDir } from '../helpers/tmp.js';

export interface CliResult {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

export async function cli(args: readonly string[], env: NodeJS.ProcessEnv = {}): Promise<CliResult> {
  const r = await run(process.execPath, [CLI_PATH, ...args], { allowFailure: true, env: { ...process.env, ...env }, timeoutMs: 60_000 });
  return { code: r.code, stdout: r.stdout, stderr: r.stderr };
}

/** Run and demand exit 0; returns parsed JSON when --json is among the args. */
export async function ok<T = unknown>(args: readonly string[], env: NodeJS.ProcessEnv = {}): Promise<T> {
  const r = await cli(args, env);
  if (r.code !== 0) throw new Error(`nbd-mirror ${args.join(' ')} exited ${r.code}\n${r.stdout}${r.stderr}`);
  return (args.includes('--json') ? JSON.parse(r.stdout) : r.stdout) as T;
}

export async function makeDevices(dir: string, names: readonly string[], sizeBytes = 64 * MiB): Promise<string[]> {
  const out: string[] = [];
  for (const n of names) out.push(await createSparseFile(join(dir, n), sizeBytes));
  return out;
}

/** sha256 of the first MiB (the metadata area) of each device. */
export async function areaHashes(paths: readonly string[]): Promise<string[]> {
  const out: string[] = [];
  for (const p of paths) {
    const fh = await open(p, 'r');
    try {
      const b = Buffer.alloc(MiB);
      await fh.read(b, 0, MiB, 0);
      out.push(createHash('sha256').update(b).digest('hex'));
    } finally {
      await fh.close();
    }
  }
  return out;
}

/** A new temp dir (name prefix) whose devices the CLI finds: env has NBD_MIRROR_DEVICES=dir plus extraEnv. */
export async function poolDir(prefix: string, extraEnv: NodeJS.ProcessEnv = {}): Promise<{ dir: string; env: NodeJS.ProcessEnv }> {
  const dir = await makeTempDir(prefix);
  return { dir, env: { NBD_MIRROR_DEVICES: dir, ...extraEnv } };
}

/**
 * Pool `pool` on new sparse devices `names` in dir (sizeBytes each, default 64 MiB; poolArgs before the
 * devices), then one `create` per entry of volumes (its arguments). Returns the device paths.
 */
export async function createPool(
  dir: string,
  env: NodeJS.ProcessEnv,
  pool: string,
  names: readonly string[],
  volumes: readonly (readonly string[])[],
  opts: { sizeBytes?: number; poolArgs?: readonly string[] } = {},
): Promise<string[]> {
  const devs = await makeDevices(dir, names, opts.sizeBytes);
  await ok(['pool', 'create', pool, ...(opts.poolArgs ?? []), ...devs], env);
  for (const v of volumes) await ok(['create', ...v], env);
  return devs;
}

/** A pool test's afterAll: stop every server it started, then remove its dir. */
export async function removePoolDir(dir: string): Promise<void> {
  try {
    await stopAllServers();
  } finally {
    await removeTempDir(dir);
  }
}
