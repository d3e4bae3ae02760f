// memory-bus.ts — an in-process total-order group bus implementing Transport, for simulations and tests.
//
// Owns: one global, deterministic order of events (messages, joins, leaves, process and node deaths)
// per bus, and their delivery to the members of each group. Semantics follow corosync CPG (see
// transport.ts): every member of a group sees the same sequence of messages and configuration
// changes, including its own messages; a message is delivered to the members present when it is
// reached in the order; a dead member's messages that were already ordered are still delivered; messages
// are delivered in the view they were sent in (queued messages overtake a pending configuration change).
//
// Delivery is asynchronous: `auto` (default) delivers on setImmediate turns, `manual` delivers only
// when the owner calls step()/drain() (a simulation controls interleavings and time that way).
import {
  ChangeReason,
  Listeners,
  type ConfigChange,
  type Delivery,
  type Member,
  type MemberChange,
  type Transport,
  type Unsubscribe,
} from './transport.js';

export interface MemoryBusOptions {
  delivery?: 'auto' | 'manual';
  /** Largest payload a member may mcast. */
  messageBytesMax?: number;
  /** Events ordered but not yet delivered before mcast() rejects (bounded memory). */
  pendingEventsMax?: number;
}
export const MEMORY_BUS_DEFAULTS = {
  messageBytesMax: 1024 * 1024,
  pendingEventsMax: 1_000_000,
} as const;

type BusEvent =
  | { kind: 'msg'; group: string; from: MemoryTransport; payload: Buffer }
  | { kind: 'join'; group: string; who: MemoryTransport }
  | { kind: 'leave'; group: string; who: MemoryTransport[]; reason: number }
  | { kind: 'regroup'; group: ''; sideOfNode: Map<number, number> };

export class MemoryBus {
  private readonly pending: BusEvent[] = [];
  private head = 0;
  private readonly groups = new Map<string, MemoryTransport[]>();
  /** Network partition: node id -> side (absent = side 0). Members only see their own side. */
  private sideOfNode = new Map<number, number>();
  private readonly endpoints = new Set<MemoryTransport>();
  private scheduled = false;
  private nextPid = 1000;
  readonly delivery: 'auto' | 'manual';
  readonly messageBytesMax: number;
  readonly pendingEventsMax: number;
  /** Count of events delivered so far (all groups). */
  deliveredEvents = 0;

  constructor(opts: MemoryBusOptions = {}) {
    this.delivery = opts.delivery ?? 'auto';
    this.messageBytesMax = opts.messageBytesMax ?? MEMORY_BUS_DEFAULTS.messageBytesMax;
    this.pendingEventsMax = opts.pendingEventsMax ?? MEMORY_BUS_DEFAULTS.pendingEventsMax;
  }

  /** A new member process on node `nodeId` (pid assigned by the bus unless given). */
  connect(nodeId: number, pid?: number): MemoryTransport {
    if (!Number.isInteger(nodeId) || nodeId <= 0) throw new RangeError(`bad node id ${nodeId}`);
    const t = new MemoryTransport(this, nodeId, pid ?? this.nextPid++);
    this.endpoints.add(t);
    return t;
  }

  /** Events ordered but not yet delivered. */
  get pendingEvents(): number {
    return this.pending.length - this.head;
  }

  /** Delivers the next event; false when there is none. */
  step(): boolean {
    if (this.head >= this.pending.length) return false;
    let at = this.head;
    const first = this.pending[at]!;
    if (first.kind !== 'msg') {
      // Virtual synchrony: a message is delivered in the view it was sent in. Every message already
      // queued was sent before anyone saw this pending configuration change, so messages from current
      // members overtake it.
      for (let i = this.head + 1; i < this.pending.length; i++) {
        const e = this.pending[i]!;
        if (e.kind === 'msg' && (this.groups.get(e.group) ?? []).includes(e.from)) {
          at = i;
          break;
        }
      }
    }
    const ev = this.pending[at]!;
    if (at === this.head) {
      this.pending[this.head] = undefined as unknown as BusEvent;
      this.head++;
      if (this.head > 1024 && this.head * 2 > this.pending.length) {
        this.pending.splice(0, this.head);
        this.head = 0;
      }
    } else {
      this.pending.splice(at, 1);
    }
    this.apply(ev);
    this.deliveredEvents++;
    return true;
  }

  /** Delivers until nothing is pending (including events produced while delivering). */
  drain(eventsMax = Number.MAX_SAFE_INTEGER): number {
    let n = 0;
    while (n < eventsMax && this.step()) n++;
    return n;
  }

  /** Kills every member process on a node (peers see NODEDOWN); their later calls fail. */
  killNode(nodeId: number): void {
    const dead = [...this.endpoints].filter((t) => t.nodeId === nodeId && t.alive);
    for (const t of dead) t.markDead();
    this.orderDeparture(dead, ChangeReason.nodeDown);
  }

