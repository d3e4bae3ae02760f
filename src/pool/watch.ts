// Keeps a `serve --pool P` of a CLUSTERED pool in step with the pool's metadata ("every node sees them"):
// joins the pool's lock group as a listener (it answers lock requests, never asks for the lock) and
//  - on PREPARE (an online change of a volume by the lock holder, clvmd's order): if this server serves the
//    volume, re-read the metadata, load its pending table (reload) and suspend --noflush; answer PREPARED.
//    On FINISH: resume (the new table goes live, or, without commit, the inactive one is cleared first).
//    If the holder leaves the group while we are prepared: re-read the metadata and resume with the new
//    table if it was committed, else with the old one — I/O never stays frozen behind a dead command;
//  - on COMMITTED: re-read the metadata and reload each served volume whose generated table differs from
//    the live one (reload, suspend --noflush, resume), e.g. after create/remove/pool change or a node that
//    missed a PREPARE. Volumes with a pending change or prepared are left alone.
// Everything goes through this process's own control socket, one operation at a time, on the newest metadata.
import { CpgTransport } from '../cluster/cpg.js';
import { MetadataLock, poolLockGroup } from '../cluster/metadata-lock.js';
import type { Member } from '../cluster/transport.js';
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
  /** Volumes loaded + suspended for an online change: the holder, its intent seqno, the loaded table. */
  const prepared = new Map<string, { seqno: number; holder: Member; table: string }>();
  let chain: Promise<unknown> = Promise.resolve();
  const serial = <T>(fn: () => Promise<T>): Promise<T> => {
    const r = chain.then(fn, fn);
    chain = r.catch(() => undefined);
    return r;
  };
  const volPath = (name: string, op: string): string => `/v1/volumes/${encodeURIComponent(name)}/${op}`;

  const resumePrepared = async (name: string, commit: boolean, why: string): Promise<void> => {
    const p = prepared.get(name);
    if (p === undefined) return;
    prepared.delete(name);
    try {
      if (!commit) await client.post(volPath(name, 'clear'));
      await client.post(volPath(name, 'resume'));
      opts.log.info({ pool: opts.poolName, volume: name, seqno: p.seqno, newTable: commit, why }, 'resumed after an online change');
    } catch (e) {
      opts.log.warn({ pool: opts.poolName, volume: name, err: (e as Error).message }, 'resume after an online change failed');
    }
  };

  lock.onPrepare((req) =>
    serial(async () => {
      const served = await client.get<{ volumes: { name: string }[] }>('/v1/volumes');
      if (!served.volumes.some((v) => v.name === req.volume)) return { serving: false };
      const { pool } = await locatePool(opts.flags, opts.poolName);
      const md = pool.md;
      if (md.pending?.volume.name !== req.volume || md.seqno !== req.seqno) {
        return { serving: true, error: `this node reads metadata seqno ${md.seqno}${md.pending ? ` (pending change of ${md.pending.volume.name})` : ''}, not the intent ${req.seqno} for ${req.volume}` };
      }
      const table = volumeTable(md, pool.paths, md.pending.volume);
      try {
        await client.post(volPath(req.volume, 'reload'), { table });
        await client.post(volPath(req.volume, 'suspend'), { noflush: true });
      } catch (e) {
        await client.post(volPath(req.volume, 'clear')).catch(() => undefined);
        await client.post(volPath(req.volume, 'resume')).catch(() => undefined);
        return { serving: true, error: (e as Error).message };
      }
      prepared.set(req.volume, { seqno: req.seqno, holder: req.from, table });
      return { serving: true };
    }),
  );
  lock.onFinish((f) => {
    void serial(async () => {
      for (const [name, p] of [...prepared]) if (p.seqno === f.seqno) await resumePrepared(name, f.commit, 'finish');
    });
  });
  lock.onLeft((m) => {
    void serial(async () => {
      for (const [name, p] of [...prepared]) {
        if (p.holder.nodeId !== m.nodeId || p.holder.pid !== m.pid) continue;
        // The holder died between PREPARE and FINISH: committed (no pending, the volume is what we loaded)?
        let commit = false;
        try {
          const { pool } = await locatePool(opts.flags, opts.poolName);
          const v = pool.md.volumes.find((x) => x.name === name);
          commit = pool.md.pending === undefined && v !== undefined && volumeTable(pool.md, pool.paths, v) === p.table;
        } catch (e) {
          opts.log.warn({ pool: opts.poolName, err: (e as Error).message }, 'lock holder left: re-reading the metadata failed; back to the old table');
        }
        await resumePrepared(name, commit, 'lock holder left the group');
      }
    });
  });

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
      if (md.pending?.volume.name === name || prepared.has(name)) continue;
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
          await serial(reconcile);
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
