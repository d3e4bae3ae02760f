// metadata-lock.ts — a cluster-wide lock over one pool's metadata (clvmd's role), on a totally ordered
// group (corosync CPG, or the memory bus in tests), and the "metadata committed" announcement.
//
// Owns: the lock protocol and the membership it needs; nothing about pools (src/pool uses it).
//
// Protocol. Every member of the group (a changing CLI command, or a serving process that only listens)
// answers every REQ it sees with an ACK naming its OWN request if that request was ordered before the REQ
// and is not released (else null). A requester holds the lock once, after its own REQ was delivered:
//   - every member that was in the group when the REQ was delivered has answered (or has left), and
//   - every request named as ahead has been released (UNLOCK) or its owner has left the group.
// Agreed (total) order makes this a queue in REQ order: of two requests, the later one's owner is told
// about the earlier, the earlier's owner is told nothing by the later (its request came after). Each member
// only states facts about itself, so a member joining late needs no state transfer. A holder killed -9
// leaves the group (corosync: PROCDOWN within milliseconds) and its lock goes with it.
import { decodeLockMessage, encodeLockMessage, MetadataLockCodecError, type LockMessage, type LockRequestInfo } from './metadata-lock-codec.js';
import type { ConfigChange, Delivery, Member, Transport, Unsubscribe } from './transport.js';

/** How long acquire() waits by default. */
export const LOCK_TIMEOUT_MS_DEFAULT = 30_000;
/** How long open() waits for the group's first configuration change (the view including us). */
export const JOIN_TIMEOUT_MS = 10_000;

export class MetadataLockError extends Error {
  override name = 'MetadataLockError';
  constructor(
    readonly code: 'EBUSY' | 'EIO',
    message: string,
  ) {
    super(message);
  }
}

const key = (nodeId: number, pid: number): string => `${nodeId}:${pid}`;
const reqKey = (nodeId: number, pid: number, reqId: number): string => `${nodeId}:${pid}:${reqId}`;

interface MyRequest {
  readonly reqId: number;
  readonly op: string;
  readonly sinceMs: number;
  delivered: boolean;
  released: boolean;
  /** Members (key) whose ACK we still need. */
  readonly awaiting: Map<string, Member>;
  /** Requests ordered before ours and not yet released (reqKey -> info). */
  readonly ahead: Map<string, LockRequestInfo>;
  granted: () => void;
}

export interface MetadataLockOptions {
  readonly transport: Transport;
  /** CPG group name, e.g. `nbdm-pool-<pool uuid>`. */
  readonly group: string;
  /** For messages ("pool P is locked by ..."). */
  readonly poolName: string;
}

/** How long the holder waits for every member to load and suspend (a suspend waits for in-flight I/O). */
export const PREPARE_TIMEOUT_MS_DEFAULT = 90_000;

export interface PrepareRequest {
  readonly seqno: number;
  readonly volume: string;
  readonly from: Member;
}

export interface PrepareResult {
  readonly member: Member;
  readonly ok: boolean;
  readonly serving: boolean;
  readonly error: string;
}

export function poolLockGroup(poolUuid: string): string {
  return `nbdm-pool-${poolUuid}`;
}

export class MetadataLock {
  private readonly t: Transport;
  private view: Member[] = [];
  private joined = false;
  private my: MyRequest | undefined;
  private nextReqId = 1;
  /** Requests of others we have seen and not seen released (for "locked by ..." messages). */
  private readonly others = new Map<string, LockRequestInfo>();
  private readonly committedFns = new Set<(c: { seqno: number; volumes: readonly string[]; from: Member }) => void>();
  private readonly unsubs: Unsubscribe[] = [];
  private lost: Error | undefined;
  private onJoined: (() => void) | undefined;
  private onFail: ((e: Error) => void) | undefined;
  /** Messages that did not decode (dropped). */
  droppedMessages = 0;
  private prepareFn: ((p: PrepareRequest) => Promise<{ serving: boolean; error?: string }>) | undefined;
  private readonly finishFns = new Set<(f: { seqno: number; commit: boolean; from: Member }) => void>();
  private readonly leftFns = new Set<(m: Member) => void>();
  private myPrepare: { seqno: number; delivered: boolean; awaiting: Map<string, Member>; results: PrepareResult[]; done: () => void } | undefined;

