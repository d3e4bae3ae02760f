// transport.ts — the totally ordered group transport the cluster log is written against.
//
// Owns: the Transport interface and its event types, nothing else. Two implementations exist:
// src/cluster/cpg.ts (corosync CPG through the native addon, real machines) and
// src/cluster/memory-bus.ts (an in-process, deterministic total-order bus for simulations and tests).
//
// Semantics every implementation keeps (those of corosync CPG with CPG_TYPE_AGREED):
//  - One transport is one member (a process) of one group; join() once, then mcast().
//  - Every member of the group delivers the same messages and configuration changes in the same
//    order, including its own messages (self-delivery). A message is delivered to the members of the
//    view it was ordered in; a configuration change is a point in that same order.
//  - A member's identity is (nodeId, pid); a node may host several members.
//  - Messages from one sender are delivered in the order that sender called mcast().
//  - onLost: the transport itself is dead (local corosync gone). The owner must stop acknowledging
//    cluster state at once; nothing more will be delivered.

/** Why a member appears in `left` / `joined` (corosync's cpg_reason values). */
export const ChangeReason = {
  join: 1,
  leave: 2,
  nodeDown: 3,
  nodeUp: 4,
  procDown: 5,
} as const;
export type ChangeReasonCode = (typeof ChangeReason)[keyof typeof ChangeReason];

export function changeReasonName(code: number): string {
  switch (code) {
    case ChangeReason.join: return 'JOIN';
    case ChangeReason.leave: return 'LEAVE';
    case ChangeReason.nodeDown: return 'NODEDOWN';
    case ChangeReason.nodeUp: return 'NODEUP';
    case ChangeReason.procDown: return 'PROCDOWN';
    default: return `REASON_${code}`;
  }
}

export interface Member {
  nodeId: number;
  pid: number;
}

export interface MemberChange extends Member {
  /** ChangeReason code (JOIN 1, LEAVE 2, NODEDOWN 3, NODEUP 4, PROCDOWN 5). */
  reason: number;
}

export interface ConfigChange {
  /** Members after the change. */
  members: Member[];
  left: MemberChange[];
  joined: MemberChange[];
}

export interface Delivery {
  nodeId: number;
  pid: number;
  payload: Buffer;
}

export type Unsubscribe = () => void;

export interface Transport {
  /** corosync node id of this member's node. */
  readonly localNodeId: number;
  /** Process id of this member (as peers see it in Member.pid). */
  readonly localPid: number;
  /** Largest payload mcast() accepts. */
  readonly messageBytesMax: number;
  /** Join the group (once). Resolves when the request was accepted; membership arrives as a change. */
  join(group: string): Promise<void>;
  /**
   * Multicast to the group in total order. Resolves when the message was handed to the group
   * (not when delivered). Calls are sent in call order; await it for backpressure.
   */
  mcast(payload: Uint8Array): Promise<void>;
  onDeliver(fn: (d: Delivery) => void): Unsubscribe;
  onConfigChange(fn: (c: ConfigChange) => void): Unsubscribe;
  onLost(fn: (err: Error) => void): Unsubscribe;
  /** Leave the group and release the transport; pending mcasts reject. Idempotent. */
  close(): Promise<void>;
}

/** Small typed listener list used by both implementations. */
export class Listeners<T> {
  private readonly fns = new Set<(v: T) => void>();
  add(fn: (v: T) => void): Unsubscribe {
    this.fns.add(fn);
    return () => {
      this.fns.delete(fn);
    };
  }
  emit(v: T): void {
    for (const fn of [...this.fns]) fn(v);
  }
  get size(): number {
    return this.fns.size;
  }
}
