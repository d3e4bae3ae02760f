// The Volume controller in-process, over memory legs (the real parser, openTable and mirror engine; only
// the devices are in memory): reload shares open devices and releases what it no longer uses, refused
// reloads leave everything as it was, the proxy queues while suspended (bounded) and answers on close,
// and a held write is completed by suspend --noflush / reload / resume.
import { describe, expect, it } from 'vitest';
import { ExportError } from '../../src/nbd/export.js';
import type { Leg, LegWriteFlags } from '../../src/mirror/legs/leg.js';
import { MemoryLeg } from '../../src/mirror/legs/memory.js';
import { FaultyLeg } from '../../src/mirror/legs/faulty.js';
import { tableBackend } from '../../src/control/table-backend.js';
import { Volume, type TableBackend } from '../../src/control/volumes.js';
import { VolumeExport } from '../../src/control/volume-export.js';
import { ControlError } from '../../src/control/control-error.js';

const SIZE = 1024 * 1024;
const SECTORS = SIZE / 512;

/** A device opened from the registry: the MemoryLeg outlives opens and closes, which are counted. */
class Handle implements Leg {
  constructor(
    private readonly inner: Leg,
    private readonly onClose: () => void,
  ) {}
  get device() {
    return this.inner.device;
  }
  get sizeBytes() {
    return this.inner.sizeBytes;
  }
  read(t: Buffer, o: number) {
    return this.inner.read(t, o);
  }
  write(d: Buffer, o: number, f: LegWriteFlags) {
    return this.inner.write(d, o, f);
  }
  flush() {
    return this.inner.flush();
  }
  trim(o: number, l: number) {
    return this.inner.trim(o, l);
  }
  zero(o: number, l: number, x: { mayTrim: boolean }) {
    return this.inner.zero(o, l, x);
  }
  async close() {
    this.onClose();
  }
}

function world() {
  const devices = new Map<string, Leg>();
  const opens = new Map<string, number>();
  const closes = new Map<string, number>();
  const add = (name: string, leg?: Leg) => {
    const l = leg ?? new MemoryLeg({ device: name, sizeBytes: SIZE });
    devices.set(name, l);
    return l;
  };
  const backend: TableBackend = {
    ...tableBackend(),
    openDevice: async (device) => {
      const leg = devices.get(device);
      if (leg === undefined) throw new Error(`no such device ${device}`);
      opens.set(device, (opens.get(device) ?? 0) + 1);
      return new Handle(leg, () => closes.set(device, (closes.get(device) ?? 0) + 1));
    },
  };
  const open = () => [...opens.entries()].filter(([d]) => (opens.get(d) ?? 0) > (closes.get(d) ?? 0)).map(([d]) => d).sort();
  return { add, backend, opens, closes, open };
}

const mirror = (legs: string[], extra = '') => `0 ${SECTORS} mirror core 2 1024 nosync ${legs.length} ${legs.map((l) => `${l} 0`).join(' ')}${extra}`;

