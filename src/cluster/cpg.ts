// cpg.ts — corosync closed process groups (libcpg) and quorum (libquorum) for Node, typed.
//
// Owns: lazy loading of the native addon (native/ -> native/build/Release/nbdm_cpg.node), the
// CpgTransport (a Transport over one CPG group: ordered send queue with TRY_AGAIN backoff, size limits,
// event fan-out) and CorosyncQuorum (quorate flag + change notifications). The addon itself never runs
// JavaScript inside a libcpg callback; events arrive here after cpg_dispatch has returned.
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import {
  Listeners,
  type ConfigChange,
  type Delivery,
  type Member,
  type MemberChange,
  type Transport,
  type Unsubscribe,
} from './transport.js';

// ---- named limits -------------------------------------------------------------------------------
export interface CpgLimits {
  /** Largest payload; default min(addon's max atomic message size, 1 MiB) so libcpg never fragments. */
  messageBytesMax: number;
  /** Bytes waiting in the send queue before mcast() rejects (callers should await mcast). */
  sendQueueBytesMax: number;
  /** First back-off after CS_ERR_TRY_AGAIN (flow control), doubled up to retryDelayMsMax. */
  retryDelayMsMin: number;
  retryDelayMsMax: number;
  /** A message that still gets TRY_AGAIN after this long fails (and every queued one behind it). */
  retryTotalMsMax: number;
}
export const CPG_LIMITS_DEFAULT: CpgLimits = {
  messageBytesMax: 1024 * 1024,
  sendQueueBytesMax: 64 * 1024 * 1024,
  retryDelayMsMin: 1,
  retryDelayMsMax: 100,
  retryTotalMsMax: 30_000,
};

// ---- the addon ----------------------------------------------------------------------------------
type AddonAddress = { nodeid: number; pid: number; reason: number };
interface AddonCpg {
  join(group: string): boolean;
  leave(group: string): boolean;
  mcast(buf: Uint8Array): boolean;
  localNodeId(): number;
  membership(group: string): AddonAddress[];
  maxAtomicMsgSize(): number;
  flowControlEnabled(): boolean;
  close(): void;
  ref(): void;
  unref(): void;
}
interface AddonQuorum {
  getQuorate(): boolean;
  close(): void;
  ref(): void;
  unref(): void;
}
type CpgCallback = (kind: string, ...args: unknown[]) => void;
interface Addon {
  Cpg: new (cb: CpgCallback) => AddonCpg;
  Quorum: new (cb: CpgCallback) => AddonQuorum;
  errorName(code: number): string;
}

export const BUILD_NATIVE_COMMAND = 'bash scripts/build-native.sh';
/** Environment variable naming the addon file explicitly (tests, relocated installs). */
export const ADDON_PATH_ENV = 'NBD_MIRROR_CPG_ADDON';

export class CpgUnavailableError extends Error {
  constructor(detail: string) {
    super(
      `corosync CPG support is not available (${detail}). Install corosync with its development ` +
        `packages (apt-get install corosync libcpg-dev libquorum-dev libcorosync-common-dev libqb-dev) ` +
        `and build the addon with \`${BUILD_NATIVE_COMMAND}\` (npm run build:native).`,
    );
    this.name = 'CpgUnavailableError';
  }
}

/** A libcpg/libquorum call failed; code is the cs_error_t name (e.g. CS_ERR_LIBRARY). */
export class CpgError extends Error {
  constructor(
    message: string,
    readonly code: string,
    readonly csError: number,
  ) {
    super(message);
    this.name = 'CpgError';
  }
}

let addonCache: Addon | undefined;

export function addonPath(): string {
  return process.env[ADDON_PATH_ENV] ?? fileURLToPath(new URL('../../native/build/Release/nbdm_cpg.node', import.meta.url));
}

/** Loads the addon on first use; throws CpgUnavailableError saying how to get it. */
export function loadCpgAddon(): Addon {
  if (addonCache) return addonCache;
  const path = addonPath();
  try {
    const require = createRequire(import.meta.url);
    addonCache = require(path) as Addon;
  } catch (err) {
    throw new CpgUnavailableError(`cannot load ${path}: ${(err as Error).message.split('\n')[0]}`);
  }
  return addonCache;
}

/** True when the addon loads (it does not check that a corosync daemon is running). */
export function cpgAvailable(): boolean {
  try {
    loadCpgAddon();
    return true;
  } catch {
    return false;
  }
}

function toCpgError(err: unknown): Error {
  const e = err as Error & { code?: unknown; csError?: unknown };
  if (e && typeof e.code === 'string' && typeof e.csError === 'number') {
    return new CpgError(e.message, e.code, e.csError);
  }
  return e instanceof Error ? e : new Error(String(err));
}

/** Wraps a synchronous addon call so corosync errors surface as CpgError. */
function cs<T>(fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    throw toCpgError(err);
  }
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

