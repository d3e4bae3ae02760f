// The cluster-wide metadata lock of a clustered pool, as a changing command uses it (clvmd's role).
//
// Where membership comes from: the command itself joins the pool's corosync group (nbdm-pool-<uuid>)
// through the libcpg addon, takes the lock (src/cluster/metadata-lock.ts), and after every commit announces
// the new seqno. It does not ask the local `serve --pool` to lock for it: (1) the command works on a node
// that serves nothing; (2) the lock's owner is the process that writes the metadata, so a command killed
// -9 leaves the group (corosync PROCDOWN, milliseconds) and the lock goes with it — a lock delegated to a
// server would outlive the dead command until some lease expired; (3) no new control-socket endpoint.
//
// One lock per process, held until the process exits (like the host lock file). Without corosync a
// clustered pool is refused, unless NBD_MIRROR_POOL_LOCK=local says no other node uses the pool.
import { CpgError, CpgTransport, CpgUnavailableError } from '../cluster/cpg.js';
import { LOCK_TIMEOUT_MS_DEFAULT, MetadataLock, MetadataLockError, poolLockGroup } from '../cluster/metadata-lock.js';
import { PoolError } from './errors.js';
import type { PoolMetadata } from './metadata.js';

export const LOCK_MODE_ENV = 'NBD_MIRROR_POOL_LOCK';
export const LOCK_TIMEOUT_ENV = 'NBD_MIRROR_POOL_LOCK_TIMEOUT_MS';

let held: { lock: MetadataLock; poolUuid: string } | undefined;

function timeoutMs(): number {
  const env = process.env[LOCK_TIMEOUT_ENV];
  if (env === undefined || env === '') return LOCK_TIMEOUT_MS_DEFAULT;
  const n = Number(env);
  if (!Number.isSafeInteger(n) || n <= 0) throw new PoolError('EINVAL', `${LOCK_TIMEOUT_ENV}=${env}: expected a positive number of milliseconds`);
  return n;
}

/** Take the cluster lock of a clustered pool for `op` (held until the process exits). */
export async function takeClusterLock(md: PoolMetadata, op: string): Promise<void> {
  if (held !== undefined && held.poolUuid === md.uuid) return;
  if (held !== undefined) throw new PoolError('EBUSY', `this command already holds the lock of another pool (${held.poolUuid})`);
  const mode = process.env[LOCK_MODE_ENV];
  if (mode === 'local') return;
  if (mode !== undefined && mode !== '' && mode !== 'cluster') throw new PoolError('EINVAL', `${LOCK_MODE_ENV}=${mode}: expected cluster or local`);
  const wait = timeoutMs();
  let transport: CpgTransport;
  try {
    transport = new CpgTransport();
  } catch (e) {
    const why = e instanceof CpgUnavailableError || e instanceof CpgError ? e.message : (e as Error).message;
    throw new PoolError(
      'EIO',
      `pool ${md.name} is clustered: changing it takes the cluster-wide metadata lock, which needs corosync on this node (${why}). ` +
        `Start corosync, or set ${LOCK_MODE_ENV}=local if no other node uses the pool`,
    );
  }
  let lock: MetadataLock;
  try {
    lock = await MetadataLock.open({ transport, group: poolLockGroup(md.uuid), poolName: md.name });
  } catch (e) {
    await transport.close().catch(() => undefined);
    throw new PoolError('EIO', `pool ${md.name}: cannot join the lock group: ${(e as Error).message}`);
  }
  try {
    await lock.acquire(op, wait);
  } catch (e) {
    await lock.close().catch(() => undefined);
    if (e instanceof MetadataLockError) throw new PoolError(e.code, e.message);
    throw e;
  }
  held = { lock, poolUuid: md.uuid };
  // A CLI exits when its work is done: the lock must not keep it alive (closing = leaving = releasing).
  transport.unref();
}

/** After a commit in a clustered pool: every node re-reads the metadata (no-op without the cluster lock). */
export async function announceCommitted(seqno: number, volumes: readonly string[]): Promise<void> {
  if (held === undefined) return;
  await held.lock.announce(seqno, volumes);
}

/** The cluster lock this command holds (clustered pool, corosync), if any: online changes go through it. */
export function heldClusterLock(): MetadataLock | undefined {
  return held?.lock;
}

/** Release and leave (the end of a command). */
export async function releaseClusterLock(): Promise<void> {
  const h = held;
  held = undefined;
  if (h === undefined) return;
  await h.lock.release().catch(() => undefined);
  await h.lock.close().catch(() => undefined);
}
