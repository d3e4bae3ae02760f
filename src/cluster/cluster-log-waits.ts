// cluster-log-waits.ts — what a cluster log member is waiting for from its group, as plain data
// (ClusterLog.pendingWaits) and as one sentence per wait (describeWaits), naming the message (request
// type and sequence number) and the nodes it waits on. A repair or a suspend that takes too long reports
// these sentences (event repair-waiting), so a hang explains itself in the logs.

export interface PendingFlush {
  /** LEG_FAILED needs every other member's acknowledgement, FLUSH a majority's. */
  readonly kind: 'FLUSH' | 'LEG_FAILED';
  readonly seq: number;
  readonly sentAtMs: number;
  /** Came back to this member in the total order. */
  readonly delivered: boolean;
  readonly acks: number;
  readonly acksNeeded: number;
  /** Members of the view (node ids) that have not acknowledged it. */
  readonly notAckedBy: readonly number[];
  /** clustered-disk: waits for the log server's durable write (its node id), or null. */
  readonly durableWriteBy: number | null;
}

export interface PendingWaits {
  readonly group: string;
  /** This member does not hold the replicated state yet (null: it does). */
  readonly state: { readonly joined: boolean } | null;
  /** Own LEGS announcements not delivered back yet. */
  readonly legs: readonly { readonly seq: number; readonly devices: readonly string[]; readonly sentAtMs: number }[];
  readonly flushes: readonly PendingFlush[];
  /** The members' leg sets, when they differ (writes wait on every node until they agree); null: agreed. */
  readonly legSets: readonly { readonly nodeId: number; readonly devices: readonly string[] | null }[] | null;
  /** Nodes gone with NODEDOWN still in the last quorum view: flushes wait until it drops them. */
  readonly suspectNodes: readonly number[];
  /** false: this node is not quorate (flushes fail); null: unknown / not checked. */
  readonly quorate: boolean | null;
}

const nodes = (ids: readonly number[]) => (ids.length === 1 ? `node ${ids[0]}` : `nodes ${ids.join(', ')}`);

/** One sentence per wait; empty when the member waits for nothing. */
export function describeWaits(w: PendingWaits, nowMs: number): string[] {
  const out: string[] = [];
  if (w.state) out.push(w.state.joined ? `the log state: a checkpoint from the log server of ${w.group}` : `the join of ${w.group} to be delivered`);
  for (const l of w.legs) {
    out.push(`LEGS seq ${l.seq} (${l.devices.join(' ')}), sent ${Math.round(nowMs - l.sentAtMs)} ms ago: not delivered back`);
  }
  for (const f of w.flushes) {
    const age = `sent ${Math.round(nowMs - f.sentAtMs)} ms ago`;
    if (!f.delivered) out.push(`${f.kind} seq ${f.seq}, ${age}: not delivered back`);
    else if (f.acks < f.acksNeeded) out.push(`${f.kind} seq ${f.seq}, ${age}: ${f.acks}/${f.acksNeeded} acknowledgements, none yet from ${nodes(f.notAckedBy)}`);
    else if (f.durableWriteBy !== null) out.push(`${f.kind} seq ${f.seq}, ${age}: the durable log write by the log server (node ${f.durableWriteBy})`);
  }
  if (w.legSets) {
    const sets = w.legSets.map((s) => `node ${s.nodeId} ${s.devices === null ? 'not announced' : `[${s.devices.join(' ')}]`}`);
    out.push(`the members' leg sets to agree (writes wait on every node until then): ${sets.join(', ')}`);
  }
  if (w.suspectNodes.length > 0) out.push(`a quorum view without ${nodes(w.suspectNodes)} (gone with NODEDOWN)`);
  if (w.quorate === false) out.push('quorum (this node is not quorate)');
  return out;
}
