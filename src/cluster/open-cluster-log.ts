// open-cluster-log.ts — builds a ClusterLog for a table's `userspace ... clustered-core` log.
//
// (clustered-disk: the same log given the shared log device.)
// Owns: choosing the transport (corosync CPG through the addon unless one is given, e.g. a MemoryBus
// member in simulations), wiring corosync's quorum into the log's flush gate, and closing what it opened
// when the log closes. Throws CpgUnavailableError (with install/build instructions) when corosync
// support is missing.
import type { Leg } from '../mirror/legs/leg.js';
import type { SyncMode } from '../mirror/log/dirty-log.js';
import { ClusterLog, type ClusterLogEventSink, type ClusterLogLimits } from './cluster-log.js';
import { CorosyncQuorum, CpgTransport, type CpgLimits } from './cpg.js';
import type { Transport } from './transport.js';

export interface OpenClusterLogOptions {
  uuid: string;
  regionSizeBytes: number;
  lengthBytes: number;
  sync: SyncMode;
  integratedFlush?: boolean;
  /** Use this transport instead of corosync (simulation); quorum is then not checked. */
  transport?: Transport;
  cpgLimits?: Partial<CpgLimits>;
  limits?: Partial<ClusterLogLimits>;
  /** clustered-disk: the shared log device. */
  logDevice?: Leg;
  /** The volume's event sink (node departures are reported there). */
  events?: ClusterLogEventSink;
}

/** The caller still calls resume() (the mirror does, on activation). */
export function openClusterLog(opts: OpenClusterLogOptions): ClusterLog {
  if (opts.transport) {
    return new ClusterLog({ ...opts, transport: opts.transport });
  }
  const transport = new CpgTransport(opts.cpgLimits);
  let quorum: CorosyncQuorum;
  try {
    quorum = new CorosyncQuorum();
  } catch (err) {
    void transport.close();
    throw err;
  }
  const log = new ClusterLog({
    uuid: opts.uuid,
    regionSizeBytes: opts.regionSizeBytes,
    lengthBytes: opts.lengthBytes,
    sync: opts.sync,
    integratedFlush: opts.integratedFlush,
    limits: opts.limits,
    ...(opts.logDevice ? { logDevice: opts.logDevice } : {}),
    ...(opts.events ? { events: opts.events } : {}),
    transport,
    isQuorate: () => quorum.quorate,
    onQuorumChange: (fn) => quorum.onChange((q) => fn({ quorate: q.quorate, nodeIds: q.nodeIds })),
  });
  const close = log.close.bind(log);
  log.close = async () => {
    quorum.close();
    await close();
  };
  return log;
}
