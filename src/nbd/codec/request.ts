// Transmission-phase request header: decode (server) and encode (client). Pure functions over
// Buffer, no allocation on decode: the caller owns a reusable RequestHeader.
//
// Offsets are u64 on the wire and numbers here. Values above 2^53 lose precision but stay above
// any export size, so range validation still rejects them with the right error.

import {
  EXTENDED_REQUEST_HEADER_BYTES,
  NBD_EXTENDED_REQUEST_MAGIC,
  NBD_REQUEST_MAGIC,
  REQUEST_HEADER_BYTES,
} from './constants.js';

const TWO_POW_32 = 0x1_0000_0000;

export interface RequestHeader {
  magic: number;
  flags: number;
  type: number;
  /** The 64-bit cookie as two u32 halves, echoed back verbatim. */
  cookieHi: number;
  cookieLo: number;
  offsetBytes: number;
  lengthBytes: number;
}

export function newRequestHeader(): RequestHeader {
  return { magic: 0, flags: 0, type: 0, cookieHi: 0, cookieLo: 0, offsetBytes: 0, lengthBytes: 0 };
}

/** Size of the header starting with this magic, or 0 if the magic is not a request magic. */
export function requestHeaderBytes(magic: number): number {
  if (magic === NBD_REQUEST_MAGIC) return REQUEST_HEADER_BYTES;
  if (magic === NBD_EXTENDED_REQUEST_MAGIC) return EXTENDED_REQUEST_HEADER_BYTES;
  return 0;
}

/**
 * Decode the compact (28-byte) header at `at`; the caller guarantees 28 bytes are there and
 * checks `out.magic` itself.
 */
export function decodeRequestHeader(buf: Buffer, at: number, out: RequestHeader): void {
  out.magic = buf.readUInt32BE(at);
  out.flags = buf.readUInt16BE(at + 4);
  out.type = buf.readUInt16BE(at + 6);
  out.cookieHi = buf.readUInt32BE(at + 8);
  out.cookieLo = buf.readUInt32BE(at + 12);
  out.offsetBytes = buf.readUInt32BE(at + 16) * TWO_POW_32 + buf.readUInt32BE(at + 20);
  out.lengthBytes = buf.readUInt32BE(at + 24);
}

/** Decode the extended (32-byte, 64-bit length) header; decoded for completeness, not negotiated. */
export function decodeExtendedRequestHeader(buf: Buffer, at: number, out: RequestHeader): void {
  decodeRequestHeader(buf, at, out); // the same fields up to the length, which is 64-bit here
  out.lengthBytes = buf.readUInt32BE(at + 24) * TWO_POW_32 + buf.readUInt32BE(at + 28);
}

export interface RequestFields {
  readonly flags: number;
  readonly type: number;
  readonly cookieHi: number;
  readonly cookieLo: number;
  readonly offsetBytes: number;
  readonly lengthBytes: number;
}

/** Encode a compact request header into target at `at` (client side). */
export function encodeRequestHeader(target: Buffer, at: number, req: RequestFields): void {
  if (!Number.isSafeInteger(req.offsetBytes) || req.offsetBytes < 0) throw new RangeError(`bad offset ${req.offsetBytes}`);
  if (!(req.lengthBytes >= 0 && req.lengthBytes < TWO_POW_32)) throw new RangeError(`bad length ${req.lengthBytes}`);
  target.writeUInt32BE(NBD_REQUEST_MAGIC, at);
  target.writeUInt16BE(req.flags, at + 4);
  target.writeUInt16BE(req.type, at + 6);
  target.writeUInt32BE(req.cookieHi, at + 8);
  target.writeUInt32BE(req.cookieLo, at + 12);
  target.writeUInt32BE(Math.floor(req.offsetBytes / TWO_POW_32), at + 16);
  target.writeUInt32BE(req.offsetBytes % TWO_POW_32, at + 20);
  target.writeUInt32BE(req.lengthBytes, at + 24);
}
