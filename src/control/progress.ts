// Progress for long CLI waits (`nbd-mirror wait NAME --sync`, `nbd-mirror verify NAME`): a
// cli-progress bar with rate and ETA when stderr is a terminal, plain lines otherwise (logs, CI, pipes),
// at most one per PLAIN_LINE_INTERVAL_MS plus the last one. stdout keeps only the command's answer.
//
// Owns: the display and the rate/ETA estimate (an exponentially weighted rate over the samples it is
// given, so one slow poll does not swing the ETA); and waitForSync, which polls the control API (the
// status line's in-sync count and the table's region size) until the volume is in sync.
import { SingleBar } from 'cli-progress';
import type { ControlClient } from './client.js';
import { ControlError } from './control-error.js';
import { parseTable } from '../mirror/table.js';
import { SECTOR_BYTES } from '../units.js';

export const PLAIN_LINE_INTERVAL_MS = 5000;
export const SYNC_POLL_MS = 500;
/** Weight of the newest sample in the rate estimate. */
const RATE_EWMA_WEIGHT = 0.3;

export interface ProgressOptions {
  /** What is progressing, e.g. "vol: sync". */
  readonly label: string;
  readonly totalBytes: number;
  /** Default: process.stderr. */
  readonly stream?: NodeJS.WritableStream & { isTTY?: boolean };
  /** Default: the stream is a terminal. */
  readonly tty?: boolean;
  readonly nowMs?: () => number;
}

export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v.toFixed(i === 0 || v >= 100 ? 0 : 1)} ${units[i]}`;
}

export function formatEta(sec: number | null): string {
  if (sec === null || !Number.isFinite(sec)) return '?';
  const s = Math.max(0, Math.round(sec));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  return h > 0 ? `${h}h${String(m).padStart(2, '0')}m` : m > 0 ? `${m}m${String(s % 60).padStart(2, '0')}s` : `${s}s`;
}

export class Progress {
  private readonly stream: NodeJS.WritableStream;
  private readonly bar: SingleBar | undefined;
  private readonly now: () => number;
  private last: { tMs: number; doneBytes: number } | undefined;
  private rateBytesPerSec: number | null = null;
  private lastLineMs = -Infinity;
  /** The last plain line written: stop() does not repeat it. */
  private lastLineText = '';
  private doneBytes = 0;
  private stopped = false;

  constructor(private readonly opts: ProgressOptions) {
    this.stream = opts.stream ?? process.stderr;
    this.now = opts.nowMs ?? (() => Date.now());
    const tty = opts.tty ?? (opts.stream ?? process.stderr).isTTY === true;
    if (tty) {
      this.bar = new SingleBar({
        format: `${opts.label} [{bar}] {percentage}% | {doneText} of {totalText} | {rateText} | ETA {etaText}`,
        stream: this.stream,
        hideCursor: true,
        barsize: 30,
        barCompleteChar: '\u2588',
        barIncompleteChar: '\u2591',
        etaBuffer: 1, // we compute the ETA ourselves
        fps: 5,
      });
      this.bar.start(opts.totalBytes, 0, this.payload());
    }
  }

  /** The rate estimate in bytes/s, null until two samples. */
  get rate(): number | null {
    return this.rateBytesPerSec;
  }

  get etaSec(): number | null {
    if (this.rateBytesPerSec === null || this.rateBytesPerSec <= 0) return null;
    return (this.opts.totalBytes - this.doneBytes) / this.rateBytesPerSec;
  }

  update(doneBytes: number): void {
    if (this.stopped) return;
    const t = this.now();
    if (this.last !== undefined && t > this.last.tMs) {
      const r = (Math.max(0, doneBytes - this.last.doneBytes) * 1000) / (t - this.last.tMs);
      this.rateBytesPerSec = this.rateBytesPerSec === null ? r : RATE_EWMA_WEIGHT * r + (1 - RATE_EWMA_WEIGHT) * this.rateBytesPerSec;
    }
    this.last = { tMs: t, doneBytes };
    this.doneBytes = doneBytes;
    if (this.bar !== undefined) {
      this.bar.update(doneBytes, this.payload());
    } else if (t - this.lastLineMs >= PLAIN_LINE_INTERVAL_MS || doneBytes >= this.opts.totalBytes) {
      this.lastLineMs = t;
      this.lastLineText = this.line();
      this.stream.write(`${this.lastLineText}\n`);
    }
  }

  /** Stop the bar (or write the final plain line if the last one is stale). */
  stop(): void {
    if (this.stopped) return;
    this.stopped = true;
    if (this.bar !== undefined) this.bar.stop();
    else if (this.line() !== this.lastLineText) this.stream.write(`${this.line()}\n`);
  }

  line(): string {
    const total = this.opts.totalBytes;
    const pct = total === 0 ? 100 : (100 * this.doneBytes) / total;
    const p = this.payload();
    return `${this.opts.label}: ${pct.toFixed(1)}% (${p.doneText} of ${p.totalText}), ${p.rateText}, ETA ${p.etaText}`;
  }

  private payload(): { doneText: string; totalText: string; rateText: string; etaText: string } {
    return {
      doneText: formatBytes(this.doneBytes),
      totalText: formatBytes(this.opts.totalBytes),
      rateText: this.rateBytesPerSec === null ? '? B/s' : `${formatBytes(this.rateBytesPerSec)}/s`,
      etaText: this.doneBytes >= this.opts.totalBytes ? 'done' : formatEta(this.etaSec),
    };
  }
}

/** In-sync count from a mirror status line `<start> <len> mirror <#legs> <dev>... <in>/<total> ...`. */
export function parseSyncCount(statusLine: string): { inSyncRegions: number; regionCount: number } | null {
  const t = statusLine.trim().split(/\s+/);
  if (t[2] !== 'mirror') return null;
  const legCount = Number(t[3]);
  if (!Number.isSafeInteger(legCount) || legCount < 1) return null;
  const m = /^([0-9]+)\/([0-9]+)$/.exec(t[4 + legCount] ?? '');
  if (m === null) return null;
  return { inSyncRegions: Number(m[1]), regionCount: Number(m[2]) };
}

