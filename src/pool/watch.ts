// Keeps a `serve --pool P` of a CLUSTERED pool in step with the pool's metadata ("every node sees them"):
// joins the pool's lock group as a listener (it answers lock requests, never asks for the lock) and, on every
// COMMITTED announcement, re-reads the metadata from the devices and reloads each served volume whose
// generated table differs from the live one (reload, suspend --noflush, resume — through this process's own
// control socket, the same path a command uses). A volume with a pending online change is left alone (the
// command holding the lock is reloading it; the outcome is announced when committed). Reconciles run one at
// a time, each on the newest metadata.
import { CpgTransport } from '../cluster/cpg.js';
import { MetadataLock, poolLockGroup } from '../cluster/metadata-lock.js';
import { ControlClient } from '../control/client.js';
import { locatePool, type LocateFlags } from './locate.js';
import { volumeTable } from './tables.js';

export interface WatchLog {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
}

export interface PoolWatcher {
  /** Seqno of the last metadata reconciled. */
  readonly seqno: number;
  close(): Promise<void>;
}

/** Start watching pool `poolName` (clustered) for `serve`; `controlPath` is this server's control socket. */
export async function startPoolWatcher(opts: { poolName: string; poolUuid: string; seqno: number; flags: LocateFlags; controlPath: string; log: WatchLog }): Promise<PoolWatcher> {
  const lock = await MetadataLock.open({ transport: new CpgTransport(), group: poolLockGroup(opts.poolUuid), poolName: opts.poolName });
  const client = new ControlClient({ kind: 'unix', path: opts.controlPath });
  let seqno = opts.seqno;
  let running: Promise<void> = Promise.resolve();
  let again = false;
  let busy = false;

  const reconcile = async (): Promise<void> => {
    const { pool } = await locatePool(opts.flags, opts.poolName);
    const md = pool.md;
    const served = await client.get<{ volumes: { name: string }[] }>('/v1/volumes');
    for (const { name } of served.volumes) {
      const v = md.volumes.find((x) => x.name === name);
      if (v === undefined) {
        opts.log.warn({ pool: md.name, volume: name, seqno: md.seqno }, 'pool metadata no longer lists a served volume: still serving it (stop the server to drop it)');
        continue;
      }
      if (md.pending?.volume.name === name) continue;
      let want: string;
      try {
        want = volumeTable(md, pool.paths, v);
      } catch (e) {
        opts.log.warn({ pool: md.name, volume: name, err: (e as Error).message }, 'cannot build the new table');
        continue;
      }
      const live = await client.get<{ table: string }>(`/v1/volumes/${encodeURIComponent(name)}/table`);
      if (live.table === want) continue;
      const path = (op: string): string => `/v1/volumes/${encodeURIComponent(name)}/${op}`;
      try {
        await client.post(path('reload'), { table: want });
        await client.post(path('suspend'), { noflush: true });
        await client.post(path('resume'));
        opts.log.info({ pool: md.name, volume: name, seqno: md.seqno, table: want }, 'pool metadata changed on another node: table reloaded');
      } catch (e) {
        opts.log.warn({ pool: md.name, volume: name, seqno: md.seqno, err: (e as Error).message }, 'pool metadata changed: reloading the table failed; still serving the old one');
        await client.post(path('clear')).catch(() => undefined);
        await client.post(path('resume')).catch(() => undefined);
      }
    }
    seqno = Math.max(seqno, md.seqno);
  };

  const kick = (): void => {
    if (busy) {
      again = true;
      return;
    }
    busy = true;
    running = (async () => {
      do {
        again = false;
        try {
          await reconcile();
        } catch (e) {
          opts.log.warn({ pool: opts.poolName, err: (e as Error).message }, 'pool metadata changed: re-reading it failed');
        }
      } while (again);
      busy = false;
    })();
  };

  lock.onCommitted((c) => {
    if (c.seqno <= seqno) return;
    opts.log.info({ pool: opts.poolName, seqno: c.seqno, volumes: c.volumes, from: c.from }, 'pool metadata committed');
    kick();
  });
  return {
    get seqno() {
      return seqno;
    },
    close: async () => {
      await running.catch(() => undefined);
      await lock.close();
    },
  };
}
