// Byte-level tests of the pool label and slots, against bytes built here independently of the encoder.
import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import {
  decodeArea,
  decodeLabel,
  decodeSlot,
  encodeLabel,
  encodeSlot,
  METADATA_AREA_BYTES,
  SLOT_BYTES,
  SLOT_TEXT_BYTES_MAX,
  slotIndexFor,
  slotOffsetBytes,
} from '../../src/pool/format.js';

const POOL = '11111111-2222-4333-8444-555555555555';
const DEV = 'aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee';

function handLabel(): Buffer {
  const b = Buffer.alloc(512);
  Buffer.from('NBDMPOOL').copy(b, 0);
  b.writeUInt32LE(1, 8);
  b.writeUInt32LE(522240, 12);
  Buffer.from(POOL).copy(b, 16);
  Buffer.from(DEV).copy(b, 52);
  b.writeUInt32LE(1048576, 88);
  createHash('sha256').update(b.subarray(0, 480)).digest().copy(b, 480);
  return b;
}

function handSlot(seqno: number, text: string): Buffer {
  const t = Buffer.from(text);
  const b = Buffer.alloc(Math.ceil((64 + t.length) / 512) * 512);
  Buffer.from('NBDMSLOT').copy(b, 0);
  b.writeUInt32LE(1, 8);
  b.writeUInt32LE(t.length, 12);
  b.writeUInt32LE(seqno, 16);
  createHash('sha256').update(b.subarray(0, 24)).update(t).digest().copy(b, 24);
  t.copy(b, 64);
  return b;
}

describe('pool label', () => {
  it('encodes to the documented bytes and decodes back', () => {
    expect(encodeLabel({ poolUuid: POOL, deviceUuid: DEV }).equals(handLabel())).toBe(true);
    expect(decodeLabel(handLabel())).toEqual({ poolUuid: POOL, deviceUuid: DEV });
  });
  it('rejects a label with any byte flipped', () => {
    for (const at of [0, 8, 12, 20, 60, 90, 200, 500]) {
      const b = handLabel();
      b[at]! ^= 0x01;
      expect(decodeLabel(b), `byte ${at}`).toBeNull();
    }
  });
  it('rejects zeros', () => {
    expect(decodeLabel(Buffer.alloc(512))).toBeNull();
  });
});

describe('pool metadata slots', () => {
  it('encodes to the documented bytes and decodes back', () => {
    const text = JSON.stringify({ hello: 'wörld' });
    expect(encodeSlot({ seqno: 7, text }).equals(handSlot(7, text))).toBe(true);
    expect(decodeSlot(handSlot(7, text))).toEqual({ seqno: 7, text });
  });
  it('geometry: two slots after a 4 KiB label block fill the 1 MiB area', () => {
    expect(slotOffsetBytes(0)).toBe(4096);
    expect(slotOffsetBytes(1)).toBe(4096 + SLOT_BYTES);
    expect(slotOffsetBytes(1) + SLOT_BYTES).toBe(METADATA_AREA_BYTES);
    expect(slotIndexFor(1)).toBe(1);
    expect(slotIndexFor(2)).toBe(0);
  });
  it('a torn slot (truncated text, garbled byte, header only) is invalid', () => {
    const good = handSlot(3, 'x'.repeat(2000));
    const torn = Buffer.concat([good.subarray(0, 1024), Buffer.alloc(good.length - 1024)]);
    expect(decodeSlot(torn)).toBeNull();
    const garbled = Buffer.from(good);
    garbled[1500]! ^= 0x80;
    expect(decodeSlot(garbled)).toBeNull();
    expect(decodeSlot(good.subarray(0, 64))).toBeNull();
    const badSeq = Buffer.from(good);
    badSeq.writeUInt32LE(4, 16);
    expect(decodeSlot(badSeq)).toBeNull();
  });
  it('refuses metadata larger than a slot', () => {
    expect(() => encodeSlot({ seqno: 1, text: 'y'.repeat(SLOT_TEXT_BYTES_MAX + 1) })).toThrow(/slot holds at most/);
  });
  it('decodeArea takes the valid slot with the highest seqno', () => {
    const area = Buffer.alloc(METADATA_AREA_BYTES);
    handLabel().copy(area, 0);
    handSlot(4, 'four').copy(area, slotOffsetBytes(0));
    handSlot(5, 'five').copy(area, slotOffsetBytes(1));
    expect(decodeArea(area).newest).toEqual({ seqno: 5, text: 'five' });
    area[slotOffsetBytes(1) + 66]! ^= 1; // newest torn -> the older one
    expect(decodeArea(area).newest).toEqual({ seqno: 4, text: 'four' });
    expect(decodeArea(area).label).toEqual({ poolUuid: POOL, deviceUuid: DEV });
  });
});
