// Handshake-phase messages: greeting, client flags, options and option replies, NBD_REP_INFO
// payloads, the NBD_OPT_EXPORT_NAME reply. Encode and decode for both server and client. Pure.
// Decoders of client-supplied option data return a string describing the problem instead of
// throwing, so the server can answer NBD_REP_ERR_INVALID with it.

import {
  EXPORT_NAME_REPLY_BYTES,
  EXPORT_NAME_REPLY_ZEROES_BYTES,
  GREETING_BYTES,
  NBD_INFO_BLOCK_SIZE,
  NBD_INFO_DESCRIPTION,
  NBD_INFO_EXPORT,
  NBD_INFO_NAME,
  NBD_MAGIC,
  NBD_OPTS_MAGIC,
  NBD_REP_MAGIC,
  OPTION_HEADER_BYTES,
  OPTION_REPLY_HEADER_BYTES,
  STRING_BYTES_MAX,
} from './constants.js';
import { readU64, writeU64 } from './reply.js';

// ---- Greeting and flags ----------------------------------------------------------------------

export function encodeGreeting(handshakeFlags: number): Buffer {
  const b = Buffer.allocUnsafe(GREETING_BYTES);
  b.writeBigUInt64BE(NBD_MAGIC, 0);
  b.writeBigUInt64BE(NBD_OPTS_MAGIC, 8);
  b.writeUInt16BE(handshakeFlags, 16);
  return b;
}

/** Handshake flags from a greeting, or null if the magics are wrong (oldstyle or not NBD). */
export function decodeGreeting(b: Buffer): number | null {
  if (b.length < GREETING_BYTES) return null;
  if (b.readBigUInt64BE(0) !== NBD_MAGIC || b.readBigUInt64BE(8) !== NBD_OPTS_MAGIC) return null;
  return b.readUInt16BE(16);
}

export function encodeClientFlags(flags: number): Buffer {
  const b = Buffer.allocUnsafe(4);
  b.writeUInt32BE(flags >>> 0, 0);
  return b;
}

// ---- Options (client -> server) --------------------------------------------------------------

export interface OptionHeader {
  readonly option: number;
  readonly lengthBytes: number;
}

/** Option header at the start of b (16 bytes), or null if the IHAVEOPT magic is wrong. */
export function decodeOptionHeader(b: Buffer): OptionHeader | null {
  if (b.readBigUInt64BE(0) !== NBD_OPTS_MAGIC) return null;
  return { option: b.readUInt32BE(8), lengthBytes: b.readUInt32BE(12) };
}

export function encodeOption(option: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const b = Buffer.allocUnsafe(OPTION_HEADER_BYTES + data.length);
  b.writeBigUInt64BE(NBD_OPTS_MAGIC, 0);
  b.writeUInt32BE(option, 8);
  b.writeUInt32BE(data.length, 12);
  data.copy(b, OPTION_HEADER_BYTES);
  return b;
}

export interface InfoRequest {
  readonly name: string;
  readonly infos: readonly number[];
}

/** Data of NBD_OPT_INFO / NBD_OPT_GO. */
export function decodeInfoRequest(data: Buffer): InfoRequest | string {
  if (data.length < 6) return 'option data too short';
  const nameBytes = data.readUInt32BE(0);
  if (nameBytes > data.length - 6) return 'export name length exceeds option data';
  if (nameBytes > STRING_BYTES_MAX) return 'export name too long';
  const name = data.toString('utf8', 4, 4 + nameBytes);
  const count = data.readUInt16BE(4 + nameBytes);
  if (data.length !== 6 + nameBytes + 2 * count) return 'information request count does not match option length';
  const infos: number[] = [];
  for (let i = 0; i < count; i++) infos.push(data.readUInt16BE(6 + nameBytes + 2 * i));
  return { name, infos };
}

export function encodeInfoRequest(req: InfoRequest): Buffer {
  const name = Buffer.from(req.name, 'utf8');
  const b = Buffer.allocUnsafe(6 + name.length + 2 * req.infos.length);
  b.writeUInt32BE(name.length, 0);
  name.copy(b, 4);
  b.writeUInt16BE(req.infos.length, 4 + name.length);
  req.infos.forEach((info, i) => b.writeUInt16BE(info, 6 + name.length + 2 * i));
  return b;
}