  private constructor(private readonly opts: MetadataLockOptions) {
    this.t = opts.transport;
    this.unsubs.push(this.t.onDeliver((d) => this.deliver(d)));
    this.unsubs.push(this.t.onConfigChange((c) => this.configChange(c)));
    this.unsubs.push(this.t.onLost((e) => this.fail(e)));
  }

  /** Join the group and wait until we are in its view. */
  static async open(opts: MetadataLockOptions): Promise<MetadataLock> {
    const lock = new MetadataLock(opts);
    const inView = new Promise<void>((resolve, reject) => {
      lock.onJoined = resolve;
      lock.onFail = reject;
    });
    let timer: NodeJS.Timeout | undefined;
    try {
      await opts.transport.join(opts.group);
      await Promise.race([
        inView,
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new MetadataLockError('EIO', `pool ${opts.poolName}: joining the lock group ${opts.group} took over ${JOIN_TIMEOUT_MS} ms`)), JOIN_TIMEOUT_MS);
        }),
      ]);
    } catch (e) {
      await lock.close();
      throw e;
    } finally {
      clearTimeout(timer);
    }
    return lock;
  }

  get localMember(): Member {
    return { nodeId: this.t.localNodeId, pid: this.t.localPid };
  }

  /** Members of the group now (as last delivered). */
  members(): readonly Member[] {
    return this.view;
  }

  get held(): boolean {
    const m = this.my;
    return m !== undefined && m.delivered && !m.released && m.awaiting.size === 0 && m.ahead.size === 0;
  }

  /**
   * Take the lock for `op` (a description shown to whoever waits). Resolves when held. After timeoutMs
   * the request is withdrawn and a MetadataLockError('EBUSY') names who holds the lock, for what, since when.
   */
  async acquire(op: string, timeoutMs = LOCK_TIMEOUT_MS_DEFAULT): Promise<void> {
    if (this.lost) throw this.lostError();
    if (this.my !== undefined && !this.my.released) throw new Error('metadata lock: one request at a time');
    let granted!: () => void;
    const done = new Promise<void>((r) => (granted = r));
    const my: MyRequest = { reqId: this.nextReqId++, op: op.slice(0, 200), sinceMs: Date.now(), delivered: false, released: false, awaiting: new Map(), ahead: new Map(), granted };
    this.my = my;
    let timer: NodeJS.Timeout | undefined;
    let failed: ((e: Error) => void) | undefined;
    const failure = new Promise<never>((_, reject) => (failed = reject));
    this.onFail = (e) => failed?.(e);
    try {
      await this.t.mcast(encodeLockMessage({ t: 'req', reqId: my.reqId, op: my.op, sinceMs: my.sinceMs }));
      await Promise.race([
        done,
        failure,
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new MetadataLockError('EBUSY', this.busyText(my, timeoutMs))), timeoutMs);
        }),
      ]);
    } catch (e) {
      await this.release().catch(() => undefined);
      throw e;
    } finally {
      clearTimeout(timer);
      this.onFail = undefined;
    }
  }

  /** Release the lock (or withdraw a pending request). */
  async release(): Promise<void> {
    const m = this.my;
    if (m === undefined || m.released) return;
    m.released = true; // from now on our ACKs name no request, before UNLOCK is even sent
    if (!this.lost) await this.t.mcast(encodeLockMessage({ t: 'unlock', reqId: m.reqId }));
  }

  /** Tell every member that metadata seqno is committed and which volumes' tables may have changed. */
  async announce(seqno: number, volumes: readonly string[]): Promise<void> {
    if (this.lost) throw this.lostError();
    await this.t.mcast(encodeLockMessage({ t: 'committed', seqno, volumes }));
  }

  onCommitted(fn: (c: { seqno: number; volumes: readonly string[]; from: Member }) => void): Unsubscribe {
    this.committedFns.add(fn);
    return () => this.committedFns.delete(fn);
  }

  async close(): Promise<void> {
    for (const u of this.unsubs.splice(0)) u();
    await this.t.close();
  }

  // ------------------------------------------------------------------ two-phase online change
  // clvmd's order for a change of an active volume: every node loads the new table and suspends, then every
  // node resumes. The holder multicasts PREPARE and waits for every member's PREPARED; members without a
  // prepare handler (commands) answer at once with serving=false.

  /** A server's part: load the pending table of `volume` and suspend; answer what happened. */
  onPrepare(fn: (p: PrepareRequest) => Promise<{ serving: boolean; error?: string }>): void {
    this.prepareFn = fn;
  }
  onFinish(fn: (f: { seqno: number; commit: boolean; from: Member }) => void): Unsubscribe {
    this.finishFns.add(fn);
    return () => this.finishFns.delete(fn);
  }
  /** A member left the group (a prepared server resumes on its own when the holder leaves). */
  onLeft(fn: (m: Member) => void): Unsubscribe {
    this.leftFns.add(fn);
    return () => this.leftFns.delete(fn);
  }

  /** Holder only: PREPARE `volume` for intent `seqno` on every member; resolves with every answer. */
  async prepareAll(seqno: number, volume: string, timeoutMs = PREPARE_TIMEOUT_MS_DEFAULT): Promise<PrepareResult[]> {
    if (!this.held) throw new Error('metadata lock: prepare without holding the lock');
    let done!: () => void;
    const finished = new Promise<void>((r) => (done = r));
    const p = { seqno, delivered: false, awaiting: new Map<string, Member>(), results: [] as PrepareResult[], done };
    this.myPrepare = p;
    let timer: NodeJS.Timeout | undefined;
    try {
      await this.t.mcast(encodeLockMessage({ t: 'prepare', seqno, volume }));
      await Promise.race([
        finished,
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => {
            const silent = [...p.awaiting.values()].map((m) => `node ${m.nodeId} pid ${m.pid}`).join(', ') || '(not delivered)';
            reject(new MetadataLockError('EBUSY', `pool ${this.opts.poolName}: no answer to PREPARE of ${volume} from ${silent} within ${timeoutMs} ms`));
          }, timeoutMs);
        }),
      ]);
      return p.results;
    } finally {
      clearTimeout(timer);
      this.myPrepare = undefined;
    }
  }

  /** Holder only: every prepared server resumes, with the new table (commit) or the old one. */
  async finish(seqno: number, commit: boolean): Promise<void> {
    await this.t.mcast(encodeLockMessage({ t: 'finish', seqno, commit }));
  }

  private checkPrepare(): void {
    const p = this.myPrepare;
    if (p !== undefined && p.delivered && p.awaiting.size === 0) p.done();
  }

  // ------------------------------------------------------------------ internals

  private lostError(): MetadataLockError {
    return new MetadataLockError('EIO', `pool ${this.opts.poolName}: lost the cluster connection (${this.lost?.message ?? 'closed'}): the lock is gone`);
  }

  private busyText(my: MyRequest, timeoutMs: number): string {
    const waited = `waited ${(timeoutMs / 1000).toFixed(1)} s`;
    const first = [...my.ahead.values()].sort((a, b) => a.sinceMs - b.sinceMs)[0];
    if (first !== undefined) {
      return `pool ${this.opts.poolName} is locked by node ${first.nodeId} (pid ${first.pid}) for "${first.op}" since ${new Date(first.sinceMs).toISOString()} (${waited})`;
    }
    if (!my.delivered) return `pool ${this.opts.poolName}: the lock request was not delivered by the cluster (${waited})`;
    const silent = [...my.awaiting.values()].map((m) => `node ${m.nodeId} pid ${m.pid}`).join(', ');
    return `pool ${this.opts.poolName}: no answer to the lock request from ${silent} (${waited})`;
  }

  private fail(e: Error): void {
    this.lost = e;
    this.onFail?.(this.lostError());
  }

  private check(): void {
    if (this.held) this.my!.granted();
  }

  private configChange(c: ConfigChange): void {
    this.view = c.members;
    const me = key(this.t.localNodeId, this.t.localPid);
    if (!this.joined && c.members.some((m) => key(m.nodeId, m.pid) === me)) {
      this.joined = true;
      this.onJoined?.();
      this.onJoined = undefined;
    }
    for (const l of c.left) {
      const k = key(l.nodeId, l.pid);
      for (const [rk, info] of this.others) if (key(info.nodeId, info.pid) === k) this.others.delete(rk);
      this.myPrepare?.awaiting.delete(k);
      for (const fn of [...this.leftFns]) fn({ nodeId: l.nodeId, pid: l.pid });
      if (this.my !== undefined) {
        this.my.awaiting.delete(k);
        for (const [rk, info] of this.my.ahead) if (key(info.nodeId, info.pid) === k) this.my.ahead.delete(rk);
      }
    }
    this.check();
    this.checkPrepare();
  }

  private deliver(d: Delivery): void {
    let m: LockMessage;
    try {
      m = decodeLockMessage(d.payload);
    } catch (e) {
      if (!(e instanceof MetadataLockCodecError)) throw e;
      this.droppedMessages++;
      return;
    }
    const fromMe = d.nodeId === this.t.localNodeId && d.pid === this.t.localPid;
    const my = this.my;
    switch (m.t) {
      case 'req': {
        if (fromMe) {
          if (my === undefined || my.reqId !== m.reqId || my.released) return;
          my.delivered = true;
          for (const v of this.view) if (!(v.nodeId === d.nodeId && v.pid === d.pid)) my.awaiting.set(key(v.nodeId, v.pid), v);
          this.check();
          return;
        }
        this.others.set(reqKey(d.nodeId, d.pid, m.reqId), { nodeId: d.nodeId, pid: d.pid, reqId: m.reqId, op: m.op, sinceMs: m.sinceMs });
        const ahead: LockRequestInfo | null =
          my !== undefined && my.delivered && !my.released ? { nodeId: this.t.localNodeId, pid: this.t.localPid, reqId: my.reqId, op: my.op, sinceMs: my.sinceMs } : null;
        this.t.mcast(encodeLockMessage({ t: 'ack', toNode: d.nodeId, toPid: d.pid, toReq: m.reqId, ahead })).catch(() => undefined);
        return;
      }
      case 'ack': {
        if (my === undefined || my.released || m.toNode !== this.t.localNodeId || m.toPid !== this.t.localPid || m.toReq !== my.reqId) return;
        my.awaiting.delete(key(d.nodeId, d.pid));
        if (m.ahead !== null && this.others.has(reqKey(m.ahead.nodeId, m.ahead.pid, m.ahead.reqId))) {
          my.ahead.set(reqKey(m.ahead.nodeId, m.ahead.pid, m.ahead.reqId), m.ahead);
        } else if (m.ahead !== null) {
          // Ordered before our REQ but its REQ came before we joined: still ahead until its owner releases.
          this.others.set(reqKey(m.ahead.nodeId, m.ahead.pid, m.ahead.reqId), m.ahead);
          my.ahead.set(reqKey(m.ahead.nodeId, m.ahead.pid, m.ahead.reqId), m.ahead);
        }
        this.check();
        return;
      }
      case 'unlock': {
        const rk = reqKey(d.nodeId, d.pid, m.reqId);
        this.others.delete(rk);
        my?.ahead.delete(rk);
        this.check();
        return;
      }
      case 'committed':
        for (const fn of [...this.committedFns]) fn({ seqno: m.seqno, volumes: m.volumes, from: { nodeId: d.nodeId, pid: d.pid } });
        return;
      case 'prepare': {
        const p = this.myPrepare;
        if (fromMe) {
          if (p !== undefined && p.seqno === m.seqno) {
            p.delivered = true;
            for (const v of this.view) if (!(v.nodeId === d.nodeId && v.pid === d.pid)) p.awaiting.set(key(v.nodeId, v.pid), v);
            this.checkPrepare();
          }
          return;
        }
        const answer = (a: { serving: boolean; error?: string }): void => {
          const error = (a.error ?? '').slice(0, 2000);
          this.t.mcast(encodeLockMessage({ t: 'prepared', seqno: m.seqno, ok: error === '', serving: a.serving, error })).catch(() => undefined);
        };
        if (this.prepareFn === undefined) answer({ serving: false });
        else this.prepareFn({ seqno: m.seqno, volume: m.volume, from: { nodeId: d.nodeId, pid: d.pid } }).then(answer, (e: unknown) => answer({ serving: true, error: (e as Error).message || 'prepare failed' }));
        return;
      }
      case 'prepared': {
        const p = this.myPrepare;
        const k = key(d.nodeId, d.pid);
        if (p === undefined || p.seqno !== m.seqno || !p.awaiting.has(k)) return;
        p.awaiting.delete(k);
        p.results.push({ member: { nodeId: d.nodeId, pid: d.pid }, ok: m.ok, serving: m.serving, error: m.error });
        this.checkPrepare();
        return;
      }
      case 'finish':
        for (const fn of [...this.finishFns]) fn({ seqno: m.seqno, commit: m.commit, from: { nodeId: d.nodeId, pid: d.pid } });
        return;
    }
  }
}
