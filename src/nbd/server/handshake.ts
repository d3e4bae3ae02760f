// Server side of the fixed newstyle handshake (cf. nbdkit's protocol-handshake-newstyle.c).
// Owns: greeting, client flags, option haggling, computing transmission flags once per export.
// Works over any byte source/sink (HandshakeIo), so after NBD_OPT_STARTTLS (answered ACK, result
// 'starttls') the connection runs it again over the TLS stream with `resume`: no new greeting, the
// option haggling starts afresh (structured replies and meta contexts forgotten, as proto.md says).
// With ctx.tls mode 'require', every option before STARTTLS but ABORT gets NBD_REP_ERR_TLS_REQD
// (LIST included, so export names never leak; EXPORT_NAME, which cannot be refused, disconnects).
// ctx.authorize (authz.ts) refuses an export with NBD_REP_ERR_POLICY and hides it from LIST.
// Every client-claimed length is checked against ServerLimits before it is read.

import * as C from '../codec/constants.js';
import {
  decodeExportName,
  decodeInfoRequest,
  decodeMetaContextRequest,
  decodeOptionHeader,
  encodeExportNameReply,
  encodeGreeting,
  encodeInfoBlockSize,
  encodeInfoExport,
  encodeInfoString,
  encodeOptionReply,
  encodeRepMetaContext,
  encodeRepServer,
} from '../codec/option.js';
import type { ExportCapabilities } from '../export.js';
import type { ServerLimits } from './limits.js';
import { type ExportRegistry, type LookupResult, lookupExport } from './registry.js';

export interface HandshakeIo {
  read(n: number): Promise<Buffer>;
  write(b: Buffer): void;
}

export interface HandshakeContext {
  readonly registry: ExportRegistry;
  readonly defaultExportName: string | undefined;
  readonly limits: ServerLimits;
  /** True once the server is closing: options are answered NBD_REP_ERR_SHUTDOWN. */
  readonly shuttingDown: () => boolean;
  /** TLS mode (absent: off) and whether this connection has upgraded already. */
  readonly tls?: { readonly mode: 'off' | 'on' | 'require'; readonly active: () => boolean };
  /** null if this peer may open the export (resolved name); else why not. `opening`: a refusal to log. */
  readonly authorize?: (exportName: string, opening: boolean) => string | null;
}

/** Where a handshake continues after STARTTLS. */
export interface HandshakeResume {
  readonly noZeroes: boolean;
  readonly optionsUsed: number;
}

/** What transmission needs to know, decided once at the end of the handshake. */
export interface Negotiated {
  readonly exportName: string;
  readonly lookup: LookupResult;
  readonly capabilities: ExportCapabilities;
  readonly transmissionFlags: number;
  readonly structuredReplies: boolean;
  /** Context id for base:allocation, or 0 if not selected for this export. */
  readonly baseAllocationContextId: number;
  readonly blockSizeMinBytes: number;
  readonly payloadBytesMax: number;
}

export type HandshakeResult =
  | { readonly kind: 'go'; readonly negotiated: Negotiated }
  | { readonly kind: 'abort' }
  | { readonly kind: 'starttls'; readonly resume: HandshakeResume }
  | { readonly kind: 'disconnect'; readonly reason: string };

export class HandshakeViolation extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'HandshakeViolation';
  }
}

const HANDSHAKE_FLAGS = C.NBD_FLAG_FIXED_NEWSTYLE | C.NBD_FLAG_NO_ZEROES;
const KNOWN_CLIENT_FLAGS = C.NBD_FLAG_C_FIXED_NEWSTYLE | C.NBD_FLAG_C_NO_ZEROES;

