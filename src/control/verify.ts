// Online verify of a served volume (md's `check` / `repair`), driven through the control API:
//   POST /v1/volumes/NAME/verify {repair?: boolean} -> VolumeVerifyResult (answered when the run ends)
// The run is the engine's verifyMirror (src/mirror/verify.ts) called over batches of regions while the
// volume serves I/O; between batches it records volume events (streamed on /v1/events, not counted):
//   verify-start    {repair, regionCount, regionSizeBytes, totalBytes}
//   verify-progress {regionsDone, regionCount, regionsChecked, regionsSkipped, bytesDone, totalBytes,
//                    bytesPerSec, etaSec, mismatches}          at most every VERIFY_PROGRESS_INTERVAL_MS
//   verify-mismatch {region, legIndexes}                        (the engine's own event)
//   verify-done     the result (also when cancelled, with cancelled: reason)
//
// Owns: one verify at a time per volume (a second request gets EBUSY), cancellation (suspend, reload,
// shutdown, the requester going away, a table swap), and the result shape. Does not own the compare.
import { MirrorExport } from '../mirror/mirror.js';
import { verifyMirror } from '../mirror/verify.js';
import { SECTOR_BYTES } from '../units.js';
import { ControlError } from './control-error.js';
import type { Volume, VolumeEvent } from './volumes.js';

/** Bytes compared per verifyMirror call (a whole number of regions, at least one). */
export const VERIFY_BATCH_BYTES = 8 * 1024 * 1024;
/** Largest read per leg inside a region. */
export const VERIFY_CHUNK_BYTES_MAX = 1024 * 1024;
/** verify-progress events at most this often (plus the last one). */
export const VERIFY_PROGRESS_INTERVAL_MS = 250;
/** Weight of the newest sample in the bytes/s estimate. */
const RATE_EWMA_WEIGHT = 0.3;

export interface VolumeVerifyResult {
  readonly name: string;
  readonly repair: boolean;
  readonly regionCount: number;
  readonly regionSizeBytes: number;
  readonly regionsChecked: number;
  /** Not in sync (resync owns them) or unreadable on the source leg. */
  readonly regionsSkipped: number;
  /** Region numbers whose legs differed, ascending. */
  readonly mismatchedRegions: number[];
  /** The same as ranges, e.g. "3,7-9" ("" when none). */
  readonly mismatchRanges: string;
  readonly repaired: number;
  /** Per region: the legs that differed and the leg compared against. */
  readonly mismatches: { region: number; legIndexes: number[]; sourceLeg: number; repaired: boolean }[];
  readonly seconds: number;
  /** Why the run stopped early, or null when it covered every region. */
  readonly cancelled: string | null;
}

/** "3,7-9" from ascending region numbers. */
export function formatRanges(sorted: readonly number[]): string {
  const out: string[] = [];
  for (let i = 0; i < sorted.length; ) {
    let j = i;
    while (j + 1 < sorted.length && sorted[j + 1] === sorted[j]! + 1) j++;
    out.push(i === j ? String(sorted[i]) : `${sorted[i]}-${sorted[j]}`);
    i = j + 1;
  }
  return out.join(',');
}

/** The run of each volume (settled when it has stopped touching the legs) and how to stop it. */
const running = new WeakMap<Volume, { done: Promise<unknown>; cancel: (why: string) => void }>();

/** Resolves once no verify runs on `v` (Volume.close waits for it, after 'closed' cancelled the run). */
export async function verifyStopped(v: Volume): Promise<void> {
  await running.get(v)?.done.catch(() => undefined);
}

/** Cancel a running verify and wait until it stopped (after the region it is on): suspend does this first. */
export async function stopVerify(v: Volume, why: string): Promise<void> {
  running.get(v)?.cancel(why);
  await verifyStopped(v);
}

export function verifyVolume(v: Volume, opts: { repair: boolean; signal?: AbortSignal }): Promise<VolumeVerifyResult> {
  const exp = v.liveExport;
  if (!(exp instanceof MirrorExport)) throw new ControlError('EINVAL', `nothing to verify: "${v.name}" is ${v.liveSpec.kind}`);
  if (running.has(v)) throw new ControlError('EBUSY', `a verify of "${v.name}" is already running`);
  if (v.state !== 'ACTIVE') throw new ControlError('EBUSY', `"${v.name}" is suspended: resume it before verifying`);
  const entry: { done: Promise<unknown>; cancel: (why: string) => void } = { done: Promise.resolve(), cancel: () => undefined };
  running.set(v, entry);
  const done = runVerify(v, exp, opts, (c) => (entry.cancel = c)).finally(() => running.delete(v));
  entry.done = done;
  return done;
}