  /** Kills one member process (peers see PROCDOWN). */
  killProcess(t: MemoryTransport): void {
    if (!t.alive) return;
    t.markDead();
    this.orderDeparture([t], ChangeReason.procDown);
  }

  /**
   * Splits the network: each listed array of node ids becomes one side (unlisted nodes share side 0).
   * Ordered like any event: members on each side then see the others leave with NODEDOWN, and each side
   * goes on with its own total order.
   */
  partition(sides: readonly (readonly number[])[]): void {
    const m = new Map<number, number>();
    sides.forEach((nodes, i) => {
      for (const n of nodes) m.set(n, i + 1);
    });
    this.pending.push({ kind: 'regroup', group: '', sideOfNode: m });
    this.schedule();
  }

  /** Rejoins every side: members see the others come back with NODEUP. */
  heal(): void {
    this.pending.push({ kind: 'regroup', group: '', sideOfNode: new Map() });
    this.schedule();
  }

  /** Distinct live nodes on node's side of the current partition (as applied so far). */
  sideNodeCount(nodeId: number): number {
    const side = this.sideOfNode.get(nodeId) ?? 0;
    const nodes = new Set<number>();
    for (const t of this.endpoints) if (t.alive && (this.sideOfNode.get(t.nodeId) ?? 0) === side) nodes.add(t.nodeId);
    return nodes.size;
  }

  // ---- used by MemoryTransport ----
  /** @internal */
  order(ev: BusEvent): void {
    if (this.pendingEvents >= this.pendingEventsMax) {
      throw new RangeError(`memory bus has ${this.pendingEvents} undelivered events (pendingEventsMax)`);
    }
    this.pending.push(ev);
    this.schedule();
  }

  /** @internal */
  orderDeparture(who: MemoryTransport[], reason: number): void {
    const byGroup = new Map<string, MemoryTransport[]>();
    for (const t of who) {
      if (t.group === undefined) continue;
      const list = byGroup.get(t.group) ?? [];
      list.push(t);
      byGroup.set(t.group, list);
    }
    for (const [group, list] of byGroup) {
      this.pending.push({ kind: 'leave', group, who: list, reason });
    }
    this.schedule();
  }

  /** @internal */
  forget(t: MemoryTransport): void {
    this.endpoints.delete(t);
  }

  private schedule(): void {
    if (this.delivery !== 'auto' || this.scheduled) return;
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      // Deliver what is ordered now; events produced meanwhile get the next turn (fair to I/O).
      const n = this.pendingEvents;
      for (let i = 0; i < n; i++) this.step();
      if (this.pendingEvents > 0) this.schedule();
    });
  }

  private sideOf(t: MemoryTransport, map = this.sideOfNode): number {
    return map.get(t.nodeId) ?? 0;
  }

  private apply(ev: BusEvent): void {
    if (ev.kind === 'regroup') {
      this.regroup(ev.sideOfNode);
      return;
    }
    const members = this.groups.get(ev.group) ?? [];
    switch (ev.kind) {
      case 'msg': {
        const d: Delivery = { nodeId: ev.from.nodeId, pid: ev.from.pid, payload: ev.payload };
        const side = this.sideOf(ev.from);
        for (const m of [...members]) if (this.sideOf(m) === side) m.receive(d);
        break;
      }
      case 'join': {
        if (members.includes(ev.who)) return;
        if (!ev.who.alive) return; // died before its join was ordered
        const next = [...members, ev.who];
        this.groups.set(ev.group, next);
        const side = this.sideOf(ev.who);
        const view = next.filter((t) => this.sideOf(t) === side);
        const change: ConfigChange = {
          members: view.map(memberOf),
          left: [],
          joined: [{ ...memberOf(ev.who), reason: ChangeReason.join }],
        };
        for (const m of view) m.receiveChange(change);
        break;
      }
      case 'leave': {
        const gone = ev.who.filter((t) => members.includes(t));
        if (gone.length === 0) return;
        const next = members.filter((t) => !gone.includes(t));
        this.groups.set(ev.group, next);
        // Each side sees only its own members go.
        for (const side of new Set(gone.map((t) => this.sideOf(t)))) {
          const goneHere = gone.filter((t) => this.sideOf(t) === side);
          const view = next.filter((t) => this.sideOf(t) === side);
          const change: ConfigChange = {
            members: view.map(memberOf),
            left: goneHere.map((t): MemberChange => ({ ...memberOf(t), reason: ev.reason })),
            joined: [],
          };
          // A voluntary leaver sees its own leave too (as with cpg_leave); dead ones see nothing.
          const audience = ev.reason === ChangeReason.leave ? [...view, ...goneHere] : view;
          for (const m of audience) m.receiveChange(change);
        }
        for (const t of gone) if (ev.reason === ChangeReason.leave) t.left();
        break;
      }
    }
  }

  /** Applies a new side assignment: per member, a NODEDOWN change for who it lost, then a NODEUP change for who it regained. */
  private regroup(next: Map<number, number>): void {
    const old = this.sideOfNode;
    this.sideOfNode = next;
    for (const members of this.groups.values()) {
      // Members with the same (old side, new side) see the same changes.
      const cells = new Map<string, MemoryTransport[]>();
      for (const t of members) {
        const key = `${this.sideOf(t, old)}/${this.sideOf(t, next)}`;
        const list = cells.get(key) ?? [];
        list.push(t);
        cells.set(key, list);
      }
      for (const cell of cells.values()) {
        const o = this.sideOf(cell[0]!, old);
        const n = this.sideOf(cell[0]!, next);
        const before = members.filter((t) => this.sideOf(t, old) === o);
        const after = members.filter((t) => this.sideOf(t, next) === n);
        const lost = before.filter((t) => !after.includes(t));
        const gained = after.filter((t) => !before.includes(t));
        if (lost.length > 0) {
          const change: ConfigChange = {
            members: before.filter((t) => !lost.includes(t)).map(memberOf),
            left: lost.map((t) => ({ ...memberOf(t), reason: ChangeReason.nodeDown })),
            joined: [],
          };
          for (const m of cell) m.receiveChange(change);
        }
        if (gained.length > 0) {
          const change: ConfigChange = {
            members: after.map(memberOf),
            left: [],
            joined: gained.map((t) => ({ ...memberOf(t), reason: ChangeReason.nodeUp })),
          };
          for (const m of cell) m.receiveChange(change);
        }
      }
    }
  }
}

