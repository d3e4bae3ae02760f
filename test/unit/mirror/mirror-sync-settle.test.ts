// A write every leg completes on the submitting stack (Leg.writeNow, as page-cached FileLegs do) is answered
// without a promise of its own (mirror.ts submit: a settled promise); its outcome must be exactly what the
// asynchronous path gives: success, EIO when every leg failed, success with the leg failed (degraded),
// a held write (handle_errors) that stays pending until resume, and a write waiting for a durable
// stale-leg record before its acknowledgement. Also: a request split over regions whose pieces settle on
// the stack and later.
import { describe, expect, it } from 'vitest';
import { createMirror } from '../../../src/mirror/mirror.js';
import { CoreLog } from '../../../src/mirror/log/core.js';
import { LegFilter, type LegOp } from '../../../src/mirror/legs/filter.js';
import { ExportError, SETTLED_OK } from '../../../src/nbd/export.js';
import { MemLeg } from '../../sim/mem-leg.js';

const REGION = 64 * 1024;
const SIZE = REGION * 8;

/** A MemLeg whose non-FUA writes complete synchronously (writeNow) unless `async` is set. */
class SyncLeg extends LegFilter {
  async = false;
  constructor(readonly mem: MemLeg) {
    super(mem);
  }
  protected run(_op: LegOp, _offsetBytes: number, _lengthBytes: number, call: () => Promise<void>): Promise<void> {
    return call();
  }
  writeNow(d: Buffer, o: number): Error | null | undefined {
    return this.async ? undefined : this.mem.writeSync(d, o);
  }
  readNow(t: Buffer, o: number): Error | null | undefined {
    return this.mem.readSync(t, o);
  }
}

async function mirror(handleErrors = false) {
  const legs = ['a', 'b'].map((n) => new SyncLeg(new MemLeg(n, SIZE)));
  const m = await createMirror({
    legs,
    log: new CoreLog({ regionSizeBytes: REGION, lengthBytes: SIZE, sync: 'nosync' }),
    regionSizeBytes: REGION,
    lengthBytes: SIZE,
    handleErrors,
    keepLog: false,
    resync: { autoStart: false },
  });
  return { m, legs };
}

describe('mirror writes settled on the submitting stack', () => {
  it('succeed with the data on every leg; a multi-region write mixing synchronous and later pieces settles once all are done', async () => {
    const { m, legs } = await mirror();
    await m.write(Buffer.alloc(4096, 1), 0, { fua: false }); // first: the region's mark waits for the log flush
    const now = m.write(Buffer.alloc(4096, 2), 4096, { fua: false }); // dirty region: on the stack
    expect(now).toBe(SETTLED_OK); // the server answers it without a promise reaction
    await expect(now).resolves.toBeUndefined();
    const data = Buffer.alloc(REGION + 8192, 3);
    legs[1]!.async = true;
    const p = m.write(data, REGION - 4096, { fua: false });
    expect(p).not.toBe(SETTLED_OK);
    legs[1]!.async = false;
    await p;
    for (const l of legs) {
      const back = Buffer.alloc(data.length);
      expect(l.mem.readSync(back, REGION - 4096)).toBeNull();
      expect(back.equals(data)).toBe(true);
      const b2 = Buffer.alloc(4096);
      l.mem.readSync(b2, 4096);
      expect(b2.every((x) => x === 2)).toBe(true);
    }
    await m.close();
  });

  it('every leg failing on the stack rejects with EIO; one failing degrades the mirror and the write succeeds after the stale record', async () => {
    const { m, legs } = await mirror();
    await m.write(Buffer.alloc(512, 1), 0, { fua: false }); // mark region 0
    legs[1]!.mem.failWrites = true;
    await expect(m.write(Buffer.alloc(512, 2), 512, { fua: false })).resolves.toBeUndefined();
    expect(m.status().healthChars).toBe('AD');
    legs[0]!.mem.failWrites = true;
    const err = await m.write(Buffer.alloc(512, 3), 1024, { fua: false }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ExportError);
    expect((err as ExportError).errno).toBe('EIO');
    await m.close();
  });

  it('handle_errors: a write whose leg failed on the stack is held (pending) until resume re-issues it', async () => {
    const { m, legs } = await mirror(true);
    await m.write(Buffer.alloc(512, 1), 0, { fua: false });
    legs[1]!.mem.failWrites = true;
    let settled = false;
    const p = m.write(Buffer.alloc(512, 9), 512, { fua: false }).then(() => (settled = true));
    for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
    expect(settled).toBe(false);
    expect(m.status().heldWrites).toBe(1);
    await m.suspend({ noflush: true });
    legs[1]!.mem.failWrites = false;
    m.reload({ legs: [legs[0]!] }); // drop the failed leg
    await m.resume();
    await p;
    expect(settled).toBe(true);
    const back = Buffer.alloc(512);
    legs[0]!.mem.readSync(back, 512);
    expect(back.every((x) => x === 9)).toBe(true);
    await m.close();
  });
});
