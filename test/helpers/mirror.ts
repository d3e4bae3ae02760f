// Mirror-specific e2e helpers: the volume's dm status through the real CLI (`nbd-mirror status --json`
// over the server's control socket), waiting for in-sync, and reading the disk log's clean bitmap straight
// from the log file (dm layout: magic, version, nr_regions; bitmap at 1024, bit set = clean), so a test
// can check what the server persisted independently of the server.
import { readFile } from 'node:fs/promises';
import { run } from './run.js';
import { CLI_PATH, type ServerHandle } from './server.js';

export const DISK_LOG_MAGIC = 0x4d695272;
export const DISK_LOG_BITMAP_OFFSET_BYTES = 1024;
const IN_SYNC_POLL_MS = 100;

export interface MirrorStatus {
  readonly raw: string;
  readonly inSyncRegions: number;
  readonly regionCount: number;
  readonly health: string;
}

/** dmsetup status: `<start> <len> mirror <#legs> <leg>... <in>/<nr> 1 <health> <log status...>`. */
export function parseMirrorStatus(raw: string): MirrorStatus {
  const t = raw.trim().split(/\s+/);
  if (t[2] !== 'mirror') throw new Error(`not a mirror status: ${raw}`);
  const legCount = Number(t[3]);
  const [inSync, nr] = t[4 + legCount]!.split('/').map(Number);
  return { raw, inSyncRegions: inSync!, regionCount: nr!, health: t[6 + legCount]! };
}

export async function mirrorStatus(server: ServerHandle, name = 'volume'): Promise<MirrorStatus> {
  const r = await run(process.execPath, [CLI_PATH, 'status', name, '--control', server.controlPath, '--json']);
  return parseMirrorStatus((JSON.parse(r.stdout) as { status: string }).status);
}

export async function waitInSync(server: ServerHandle, name = 'volume', timeoutMs = 60_000): Promise<MirrorStatus> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const s = await mirrorStatus(server, name);
    if (s.inSyncRegions === s.regionCount) return s;
    if (Date.now() > deadline) throw new Error(`not in sync after ${timeoutMs} ms: ${s.raw}`);
    await new Promise((r) => setTimeout(r, IN_SYNC_POLL_MS));
  }
}

/** Region indexes whose clean bit is 0 in the on-disk log. */
export async function diskLogDirtyRegions(logFile: string): Promise<{ regionCount: number; dirty: number[] }> {
  const buf = await readFile(logFile);
  const magic = buf.readUInt32LE(0);
  if (magic !== DISK_LOG_MAGIC) throw new Error(`${logFile}: bad disk log magic 0x${magic.toString(16)}`);
  const regionCount = Number(buf.readBigUInt64LE(8));
  const dirty: number[] = [];
  for (let i = 0; i < regionCount; i++) {
    const byte = buf[DISK_LOG_BITMAP_OFFSET_BYTES + (i >> 3)]!;
    if ((byte & (1 << (i & 7))) === 0) dirty.push(i);
  }
  return { regionCount, dirty };
}
