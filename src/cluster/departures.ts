// departures.ts — what a departed cluster node leaves for the survivors to resync, and what they have
// recovered of it since (issue 8 test 5: "node 1 resyncs exactly node 2's dirty regions").
//
// Owns: per departed node id (pure bookkeeping, no I/O): the regions that went out of sync because it
// left, the recovery claim it held, which of those regions have been set in sync since and by which node,
// and the compact range text ("3,5-9") the events carry.
//
// Definitions (applied to the replicated state at the membership change where the node's last member
// left; every member computes the same sets because it applies the same totally ordered changes):
//  - marked: every region the node held a mark on (a mark is durable once its FLUSH was delivered).
//  - purged ("regions": the ones that went out of sync because of it): its marked regions that were in
//    sync at that moment. A region a survivor had marked as well is included: the departed node may have
//    written it on one leg only, so it is resynced all the same (marks are per node, sync bits are not).
//  - markedOutOfSync: its marked regions that were already out of sync (resynced anyway, not because of it).
//  - released: the region it was recovering, if any (already out of sync; another node recovers it).
//  - pending: purged + released, minus the regions set in sync since (SET_REGION_SYNC in the total order,
//    from any node). When pending is empty the departure is resynced.
// Survivors' own writes after the change never enter these sets: they mark regions that are in sync.

export interface DepartureLimits {
  /** Departures remembered at once (the oldest unfinished one is dropped beyond). */
  departuresTrackedMax: number;
  /** Range runs written into an event's region text; beyond, the text ends with "...". */
  eventRangeRunsMax: number;
}
export const DEPARTURE_LIMITS_DEFAULT: DepartureLimits = {
  departuresTrackedMax: 64,
  eventRangeRunsMax: 4096,
};

export interface DepartureLeft {
  readonly nodeId: number;
  /** Sorted. */
  readonly purged: readonly number[];
  readonly markedOutOfSync: readonly number[];
  readonly released: number | null;
  readonly atMs: number;
}

export interface DepartureResynced {
  readonly nodeId: number;
  /** Sorted: every region of purged + released, each set in sync by someone since. */
  readonly recovered: readonly number[];
  /** Sorted: the part of `recovered` this node recovered itself. */
  readonly recoveredHere: readonly number[];
  /** Recoverer node id -> regions it recovered (0: the state was re-taken from a checkpoint). */
  readonly recoveredBy: ReadonlyMap<number, number>;
  readonly purged: readonly number[];
  readonly released: number | null;
  readonly leftAtMs: number;
  readonly doneAtMs: number;
}

interface Tracked {
  left: DepartureLeft;
  pending: Set<number>;
  recovered: number[];
  recoveredHere: number[];
  recoveredBy: Map<number, number>;
}

/** Node id used in recoveredBy for regions found in sync after the state was re-taken. */
export const RECOVERED_BY_UNKNOWN = 0;

export class DepartureTracker {
  private readonly limits: DepartureLimits;
  private readonly byNode = new Map<number, Tracked>();

  constructor(limits: Partial<DepartureLimits> = {}) {
    this.limits = { ...DEPARTURE_LIMITS_DEFAULT, ...limits };
  }

  /** Departures not yet resynced (tests, status). */
  get unfinished(): number {
    return this.byNode.size;
  }

  /** Regions still waiting for recovery, per departed node id. */
  pending(): Map<number, number[]> {
    return new Map([...this.byNode].map(([n, t]) => [n, [...t.pending].sort((a, b) => a - b)]));
  }

  /**
   * A node left. Returns the resync record at once when it left nothing out of sync. A node that left
   * again before its earlier departure was resynced (rejoined and died) keeps both sets pending.
   */
  left(d: DepartureLeft): DepartureResynced | null {
    const prev = this.byNode.get(d.nodeId);
    const t: Tracked = prev
      ? { ...prev, left: { ...d, purged: union(prev.left.purged, d.purged), released: d.released ?? prev.left.released } }
      : { left: d, pending: new Set(), recovered: [], recoveredHere: [], recoveredBy: new Map() };
    for (const r of d.purged) t.pending.add(r);
    if (d.released !== null) t.pending.add(d.released);
    this.byNode.delete(d.nodeId);
    if (this.byNode.size >= this.limits.departuresTrackedMax) {
      const oldest = this.byNode.keys().next().value as number;
      this.byNode.delete(oldest);
    }
    this.byNode.set(d.nodeId, t);
    return t.pending.size === 0 ? this.finish(d.nodeId, t, d.atMs) : null;
  }