/** Transmission flags from an export's capabilities, truthfully (nothing we cannot serve). */
export function transmissionFlagsFor(caps: ExportCapabilities, structuredReplies: boolean): number {
  let f = C.NBD_FLAG_HAS_FLAGS;
  if (caps.readOnly) f |= C.NBD_FLAG_READ_ONLY;
  if (caps.canFlush) f |= C.NBD_FLAG_SEND_FLUSH;
  if (caps.canFua && !caps.readOnly) f |= C.NBD_FLAG_SEND_FUA;
  if (caps.canTrim && !caps.readOnly) f |= C.NBD_FLAG_SEND_TRIM;
  if (caps.canZero && !caps.readOnly) {
    f |= C.NBD_FLAG_SEND_WRITE_ZEROES;
    if (caps.canFastZero) f |= C.NBD_FLAG_SEND_FAST_ZERO;
  }
  if (structuredReplies) f |= C.NBD_FLAG_SEND_DF;
  if (caps.canMultiConn) f |= C.NBD_FLAG_CAN_MULTI_CONN;
  if (caps.canCache) f |= C.NBD_FLAG_SEND_CACHE;
  return f;
}

/** Block size constraints we advertise: the export's, with the maximum capped by our limit. */
export function blockSizesFor(caps: ExportCapabilities, limits: ServerLimits): { min: number; preferred: number; max: number } {
  const min = Math.max(1, caps.blockSizeMin);
  const preferred = Math.max(min, 512, caps.blockSizePreferred);
  const max = Math.max(preferred, Math.min(caps.blockSizeMax > 0 ? caps.blockSizeMax : limits.requestBytesMax, limits.requestBytesMax));
  return { min, preferred, max };
}

interface State {
  structuredReplies: boolean;
  /** Export name the last SET_META_CONTEXT referred to, and whether it selected base:allocation. */
  metaExportName: string | null;
  metaBaseAllocation: boolean;
}

/**
 * Run the handshake to its end. Resolves with 'go' (enter transmission), 'abort' (client
 * soft-disconnected) or 'disconnect' (we must hard-disconnect; reason says why). Rejects only if
 * the stream closes or io fails.
 */
