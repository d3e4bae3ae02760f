// On-device metadata area of a pool device (LVM's label + metadata area). Pure codec: Buffers in, values
// out; opens nothing. Every pool device starts with the same fixed area, so any one device holds a full copy
// of the pool's metadata and the pool can be found again from its devices alone.
//
// Area = the first METADATA_AREA_BYTES (1 MiB) of the device; the pool's extents start right after it.
//   0        label, LABEL_BYTES (512), written when the device joins a pool:
//              0  8  magic "NBDMPOOL"
//              8  u32 label version (1)
//             12  u32 slot bytes (SLOT_BYTES)
//             16  36 pool uuid (ASCII, 8-4-4-4-12)
//             52  36 device uuid (ASCII)
//             88  u64 metadata area bytes
//             96  ... zero
//            480  32 sha256 of bytes 0..479
//   4096     slot 0 } SLOT_BYTES each; slot (seqno % 2) holds metadata number seqno, so a new commit always
//   4096+S   slot 1 } overwrites the OLDER slot and a torn write leaves the previous commit readable.
// Slot (all little-endian):
//              0  8  magic "NBDMSLOT"
//              8  u32 slot version (1)
//             12  u32 text bytes (JSON, UTF-8)
//             16  u64 seqno
//             24  32 sha256 of (bytes 0..23 ++ text)
//             56  8  zero
//             64  text
// A reader takes, over every device of the pool, the valid slot with the highest seqno.
import { createHash } from 'node:crypto';
import { strict as assert } from 'node:assert';

export const METADATA_AREA_BYTES = 1024 * 1024;
export const LABEL_BYTES = 512;
export const SLOTS_OFFSET_BYTES = 4096;
export const SLOT_BYTES = (METADATA_AREA_BYTES - SLOTS_OFFSET_BYTES) / 2;
export const SLOT_HEADER_BYTES = 64;
/** Largest metadata JSON text a slot holds. */
export const SLOT_TEXT_BYTES_MAX = SLOT_BYTES - SLOT_HEADER_BYTES;
export const LABEL_MAGIC = 'NBDMPOOL';
export const SLOT_MAGIC = 'NBDMSLOT';
export const LABEL_VERSION = 1;
export const SLOT_VERSION = 1;
const UUID_CHARS = 36;
const LABEL_DIGEST_OFFSET = LABEL_BYTES - 32;
assert(Number.isInteger(SLOT_BYTES) && SLOT_BYTES % 512 === 0, 'slots are whole sectors');
assert(SLOTS_OFFSET_BYTES + 2 * SLOT_BYTES === METADATA_AREA_BYTES, 'two slots fill the area after the label');

export const UUID_PATTERN = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

export interface Label {
  readonly poolUuid: string;
  readonly deviceUuid: string;
}

export interface Slot {
  readonly seqno: number;
  readonly text: string;
}

function sha256(...parts: Buffer[]): Buffer {
  const h = createHash('sha256');
  for (const p of parts) h.update(p);
  return h.digest();
}

export function slotOffsetBytes(index: 0 | 1): number {
  return SLOTS_OFFSET_BYTES + index * SLOT_BYTES;
}

/** The slot a commit with this seqno goes to (the other one keeps the previous commit). */
export function slotIndexFor(seqno: number): 0 | 1 {
  return (seqno % 2) as 0 | 1;
}

export function encodeLabel(label: Label): Buffer {
  assert(UUID_PATTERN.test(label.poolUuid), 'pool uuid');
  assert(UUID_PATTERN.test(label.deviceUuid), 'device uuid');
  const b = Buffer.alloc(LABEL_BYTES);
  b.write(LABEL_MAGIC, 0, 'ascii');
  b.writeUInt32LE(LABEL_VERSION, 8);
  b.writeUInt32LE(SLOT_BYTES, 12);
  b.write(label.poolUuid, 16, 'ascii');
  b.write(label.deviceUuid, 16 + UUID_CHARS, 'ascii');
  b.writeBigUInt64LE(BigInt(METADATA_AREA_BYTES), 88);
  sha256(b.subarray(0, LABEL_DIGEST_OFFSET)).copy(b, LABEL_DIGEST_OFFSET);
  return b;
}

