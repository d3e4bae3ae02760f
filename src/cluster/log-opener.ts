// log-opener.ts — the LogOpener (src/mirror/open.ts) that gives cluster tables a real cluster log.
//
// Owns: the choice per table: `userspace ... clustered-core` (and the old clustered_core / cluster
// forms) get a ClusterLog over corosync CPG; clustered-disk gets the same log writing dm's disk-log layout
// on the (shared) log device from the log server, so a whole-cluster restart resyncs only dirty regions;
// non-cluster tables fall through to openLocalLog. Pass it as OpenTableOptions.openLog.
import { openLocalLog, type LogOpener } from '../mirror/open.js';
import { CpgError, CpgUnavailableError } from './cpg.js';
import { openClusterLog } from './open-cluster-log.js';
import { registerClusterLog } from './repair-relay.js';
import type { Transport } from './transport.js';

export interface ClusterLogOpenerOptions {
  /** Transport factory instead of corosync (simulations: () => bus.connect(nodeId)). */
  transport?: () => Transport;
}

export function clusterLogOpener(opts: ClusterLogOpenerOptions = {}): LogOpener {
  return async (spec, ctx) => {
    if (!spec.clustered) return openLocalLog(spec, ctx);
    if (spec.uuid === undefined || spec.uuid === '') throw new Error('cluster log without a uuid');
    if (spec.kind === 'disk' && ctx.device === undefined) throw new Error(`cluster log '${spec.uuid}': log device was not opened`);
    try {
      const log = openClusterLog({
        uuid: spec.uuid,
        regionSizeBytes: ctx.regionSizeBytes,
        lengthBytes: ctx.lengthBytes,
        sync: spec.sync,
        integratedFlush: spec.integratedFlush,
        transport: opts.transport?.(),
        ...(spec.kind === 'disk' ? { logDevice: ctx.device } : {}),
        ...(ctx.events ? { events: ctx.events } : {}),
      });
      registerClusterLog(spec.uuid, log); // cluster-wide repair (repair-relay.ts)
      return log;
    } catch (err) {
      if (err instanceof CpgUnavailableError) {
        throw new Error(`cluster log '${spec.uuid}' needs corosync on this node: ${err.message}`);
      }
      if (err instanceof CpgError) {
        throw new Error(
          `cluster log '${spec.uuid}': cannot reach the local corosync daemon (${err.code}: ${err.message}). ` +
            `Start corosync on every node with the cluster's nodelist in /etc/corosync/corosync.conf ` +
            `(e.g. \`corosync\` or \`systemctl start corosync\`), or serve a table without a cluster log ` +
            `(core or disk) for a single-node mirror.`,
        );
      }
      throw err;
    }
  };
}
