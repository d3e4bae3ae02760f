// Client side of the fixed newstyle handshake: greeting, client flags, STRUCTURED_REPLY,
// SET_META_CONTEXT base:allocation, then GO (falling back to EXPORT_NAME on old servers).
// Works over any HandshakeIo, like the server side. Throws HandshakeError naming what failed.

import * as C from '../codec/constants.js';
import {
  decodeExportNameReply,
  decodeGreeting,
  decodeInfo,
  decodeOptionReplyHeader,
  decodeRepMetaContext,
  encodeClientFlags,
  encodeInfoRequest,
  encodeMetaContextRequest,
  encodeOption,
} from '../codec/option.js';
import type { HandshakeIo } from '../server/handshake.js';

/** Largest option reply payload we accept from a server. */
export const OPTION_REPLY_BYTES_MAX = 64 * 1024;

export class HandshakeError extends Error {
  constructor(
    message: string,
    /** NBD_REP_ERR_* when the server refused, else undefined. */
    readonly replyType?: number,
  ) {
    super(message);
    this.name = 'HandshakeError';
  }
}

export interface ClientHandshakeOptions {
  readonly exportName: string;
  readonly structuredReplies: boolean;
  readonly blockStatus: boolean;
  /**
   * nbds: send NBD_OPT_STARTTLS first; on ACK this runs the TLS handshake and returns the io to
   * continue on. Any other reply fails the handshake (never a silent plaintext fallback).
   */
  readonly starttls?: () => Promise<HandshakeIo>;
}

export interface ClientNegotiated {
  readonly sizeBytes: number;
  readonly transmissionFlags: number;
  readonly structuredReplies: boolean;
  /** Context id of base:allocation, or null if not negotiated. */
  readonly baseAllocationContextId: number | null;
  readonly blockSizeMinBytes: number;
  readonly blockSizePreferredBytes: number;
  readonly payloadBytesMax: number;
}

interface OptionReply {
  readonly type: number;
  readonly data: Buffer;
}

async function readOptionReply(io: HandshakeIo, option: number): Promise<OptionReply> {
  const h = decodeOptionReplyHeader(await io.read(C.OPTION_REPLY_HEADER_BYTES));
  if (h === null) throw new HandshakeError('bad option reply magic');
  if (h.option !== option) throw new HandshakeError(`option reply for ${h.option}, expected ${option}`);
  if (h.lengthBytes > OPTION_REPLY_BYTES_MAX) throw new HandshakeError(`option reply of ${h.lengthBytes} bytes is too large`);
  const data = h.lengthBytes === 0 ? Buffer.alloc(0) : await io.read(h.lengthBytes);
  return { type: h.type, data };
}

function refusal(what: string, r: OptionReply): HandshakeError {
  const msg = r.data.length > 0 ? `: ${r.data.toString('utf8')}` : '';
  return new HandshakeError(`${what} refused (0x${r.type.toString(16)})${msg}`, r.type);
}