export interface MetaContextRequest {
  readonly name: string;
  readonly queries: readonly string[];
}

/** Data of NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT. */
export function decodeMetaContextRequest(data: Buffer, queriesMax: number): MetaContextRequest | string {
  if (data.length < 8) return 'option data too short';
  const nameBytes = data.readUInt32BE(0);
  if (nameBytes > data.length - 8) return 'export name length exceeds option data';
  if (nameBytes > STRING_BYTES_MAX) return 'export name too long';
  const name = data.toString('utf8', 4, 4 + nameBytes);
  let at = 4 + nameBytes;
  const count = data.readUInt32BE(at);
  at += 4;
  if (count > queriesMax) return `too many queries (${count} > ${queriesMax})`;
  const queries: string[] = [];
  for (let i = 0; i < count; i++) {
    if (at + 4 > data.length) return 'query length exceeds option data';
    const qBytes = data.readUInt32BE(at);
    at += 4;
    if (qBytes > data.length - at) return 'query exceeds option data';
    if (qBytes > STRING_BYTES_MAX) return 'query too long';
    queries.push(data.toString('utf8', at, at + qBytes));
    at += qBytes;
  }
  if (at !== data.length) return 'trailing bytes after queries';
  return { name, queries };
}

export function encodeMetaContextRequest(req: MetaContextRequest): Buffer {
  const name = Buffer.from(req.name, 'utf8');
  const qs = req.queries.map((q) => Buffer.from(q, 'utf8'));
  const b = Buffer.allocUnsafe(8 + name.length + qs.reduce((n, q) => n + 4 + q.length, 0));
  b.writeUInt32BE(name.length, 0);
  name.copy(b, 4);
  let at = 4 + name.length;
  b.writeUInt32BE(qs.length, at);
  at += 4;
  for (const q of qs) {
    b.writeUInt32BE(q.length, at);
    q.copy(b, at + 4);
    at += 4 + q.length;
  }
  return b;
}

/** NBD_OPT_EXPORT_NAME data is the bare name. */
export function decodeExportName(data: Buffer): string | null {
  if (data.length > STRING_BYTES_MAX) return null;
  return data.toString('utf8');
}

// ---- Option replies (server -> client) -------------------------------------------------------

export function encodeOptionReply(option: number, type: number, data: Buffer = EMPTY): Buffer {
  const b = Buffer.allocUnsafe(OPTION_REPLY_HEADER_BYTES + data.length);
  b.writeBigUInt64BE(NBD_REP_MAGIC, 0);
  b.writeUInt32BE(option >>> 0, 8);
  b.writeUInt32BE(type >>> 0, 12);
  b.writeUInt32BE(data.length, 16);
  data.copy(b, OPTION_REPLY_HEADER_BYTES);
  return b;
}

const EMPTY = Buffer.alloc(0);

export interface OptionReplyHeader {
  readonly option: number;
  readonly type: number;
  readonly lengthBytes: number;
}

/** 20-byte option reply header, or null if the magic is wrong. */
export function decodeOptionReplyHeader(b: Buffer): OptionReplyHeader | null {
  if (b.readBigUInt64BE(0) !== NBD_REP_MAGIC) return null;
  return { option: b.readUInt32BE(8), type: b.readUInt32BE(12), lengthBytes: b.readUInt32BE(16) };
}

/** NBD_REP_SERVER data: u32 name length, name, optional description. */
export function encodeRepServer(name: string, description?: string): Buffer {
  const n = Buffer.from(name, 'utf8');
  const d = Buffer.from(description ?? '', 'utf8');
  const b = Buffer.allocUnsafe(4 + n.length + d.length);
  b.writeUInt32BE(n.length, 0);
  n.copy(b, 4);
  d.copy(b, 4 + n.length);
  return b;
}

export function decodeRepServer(data: Buffer): { name: string; description: string } | null {
  if (data.length < 4) return null;
  const n = data.readUInt32BE(0);
  if (n > data.length - 4) return null;
  return { name: data.toString('utf8', 4, 4 + n), description: data.toString('utf8', 4 + n) };
}