function members(a: AddonAddress[]): Member[] {
  return a.map((m) => ({ nodeId: m.nodeid, pid: m.pid }));
}
function changes(a: AddonAddress[]): MemberChange[] {
  return a.map((m) => ({ nodeId: m.nodeid, pid: m.pid, reason: m.reason }));
}

export interface RingChange {
  /** Ring id: node id of the ring's representative and sequence number. */
  ringNodeId: number;
  ringSeq: bigint;
  /** Node ids in the totem ring (the corosync membership, not the group's). */
  nodeIds: number[];
}

interface PendingSend {
  payload: Uint8Array;
  resolve: () => void;
  reject: (e: Error) => void;
}

/** A Transport over one corosync CPG group. */
export class CpgTransport implements Transport {
  readonly localNodeId: number;
  readonly localPid = process.pid;
  readonly messageBytesMax: number;
  private readonly limits: CpgLimits;
  private readonly handle: AddonCpg;
  private group: string | undefined;
  private closed = false;
  private lostError: Error | undefined;
  private readonly queue: PendingSend[] = [];
  private queuedBytes = 0;
  private pumping = false;
  private readonly deliverL = new Listeners<Delivery>();
  private readonly configL = new Listeners<ConfigChange>();
  private readonly lostL = new Listeners<Error>();
  private readonly ringL = new Listeners<RingChange>();
  /** Counters: messages sent, CS_ERR_TRY_AGAIN answers (flow control) seen while sending or joining. */
  readonly stats = { messagesSent: 0, tryAgain: 0 };

  /** Connects to the local corosync (throws CpgUnavailableError / CpgError). */
  constructor(limits: Partial<CpgLimits> = {}) {
    const addon = loadCpgAddon();
    this.limits = { ...CPG_LIMITS_DEFAULT, ...limits };
    this.handle = cs(() => new addon.Cpg((kind, ...args) => this.onEvent(kind, args)));
    try {
      this.localNodeId = cs(() => this.handle.localNodeId());
      this.messageBytesMax = Math.min(this.limits.messageBytesMax, cs(() => this.handle.maxAtomicMsgSize()));
    } catch (err) {
      this.handle.close();
      throw err;
    }
  }

  private onEvent(kind: string, args: unknown[]): void {
    if (this.closed) return;
    switch (kind) {
      case 'deliver': {
        const [group, nodeId, pid, payload] = args as [string, number, number, Buffer];
        if (group === this.group) this.deliverL.emit({ nodeId, pid, payload });
        break;
      }
      case 'confchg': {
        const [group, m, l, j] = args as [string, AddonAddress[], AddonAddress[], AddonAddress[]];
        if (group === this.group) this.configL.emit({ members: members(m), left: changes(l), joined: changes(j) });
        break;
      }
      case 'totem': {
        const [ringNodeId, ringSeq, nodeIds] = args as [number, bigint, number[]];
        this.ringL.emit({ ringNodeId, ringSeq, nodeIds });
        break;
      }
      case 'lost': {
        const [code, name] = args as [number, string];
        this.fail(new CpgError(`lost the connection to corosync: ${name} (${code})`, name, code));
        break;
      }
    }
  }

  private fail(err: Error): void {
    if (this.lostError) return;
    this.lostError = err;
    this.rejectQueue(err);
    this.lostL.emit(err);
  }

  private rejectQueue(err: Error): void {
    for (const p of this.queue.splice(0)) p.reject(err);
    this.queuedBytes = 0;
  }

  async join(group: string): Promise<void> {
    if (this.group !== undefined) throw new Error(`already joined ${this.group}`);
    this.checkOpen();
    this.group = group;
    try {
      await this.retry(() => this.handle.join(group));
    } catch (err) {
      this.group = undefined;
      throw err;
    }
  }

  /** Current members of the joined group, straight from corosync. */
  membership(): Member[] {
    this.checkOpen();
    if (this.group === undefined) throw new Error('not joined');
    const g = this.group;
    return members(cs(() => this.handle.membership(g)));
  }

  flowControlEnabled(): boolean {
    this.checkOpen();
    return cs(() => this.handle.flowControlEnabled());
  }

  mcast(payload: Uint8Array): Promise<void> {
    try {
      this.checkOpen();
      if (this.group === undefined) throw new Error('mcast before join');
      if (payload.byteLength > this.messageBytesMax) {
        throw new RangeError(`message of ${payload.byteLength} bytes exceeds messageBytesMax ${this.messageBytesMax}`);
      }
      if (this.queuedBytes + payload.byteLength > this.limits.sendQueueBytesMax) {
        throw new RangeError(`send queue full (${this.queuedBytes} bytes queued; await mcast for backpressure)`);
      }
    } catch (err) {
      return Promise.reject(err);
    }
    return new Promise<void>((resolve, reject) => {
      // Fast path: nothing queued, corosync takes it now.
      if (this.queue.length === 0) {
        try {
          if (this.handle.mcast(payload)) {
            this.stats.messagesSent++;
            resolve();
            return;
          }
          this.stats.tryAgain++;
        } catch (err) {
          reject(toCpgError(err));
          return;
        }
      }
      this.queue.push({ payload, resolve, reject });
      this.queuedBytes += payload.byteLength;
      void this.pump();
    });
  }