export async function clientHandshake(io: HandshakeIo, opts: ClientHandshakeOptions): Promise<ClientNegotiated> {
  const handshakeFlags = decodeGreeting(await io.read(C.GREETING_BYTES));
  if (handshakeFlags === null) throw new HandshakeError('not a newstyle NBD server (bad greeting magic)');
  const fixed = (handshakeFlags & C.NBD_FLAG_FIXED_NEWSTYLE) !== 0;
  const noZeroes = (handshakeFlags & C.NBD_FLAG_NO_ZEROES) !== 0;
  io.write(encodeClientFlags((fixed ? C.NBD_FLAG_C_FIXED_NEWSTYLE : 0) | (noZeroes ? C.NBD_FLAG_C_NO_ZEROES : 0)));
  if (opts.starttls !== undefined) {
    if (!fixed) throw new HandshakeError('server is not fixed-newstyle: cannot negotiate TLS');
    io.write(encodeOption(C.NBD_OPT_STARTTLS));
    const r = await readOptionReply(io, C.NBD_OPT_STARTTLS);
    if (r.type !== C.NBD_REP_ACK) throw refusal('STARTTLS', r);
    io = await opts.starttls();
  }

  let structuredReplies = false;
  let baseAllocationContextId: number | null = null;
  if (fixed && opts.structuredReplies) {
    io.write(encodeOption(C.NBD_OPT_STRUCTURED_REPLY));
    const r = await readOptionReply(io, C.NBD_OPT_STRUCTURED_REPLY);
    structuredReplies = r.type === C.NBD_REP_ACK;
    if (!structuredReplies && (r.type & C.NBD_REP_FLAG_ERROR) === 0) throw new HandshakeError(`unexpected reply ${r.type} to STRUCTURED_REPLY`);
  }
  if (structuredReplies && opts.blockStatus) {
    io.write(
      encodeOption(C.NBD_OPT_SET_META_CONTEXT, encodeMetaContextRequest({ name: opts.exportName, queries: [C.NBD_META_BASE_ALLOCATION] })),
    );
    for (;;) {
      const r = await readOptionReply(io, C.NBD_OPT_SET_META_CONTEXT);
      if (r.type === C.NBD_REP_META_CONTEXT) {
        const mc = decodeRepMetaContext(r.data);
        if (mc === null) throw new HandshakeError('malformed NBD_REP_META_CONTEXT');
        if (mc.name === C.NBD_META_BASE_ALLOCATION) baseAllocationContextId = mc.contextId;
      } else if (r.type === C.NBD_REP_ACK) break;
      else if ((r.type & C.NBD_REP_FLAG_ERROR) !== 0) {
        baseAllocationContextId = null; // not fatal: blockStatus then reports everything as data
        break;
      } else throw new HandshakeError(`unexpected reply ${r.type} to SET_META_CONTEXT`);
    }
  }

  if (fixed) {
    io.write(encodeOption(C.NBD_OPT_GO, encodeInfoRequest({ name: opts.exportName, infos: [C.NBD_INFO_BLOCK_SIZE] })));
    let sizeBytes: number | null = null;
    let transmissionFlags = 0;
    let min = 1;
    let preferred = 4096;
    let max = C.DEFAULT_PAYLOAD_BYTES_MAX;
    for (;;) {
      const r = await readOptionReply(io, C.NBD_OPT_GO);
      if (r.type === C.NBD_REP_INFO) {
        const info = decodeInfo(r.data);
        if (info === null) throw new HandshakeError('malformed NBD_REP_INFO');
        if (info.type === C.NBD_INFO_EXPORT) {
          sizeBytes = info.sizeBytes;
          transmissionFlags = info.transmissionFlags;
        } else if (info.type === C.NBD_INFO_BLOCK_SIZE) {
          min = info.minimumBytes;
          preferred = info.preferredBytes;
          max = info.maximumBytes;
        }
      } else if (r.type === C.NBD_REP_ACK) {
        if (sizeBytes === null) throw new HandshakeError('server acknowledged GO without NBD_INFO_EXPORT');
        return {
          sizeBytes,
          transmissionFlags,
          structuredReplies,
          baseAllocationContextId,
          blockSizeMinBytes: Math.max(1, min),
          blockSizePreferredBytes: Math.max(1, preferred),
          payloadBytesMax: Math.max(1, Math.min(max, C.DEFAULT_PAYLOAD_BYTES_MAX)),
        };
      } else if (r.type === C.NBD_REP_ERR_UNSUP) {
        break; // old server: fall back to EXPORT_NAME
      } else if ((r.type & C.NBD_REP_FLAG_ERROR) !== 0) {
        throw refusal(`export ${JSON.stringify(opts.exportName)}`, r);
      } else throw new HandshakeError(`unexpected reply ${r.type} to GO`);
    }
  }
  io.write(encodeOption(C.NBD_OPT_EXPORT_NAME, Buffer.from(opts.exportName, 'utf8')));
  const reply = decodeExportNameReply(
    await io.read(C.EXPORT_NAME_REPLY_BYTES + (noZeroes ? 0 : C.EXPORT_NAME_REPLY_ZEROES_BYTES)),
  );
  return {
    sizeBytes: reply.sizeBytes,
    transmissionFlags: reply.transmissionFlags,
    structuredReplies,
    baseAllocationContextId: null, // meta context applies only to GO
    blockSizeMinBytes: 1,
    blockSizePreferredBytes: 4096,
    payloadBytesMax: C.DEFAULT_PAYLOAD_BYTES_MAX,
  };
}
