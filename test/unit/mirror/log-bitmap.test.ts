import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { Bitmap } from '../../../src/mirror/log/bitmap.js';

describe('Bitmap', () => {
  it('rounds storage up to 8 bytes and uses dm bit order (byte i/8, bit i%8)', () => {
    expect(Bitmap.storageBytes(0)).toBe(0);
    expect(Bitmap.storageBytes(1)).toBe(8);
    expect(Bitmap.storageBytes(64)).toBe(8);
    expect(Bitmap.storageBytes(65)).toBe(16);
    const b = new Bitmap(70);
    b.set(0, true);
    b.set(9, true);
    b.set(69, true);
    expect([...b.bytes]).toEqual([0x01, 0x02, 0, 0, 0, 0, 0, 0, 0x20, 0, 0, 0, 0, 0, 0, 0]);
    expect(b.population()).toBe(3);
  });

  it('fill(true) sets only bits below bitCount', () => {
    const b = new Bitmap(11);
    b.fill(true);
    expect([...b.bytes.subarray(0, 3)]).toEqual([0xff, 0x07, 0]);
    expect(b.population()).toBe(11);
  });

  it('load() ignores stray bits past bitCount', () => {
    const b = new Bitmap(3);
    b.load(new Uint8Array([0xff, 0xff, 0, 0, 0, 0, 0, 0xff]));
    expect(b.population()).toBe(3);
    expect(b.bytes[0]).toBe(0x07);
    expect(b.bytes[7]).toBe(0);
  });

  it('population and findNext agree with a plain boolean model', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 300 }), fc.array(fc.tuple(fc.nat(), fc.boolean()), { maxLength: 200 }), (n, ops) => {
        const b = new Bitmap(n);
        const model = new Array<boolean>(n).fill(false);
        for (const [i0, v] of ops) {
          const i = i0 % n;
          expect(b.set(i, v)).toBe(model[i] !== v);
          model[i] = v;
        }
        expect(b.population()).toBe(model.filter(Boolean).length);
        for (const v of [true, false]) {
          for (const from of [0, Math.floor(n / 3), n - 1]) {
            const want = model.findIndex((x, j) => j >= from && x === v);
            expect(b.findNext(v, from)).toBe(want);
          }
        }
      }),
      { seed: 42, numRuns: 200 },
    );
  });
});
