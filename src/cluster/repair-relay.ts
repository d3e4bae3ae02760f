// repair-relay.ts — cluster-wide repair between the control plane and the cluster logs of this process.
//
// Owns: the registry of live ClusterLogs by log uuid (the newest opened through clusterLogOpener; dropped
// on close), sending a REPAIR on a log's group (requestClusterRepair), fanning REPAIRs from other nodes
// out to subscribers (the control plane's repair policy applies them to the volume with that uuid), and
// telling a stalled repair what the log waits for (clusterLogWaits).
import type { ClusterLog } from './cluster-log.js';
import type { Unsubscribe } from './transport.js';

export interface ClusterRepairRequest {
  readonly uuid: string;
  /** Leg devices every node drops. */
  readonly removed: readonly string[];
  /** Spare devices every node adds in their place (the same shared devices on every node). */
  readonly added: readonly string[];
  readonly fromNodeId: number;
}

const live = new Map<string, ClusterLog>();
const listeners = new Set<(r: ClusterRepairRequest) => void>();

/** Called by the log opener for every ClusterLog it opens. */
export function registerClusterLog(uuid: string, log: ClusterLog): void {
  live.set(uuid, log);
  log.onRepair((r) => {
    if (r.fromMe || live.get(uuid) !== log) return;
    for (const fn of [...listeners]) fn({ uuid, removed: r.removed, added: r.added, fromNodeId: r.from.nodeId });
  });
  const close = log.close.bind(log);
  log.close = async () => {
    if (live.get(uuid) === log) live.delete(uuid);
    await close();
  };
}

/**
 * Multicast a REPAIR on the log's group (drop `removed`, add the spares `added`); false when this process
 * has no live cluster log for the uuid.
 */
export async function requestClusterRepair(uuid: string, removed: readonly string[], added: readonly string[] = []): Promise<boolean> {
  const log = live.get(uuid);
  if (log === undefined) return false;
  await log.requestRepair(removed, added);
  return true;
}

/**
 * Whether this process is the log server of the cluster log `uuid` (lowest initialized member); undefined
 * when it has no live cluster log for it. Automatic repairs that add spares are decided by the server only.
 */
export function isClusterLogServer(uuid: string): boolean | undefined {
  const log = live.get(uuid);
  if (log === undefined) return undefined;
  return log.isLogServer;
}

/** REPAIRs sent by other nodes (own requests are not repeated). */
export function onClusterRepair(fn: (r: ClusterRepairRequest) => void): Unsubscribe {
  listeners.add(fn);
  return () => listeners.delete(fn);
}

/**
 * What this process's cluster log `uuid` waits for from its group (ClusterLog.waitingFor), undefined
 * when it has none; a stalled repair reports it.
 */
export function clusterLogWaits(uuid: string): string[] | undefined {
  return live.get(uuid)?.waitingFor();
}