export async function serverHandshake(io: HandshakeIo, ctx: HandshakeContext, resume?: HandshakeResume): Promise<HandshakeResult> {
  let noZeroes: boolean;
  if (resume === undefined) {
    io.write(encodeGreeting(HANDSHAKE_FLAGS));
    const clientFlags = (await io.read(C.CLIENT_FLAGS_BYTES)).readUInt32BE(0);
    if ((clientFlags & ~KNOWN_CLIENT_FLAGS) !== 0) {
      return { kind: 'disconnect', reason: `unknown client flags 0x${clientFlags.toString(16)}` };
    }
    noZeroes = (clientFlags & C.NBD_FLAG_C_NO_ZEROES) !== 0;
  } else noZeroes = resume.noZeroes;
  const st: State = { structuredReplies: false, metaExportName: null, metaBaseAllocation: false };
  const tlsMode = ctx.tls?.mode ?? 'off';
  const tlsActive = ctx.tls?.active() ?? false;
  const denied = (name: string): string | null => (ctx.authorize === undefined ? null : ctx.authorize(name, true));

  for (let n = resume?.optionsUsed ?? 0; n < ctx.limits.optionsMax; n++) {
    const header = decodeOptionHeader(await io.read(C.OPTION_HEADER_BYTES));
    if (header === null) return { kind: 'disconnect', reason: 'bad option magic' };
    const { option, lengthBytes } = header;
    if (lengthBytes > ctx.limits.optionBytesMax) {
      return { kind: 'disconnect', reason: `option ${option} data of ${lengthBytes} bytes exceeds optionBytesMax` };
    }
    const data = lengthBytes === 0 ? Buffer.alloc(0) : await io.read(lengthBytes);
    const reply = (type: number, payload?: Buffer): void => io.write(encodeOptionReply(option, type, payload));
    const error = (type: number, message: string): void => reply(type, Buffer.from(message, 'utf8'));
    /** The export `name` selects (INFO, GO, meta contexts), or undefined once refused (unknown, or by policy). */
    const openable = (name: string): ReturnType<typeof lookupExport> => {
      const found = lookupExport(ctx.registry, ctx.defaultExportName, name);
      if (found === undefined) error(C.NBD_REP_ERR_UNKNOWN, `unknown export ${JSON.stringify(name)}`);
      else if (denied(found.name) !== null) error(C.NBD_REP_ERR_POLICY, `not allowed to open export ${JSON.stringify(name)}`);
      else return found;
      return undefined;
    };

    if (tlsMode === 'require' && !tlsActive && option !== C.NBD_OPT_STARTTLS && option !== C.NBD_OPT_ABORT) {
      if (option === C.NBD_OPT_EXPORT_NAME) return { kind: 'disconnect', reason: 'NBD_OPT_EXPORT_NAME before STARTTLS (TLS is required)' };
      error(C.NBD_REP_ERR_TLS_REQD, 'TLS is required: send NBD_OPT_STARTTLS first');
      continue;
    }
    if (option === C.NBD_OPT_EXPORT_NAME) {
      const name = decodeExportName(data);
      const found = name === null ? undefined : lookupExport(ctx.registry, ctx.defaultExportName, name);
      if (found === undefined || ctx.shuttingDown()) {
        return { kind: 'disconnect', reason: `NBD_OPT_EXPORT_NAME for unknown export ${JSON.stringify(name)}` };
      }
      const why = denied(found.name);
      if (why !== null) return { kind: 'disconnect', reason: `NBD_OPT_EXPORT_NAME for ${JSON.stringify(found.name)} refused by policy: ${why}` };
      const negotiated = negotiate(found, st, ctx);
      io.write(encodeExportNameReply(negotiated.capabilities.sizeBytes, negotiated.transmissionFlags, noZeroes));
      return { kind: 'go', negotiated };
    }
    if (option === C.NBD_OPT_ABORT) {
      reply(C.NBD_REP_ACK);
      return { kind: 'abort' };
    }
    if (ctx.shuttingDown()) {
      error(C.NBD_REP_ERR_SHUTDOWN, 'server is shutting down');
      continue;
    }
    switch (option) {
      case C.NBD_OPT_LIST: {
        if (lengthBytes !== 0) {
          error(C.NBD_REP_ERR_INVALID, 'NBD_OPT_LIST takes no data');
          break;
        }
        for (const [name, entry] of ctx.registry) {
          if (ctx.authorize === undefined || ctx.authorize(name, false) === null) reply(C.NBD_REP_SERVER, encodeRepServer(name, entry.description));
        }
        reply(C.NBD_REP_ACK);
        break;
      }
      case C.NBD_OPT_STARTTLS:
        if (lengthBytes !== 0) error(C.NBD_REP_ERR_INVALID, 'NBD_OPT_STARTTLS takes no data');
        else if (tlsMode === 'off') error(C.NBD_REP_ERR_POLICY, 'TLS is not supported by this server'); // serve --tls off
        else if (tlsActive) error(C.NBD_REP_ERR_INVALID, 'TLS is already negotiated');
        else {
          reply(C.NBD_REP_ACK);
          return { kind: 'starttls', resume: { noZeroes, optionsUsed: n + 1 } };
        }
        break;
      case C.NBD_OPT_INFO:
      case C.NBD_OPT_GO: {
        const req = decodeInfoRequest(data);
        if (typeof req === 'string') {
          error(C.NBD_REP_ERR_INVALID, req);
          break;
        }
        const found = openable(req.name);
        if (found === undefined) break;
        const negotiated = negotiate(found, st, ctx, req.name);
        const caps = negotiated.capabilities;
        reply(C.NBD_REP_INFO, encodeInfoExport(caps.sizeBytes, negotiated.transmissionFlags));
        const sizes = blockSizesFor(caps, ctx.limits);
        for (const info of new Set(req.infos)) {
          if (info === C.NBD_INFO_NAME) reply(C.NBD_REP_INFO, encodeInfoString(C.NBD_INFO_NAME, found.name));
          else if (info === C.NBD_INFO_DESCRIPTION) {
            const d = found.entry.description ?? caps.description;
            if (d !== undefined) reply(C.NBD_REP_INFO, encodeInfoString(C.NBD_INFO_DESCRIPTION, d));
          }
        }
        // Always sent: the client must know our maximum payload, and the spec allows unrequested infos.
        reply(
          C.NBD_REP_INFO,
          encodeInfoBlockSize({ minimumBytes: sizes.min, preferredBytes: sizes.preferred, maximumBytes: sizes.max }),
        );
        reply(C.NBD_REP_ACK);
        if (option === C.NBD_OPT_GO) return { kind: 'go', negotiated };
        break;
      }
      case C.NBD_OPT_STRUCTURED_REPLY:
        if (lengthBytes !== 0) error(C.NBD_REP_ERR_INVALID, 'NBD_OPT_STRUCTURED_REPLY takes no data');
        else if (st.structuredReplies) error(C.NBD_REP_ERR_INVALID, 'structured replies already negotiated');
        else {
          st.structuredReplies = true;
          reply(C.NBD_REP_ACK);
        }
        break;
      case C.NBD_OPT_LIST_META_CONTEXT:
      case C.NBD_OPT_SET_META_CONTEXT: {
        const isSet = option === C.NBD_OPT_SET_META_CONTEXT;
        if (isSet) {
          st.metaExportName = null; // SET replaces the selection even when it fails
          st.metaBaseAllocation = false;
        }
        if (!st.structuredReplies) {
          error(C.NBD_REP_ERR_INVALID, 'negotiate NBD_OPT_STRUCTURED_REPLY first');
          break;
        }
        const req = decodeMetaContextRequest(data, ctx.limits.metaContextQueriesMax);
        if (typeof req === 'string') {
          error(req.startsWith('too many') ? C.NBD_REP_ERR_TOO_BIG : C.NBD_REP_ERR_INVALID, req);
          break;
        }
        const found = openable(req.name);
        if (found === undefined) break;
        const matches = isSet
          ? req.queries.includes(C.NBD_META_BASE_ALLOCATION)
          : req.queries.length === 0 || req.queries.some((q) => q === C.NBD_META_NS_BASE || q === C.NBD_META_BASE_ALLOCATION);
        if (matches) {
          reply(C.NBD_REP_META_CONTEXT, encodeRepMetaContext(isSet ? C.BASE_ALLOCATION_CONTEXT_ID : 0, C.NBD_META_BASE_ALLOCATION));
        }
        if (isSet) {
          st.metaExportName = req.name;
          st.metaBaseAllocation = matches;
        }
        reply(C.NBD_REP_ACK);
        break;
      }
      default:
        // Includes NBD_OPT_EXTENDED_HEADERS (experimental extension, not implemented) and PEEK_EXPORT.
        error(C.NBD_REP_ERR_UNSUP, `option ${option} is not supported`);
        break;
    }
  }
  return { kind: 'disconnect', reason: `more than ${ctx.limits.optionsMax} options` };
}

function negotiate(found: LookupResult, st: State, ctx: HandshakeContext, requestedName = found.name): Negotiated {
  const capabilities = found.entry.export.capabilities();
  const sizes = blockSizesFor(capabilities, ctx.limits);
  const metaApplies = st.metaBaseAllocation && st.metaExportName === requestedName;
  return {
    exportName: found.name,
    lookup: found,
    capabilities,
    transmissionFlags: transmissionFlagsFor(capabilities, st.structuredReplies),
    structuredReplies: st.structuredReplies,
    baseAllocationContextId: metaApplies ? C.BASE_ALLOCATION_CONTEXT_ID : 0,
    blockSizeMinBytes: sizes.min,
    payloadBytesMax: sizes.max,
  };
}
