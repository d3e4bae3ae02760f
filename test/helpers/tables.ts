// Table lines and backing files for e2e tests: sparse files in a test's temp dir and the dm table
// lines that serve them (sizes in 512-byte sectors, as dmsetup takes them).
import { join } from 'node:path';
import { createSparseFile, sectorsOf } from './tmp.js';

/** LVM's default mirror region size, 512 KiB. */
export const REGION_SECTORS_DEFAULT = 1024;
/** Enough for the disk log header (1 KiB) and the bitmap of any volume a test makes. */
export const LOG_FILE_BYTES = 1024 * 1024;

export function linearTable(file: string, sizeBytes: number, offsetSectors = 0): string {
  return `0 ${sectorsOf(sizeBytes)} linear ${file} ${offsetSectors}`;
}

export interface MirrorTableOptions {
  readonly legs: readonly string[];
  readonly sizeBytes: number;
  /** A disk log on this file; core log when absent. */
  readonly logFile?: string;
  readonly regionSectors?: number;
  readonly sync?: 'sync' | 'nosync';
  readonly features?: readonly string[];
}

export function mirrorTable(o: MirrorTableOptions): string {
  const region = o.regionSectors ?? REGION_SECTORS_DEFAULT;
  const logArgs = [...(o.logFile !== undefined ? [o.logFile] : []), String(region), ...(o.sync !== undefined ? [o.sync] : [])];
  const log = `${o.logFile !== undefined ? 'disk' : 'core'} ${logArgs.length} ${logArgs.join(' ')}`;
  const legs = `${o.legs.length} ${o.legs.map((l) => `${l} 0`).join(' ')}`;
  const features = o.features !== undefined && o.features.length > 0 ? ` ${o.features.length} ${o.features.join(' ')}` : '';
  return `0 ${sectorsOf(o.sizeBytes)} mirror ${log} ${legs}${features}`;
}

/** Sparse leg files leg0.img.. and (optionally) a log file in dir. */
export async function makeMirrorFiles(dir: string, legCount: number, sizeBytes: number): Promise<{ legs: string[]; logFile: string }> {
  const legs: string[] = [];
  for (let i = 0; i < legCount; i++) legs.push(await createSparseFile(join(dir, `leg${i}.img`), sizeBytes));
  const logFile = await createSparseFile(join(dir, 'mirror.log'), LOG_FILE_BYTES);
  return { legs, logFile };
}
