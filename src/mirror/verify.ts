// Online verify (beyond dm): compare the legs of a live mirror region by region, optionally repair.
// Owns: the compare loop. Each in-sync region is held briefly through the region hash (new writes park,
// the region's pending writes drain), read in chunkBytes pieces from every healthy leg and compared with
// the source leg; with repair, the source's bytes are written to the legs that differ (under a cluster log
// the region is set out of sync and the group resyncs it instead). Regions not in sync are skipped (resync
// owns them). A read error fails that leg ('R'), as any read would.
// Async: awaits leg I/O; one region held at a time, so client I/O elsewhere is never stalled.

import type { MirrorExport } from './mirror.js';

export interface VerifyOptions {
  /** Write the source leg's bytes over differing legs. */
  readonly repair?: boolean;
  readonly chunkBytes?: number;
  /** Region range (default: all). */
  readonly firstRegion?: number;
  readonly regionCount?: number;
  /** Checked between regions; set aborted=true to stop early. */
  readonly signal?: { readonly aborted: boolean };
}

export interface VerifyMismatch {
  readonly region: number;
  /** Legs whose bytes differ from the source leg. */
  readonly legIndexes: number[];
  readonly sourceLeg: number;
  readonly repaired: boolean;
}

export interface VerifyResult {
  readonly regionsChecked: number;
  /** Regions not in sync (left to resync) or unavailable. */
  readonly regionsSkipped: number;
  readonly mismatches: VerifyMismatch[];
}

export const VERIFY_CHUNK_BYTES_DEFAULT = 1024 * 1024;

/** A clustered repair waits this long at most for the group to resync the region. */
export const VERIFY_CLUSTER_RESYNC_WAIT_MS = 120_000;

export async function verifyMirror(m: MirrorExport, opts: VerifyOptions = {}): Promise<VerifyResult> {
  const chunkBytes = opts.chunkBytes ?? VERIFY_CHUNK_BYTES_DEFAULT;
  const access = m.verifyAccess();
  // A cluster log: other nodes write these legs too, and the hold here does not stop them. A repair must
  // not write over a leg another node may be writing (its write could land between our read and our
  // write): the region is set out of sync instead, and the group's recovery copies it once no node
  // writes it any more (cluster-log-state.ts applyGetResyncWork).
  const clustered = access.log.isRemoteRecovering !== undefined;
  const regionCount = access.log.regionCount;
  const first = opts.firstRegion ?? 0;
  const last = Math.min(regionCount, first + (opts.regionCount ?? regionCount)) - 1;
  const buffers: Buffer[] = [];
  const mismatches: VerifyMismatch[] = [];
  let regionsChecked = 0;
  let regionsSkipped = 0;

  for (let region = first; region <= last; region++) {
    if (opts.signal?.aborted || m.status().suspended) break;
    // Re-read access each region: a reload may have changed legs.
    const { legs, regions, log, healthy, sourceLeg, failLeg, emit } = m.verifyAccess();
    const source = sourceLeg();
    if (source < 0 || !log.inSync(region) || regions.isHeld(region)) {
      regionsSkipped++;
      continue;
    }
    const others: number[] = [];
    for (let i = 0; i < legs.length; i++) if (i !== source && healthy(i)) others.push(i);
    while (buffers.length < legs.length) buffers.push(Buffer.allocUnsafe(chunkBytes));

    await regions.acquire(region, 'verify');
    const differing = new Set<number>();
    let readFailed = false;
    try {
      const startBytes = regions.regionStartBytes(region);
      const lengthBytes = regions.regionLengthBytes(region);
      for (let done = 0; done < lengthBytes && !readFailed; ) {
        const n = Math.min(chunkBytes, lengthBytes - done);
        const off = startBytes + done;
        const srcBuf = buffers[source]!.subarray(0, n);
        const reads = [source, ...others].map((i) =>
          legs[i]!.read(buffers[i]!.subarray(0, n), off).then(
            () => true,
            (err: unknown) => {
              failLeg(i, err);
              return false;
            },
          ),
        );
        const ok = await Promise.all(reads);
        if (!ok[0]) {
          readFailed = true;
          break;
        }
        const repairs: Promise<void>[] = [];
        others.forEach((i, k) => {
          if (!ok[k + 1]) return;
          if (!buffers[i]!.subarray(0, n).equals(srcBuf)) {
            differing.add(i);
            if (opts.repair && !clustered) repairs.push(legs[i]!.write(srcBuf, off, { fua: false }).catch((err: unknown) => failLeg(i, err, 'write')));
          }
        });
        await Promise.all(repairs);
        done += n;
      }
    } finally {
      regions.releaseHold(region);
    }
    if (readFailed) {
      regionsSkipped++;
      continue;
    }
    regionsChecked++;
    if (differing.size) {
      const legIndexes = [...differing].sort((a, b) => a - b);
      let repaired = opts.repair === true;
      if (repaired && clustered) {
        regions.markNosync(region);
        repaired = await backInSync(m, region, opts.signal);
      }
      mismatches.push({ region, legIndexes, sourceLeg: source, repaired });
      emit('verify-mismatch', { region, legIndexes });
    }
  }
  return { regionsChecked, regionsSkipped, mismatches };
}

/** Waits until the cluster resynced the region (true), or the run was stopped / the wait ran out (false). */
async function backInSync(m: MirrorExport, region: number, signal: VerifyOptions['signal']): Promise<boolean> {
  const t0 = Date.now();
  for (;;) {
    if (m.verifyAccess().log.inSync(region)) return true;
    if (signal?.aborted || m.status().suspended || Date.now() - t0 > VERIFY_CLUSTER_RESYNC_WAIT_MS) return false;
    await new Promise((r) => setTimeout(r, 5));
  }
}
