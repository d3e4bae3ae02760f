// Transmission-phase replies: simple replies and structured reply chunks, encode (server) and
// decode (client). Pure functions over Buffer. Hot-path encoders write into a caller-provided
// buffer so a read reply is one allocation: header + data.

import {
  NBD_REPLY_FLAG_DONE,
  NBD_REPLY_TYPE_BLOCK_STATUS,
  NBD_REPLY_TYPE_ERROR,
  NBD_REPLY_TYPE_NONE,
  NBD_REPLY_TYPE_OFFSET_DATA,
  NBD_REPLY_TYPE_OFFSET_HOLE,
  NBD_SIMPLE_REPLY_MAGIC,
  NBD_STRUCTURED_REPLY_MAGIC,
  SIMPLE_REPLY_BYTES,
  STRING_BYTES_MAX,
  STRUCTURED_REPLY_HEADER_BYTES,
} from './constants.js';

const TWO_POW_32 = 0x1_0000_0000;

/** Bytes before the data in a structured OFFSET_DATA chunk: header + u64 offset. */
export const OFFSET_DATA_PREFIX_BYTES = STRUCTURED_REPLY_HEADER_BYTES + 8;
export const OFFSET_HOLE_CHUNK_BYTES = STRUCTURED_REPLY_HEADER_BYTES + 12;

export function encodeSimpleReply(target: Buffer, at: number, error: number, cookieHi: number, cookieLo: number): void {
  target.writeUInt32BE(NBD_SIMPLE_REPLY_MAGIC, at);
  target.writeUInt32BE(error, at + 4);
  target.writeUInt32BE(cookieHi, at + 8);
  target.writeUInt32BE(cookieLo, at + 12);
}

export function simpleReply(error: number, cookieHi: number, cookieLo: number): Buffer {
  const b = Buffer.allocUnsafe(SIMPLE_REPLY_BYTES);
  encodeSimpleReply(b, 0, error, cookieHi, cookieLo);
  return b;
}

export function encodeStructuredHeader(
  target: Buffer,
  at: number,
  h: { flags: number; type: number; cookieHi: number; cookieLo: number; lengthBytes: number },
): void {
  target.writeUInt32BE(NBD_STRUCTURED_REPLY_MAGIC, at);
  target.writeUInt16BE(h.flags, at + 4);
  target.writeUInt16BE(h.type, at + 6);
  target.writeUInt32BE(h.cookieHi, at + 8);
  target.writeUInt32BE(h.cookieLo, at + 12);
  target.writeUInt32BE(h.lengthBytes, at + 16);
}

function writeU64(target: Buffer, at: number, v: number): void {
  target.writeUInt32BE(Math.floor(v / TWO_POW_32), at);
  target.writeUInt32BE(v % TWO_POW_32, at + 4);
}

function readU64(buf: Buffer, at: number): number {
  return buf.readUInt32BE(at) * TWO_POW_32 + buf.readUInt32BE(at + 4);
}

/**
 * Fill the first OFFSET_DATA_PREFIX_BYTES of `target` with an OFFSET_DATA chunk header whose data
 * (dataBytes long) follows it in the same buffer.
 */
export function encodeOffsetDataPrefix(
  target: Buffer,
  at: number,
  flags: number,
  cookieHi: number,
  cookieLo: number,
  offsetBytes: number,
  dataBytes: number,
): void {
  target.writeUInt32BE(NBD_STRUCTURED_REPLY_MAGIC, at);
  target.writeUInt16BE(flags, at + 4);
  target.writeUInt16BE(NBD_REPLY_TYPE_OFFSET_DATA, at + 6);
  target.writeUInt32BE(cookieHi, at + 8);
  target.writeUInt32BE(cookieLo, at + 12);
  target.writeUInt32BE(dataBytes + 8, at + 16);
  writeU64(target, at + 20, offsetBytes);
}

export function offsetHoleChunk(flags: number, cookieHi: number, cookieLo: number, offsetBytes: number, holeBytes: number): Buffer {
  const b = Buffer.allocUnsafe(OFFSET_HOLE_CHUNK_BYTES);
  encodeStructuredHeader(b, 0, { flags, type: NBD_REPLY_TYPE_OFFSET_HOLE, cookieHi, cookieLo, lengthBytes: 12 });
  writeU64(b, 20, offsetBytes);
  b.writeUInt32BE(holeBytes, 28);
  return b;
}

export function noneChunk(cookieHi: number, cookieLo: number): Buffer {
  const b = Buffer.allocUnsafe(STRUCTURED_REPLY_HEADER_BYTES);
  encodeStructuredHeader(b, 0, { flags: NBD_REPLY_FLAG_DONE, type: NBD_REPLY_TYPE_NONE, cookieHi, cookieLo, lengthBytes: 0 });
  return b;
}