  /** A region was set in sync (delivered SET_REGION_SYNC true). Returns the departures it completed. */
  regionSynced(region: number, byNodeId: number, here: boolean, atMs: number): DepartureResynced[] {
    const done: DepartureResynced[] = [];
    for (const [n, t] of [...this.byNode]) {
      if (!t.pending.delete(region)) continue;
      t.recovered.push(region);
      if (here) t.recoveredHere.push(region);
      t.recoveredBy.set(byNodeId, (t.recoveredBy.get(byNodeId) ?? 0) + 1);
      if (t.pending.size === 0) done.push(this.finish(n, t, atMs));
    }
    return done;
  }

  /** The state was re-taken (checkpoint after a lost merge): pending regions now in sync count as done. */
  reconcile(inSync: (region: number) => boolean, atMs: number): DepartureResynced[] {
    const done: DepartureResynced[] = [];
    for (const [n, t] of [...this.byNode]) {
      for (const r of [...t.pending]) {
        if (!inSync(r)) continue;
        t.pending.delete(r);
        t.recovered.push(r);
        t.recoveredBy.set(RECOVERED_BY_UNKNOWN, (t.recoveredBy.get(RECOVERED_BY_UNKNOWN) ?? 0) + 1);
      }
      if (t.pending.size === 0) done.push(this.finish(n, t, atMs));
    }
    return done;
  }

  private finish(nodeId: number, t: Tracked, atMs: number): DepartureResynced {
    this.byNode.delete(nodeId);
    const sorted = (a: number[]) => [...a].sort((x, y) => x - y);
    return {
      nodeId,
      recovered: sorted(t.recovered),
      recoveredHere: sorted(t.recoveredHere),
      recoveredBy: t.recoveredBy,
      purged: t.left.purged,
      released: t.left.released,
      leftAtMs: t.left.atMs,
      doneAtMs: atMs,
    };
  }

  /** "3,5-9,12" for sorted distinct regions, at most runsMax runs (then ",..."). */
  rangeText(sortedRegions: readonly number[]): string {
    return rangeText(sortedRegions, this.limits.eventRangeRunsMax);
  }
}

function union(a: readonly number[], b: readonly number[]): number[] {
  return [...new Set([...a, ...b])].sort((x, y) => x - y);
}

/** "3,5-9,12" for sorted distinct regions, at most runsMax runs (then ",..."). */
export function rangeText(sortedRegions: readonly number[], runsMax = DEPARTURE_LIMITS_DEFAULT.eventRangeRunsMax): string {
  const runs: string[] = [];
  for (let i = 0; i < sortedRegions.length; ) {
    if (runs.length >= runsMax) {
      runs.push('...');
      break;
    }
    const start = sortedRegions[i]!;
    let end = start;
    while (i + 1 < sortedRegions.length && sortedRegions[i + 1] === end + 1) end = sortedRegions[++i]!;
    i++;
    runs.push(start === end ? String(start) : `${start}-${end}`);
  }
  return runs.join(',');
}

/** Inverse of rangeText (tests, operators): "3,5-9" -> [3,5,6,7,8,9]. Throws on "..." (truncated text). */
export function parseRangeText(text: string): number[] {
  if (text === '') return [];
  const out: number[] = [];
  for (const run of text.split(',')) {
    const m = /^(\d+)(?:-(\d+))?$/.exec(run);
    if (!m) throw new RangeError(`bad region range "${run}"`);
    const a = Number(m[1]);
    const b = m[2] === undefined ? a : Number(m[2]);
    for (let r = a; r <= b; r++) out.push(r);
  }
  return out;
}