  /** Sends the queue head-first; on TRY_AGAIN backs off and retries the head so order is kept. */
  private async pump(): Promise<void> {
    if (this.pumping) return;
    this.pumping = true;
    try {
      while (this.queue.length > 0 && !this.closed && !this.lostError) {
        const head = this.queue[0]!;
        try {
          await this.retry(() => this.handle.mcast(head.payload));
        } catch (err) {
          this.rejectQueue(err as Error);
          break;
        }
        this.queue.shift();
        this.stats.messagesSent++;
        this.queuedBytes -= head.payload.byteLength;
        head.resolve();
      }
    } finally {
      this.pumping = false;
    }
  }

  /** Calls op until it returns true (false = CS_ERR_TRY_AGAIN), backing off exponentially. */
  private async retry(op: () => boolean): Promise<void> {
    let delayMs = this.limits.retryDelayMsMin;
    const started = Date.now();
    for (;;) {
      this.checkOpen();
      if (cs(op)) return;
      this.stats.tryAgain++;
      if (Date.now() - started > this.limits.retryTotalMsMax) {
        throw new CpgError(`corosync still busy (CS_ERR_TRY_AGAIN) after ${this.limits.retryTotalMsMax} ms`, 'CS_ERR_TRY_AGAIN', 6);
      }
      await sleep(delayMs);
      delayMs = Math.min(delayMs * 2, this.limits.retryDelayMsMax);
    }
  }

  private checkOpen(): void {
    if (this.lostError) throw this.lostError;
    if (this.closed) throw new CpgError('transport closed', 'CS_ERR_BAD_HANDLE', 9);
  }

  onDeliver(fn: (d: Delivery) => void): Unsubscribe {
    return this.deliverL.add(fn);
  }
  onConfigChange(fn: (c: ConfigChange) => void): Unsubscribe {
    return this.configL.add(fn);
  }
  onLost(fn: (err: Error) => void): Unsubscribe {
    return this.lostL.add(fn);
  }
  /** Totem ring (corosync membership) changes; the first one describes the current ring. */
  onRingChange(fn: (r: RingChange) => void): Unsubscribe {
    return this.ringL.add(fn);
  }

  /** Keep (default) or stop keeping the Node process alive while this transport is open. */
  ref(): void {
    this.handle.ref();
  }
  unref(): void {
    this.handle.unref();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.rejectQueue(new CpgError('transport closed', 'CS_ERR_BAD_HANDLE', 9));
    // cpg_finalize without cpg_leave: peers see the member leave (LEAVE/PROCDOWN) at once.
    this.handle.close();
  }
}

export interface QuorumChange {
  quorate: boolean;
  ringSeq: bigint;
  nodeIds: number[];
}

/** corosync's quorum state for the local node (votequorum), with change notifications. */
export class CorosyncQuorum {
  private readonly handle: AddonQuorum;
  private quorateNow: boolean;
  private closed = false;
  private readonly changeL = new Listeners<QuorumChange>();
  private readonly lostL = new Listeners<Error>();
  private lostError: Error | undefined;

  constructor() {
    const addon = loadCpgAddon();
    this.handle = cs(() => new addon.Quorum((kind, ...args) => this.onEvent(kind, args)));
    try {
      this.quorateNow = cs(() => this.handle.getQuorate());
    } catch (err) {
      this.handle.close();
      throw err;
    }
  }

  private onEvent(kind: string, args: unknown[]): void {
    if (this.closed) return;
    if (kind === 'quorum') {
      const [quorate, ringSeq, nodeIds] = args as [boolean, bigint, number[]];
      this.quorateNow = quorate;
      this.changeL.emit({ quorate, ringSeq, nodeIds });
    } else if (kind === 'lost') {
      const [code, name] = args as [number, string];
      this.quorateNow = false;
      this.lostError = new CpgError(`lost the connection to corosync: ${name} (${code})`, name, code);
      this.lostL.emit(this.lostError);
    }
  }

  /** Last known state (false once the connection to corosync is lost). */
  get quorate(): boolean {
    return this.quorateNow;
  }

  onChange(fn: (c: QuorumChange) => void): Unsubscribe {
    return this.changeL.add(fn);
  }
  onLost(fn: (err: Error) => void): Unsubscribe {
    return this.lostL.add(fn);
  }
  unref(): void {
    this.handle.unref();
  }
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.handle.close();
  }
}