export function encodeRepMetaContext(contextId: number, name: string): Buffer {
  const n = Buffer.from(name, 'utf8');
  const b = Buffer.allocUnsafe(4 + n.length);
  b.writeUInt32BE(contextId, 0);
  n.copy(b, 4);
  return b;
}

export function decodeRepMetaContext(data: Buffer): { contextId: number; name: string } | null {
  if (data.length < 4) return null;
  return { contextId: data.readUInt32BE(0), name: data.toString('utf8', 4) };
}

export function encodeInfoExport(sizeBytes: number, transmissionFlags: number): Buffer {
  const b = Buffer.allocUnsafe(12);
  b.writeUInt16BE(NBD_INFO_EXPORT, 0);
  writeU64(b, 2, sizeBytes);
  b.writeUInt16BE(transmissionFlags, 10);
  return b;
}

export function encodeInfoString(type: typeof NBD_INFO_NAME | typeof NBD_INFO_DESCRIPTION, s: string): Buffer {
  const v = Buffer.from(s, 'utf8');
  const b = Buffer.allocUnsafe(2 + v.length);
  b.writeUInt16BE(type, 0);
  v.copy(b, 2);
  return b;
}

export interface BlockSizeInfo {
  readonly minimumBytes: number;
  readonly preferredBytes: number;
  readonly maximumBytes: number;
}

export function encodeInfoBlockSize(s: BlockSizeInfo): Buffer {
  const b = Buffer.allocUnsafe(14);
  b.writeUInt16BE(NBD_INFO_BLOCK_SIZE, 0);
  b.writeUInt32BE(s.minimumBytes, 2);
  b.writeUInt32BE(s.preferredBytes, 6);
  b.writeUInt32BE(s.maximumBytes, 10);
  return b;
}

export type DecodedInfo =
  | { readonly type: typeof NBD_INFO_EXPORT; readonly sizeBytes: number; readonly transmissionFlags: number }
  | { readonly type: typeof NBD_INFO_NAME; readonly name: string }
  | { readonly type: typeof NBD_INFO_DESCRIPTION; readonly description: string }
  | ({ readonly type: typeof NBD_INFO_BLOCK_SIZE } & BlockSizeInfo)
  | { readonly type: 'unknown'; readonly code: number };

/** NBD_REP_INFO data; null if malformed. */
export function decodeInfo(data: Buffer): DecodedInfo | null {
  if (data.length < 2) return null;
  const type = data.readUInt16BE(0);
  switch (type) {
    case NBD_INFO_EXPORT:
      if (data.length !== 12) return null;
      return { type, sizeBytes: readU64(data, 2), transmissionFlags: data.readUInt16BE(10) };
    case NBD_INFO_NAME:
      return { type, name: data.toString('utf8', 2) };
    case NBD_INFO_DESCRIPTION:
      return { type, description: data.toString('utf8', 2) };
    case NBD_INFO_BLOCK_SIZE:
      if (data.length !== 14) return null;
      return {
        type,
        minimumBytes: data.readUInt32BE(2),
        preferredBytes: data.readUInt32BE(6),
        maximumBytes: data.readUInt32BE(10),
      };
    default:
      return { type: 'unknown', code: type };
  }
}

/** Reply to NBD_OPT_EXPORT_NAME: u64 size, u16 flags, 124 zero bytes unless NO_ZEROES. */
export function encodeExportNameReply(sizeBytes: number, transmissionFlags: number, noZeroes: boolean): Buffer {
  const b = Buffer.alloc(EXPORT_NAME_REPLY_BYTES + (noZeroes ? 0 : EXPORT_NAME_REPLY_ZEROES_BYTES));
  writeU64(b, 0, sizeBytes);
  b.writeUInt16BE(transmissionFlags, 8);
  return b;
}

export function decodeExportNameReply(b: Buffer): { sizeBytes: number; transmissionFlags: number } {
  return { sizeBytes: readU64(b, 0), transmissionFlags: b.readUInt16BE(8) };
}
