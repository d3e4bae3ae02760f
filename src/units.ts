// Tables speak 512-byte sectors, NBD speaks bytes. Branded types make mixing them a compile error;
// the conversions below are the only place one becomes the other.

export type Sectors = number & { readonly __unit: 'sectors' };
export type Bytes = number & { readonly __unit: 'bytes' };

export const SECTOR_BYTES = 512;

export function sectors(n: number): Sectors {
  if (!Number.isSafeInteger(n) || n < 0) throw new RangeError(`not a sector count: ${n}`);
  return n as Sectors;
}

export function bytes(n: number): Bytes {
  if (!Number.isSafeInteger(n) || n < 0) throw new RangeError(`not a byte count: ${n}`);
  return n as Bytes;
}

export function sectorsToBytes(s: Sectors): Bytes {
  return (s * SECTOR_BYTES) as Bytes;
}

/** Exact conversion; throws when the byte count is not sector-aligned. */
export function bytesToSectors(b: Bytes): Sectors {
  if (b % SECTOR_BYTES !== 0) throw new RangeError(`${b} bytes is not a whole number of sectors`);
  return (b / SECTOR_BYTES) as Sectors;
}