/** NBD_REPLY_TYPE_ERROR chunk, final (DONE). The message is truncated to the spec's string limit. */
export function errorChunk(cookieHi: number, cookieLo: number, error: number, message: string): Buffer {
  let msg = Buffer.from(message, 'utf8');
  if (msg.length > STRING_BYTES_MAX) msg = msg.subarray(0, STRING_BYTES_MAX);
  const b = Buffer.allocUnsafe(STRUCTURED_REPLY_HEADER_BYTES + 6 + msg.length);
  encodeStructuredHeader(b, 0, {
    flags: NBD_REPLY_FLAG_DONE,
    type: NBD_REPLY_TYPE_ERROR,
    cookieHi,
    cookieLo,
    lengthBytes: 6 + msg.length,
  });
  b.writeUInt32BE(error, 20);
  b.writeUInt16BE(msg.length, 24);
  msg.copy(b, 26);
  return b;
}

export interface WireExtent {
  readonly lengthBytes: number;
  readonly flags: number;
}

/** NBD_REPLY_TYPE_BLOCK_STATUS chunk for one context with the given descriptors (at least one). */
export function blockStatusChunk(
  flags: number,
  cookieHi: number,
  cookieLo: number,
  contextId: number,
  extents: readonly WireExtent[],
): Buffer {
  if (extents.length === 0) throw new RangeError('block status needs at least one extent');
  const payloadBytes = 4 + 8 * extents.length;
  const b = Buffer.allocUnsafe(STRUCTURED_REPLY_HEADER_BYTES + payloadBytes);
  encodeStructuredHeader(b, 0, { flags, type: NBD_REPLY_TYPE_BLOCK_STATUS, cookieHi, cookieLo, lengthBytes: payloadBytes });
  b.writeUInt32BE(contextId, 20);
  let at = 24;
  for (const e of extents) {
    b.writeUInt32BE(e.lengthBytes, at);
    b.writeUInt32BE(e.flags, at + 4);
    at += 8;
  }
  return b;
}

// ---- Decode (client side) --------------------------------------------------------------------

export interface ReplyHeader {
  magic: number;
  /** Simple replies: error. Structured: 0. */
  error: number;
  /** Structured only. */
  flags: number;
  type: number;
  cookieHi: number;
  cookieLo: number;
  /** Structured only: payload length. */
  lengthBytes: number;
}

export function newReplyHeader(): ReplyHeader {
  return { magic: 0, error: 0, flags: 0, type: 0, cookieHi: 0, cookieLo: 0, lengthBytes: 0 };
}

/** Header size implied by a reply magic; 0 if unknown. */
export function replyHeaderBytes(magic: number): number {
  if (magic === NBD_SIMPLE_REPLY_MAGIC) return SIMPLE_REPLY_BYTES;
  if (magic === NBD_STRUCTURED_REPLY_MAGIC) return STRUCTURED_REPLY_HEADER_BYTES;
  return 0;
}

/** Decode a simple or structured reply header at `at` (the caller has enough bytes for its magic). */
export function decodeReplyHeader(buf: Buffer, at: number, out: ReplyHeader): void {
  out.magic = buf.readUInt32BE(at);
  if (out.magic === NBD_SIMPLE_REPLY_MAGIC) {
    out.error = buf.readUInt32BE(at + 4);
    out.flags = NBD_REPLY_FLAG_DONE;
    out.type = NBD_REPLY_TYPE_NONE;
    out.cookieHi = buf.readUInt32BE(at + 8);
    out.cookieLo = buf.readUInt32BE(at + 12);
    out.lengthBytes = 0;
  } else {
    out.error = 0;
    out.flags = buf.readUInt16BE(at + 4);
    out.type = buf.readUInt16BE(at + 6);
    out.cookieHi = buf.readUInt32BE(at + 8);
    out.cookieLo = buf.readUInt32BE(at + 12);
    out.lengthBytes = buf.readUInt32BE(at + 16);
  }
}

export interface DecodedError {
  readonly error: number;
  readonly message: string;
  readonly offsetBytes?: number;
}

/** Payload of an error chunk (any type with bit 15 set); null if malformed. */
export function decodeErrorPayload(payload: Buffer, type: number): DecodedError | null {
  if (payload.length < 6) return null;
  const error = payload.readUInt32BE(0);
  const msgBytes = payload.readUInt16BE(4);
  if (6 + msgBytes > payload.length) return null;
  const message = payload.toString('utf8', 6, 6 + msgBytes);
  if (type === NBD_REPLY_TYPE_ERROR + 1) {
    if (payload.length < 6 + msgBytes + 8) return null;
    return { error, message, offsetBytes: readU64(payload, 6 + msgBytes) };
  }
  return { error, message };
}

export function decodeOffsetHolePayload(payload: Buffer): { offsetBytes: number; holeBytes: number } | null {
  if (payload.length !== 12) return null;
  return { offsetBytes: readU64(payload, 0), holeBytes: payload.readUInt32BE(8) };
}

export function decodeBlockStatusPayload(payload: Buffer): { contextId: number; extents: WireExtent[] } | null {
  if (payload.length < 12 || (payload.length - 4) % 8 !== 0) return null;
  const contextId = payload.readUInt32BE(0);
  const extents: WireExtent[] = [];
  for (let at = 4; at < payload.length; at += 8) {
    extents.push({ lengthBytes: payload.readUInt32BE(at), flags: payload.readUInt32BE(at + 4) });
  }
  return { contextId, extents };
}

export { readU64, writeU64 };
