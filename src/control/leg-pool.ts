// LegPool: the open legs of one volume, shared between its live and its inactive table. A reload that
// names a device (at the same offset) the live table already uses gets the SAME open leg, as dm keeps a
// device open across a table swap; the leg is really closed when the last table holding it closes it.
//
// Owns: the reference counts and the per-open bookkeeping that lets a failed table open release exactly
// what it acquired. It does not open devices itself: the caller passes the opener.
import assert from 'node:assert/strict';
import type { Leg, LegWriteFlags } from '../mirror/legs/leg.js';

interface Entry {
  readonly leg: Leg;
  refs: number;
}

export function legKey(device: string, offsetBytes: number): string {
  return `${offsetBytes}@${device}`;
}

export class LegPool {
  private readonly entries = new Map<string, Entry>();

  /** Open (or share) the leg for `key`. The returned handle's close() drops one reference. */
  async acquire(key: string, open: () => Promise<Leg>): Promise<Leg> {
    let entry = this.entries.get(key);
    if (entry === undefined) {
      const leg = await open();
      // Another acquire for the same key may have finished while we awaited: share the first.
      const raced = this.entries.get(key);
      if (raced !== undefined) {
        await leg.close();
        entry = raced;
      } else {
        entry = { leg, refs: 0 };
        this.entries.set(key, entry);
      }
    }
    entry.refs++;
    return new SharedLeg(entry.leg, () => this.release(key, entry!));
  }

  has(key: string): boolean {
    return this.entries.has(key);
  }

  /** Keys of the open legs, for info and tests. */
  keys(): string[] {
    return [...this.entries.keys()];
  }

  private async release(key: string, entry: Entry): Promise<void> {
    assert.ok(entry.refs > 0, `leg ${key} released more often than acquired`);
    entry.refs--;
    if (entry.refs > 0) return;
    this.entries.delete(key);
    await entry.leg.close();
  }
}

/** A reference to a pooled leg: forwards I/O (the optional fast paths too); close() releases the reference once. */
class SharedLeg implements Leg {
  private released = false;
  readonly readNow?: Leg['readNow'];
  readonly writeNow?: Leg['writeNow'];
  readonly spliceNow?: Leg['spliceNow'];
  constructor(
    private readonly inner: Leg,
    private readonly releaseFn: () => Promise<void>,
  ) {
    // Present only when the inner leg has them (the mirror tests for their presence).
    if (inner.readNow !== undefined) this.readNow = inner.readNow.bind(inner);
    if (inner.writeNow !== undefined) this.writeNow = inner.writeNow.bind(inner);
    if (inner.spliceNow !== undefined) this.spliceNow = inner.spliceNow.bind(inner);
  }
  copyRangeTo(target: Leg, offsetBytes: number, lengthBytes: number): Promise<boolean> {
    if (this.inner.copyRangeTo === undefined) return Promise.resolve(false);
    return this.inner.copyRangeTo(target instanceof SharedLeg ? target.inner : target, offsetBytes, lengthBytes);
  }
  get device(): string {
    return this.inner.device;
  }
  get sizeBytes(): number {
    return this.inner.sizeBytes;
  }
  read(target: Buffer, offsetBytes: number): Promise<void> {
    return this.inner.read(target, offsetBytes);
  }
  write(data: Buffer, offsetBytes: number, flags: LegWriteFlags): Promise<void> {
    return this.inner.write(data, offsetBytes, flags);
  }
  flush(): Promise<void> {
    return this.inner.flush();
  }
  trim(offsetBytes: number, lengthBytes: number): Promise<void> {
    return this.inner.trim(offsetBytes, lengthBytes);
  }
  zero(offsetBytes: number, lengthBytes: number, opts: { mayTrim: boolean }): Promise<void> {
    return this.inner.zero(offsetBytes, lengthBytes, opts);
  }
  async close(): Promise<void> {
    if (this.released) return;
    this.released = true;
    await this.releaseFn();
  }
}

/**
 * Tracks the legs one table open acquires, so a failed open releases exactly those (openTable may or may
 * not close what it opened before the failure; releasing twice is harmless: SharedLeg.close is idempotent).
 */
export class LegAcquisitions {
  private readonly legs: Leg[] = [];
  constructor(private readonly pool: LegPool) {}
  async acquire(key: string, open: () => Promise<Leg>): Promise<Leg> {
    const leg = await this.pool.acquire(key, open);
    this.legs.push(leg);
    return leg;
  }
  async releaseAll(): Promise<void> {
    const legs = this.legs.splice(0);
    await Promise.allSettled(legs.map((l) => l.close()));
  }
}