function memberOf(t: MemoryTransport): Member {
  return { nodeId: t.nodeId, pid: t.pid };
}

export class MemoryTransport implements Transport {
  readonly localNodeId: number;
  readonly localPid: number;
  readonly messageBytesMax: number;
  group: string | undefined;
  private dead = false;
  private closed = false;
  private inGroup = false;
  private readonly deliverL = new Listeners<Delivery>();
  private readonly configL = new Listeners<ConfigChange>();
  private readonly lostL = new Listeners<Error>();

  constructor(
    private readonly bus: MemoryBus,
    readonly nodeId: number,
    readonly pid: number,
  ) {
    this.localNodeId = nodeId;
    this.localPid = pid;
    this.messageBytesMax = bus.messageBytesMax;
  }

  get alive(): boolean {
    return !this.dead && !this.closed;
  }

  async join(group: string): Promise<void> {
    this.check();
    if (this.group !== undefined) throw new Error(`already joined ${this.group}`);
    this.group = group;
    this.bus.order({ kind: 'join', group, who: this });
  }

  async mcast(payload: Uint8Array): Promise<void> {
    this.check();
    if (this.group === undefined) throw new Error('mcast before join');
    if (payload.byteLength > this.messageBytesMax) {
      throw new RangeError(`message of ${payload.byteLength} bytes exceeds messageBytesMax ${this.messageBytesMax}`);
    }
    // Copy: the caller may reuse its buffer, as with the real transport.
    this.bus.order({ kind: 'msg', group: this.group, from: this, payload: Buffer.from(payload) });
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

  /** Simulates the local corosync dying under this member: 'lost' now, peers see NODEDOWN later. */
  loseDaemon(): void {
    if (!this.alive) return;
    this.bus.killNode(this.nodeId);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    const wasAlive = !this.dead;
    this.closed = true;
    this.bus.forget(this);
    if (wasAlive && this.group !== undefined) this.bus.orderDeparture([this], ChangeReason.leave);
  }

  // ---- called by the bus ----
  /** @internal */
  markDead(): void {
    if (this.dead) return;
    this.dead = true;
    this.bus.forget(this);
    this.lostL.emit(new Error(`member ${this.nodeId}/${this.pid} killed`));
  }
  /** @internal */
  receive(d: Delivery): void {
    if (this.dead || this.closed) return;
    if (!this.inGroup) return;
    this.deliverL.emit(d);
  }
  /** @internal */
  receiveChange(c: ConfigChange): void {
    if (this.dead || this.closed) return;
    this.inGroup = c.members.some((m) => m.nodeId === this.nodeId && m.pid === this.pid) || this.inGroup;
    this.configL.emit(c);
  }
  /** @internal */
  left(): void {
    this.inGroup = false;
  }

  private check(): void {
    if (this.dead) throw new Error(`member ${this.nodeId}/${this.pid} is dead`);
    if (this.closed) throw new Error('transport closed');
  }
}