export interface SyncResult {
  readonly name: string;
  readonly inSyncRegions: number;
  readonly regionCount: number;
  readonly mirror: boolean;
  readonly seconds: number;
}

/**
 * Poll the volume until every region is in sync (a linear volume is trivially done), showing progress
 * unless `quiet`. Throws ControlError('ETIMEDOUT') after timeoutMs.
 */
export async function waitForSync(
  client: ControlClient,
  volumePath: (op: string) => string,
  opts: { readonly name: string; readonly timeoutMs?: number; readonly quiet: boolean; readonly stream?: ProgressOptions['stream']; readonly tty?: boolean },
): Promise<SyncResult> {
  const t0 = Date.now();
  const table = (await client.get<{ table: string }>(volumePath('table'))).table;
  const spec = parseTable(table);
  if (spec.kind !== 'mirror') return { name: opts.name, inSyncRegions: 0, regionCount: 0, mirror: false, seconds: 0 };
  const regionBytes = spec.log.regionSizeSectors * SECTOR_BYTES;
  const totalBytes = spec.lengthSectors * SECTOR_BYTES;
  let progress: Progress | undefined;
  try {
    for (;;) {
      const status = (await client.get<{ status: string }>(volumePath('status'))).status;
      const c = parseSyncCount(status);
      if (c === null) return { name: opts.name, inSyncRegions: 0, regionCount: 0, mirror: false, seconds: (Date.now() - t0) / 1000 };
      if (!opts.quiet && progress === undefined && c.inSyncRegions < c.regionCount) {
        progress = new Progress({ label: `${opts.name}: sync`, totalBytes, ...(opts.stream ? { stream: opts.stream } : {}), ...(opts.tty !== undefined ? { tty: opts.tty } : {}) });
      }
      progress?.update(Math.min(totalBytes, c.inSyncRegions * regionBytes));
      if (c.inSyncRegions >= c.regionCount) return { name: opts.name, ...c, mirror: true, seconds: (Date.now() - t0) / 1000 };
      if (opts.timeoutMs !== undefined && Date.now() - t0 > opts.timeoutMs) {
        throw new ControlError('ETIMEDOUT', `${opts.name}: not in sync after ${opts.timeoutMs} ms (${c.inSyncRegions}/${c.regionCount} regions)`);
      }
      await new Promise((r) => setTimeout(r, SYNC_POLL_MS));
    }
  } finally {
    progress?.stop();
  }
}