/** The label in `area` (at least LABEL_BYTES), or null when there is none or it is damaged. */
export function decodeLabel(area: Buffer): Label | null {
  if (area.length < LABEL_BYTES) return null;
  if (area.toString('ascii', 0, 8) !== LABEL_MAGIC) return null;
  const digest = sha256(area.subarray(0, LABEL_DIGEST_OFFSET));
  if (!digest.equals(area.subarray(LABEL_DIGEST_OFFSET, LABEL_BYTES))) return null;
  if (area.readUInt32LE(8) !== LABEL_VERSION || area.readUInt32LE(12) !== SLOT_BYTES) return null;
  if (area.readBigUInt64LE(88) !== BigInt(METADATA_AREA_BYTES)) return null;
  const poolUuid = area.toString('ascii', 16, 16 + UUID_CHARS);
  const deviceUuid = area.toString('ascii', 16 + UUID_CHARS, 16 + 2 * UUID_CHARS);
  if (!UUID_PATTERN.test(poolUuid) || !UUID_PATTERN.test(deviceUuid)) return null;
  return { poolUuid, deviceUuid };
}

/** A slot image (header + text, padded to a whole number of 512-byte sectors). */
export function encodeSlot(slot: Slot): Buffer {
  assert(Number.isSafeInteger(slot.seqno) && slot.seqno >= 1, 'seqno');
  const text = Buffer.from(slot.text, 'utf8');
  if (text.length > SLOT_TEXT_BYTES_MAX) {
    throw new RangeError(`pool metadata is ${text.length} bytes, a slot holds at most ${SLOT_TEXT_BYTES_MAX}`);
  }
  const total = Math.ceil((SLOT_HEADER_BYTES + text.length) / 512) * 512;
  const b = Buffer.alloc(total);
  b.write(SLOT_MAGIC, 0, 'ascii');
  b.writeUInt32LE(SLOT_VERSION, 8);
  b.writeUInt32LE(text.length, 12);
  b.writeBigUInt64LE(BigInt(slot.seqno), 16);
  sha256(b.subarray(0, 24), text).copy(b, 24);
  text.copy(b, SLOT_HEADER_BYTES);
  return b;
}

/** The slot stored in `image` (a whole SLOT_BYTES region, or at least header + text), or null if invalid. */
export function decodeSlot(image: Buffer): Slot | null {
  if (image.length < SLOT_HEADER_BYTES) return null;
  if (image.toString('ascii', 0, 8) !== SLOT_MAGIC) return null;
  if (image.readUInt32LE(8) !== SLOT_VERSION) return null;
  const textBytes = image.readUInt32LE(12);
  if (textBytes > SLOT_TEXT_BYTES_MAX || SLOT_HEADER_BYTES + textBytes > image.length) return null;
  const seqno = image.readBigUInt64LE(16);
  if (seqno < 1n || seqno > BigInt(Number.MAX_SAFE_INTEGER)) return null;
  const text = image.subarray(SLOT_HEADER_BYTES, SLOT_HEADER_BYTES + textBytes);
  if (!sha256(image.subarray(0, 24), text).equals(image.subarray(24, 56))) return null;
  return { seqno: Number(seqno), text: text.toString('utf8') };
}

/** Both slots of a whole metadata area; the newest valid one is `newest`. */
export function decodeArea(area: Buffer): { label: Label | null; slots: (Slot | null)[]; newest: Slot | null } {
  assert(area.length >= METADATA_AREA_BYTES, 'a whole metadata area');
  const label = decodeLabel(area);
  const slots = [0, 1].map((i) => decodeSlot(area.subarray(slotOffsetBytes(i as 0 | 1), slotOffsetBytes(i as 0 | 1) + SLOT_BYTES)));
  let newest: Slot | null = null;
  for (const s of slots) if (s !== null && (newest === null || s.seqno > newest.seqno)) newest = s;
  return { label, slots, newest };
}