async function runVerify(
  v: Volume,
  exp: MirrorExport,
  opts: { repair: boolean; signal?: AbortSignal },
  register: (cancel: (why: string) => void) => void,
): Promise<VolumeVerifyResult> {
  let cancelled: string | null = null;
  const stop = { aborted: false };
  const cancel = (why: string) => {
    if (cancelled === null) cancelled = why;
    stop.aborted = true;
  };
  register(cancel);
  const onEvent = (ev: VolumeEvent) => {
    if (ev.kind === 'suspend' || ev.kind === 'reload' || ev.kind === 'resume') cancel(`volume ${ev.kind}`);
  };
  const onClosed = () => cancel('server shutting down');
  const onAbort = () => cancel('requester went away');
  v.on('event', onEvent);
  v.on('closed', onClosed);
  opts.signal?.addEventListener('abort', onAbort);
  if (opts.signal?.aborted) onAbort();

  const t0 = Date.now();
  const regionCount = exp.verifyAccess().log.regionCount;
  const regionSizeBytes = exp.regionSizeBytes;
  const totalBytes = v.liveSpec.lengthSectors * SECTOR_BYTES;
  const batchRegions = Math.max(1, Math.floor(VERIFY_BATCH_BYTES / regionSizeBytes));
  const chunkBytes = Math.min(VERIFY_CHUNK_BYTES_MAX, regionSizeBytes);
  const mismatches: VolumeVerifyResult['mismatches'] = [];
  let regionsChecked = 0;
  let regionsSkipped = 0;
  let regionsDone = 0;
  let rate: number | null = null;
  let last = { tMs: t0, bytes: 0 };
  let lastEventMs = -Infinity;

  const progress = (force: boolean) => {
    const now = Date.now();
    const bytesDone = Math.min(totalBytes, regionsDone * regionSizeBytes);
    if (now > last.tMs) {
      const r = ((bytesDone - last.bytes) * 1000) / (now - last.tMs);
      rate = rate === null ? r : RATE_EWMA_WEIGHT * r + (1 - RATE_EWMA_WEIGHT) * rate;
      last = { tMs: now, bytes: bytesDone };
    }
    if (!force && now - lastEventMs < VERIFY_PROGRESS_INTERVAL_MS) return;
    lastEventMs = now;
    v.record(
      'verify-progress',
      {
        repair: opts.repair,
        regionsDone,
        regionCount,
        regionsChecked,
        regionsSkipped,
        bytesDone,
        totalBytes,
        bytesPerSec: rate === null ? null : Math.round(rate),
        etaSec: rate === null || rate <= 0 ? null : Math.round((totalBytes - bytesDone) / rate),
        mismatches: mismatches.length,
      },
      false,
    );
  };

  try {
    v.record('verify-start', { repair: opts.repair, regionCount, regionSizeBytes, totalBytes }, false);
    progress(true);
    for (let first = 0; first < regionCount && !stop.aborted; first += batchRegions) {
      if (v.liveExport !== exp) {
        cancel('table replaced');
        break;
      }
      if (v.state !== 'ACTIVE') {
        cancel('volume suspended');
        break;
      }
      const count = Math.min(batchRegions, regionCount - first);
      const r = await verifyMirror(exp, { repair: opts.repair, chunkBytes, firstRegion: first, regionCount: count, signal: stop });
      regionsChecked += r.regionsChecked;
      regionsSkipped += r.regionsSkipped;
      mismatches.push(...r.mismatches.map((m) => ({ ...m, legIndexes: [...m.legIndexes] })));
      // verifyMirror stops early (without saying so) when the engine is suspended.
      if (r.regionsChecked + r.regionsSkipped < count) {
        cancel(exp.status().suspended ? 'volume suspended' : 'stopped');
        regionsDone += r.regionsChecked + r.regionsSkipped;
        break;
      }
      regionsDone += count;
      progress(false);
    }
    progress(true);
  } finally {
    v.off('event', onEvent);
    v.off('closed', onClosed);
    opts.signal?.removeEventListener('abort', onAbort);
  }
  const mismatchedRegions = mismatches.map((m) => m.region).sort((a, b) => a - b);
  const result: VolumeVerifyResult = {
    name: v.name,
    repair: opts.repair,
    regionCount,
    regionSizeBytes,
    regionsChecked,
    regionsSkipped,
    mismatchedRegions,
    mismatchRanges: formatRanges(mismatchedRegions),
    repaired: mismatches.filter((m) => m.repaired).length,
    mismatches,
    seconds: (Date.now() - t0) / 1000,
    cancelled,
  };
  v.record('verify-done', { ...result }, false);
  return result;
}
