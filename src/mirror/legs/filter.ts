// The shape nbdkit gives its filters: a Leg that wraps another and routes every data operation through
// one hook, run(op, offset, length, call), forwarding device, size and close unchanged. FaultyLeg and
// DelayedLeg are the two filters; each only says what it does around `call`.
import type { Leg, LegWriteFlags } from './leg.js';

export type LegOp = 'read' | 'write' | 'flush' | 'trim' | 'zero';
export const LEG_OPS: readonly LegOp[] = ['read', 'write', 'flush', 'trim', 'zero'];

export abstract class LegFilter implements Leg {
  constructor(readonly inner: Leg) {}

  get device(): string {
    return this.inner.device;
  }

  get sizeBytes(): number {
    return this.inner.sizeBytes;
  }

  /** Runs `call` (the operation on the inner leg) with whatever this filter adds around it. */
  protected abstract run(op: LegOp, offsetBytes: number, lengthBytes: number, call: () => Promise<void>): Promise<void>;

  read(target: Buffer, offsetBytes: number): Promise<void> {
    return this.run('read', offsetBytes, target.length, () => this.inner.read(target, offsetBytes));
  }

  write(data: Buffer, offsetBytes: number, flags: LegWriteFlags): Promise<void> {
    return this.run('write', offsetBytes, data.length, () => this.inner.write(data, offsetBytes, flags));
  }

  flush(): Promise<void> {
    return this.run('flush', 0, 0, () => this.inner.flush());
  }

  trim(offsetBytes: number, lengthBytes: number): Promise<void> {
    return this.run('trim', offsetBytes, lengthBytes, () => this.inner.trim(offsetBytes, lengthBytes));
  }

  zero(offsetBytes: number, lengthBytes: number, opts: { mayTrim: boolean }): Promise<void> {
    return this.run('zero', offsetBytes, lengthBytes, () => this.inner.zero(offsetBytes, lengthBytes, opts));
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}