describe('Volume', () => {
  it('reload shares the open devices; resume releases the ones the new table dropped', async () => {
    const w = world();
    for (const d of ['a', 'b', 'c']) w.add(d);
    const v = await Volume.create('v', mirror(['a', 'b']), w.backend);
    expect(w.open()).toEqual(['a', 'b']);
    await v.reload(mirror(['a', 'b', 'c']));
    expect(w.opens.get('a')).toBe(1);
    expect(w.open()).toEqual(['a', 'b', 'c']);
    expect(v.info().tablesPresent).toEqual({ live: true, inactive: true });
    expect((await v.resume()).how).toBe('in-place');
    expect(v.table()).toBe(mirror(['a', 'b', 'c']));
    await v.reload(mirror(['a', 'c']));
    await v.resume();
    expect(w.open()).toEqual(['a', 'c']);
    expect(w.opens.get('a')).toBe(1);
    await v.reload(`0 ${SECTORS} linear c 0`);
    expect((await v.resume()).how).toBe('to-linear');
    expect(v.status()).toBe(`0 ${SECTORS} linear`);
    expect(w.open()).toEqual(['c']);
    expect(w.opens.get('c')).toBe(1);
    await v.proxy.close();
    expect(w.open()).toEqual([]);
  });

  it('refused reloads change nothing and leak nothing', async () => {
    const w = world();
    for (const d of ['a', 'b']) w.add(d);
    w.add('small', new MemoryLeg({ device: 'small', sizeBytes: SIZE / 2 }));
    const v = await Volume.create('v', mirror(['a', 'b']), w.backend);
    const before = v.table();
    const refusals: Array<[string, string, string]> = [
      [`0 ${SECTORS} mirror core 2 1024 2 a 0`, 'EINVAL', "expected 'sync' or 'nosync'"],
      [`0 ${SECTORS / 2} linear a 0`, 'ESIZE', 'shrinking is not supported'],
      [`0 ${SECTORS * 2} linear a 0`, 'ENODEV', 'leg a is too small'],
      [mirror(['a', 'missing']), 'ENODEV', 'cannot open missing'],
      [mirror(['a', 'small']), 'ENODEV', 'leg small is too small'],
      ['', 'EINVAL', 'empty table line'],
    ];
    for (const [line, code, text] of refusals) {
      const err = await v.reload(line).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err, line).toBeInstanceOf(ControlError);
      expect((err as ControlError).code, line).toBe(code);
      expect((err as ControlError).message, line).toContain(text);
    }
    expect(v.table()).toBe(before);
    expect(v.info().tablesPresent.inactive).toBe(false);
    expect(v.state).toBe('ACTIVE');
    expect(w.open()).toEqual(['a', 'b']);
    await v.proxy.close();
  });

  it('a held write completes after suspend --noflush / reload / resume; requests wait while suspended', async () => {
    const w = world();
    const a = w.add('a') as MemoryLeg;
    const bad = w.add('b', new FaultyLeg(new MemoryLeg({ device: 'b', sizeBytes: SIZE })));
    const v = await Volume.create('v', mirror(['a', 'b'], ' 1 handle_errors'), w.backend);
    const events: string[] = [];
    v.on('event', (e: { kind: string }) => events.push(e.kind));
    (bad as FaultyLeg).arm('all');
    let done = false;
    const held = v.proxy.write(Buffer.alloc(4096, 0x42), 8192, { fua: false }).then(() => (done = true));
    for (let i = 0; i < 100 && v.info().heldWrites === 0; i++) await new Promise((r) => setTimeout(r, 5));
    expect(v.info().heldWrites).toBe(1);
    expect(events).toContain('leg-failed');
    expect(v.eventNr).toBeGreaterThanOrEqual(1);
    await v.suspend({ noflush: true });
    let readDone = false;
    const read = v.proxy.read(Buffer.alloc(512), 0).then(() => (readDone = true));
    await v.reload(`0 ${SECTORS} linear a 0`);
    await new Promise((r) => setTimeout(r, 20));
    expect(done).toBe(false);
    expect(readDone).toBe(false);
    expect(v.info().queuedRequests).toBe(1);
    const r = await v.resume();
    expect(r).toMatchObject({ swapped: true, how: 'to-linear', heldWritesReissued: 1 });
    await held;
    await read;
    expect(a.bytes.subarray(8192, 8192 + 4096).every((x) => x === 0x42)).toBe(true);
    expect(events).toEqual(expect.arrayContaining(['suspend', 'reload', 'resume']));
    await v.proxy.close();
  });

  it('wait resolves on a counted event and times out otherwise', async () => {
    const w = world();
    for (const d of ['a', 'b']) w.add(d);
    const v = await Volume.create('v', mirror(['a', 'b']), w.backend);
    const nr = v.eventNr;
    await expect(v.wait(nr, 30)).rejects.toThrow(/no event after event number/);
    const waiting = v.wait(nr, 5000);
    v.record('leg-failed', {}, true);
    await expect(waiting).resolves.toBe(nr + 1);
    await v.proxy.close();
  });
});

describe('VolumeExport', () => {
  it('bounds the queue while suspended and answers everything queued on close', async () => {
    const w = world();
    w.add('a');
    const v = await Volume.create('v', `0 ${SECTORS} linear a 0`, w.backend);
    const p = new VolumeExport(v.liveExport, { queuedRequestsMax: 2, queuedBytesMax: 8192 });
    await p.suspend('all');
    const q1 = p.write(Buffer.alloc(4096), 0, { fua: false });
    await expect(p.write(Buffer.alloc(8192), 0, { fua: false })).rejects.toMatchObject({ errno: 'ENOMEM' });
    const q2 = p.read(Buffer.alloc(512), 0);
    await expect(p.read(Buffer.alloc(512), 0)).rejects.toMatchObject({ errno: 'ENOMEM' });
    await p.close();
    await expect(q1).rejects.toBeInstanceOf(ExportError);
    await expect(q2).rejects.toMatchObject({ errno: 'ESHUTDOWN' });
    await expect(p.flush()).rejects.toMatchObject({ errno: 'ESHUTDOWN' });
    await v.proxy.close();
  });
});
