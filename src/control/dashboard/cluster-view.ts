// What the dashboard and the metrics show of a cluster log: its members and its log server. A mirror's
// log is a cluster log when it offers onMembership (src/cluster/cluster-log.ts); control does not import
// src/cluster (the import graph keeps cluster below control's reach), so it is recognised by shape.
//
// Owns: one membership subscription per cluster log (kept in a WeakMap, so a closed log is forgotten) and
// the last membership it reported. Read-only; never blocks. A single-node (core/disk) log gives null.
import type { DirtyLog } from '../../mirror/log/dirty-log.js';

export interface ClusterMember {
  readonly nodeId: number;
  readonly pid: number;
}

export interface ClusterView {
  readonly members: ClusterMember[];
  readonly server: ClusterMember | null;
}

interface ClusterLogShape {
  onMembership(fn: (m: { members: ClusterMember[]; server: ClusterMember | undefined }) => void): unknown;
  readonly server?: ClusterMember | undefined;
}

const views = new WeakMap<object, { members: ClusterMember[]; server: ClusterMember | null }>();
const listeners = new Set<(log: object, view: ClusterView) => void>();

function isClusterLog(log: unknown): log is ClusterLogShape {
  return typeof (log as { onMembership?: unknown }).onMembership === 'function';
}

/** Called with every membership change of any cluster log seen so far (the dashboard's timeline). */
export function onClusterMembership(fn: (log: object, view: ClusterView) => void): () => void {
  listeners.add(fn);
  return () => listeners.delete(fn);
}

export function clusterViewOf(log: DirtyLog): ClusterView | null {
  if (!isClusterLog(log)) return null;
  let v = views.get(log);
  if (v === undefined) {
    const created = { members: [] as ClusterMember[], server: (log.server ?? null) as ClusterMember | null };
    v = created;
    views.set(log, created);
    log.onMembership((m) => {
      created.members = [...m.members];
      created.server = m.server ?? null;
      for (const l of listeners) l(log, { members: created.members, server: created.server });
    });
  }
  return { members: v.members, server: log.server ?? v.server };
}
