// Transmission phase of one connection (cf. nbdkit's server/protocol.c): parse request headers
// straight from received chunks, validate each request once at the edge (validateRequest), then
// dispatch to the Export and send exactly one reply per request, in completion order.
//
// Hot path: a header is decoded in place when it lies inside one chunk. A WRITE payload of 16 KiB
// or more is read by the kernel straight into its (pooled) buffer when the socket reads through
// direct-read.ts; otherwise it is a subarray view of the chunk when contiguous (of a reused read
// buffer, held until the export settled: direct-read.ts hold/release; a copy past SCRATCH_HELD_MAX
// held buffers, or when it spans chunks). A read reply is one buffer (header +
// data) the export fills through a subarray. Replies completing together (in one tick) leave in one
// write; a lone reply (nothing else in flight: QD1) leaves at once. A READ or WRITE the export completed
// before returning (it returns SETTLED_OK: page-cached legs) is answered on the spot, with no promise
// reaction; the replies of a chunk's requests answered so leave in one write once the chunk is parsed.
// On a plain socket whose stream holds nothing of ours, that write is a write(2)/writev(2) straight on its fd (no WriteWrap, no
// stream bookkeeping, no callback tick); what the kernel does not take, and everything under TLS,
// goes through the stream, and later replies gather behind that write until it is done. When a chunk's
// requests were all answered and sent so (pollReady), the idle poll (idle-poll.ts) may spin on the socket
// for the next request; what it reads comes back through input() as any read does. Nothing logs on the
// data path.
//
// Assumes exports are done with a write's `data` once its promise settles (the buffer is reused).
//
// Backpressure: before each new request header we check the in-flight request count, in-flight
// payload bytes and the bytes queued in the socket the client has not read. If any is over its
// limit we stash the unparsed input and pause the socket; completions and 'drain' resume it.
// Memory is therefore bounded by inFlightBytesMax + requestBytesMax + writeBufferedBytesMax
// (+ one reply) per connection, whatever the client does, plus the idle buffers the two pools may
// keep for reuse (buffer-pool.ts: 8 MiB + 64 KiB of large ones, SMALL_HELD_BYTES_MAX of small ones)
// and the read buffers payload views hold (direct-read.ts: SCRATCH_HELD_MAX + SCRATCH_FREE_MAX of 64 KiB).
//
// Framing violations (bad magic, a WRITE too large to even discard) end this connection only.

import type { Socket } from 'node:net';
import { constants as osConstants } from 'node:os';
import { writeSync, writevSync } from 'node:fs';
import type { Duplex } from 'node:stream';
import * as C from '../codec/constants.js';
import { errorToNbd } from '../codec/errors.js';
import {
  blockStatusChunk,
  encodeOffsetDataPrefix,
  encodeSimpleReply,
  errorChunk,
  OFFSET_DATA_PREFIX_BYTES,
  simpleReply,
  type WireExtent,
} from '../codec/reply.js';
import { decodeRequestHeader, newRequestHeader, type RequestHeader } from '../codec/request.js';
import { type Export, ExportError, type Extent, SETTLED_OK } from '../export.js';
import { BufferPool } from './buffer-pool.js';
import { fastIo } from './fast-io.js';
import { spliceIo } from './splice.js';
import { handleIs, socketFd } from './socket-fd.js';
import { type Pipe, SplicePipes } from './splice-pipes.js';
import { DIRECT_READ_BYTES_MIN, type DirectReadTarget, type Scratch, type ScratchLender } from './direct-read.js';
import type { Negotiated } from './handshake.js';
import type { ServerLimits } from './limits.js';
import type { Logger } from './log.js';

const STATE_HEADER = 0;
const STATE_PAYLOAD = 1;
const STATE_DISCARD = 2;
const STATE_CLOSING = 3;

const U32_MAX = 0xffffffff;
/** Block status descriptors per reply chunk, as the spec recommends. */
const EXTENTS_PER_REPLY_MAX = 1 << 20;

/** A rejected request: errno-like NBD error plus the precise cause (logged, sent as message). */
interface Rejection {
  readonly error: number;
  readonly message: string;
}

export interface TransmissionStats {
  readonly inFlightRequests: number;
  readonly inFlightBytes: number;
  readonly writeBufferedBytes: number;
  readonly paused: boolean;
  /** WRITE payload bytes read straight into their buffer (direct-read.ts), no copy. */
  readonly directReadBytes: number;
  /** READ replies whose data went leg -> pipe -> socket (splice.ts), and their payload bytes. */
  readonly splicedReplies: number;
  readonly splicedBytes: number;
  /** Reads the idle poll caught (idle-poll.ts), and its current window (0: not spinning). */
  readonly polledReads: number;
  readonly pollWindowNs: number;
}

/** What the Transmission tells and asks the idle poll (idle-poll.ts). */
export interface IdlePollHook {
  idle(): void;
  readonly polledReads: number;
  readonly windowNs: number;
}

/**
 * READs of at least this many bytes are spliced (splice.ts) when the export can. Below it the copy costs less
 * than the pipe's system calls (a 64 KiB read is one synchronous pread and one direct write).
 */
export const SPLICE_READ_BYTES_MIN = 128 * 1024;
/**
 * When the socket is full in the middle of a spliced reply, this much of the rest is copied out of the pipe and
 * written through the stream: libuv waits for the socket to drain, writes it, and its callback splices on.
 */
const SPLICE_WAIT_PIECE_BYTES = 16 * 1024;
const EAGAIN = -osConstants.errno.EAGAIN;
const EIO = -osConstants.errno.EIO;

/** A spliced READ reply waiting for its turn: the replies queued before it, its header, then `left` bytes in `pipe`. */
interface SplicedReply {
  before: Buffer[];
  beforeBytes: number;
  beforePooled: Buffer[];
  readonly header: Buffer;
  headerSent: number;
  readonly pipe: Pipe;
  /** Payload bytes still in the pipe. */
  left: number;
  /** Header and payload bytes (counted in spliceQBytes until sent). */
  readonly bytes: number;
}

/** Write payload sizes kept for reuse by the small pool (the large one starts at 128 KiB), and its bound. */
const SMALL_POOLED_BYTES_MIN = 512;
const SMALL_POOLED_BYTES_MAX = 128 * 1024 - 1;
const SMALL_HELD_BYTES_MAX = 1024 * 1024;

/**
 * Replies queued for one write (see write()) are sent at once when they reach this many bytes, even while
 * a stream write of ours is still in progress (they then join the stream's queue behind it).
 */
const OUT_FLUSH_BYTES = 256 * 1024;
/** Queued replies up to this many bytes in all go to the stream as one concatenated buffer (TLS: one record). */
const OUT_CONCAT_BYTES_MAX = 16 * 1024;
/**
 * Queued replies up to this many bytes in all are tried straight on the fd (writeDirect); larger ones (1 MiB
 * read replies) go through the stream: the stream's cost is nothing beside theirs, and a direct write then
 * often finds the socket buffer still full of the previous reply (EAGAIN, an exception in Node).
 */
const DIRECT_WRITE_BYTES_MAX = 128 * 1024;
/** Size of the buffer successful simple replies are encoded into back to back (1024 replies). */
const OUT_BUF_BYTES = 16 * 1024;

export class Transmission implements DirectReadTarget {
  private readonly exp: Export;
  private readonly sizeBytes: number;
  private readonly hdr: RequestHeader = newRequestHeader();
  private readonly headerBuf = Buffer.allocUnsafe(C.REQUEST_HEADER_BYTES);
  private headerHave = 0;
  private state = STATE_HEADER;
  // Current WRITE payload being assembled, or discarded.
  private payloadBuf: Buffer | null = null;
  private payloadHave = 0;
  private discardLeft = 0;
  private discardRejection: Rejection | null = null;
  // Unparsed input kept while paused.
  private stash: Buffer | null = null;
  private paused = false;
  private limitLogged = false;
  private processing = false;
  private inFlightRequests = 0;
  private inFlightBytes = 0;
  private closed = false;
  private disconnectRequested = false;
  private inputEnded = false;
  /** The chunk being processed is still referenced (write payload view or stash). */
  private retained = false;
  private directReadBytes = 0;
  /** Input chunks are views of a buffer the reader reuses (direct-read.ts): never keep them. */
  private inputLent = false;
  private directReadBytesMin = DIRECT_READ_BYTES_MIN;
  /** Holds the lent read buffer a WRITE payload view points into (direct-read.ts). */
  private lender: ScratchLender | null = null;
  /** Replies waiting to leave, in order, their total length, and the pooled ones among them (released once sent). */
  private out: Buffer[] = [];
  private outBytes = 0;
  private outPooled: Buffer[] = [];
  private flushQueued = false;
  /**
   * Successful simple replies (every WRITE, FLUSH, TRIM...) are encoded here back to back, no Buffer each;
   * [outRunStart, outRunEnd) is the run not yet moved to `out` as one view (sealRun).
   */
  private outBuf = Buffer.allocUnsafeSlow(OUT_BUF_BYTES);
  private outRunStart = 0;
  private outRunEnd = 0;
  /** A stream write of ours has not completed yet (its callback has not run): replies gather behind it. */
  private streamWriting = false;
  /** Plain socket: its handle and fd, for writing replies straight to the kernel (writeDirect); else -1. */
  private directHandle: unknown = null;
  private directFd = -1;
  /** Splicing READ replies (plain socket, addon built, export can): this connection's pipes (and the addon). */
  private pipes: SplicePipes | null = null;
  /** Spliced replies in order; the head is being sent once the replies before it are. Later replies wait. */
  private spliceQ: SplicedReply[] = [];
  /** Bytes of spliceQ (headers, pipe contents and the replies queued before each): counted as unsent output. */
  private spliceQBytes = 0;
  private splicedReplies = 0;
  private splicedBytes = 0;
  /** Told when everything is answered at once after a chunk (idle-poll.ts: spin for the next request). */
  private idlePoll: IdlePollHook | null = null;
  private readonly pool = new BufferPool();
  /** Small WRITE payloads copied out of a lent chunk (4 KiB at QD32: a malloc + free per request otherwise). */
  private readonly smallPool = new BufferPool(SMALL_POOLED_BYTES_MIN, SMALL_POOLED_BYTES_MAX, SMALL_HELD_BYTES_MAX);
  private readonly onDataBound = (chunk: Buffer): void => this.onData(chunk);
  private readonly onDrainBound = (): void => this.maybeResume();
  private readonly flushQueuedBound = (): void => this.onFlushTick();
  private readonly streamWrittenBound = (err?: Error | null): void => this.streamWritten(err);
  private finishedResolve!: () => void;
  /** Resolves when the client disconnected (DISC or close) and every in-flight request finished. */
  readonly finished: Promise<void>;

  constructor(
    private readonly socket: Duplex,
    private readonly nego: Negotiated,
    private readonly limits: ServerLimits,
    private readonly log: Logger,
    private readonly onFatal: (reason: string) => void,
  ) {
    this.exp = nego.lookup.entry.export;
    this.sizeBytes = nego.capabilities.sizeBytes;
    this.finished = new Promise<void>((resolve) => {
      this.finishedResolve = resolve;
    });
  }

  /** Take over the socket; `leftover` are bytes the handshake read past its end. */
  start(leftover: Buffer): void {
    this.socket.on('data', this.onDataBound);
    this.socket.on('drain', this.onDrainBound);
    if (leftover.length > 0) this.onData(leftover);
  }

  /**
   * The socket is a plain one (no TLS layer above it): replies may be written straight to its fd when the
   * stream holds nothing of ours (writeDirect). Without a handle with an fd, nothing changes.
   */
  useDirectWrites(): void {
    const sf = socketFd(this.socket);
    if (sf !== null) {
      this.directHandle = sf.handle;
      this.directFd = sf.fd;
      const io = spliceIo();
      if (io !== null && this.exp.spliceRead !== undefined) this.pipes = new SplicePipes(io);
    }
  }

  /** Spin for the next request after answering everything a chunk held at once (idle-poll.ts). */
  usePolling(p: IdlePollHook): void {
    this.idlePoll = p;
  }

  /**
   * Everything received is answered and sent (no request in flight, no reply queued, reading), and the next
   * bytes go to a scratch buffer (a header, or the rest of a small WRITE payload: libnbd sends a 4 KiB
   * write's header and payload in two sends): the idle poll may read the socket for them.
   */
  pollReady(): boolean {
    return (
      this.inFlightRequests === 0 &&
      this.outBytes === 0 &&
      this.spliceQ.length === 0 &&
      !this.streamWriting &&
      this.stash === null &&
      !this.paused &&
      !this.closed &&
      (this.state === STATE_HEADER || (this.state === STATE_PAYLOAD && this.hdr.lengthBytes - this.payloadHave < this.directReadBytesMin))
    );
  }

  stats(): TransmissionStats {
    return {
      inFlightRequests: this.inFlightRequests,
      inFlightBytes: this.inFlightBytes,
      writeBufferedBytes: this.socket.writableLength + this.outBytes + this.spliceQBytes,
      paused: this.paused,
      directReadBytes: this.directReadBytes,
      splicedReplies: this.splicedReplies,
      splicedBytes: this.splicedBytes,
      polledReads: this.idlePoll?.polledReads ?? 0,
      pollWindowNs: this.idlePoll?.windowNs ?? 0,
    };
  }

  /** Stop taking requests (server shutdown or socket closed); in-flight ones still complete. */
  stop(): void {
    if (this.state === STATE_CLOSING) return;
    this.state = STATE_CLOSING;
    this.socket.off('data', this.onDataBound);
    this.stash = null;
    this.payloadBuf = null;
    this.checkFinished();
  }

  /** The client half-closed: finish what it sent (including any stash), then stop. */
  inputEnd(): void {
    this.inputEnded = true;
    if (this.stash === null) this.stop();
  }

  /** The socket is gone: drop replies from now on. */
  closedBySocket(): void {
    this.closed = true;
    this.out = [];
    this.outBytes = 0;
    this.outPooled = [];
    this.outRunStart = this.outRunEnd = 0;
    const pipes = this.pipes;
    if (pipes !== null) {
      for (const r of this.spliceQ) pipes.close(r.pipe);
      this.spliceQ = [];
      this.spliceQBytes = 0;
      pipes.closeIdle();
    }
    this.stop();
  }

  // ---- input -----------------------------------------------------------------------------------

  input(chunk: Buffer, end: number): void {
    if (this.state === STATE_CLOSING) return;
    if (this.stash !== null) {
      this.stash = Buffer.concat([this.stash, chunk.subarray(0, end)]); // as in onData
      return;
    }
    this.process(chunk, end);
  }

  private onData(chunk: Buffer): void {
    if (this.state === STATE_CLOSING) return;
    if (this.stash !== null) {
      // Data arriving while we hold a stash (pause() raced a chunk in flight): keep order.
      this.stash = Buffer.concat([this.stash, chunk]); // a copy: the chunk itself is not kept
      return;
    }
    this.process(chunk, chunk.length);
  }

  /** Parse chunk[0, len). */
  private process(chunk: Buffer, len: number): void {
    this.processing = true;
    let pos = 0;
    while (pos < len) {
      const state = this.state;
      if (state === STATE_HEADER) {
        if (this.overBudget()) {
          this.stash = chunk.subarray(pos, len);
          this.retained = true;
          this.pause();
          break;
        }
        if (this.headerHave === 0 && len - pos >= C.REQUEST_HEADER_BYTES) {
          decodeRequestHeader(chunk, pos, this.hdr);
          pos += C.REQUEST_HEADER_BYTES;
        } else {
          const k = Math.min(C.REQUEST_HEADER_BYTES - this.headerHave, len - pos);
          chunk.copy(this.headerBuf, this.headerHave, pos, pos + k);
          this.headerHave += k;
          pos += k;
          if (this.headerHave < C.REQUEST_HEADER_BYTES) break;
          this.headerHave = 0;
          decodeRequestHeader(this.headerBuf, 0, this.hdr);
        }
        this.onHeader();
      } else if (state === STATE_PAYLOAD) {
        const want = this.hdr.lengthBytes;
        if (this.payloadHave === 0 && len - pos >= want) {
          let data: Buffer;
          let held: Scratch | null = null;
          if (!this.inputLent) {
            data = chunk.subarray(pos, pos + want); // a view of the socket's own chunk: no copy
            this.retained = true;
          } else if ((held = this.lender!.hold()) !== null) {
            data = chunk.subarray(pos, pos + want); // a view of the reused read buffer, held until settled
          } else {
            // Every scratch we may hold is held: copy (small, since larger payloads read directly).
            data = this.takePayload(want);
            chunk.copy(data, 0, pos, pos + want);
          }
          pos += want;
          this.state = STATE_HEADER;
          this.dispatchWrite(data, this.inputLent && held === null, held);
        } else {
          let buf = this.payloadBuf;
          if (buf === null) buf = this.payloadBuf = this.takePayload(want);
          const k = Math.min(want - this.payloadHave, len - pos);
          chunk.copy(buf, this.payloadHave, pos, pos + k);
          this.payloadHave += k;
          pos += k;
          if (this.payloadHave === want) {
            this.payloadBuf = null;
            this.payloadHave = 0;
            this.state = STATE_HEADER;
            this.dispatchWrite(buf, true);
          }
        }
      } else if (state === STATE_DISCARD) {
        const k = Math.min(this.discardLeft, len - pos);
        this.discardLeft -= k;
        pos += k;
        if (this.discardLeft === 0) {
          this.state = STATE_HEADER;
          const r = this.discardRejection!;
          this.discardRejection = null;
          this.sendError(this.hdr.cookieHi, this.hdr.cookieLo, false, r);
        }
      } else {
        break; // closing: ignore the rest
      }
    }
    this.processing = false;
    // Replies of requests completed while parsing (SETTLED_OK) leave together, as queued() would send them;
    // their completions skipped maybeResume (we were parsing), so a pause for reply bytes is re-judged here.
    if (this.outBytes > 0 && !this.flushQueued) this.queued();
    if (this.paused) this.maybeResume();
    // Answered at once (no pool I/O in flight) and sent: the next request of a QD1 client is due soon.
    else if (this.idlePoll !== null && this.pollReady()) this.idlePoll.idle();
  }

  private overBudget(): boolean {
    return (
      this.inFlightRequests >= this.limits.inFlightRequestsMax ||
      this.inFlightBytes >= this.limits.inFlightBytesMax ||
      this.socket.writableLength + this.outBytes + this.spliceQBytes >= this.limits.writeBufferedBytesMax
    );
  }

  private pause(): void {
    if (!this.paused) {
      this.paused = true;
      this.socket.pause();
      if (!this.limitLogged) {
        // Once per connection: which limit stopped reading (normal backpressure, but worth a line).
        this.limitLogged = true;
        const limit =
          this.inFlightRequests >= this.limits.inFlightRequestsMax
            ? 'inFlightRequestsMax'
            : this.inFlightBytes >= this.limits.inFlightBytesMax
              ? 'inFlightBytesMax'
              : 'writeBufferedBytesMax';
        this.log.info({ limit, [limit]: this.limits[limit], inFlightRequests: this.inFlightRequests, inFlightBytes: this.inFlightBytes }, 'connection limit reached: reading paused until requests complete');
      }
    }
  }

  private maybeResume(): void {
    if (!this.paused || this.processing || this.state === STATE_CLOSING || this.overBudget()) return;
    const stash = this.stash;
    this.stash = null;
    this.paused = false;
    if (stash !== null) this.process(stash, stash.length);
    if (this.inputEnded && this.stash === null) this.stop();
    if (!this.paused && this.state !== STATE_CLOSING) this.socket.resume();
  }

  // ---- direct reads (see direct-read.ts) ---------------------------------------------------------

  lendInput(directReadBytesMin: number, lender: ScratchLender): void {
    this.inputLent = true;
    this.directReadBytesMin = directReadBytesMin;
    this.lender = lender;
  }

  nextReadTarget(): Buffer | null {
    if (this.state !== STATE_PAYLOAD || this.stash !== null) return null;
    const want = this.hdr.lengthBytes;
    if (want - this.payloadHave < this.directReadBytesMin) return null;
    let buf = this.payloadBuf;
    if (buf === null) buf = this.payloadBuf = this.takePayload(want);
    return buf.subarray(this.payloadHave);
  }

  directRead(n: number): void {
    if (this.state !== STATE_PAYLOAD) return; // closing: the bytes are dropped with the connection
    const buf = this.payloadBuf!;
    this.payloadHave += n;
    this.directReadBytes += n;
    if (this.payloadHave === this.hdr.lengthBytes) {
      this.payloadBuf = null;
      this.payloadHave = 0;
      this.state = STATE_HEADER;
      this.dispatchWrite(buf, true);
    }
  }

  takeRetained(): boolean {
    const r = this.retained;
    this.retained = false;
    return r;
  }

  // ---- validation (the one place a request is judged) --------------------------------------------

  private onHeader(): void {
    const h = this.hdr;
    if (h.magic !== C.NBD_REQUEST_MAGIC) {
      this.fatal(`bad request magic 0x${h.magic.toString(16)}`);
      return;
    }
    if (h.type === C.NBD_CMD_WRITE) {
      // Decide framing first: the payload follows whatever we think of the request.
      if (h.lengthBytes > Math.max(this.limits.requestBytesMax, C.DEFAULT_PAYLOAD_BYTES_MAX)) {
        this.fatal(`WRITE of ${h.lengthBytes} bytes is too large to accept or discard`);
        return;
      }
      const r = this.validateRequest(h);
      if (r !== null) {
        this.log.debug({ cookie: cookieOf(h), cmd: h.type, reason: r.message }, 'request rejected');
        if (h.lengthBytes === 0) this.sendError(h.cookieHi, h.cookieLo, false, r);
        else {
          this.state = STATE_DISCARD;
          this.discardLeft = h.lengthBytes;
          this.discardRejection = r;
        }
        return;
      }
      this.inFlightBytes += h.lengthBytes; // held from now until the export finished with it
      this.state = STATE_PAYLOAD;
      return;
    }
    if (h.type === C.NBD_CMD_DISC) {
      this.disconnectRequested = true;
      this.stop();
      return;
    }
    const r = this.validateRequest(h);
    if (r !== null) {
      this.log.debug({ cookie: cookieOf(h), cmd: h.type, reason: r.message }, 'request rejected');
      this.sendError(h.cookieHi, h.cookieLo, h.type === C.NBD_CMD_READ, r);
      return;
    }
    this.dispatch(h);
  }

  /** null when the request may go to the export; else the error to reply (cf. validate_request). */
  private validateRequest(h: RequestHeader): Rejection | null {
    const n = this.nego;
    const caps = n.capabilities;
    const type = h.type;
    const flags = h.flags;
    let allowed = caps.canFua && !caps.readOnly ? C.NBD_CMD_FLAG_FUA : 0;
    switch (type) {
      case C.NBD_CMD_READ:
        if (n.structuredReplies) allowed |= C.NBD_CMD_FLAG_DF;
        break;
      case C.NBD_CMD_WRITE:
      case C.NBD_CMD_TRIM:
        break;
      case C.NBD_CMD_WRITE_ZEROES:
        allowed |= C.NBD_CMD_FLAG_NO_HOLE;
        if (caps.canFastZero) allowed |= C.NBD_CMD_FLAG_FAST_ZERO;
        break;
      case C.NBD_CMD_FLUSH:
      case C.NBD_CMD_CACHE:
        break;
      case C.NBD_CMD_BLOCK_STATUS:
        allowed |= C.NBD_CMD_FLAG_REQ_ONE;
        break;
      default:
        return { error: C.NBD_EINVAL, message: `unknown command ${type}` };
    }
    if ((flags & ~allowed) !== 0) {
      return { error: C.NBD_EINVAL, message: `flags 0x${flags.toString(16)} not valid for command ${type}` };
    }
    const writes = type === C.NBD_CMD_WRITE || type === C.NBD_CMD_TRIM || type === C.NBD_CMD_WRITE_ZEROES;
    if (writes && caps.readOnly) return { error: C.NBD_EPERM, message: 'export is read-only' };
    if (type === C.NBD_CMD_FLUSH) {
      if (!caps.canFlush) return { error: C.NBD_EINVAL, message: 'flush not supported' };
      if (h.offsetBytes !== 0 || h.lengthBytes !== 0) return { error: C.NBD_EINVAL, message: 'flush with offset or length' };
      return null;
    }
    if (type === C.NBD_CMD_TRIM && !caps.canTrim) return { error: C.NBD_EINVAL, message: 'trim not supported' };
    if (type === C.NBD_CMD_WRITE_ZEROES && !caps.canZero) return { error: C.NBD_EINVAL, message: 'write zeroes not supported' };
    if (type === C.NBD_CMD_CACHE && !caps.canCache) return { error: C.NBD_EINVAL, message: 'cache not supported' };
    if (type === C.NBD_CMD_BLOCK_STATUS && n.baseAllocationContextId === 0) {
      return { error: C.NBD_EINVAL, message: 'block status without a negotiated metadata context' };
    }
    const off = h.offsetBytes;
    const len = h.lengthBytes;
    if (len === 0) return { error: C.NBD_EINVAL, message: 'zero length' };
    if (off > this.sizeBytes || len > this.sizeBytes - off) {
      const error = type === C.NBD_CMD_WRITE || type === C.NBD_CMD_WRITE_ZEROES ? C.NBD_ENOSPC : C.NBD_EINVAL;
      return { error, message: `range ${off}+${len} beyond export size ${this.sizeBytes}` };
    }
    const min = n.blockSizeMinBytes;
    if (min > 1 && (off % min !== 0 || len % min !== 0)) {
      return { error: C.NBD_EINVAL, message: `range ${off}+${len} not aligned to ${min}` };
    }
    if ((type === C.NBD_CMD_READ || type === C.NBD_CMD_WRITE) && len > n.payloadBytesMax) {
      return { error: C.NBD_EINVAL, message: `payload of ${len} bytes exceeds maximum ${n.payloadBytesMax}` };
    }
    return null;
  }

  // ---- dispatch ----------------------------------------------------------------------------------

  private dispatch(h: RequestHeader): void {
    const cookieHi = h.cookieHi;
    const cookieLo = h.cookieLo;
    const off = h.offsetBytes;
    const len = h.lengthBytes;
    const flags = h.flags;
    const fua = (flags & C.NBD_CMD_FLAG_FUA) !== 0;
    this.inFlightRequests++;
    switch (h.type) {
      case C.NBD_CMD_READ: {
        this.inFlightBytes += len;
        const structured = this.nego.structuredReplies;
        if (len >= SPLICE_READ_BYTES_MIN && this.pipes !== null && this.spliceRead(cookieHi, cookieLo, off, len, structured)) return;
        const prefix = structured ? OFFSET_DATA_PREFIX_BYTES : C.SIMPLE_REPLY_BYTES;
        const pooled = this.pool.pooled(prefix + len);
        const reply = pooled ? this.pool.take(prefix + len) : Buffer.allocUnsafe(prefix + len);
        const p = this.exp.read(reply.subarray(prefix), off);
        if (p === SETTLED_OK) {
          // Read before read() returned (page-cached leg): answer now, as a WRITE (no then() or closures).
          this.completeRead(reply, structured, cookieHi, cookieLo, off, len, pooled);
          return;
        }
        p.then(
          () => this.completeRead(reply, structured, cookieHi, cookieLo, off, len, pooled),
          (err: unknown) => {
            if (pooled) this.pool.release(reply);
            this.failed(cookieHi, cookieLo, true, err, len);
          },
        );
        return;
      }
      case C.NBD_CMD_FLUSH:
        this.settle(this.exp.flush(), cookieHi, cookieLo, 0);
        return;
      case C.NBD_CMD_TRIM:
        this.settle(this.exp.trim(off, len, { fua }), cookieHi, cookieLo, 0);
        return;
      case C.NBD_CMD_WRITE_ZEROES:
        this.settle(
          this.exp.zero(off, len, {
            fua,
            mayTrim: (flags & C.NBD_CMD_FLAG_NO_HOLE) === 0,
            fastZero: (flags & C.NBD_CMD_FLAG_FAST_ZERO) !== 0,
          }),
          cookieHi,
          cookieLo,
          0,
        );
        return;
      case C.NBD_CMD_CACHE:
        this.settle(this.exp.cache(off, len), cookieHi, cookieLo, 0);
        return;
      case C.NBD_CMD_BLOCK_STATUS: {
        const reqOne = (flags & C.NBD_CMD_FLAG_REQ_ONE) !== 0;
        const contextId = this.nego.baseAllocationContextId;
        this.exp.blockStatus(off, len).then(
          (extents) => this.complete(blockStatusChunk(C.NBD_REPLY_FLAG_DONE, cookieHi, cookieLo, contextId, toWireExtents(extents, len, reqOne)), 0),
          (err: unknown) => this.failed(cookieHi, cookieLo, false, err, 0),
        );
        return;
      }
      default:
        throw new Error(`dispatch of unvalidated command ${h.type}`); // validateRequest admits no other
    }
  }

  /** `pooled`: data came from takePayload (given back once settled); `held`: data views a held scratch. */
  private dispatchWrite(data: Buffer, pooled: boolean, held: Scratch | null = null): void {
    const h = this.hdr;
    const cookieHi = h.cookieHi;
    const cookieLo = h.cookieLo;
    this.inFlightRequests++;
    // The payload goes back once the write settled: a held scratch, or a buffer from one of our pools.
    const givesBack = held !== null || (pooled && (this.pool.pooled(data.length) || this.smallPool.pooled(data.length)));
    const p = this.exp.write(data, h.offsetBytes, { fua: (h.flags & C.NBD_CMD_FLAG_FUA) !== 0 });
    if (p === SETTLED_OK) {
      // Written before write() returned: answer now (no then(), closures or reaction job per request).
      if (givesBack) this.releaseWritePayload(data, held);
      this.completeOk(cookieHi, cookieLo, data.length);
      return;
    }
    if (!givesBack) {
      this.settle(p, cookieHi, cookieLo, data.length);
      return;
    }
    p.then(
      () => {
        this.releaseWritePayload(data, held);
        this.completeOk(cookieHi, cookieLo, data.length);
      },
      (err: unknown) => {
        this.releaseWritePayload(data, held);
        this.failed(cookieHi, cookieLo, false, err, data.length);
      },
    );
  }

  /** A READ's reply once its data is in: the header in front of the data, then complete(). */
  private completeRead(reply: Buffer, structured: boolean, cookieHi: number, cookieLo: number, off: number, len: number, pooled: boolean): void {
    encodeReadHeader(reply, structured, cookieHi, cookieLo, off, len);
    this.complete(reply, len, pooled);
  }

  /**
   * A READ answered from a pipe: the export fills it now (Export.spliceRead) and the reply is queued; false
   * when there is no pipe or the export declined (the READ is then read into a buffer as usual).
   */
  private spliceRead(cookieHi: number, cookieLo: number, off: number, len: number, structured: boolean): boolean {
    const pipes = this.pipes!;
    const pipe = pipes.take(len);
    if (pipe === null) return false;
    if (!this.exp.spliceRead!(pipe, off, len)) {
      pipes.recycle(pipe);
      return false;
    }
    const header = Buffer.allocUnsafe(structured ? OFFSET_DATA_PREFIX_BYTES : C.SIMPLE_REPLY_BYTES);
    encodeReadHeader(header, structured, cookieHi, cookieLo, off, len);
    this.inFlightRequests--;
    this.inFlightBytes -= len;
    this.queueSpliced(header, pipe, len);
    if (this.paused) this.maybeResume();
    else if (this.state === STATE_CLOSING) this.checkFinished();
    return true;
  }

  /** A settled WRITE's payload: its held scratch goes back to the lender, else its buffer to its pool. */
  private releaseWritePayload(data: Buffer, held: Scratch | null): void {
    if (held !== null) this.lender!.release(held);
    else this.releasePayload(data);
  }

  /** A buffer for a WRITE payload of n bytes (pooled sizes come back through releasePayload). */
  private takePayload(n: number): Buffer {
    if (this.smallPool.pooled(n)) return this.smallPool.take(n);
    return this.pool.pooled(n) ? this.pool.take(n) : Buffer.allocUnsafe(n);
  }

  private releasePayload(b: Buffer): void {
    if (this.smallPool.pooled(b.length)) this.smallPool.release(b);
    else this.pool.release(b);
  }

  private settle(p: Promise<void>, cookieHi: number, cookieLo: number, heldBytes: number): void {
    p.then(
      () => this.completeOk(cookieHi, cookieLo, heldBytes),
      (err: unknown) => this.failed(cookieHi, cookieLo, false, err, heldBytes),
    );
  }

  // ---- replies -----------------------------------------------------------------------------------

  private failed(cookieHi: number, cookieLo: number, isRead: boolean, err: unknown, heldBytes: number): void {
    const error = errorToNbd(err);
    const message = err instanceof Error ? err.message : String(err);
    if (!(err instanceof ExportError)) this.log.warn({ err: message }, 'export failed with a non-ExportError');
    this.complete(this.errorReply(cookieHi, cookieLo, isRead, { error, message }), heldBytes);
  }

  private errorReply(cookieHi: number, cookieLo: number, isRead: boolean, r: Rejection): Buffer {
    // Structured negotiated: errors go as an error chunk (with the cause as message); READ must.
    if (this.nego.structuredReplies) return errorChunk(cookieHi, cookieLo, r.error, r.message);
    void isRead;
    return simpleReply(r.error, cookieHi, cookieLo);
  }

  private sendError(cookieHi: number, cookieLo: number, isRead: boolean, r: Rejection): void {
    this.write(this.errorReply(cookieHi, cookieLo, isRead, r));
  }

  private complete(reply: Buffer, heldBytes: number, pooledReply = false): void {
    this.inFlightRequests--;
    this.inFlightBytes -= heldBytes;
    this.write(reply, pooledReply);
    if (this.paused) this.maybeResume();
    else if (this.state === STATE_CLOSING) this.checkFinished();
  }

  /** complete() with a successful simple reply, encoded into outBuf. */
  private completeOk(cookieHi: number, cookieLo: number, heldBytes: number): void {
    this.inFlightRequests--;
    this.inFlightBytes -= heldBytes;
    if (!this.closed) {
      if (this.outRunEnd + C.SIMPLE_REPLY_BYTES > OUT_BUF_BYTES) {
        // Full: what it holds is queued (as views); later replies go to a fresh one.
        this.sealRun();
        this.outBuf = Buffer.allocUnsafeSlow(OUT_BUF_BYTES);
        this.outRunStart = this.outRunEnd = 0;
      }
      encodeSimpleReply(this.outBuf, this.outRunEnd, 0, cookieHi, cookieLo);
      this.outRunEnd += C.SIMPLE_REPLY_BYTES;
      this.outBytes += C.SIMPLE_REPLY_BYTES;
      this.queued();
    }
    if (this.paused) this.maybeResume();
    else if (this.state === STATE_CLOSING) this.checkFinished();
  }

  /** Move the replies encoded in outBuf since the last seal to `out` (one view), keeping reply order. */
  private sealRun(): void {
    if (this.outRunEnd > this.outRunStart) {
      this.out.push(this.outBuf.subarray(this.outRunStart, this.outRunEnd));
      this.outRunStart = this.outRunEnd;
    }
  }

  /**
   * Queue a reply. It leaves at once when nothing else is in flight (QD1: no hop, no stream machinery on
   * the plain path), else with every reply completing in this tick (flushOut on nextTick): promise
   * reactions of requests decoded from one read run back to back, so they leave in one write.
   */
  private write(b: Buffer, pooled = false): void {
    if (this.closed) {
      if (pooled) this.pool.release(b);
      return;
    }
    this.sealRun();
    this.out.push(b);
    this.outBytes += b.length;
    if (pooled) this.outPooled.push(b);
    this.queued();
  }

  private queued(): void {
    if (this.outBytes >= OUT_FLUSH_BYTES) this.flushOut();
    else if (this.processing) return; // process() sends them when the chunk is parsed: one write for all
    else if (this.inFlightRequests === 0) this.flushOut();
    else if (!this.flushQueued) {
      this.flushQueued = true;
      process.nextTick(this.flushQueuedBound);
    }
  }

  /**
   * Send the queued replies: straight to the socket's fd when the stream holds nothing of ours (plain
   * socket), whatever the kernel does not take (or everything, under TLS) through the stream. While a
   * stream write of ours is in progress, replies gather behind it (streamWritten sends them) up to
   * OUT_FLUSH_BYTES, then join the stream's own queue.
   */
  private flushOut(force = false): void {
    if (this.outBytes === 0 || this.closed) return;
    if (this.spliceQ.length > 0) return; // they follow the spliced replies (pump sends them)
    if (this.streamWriting && this.outBytes < OUT_FLUSH_BYTES && !force) return;
    this.sealRun();
    const out = this.out;
    const total = this.outBytes;
    const usedOutBuf = this.outRunEnd > 0; // views of outBuf are among `out`
    const pooled = this.outPooled;
    this.out = [];
    this.outBytes = 0;
    if (pooled.length > 0) this.outPooled = [];
    this.sendList(out, total, pooled, usedOutBuf);
    this.outRunStart = this.outRunEnd = 0; // the kernel or the stream has its bytes: reuse outBuf from the start
  }

  /** Send `out` (total bytes): straight to the fd if it may, the rest through the stream (see flushOut). */
  private sendList(out: Buffer[], total: number, pooled: Buffer[], usedOutBuf: boolean): void {
    let written = 0;
    if (this.directFd >= 0 && !this.streamWriting && total <= DIRECT_WRITE_BYTES_MAX) written = this.writeDirect(out, total);
    if (written === total) {
      for (const b of pooled) this.pool.release(b);
      return;
    }
    // The rest goes through the stream (in order behind anything it holds); pooled buffers return once it is done.
    let i = 0;
    let skip = written;
    while (skip >= out[i]!.length) skip -= out[i++]!.length;
    const rest = i === 0 && skip === 0 ? out : out.slice(i);
    if (skip > 0) rest[0] = rest[0]!.subarray(skip);
    this.streamWriting = true;
    const cb = pooled.length === 0 ? this.streamWrittenBound : (err?: Error | null): void => this.streamWritten(err, pooled);
    if (rest.length === 1 && !usedOutBuf) this.socket.write(rest[0]!, cb);
    else if (total - written <= OUT_CONCAT_BYTES_MAX) this.socket.write(Buffer.concat(rest), cb); // a copy: outBuf is free again
    else {
      this.socket.cork();
      for (let k = 0; k < rest.length - 1; k++) this.socket.write(rest[k]!);
      this.socket.write(rest[rest.length - 1]!, cb);
      this.socket.uncork();
      if (usedOutBuf) this.outBuf = Buffer.allocUnsafeSlow(OUT_BUF_BYTES); // the stream holds views of the old one
    }
  }

  // ---- spliced READ replies (splice.ts) ----------------------------------------------------------

  /** Queue a spliced reply behind every reply queued so far (those move into it: they go first). */
  private queueSpliced(header: Buffer, pipe: Pipe, len: number): void {
    if (this.closed) {
      this.pipes!.close(pipe);
      return;
    }
    this.sealRun();
    const r: SplicedReply = { before: NO_BUFFERS, beforeBytes: 0, beforePooled: NO_BUFFERS, header, headerSent: 0, pipe, left: len, bytes: header.length + len };
    if (this.outBytes > 0) {
      r.before = this.out;
      r.beforeBytes = this.outBytes;
      r.beforePooled = this.outPooled;
      this.out = [];
      this.outBytes = 0;
      if (r.beforePooled.length > 0) this.outPooled = [];
      if (this.outRunEnd > 0) this.outBuf = Buffer.allocUnsafeSlow(OUT_BUF_BYTES); // r.before holds views of the old one
      this.outRunStart = this.outRunEnd = 0;
    }
    this.spliceQ.push(r);
    this.spliceQBytes += r.beforeBytes + r.bytes;
    this.splicedReplies++;
    this.splicedBytes += len;
    if (!this.streamWriting) this.pump();
  }

  /**
   * Send the spliced replies in order, each after the replies queued before it, until one waits for the
   * socket (a stream write of ours is in progress: streamWritten calls us again). Then the replies queued
   * after the last one.
   */
  private pump(): void {
    const q = this.spliceQ;
    while (q.length > 0 && !this.streamWriting && !this.closed) {
      const r = q[0]!;
      if (r.beforeBytes > 0) {
        this.spliceQBytes -= r.beforeBytes;
        const before = r.before;
        const bytes = r.beforeBytes;
        const pooled = r.beforePooled;
        r.before = r.beforePooled = NO_BUFFERS;
        r.beforeBytes = 0;
        this.sendList(before, bytes, pooled, false);
        continue;
      }
      if (!this.sendSpliced(r)) return;
      q.shift();
      this.spliceQBytes -= r.bytes;
      this.pipes!.give(r.pipe);
    }
    if (q.length === 0 && !this.closed) {
      if (this.outBytes > 0) this.flushOut();
      if (this.paused) this.maybeResume();
      if (this.state === STATE_CLOSING) this.checkFinished(); // (stopping while paused: maybeResume does nothing)
    }
  }

  /**
   * One step of sending a spliced reply: true once it is all in the socket; false while a piece of it waits in
   * the stream for the socket to drain (streamWriting), or when the connection died. Written straight to the fd:
   * the header, then the pipe spliced to the socket until it would block; then a piece copied out of the pipe
   * goes through the stream, whose callback brings us back. Anything of ours in the stream: the rest is copied.
   */
  private sendSpliced(r: SplicedReply): boolean {
    const h = r.header;
    if (r.headerSent === h.length && r.left === 0) return true;
    if (!this.directWritable()) return this.spliceByCopy(r);
    const fd = this.directFd;
    if (r.headerSent < h.length) {
      const n = writeSome(fd, h, r.headerSent, h.length - r.headerSent);
      if (n < 0 && n !== EAGAIN) return this.spliceFailed(n);
      if (n > 0) r.headerSent += n;
      if (r.headerSent < h.length) {
        const rest = h.subarray(r.headerSent);
        r.headerSent = h.length;
        this.streamWriting = true;
        this.socket.write(rest, this.streamWrittenBound);
        return false;
      }
    }
    const n = this.pipes!.io.send(r.pipe.readFd, fd, r.left);
    if (n < 0) return this.spliceFailed(n);
    r.left -= n;
    if (r.left === 0) return true;
    // The socket is full (send() stops only there or at an error, which the stream write then reports).
    const piece = Buffer.allocUnsafe(Math.min(r.left, SPLICE_WAIT_PIECE_BYTES));
    if (!this.readPipe(r, piece)) return this.spliceFailed(EIO);
    this.streamWriting = true;
    this.socket.write(piece, this.streamWrittenBound);
    return false;
  }

  /** The rest of a spliced reply through the stream, copied (the stream holds bytes of ours: order). */
  private spliceByCopy(r: SplicedReply): boolean {
    const h = r.header;
    const rest = Buffer.allocUnsafe(h.length - r.headerSent + r.left);
    h.copy(rest, 0, r.headerSent);
    const at = h.length - r.headerSent;
    r.headerSent = h.length;
    if (!this.readPipe(r, rest.subarray(at))) return this.spliceFailed(EIO);
    this.streamWriting = true;
    this.socket.write(rest, this.streamWrittenBound);
    return false;
  }

  /** Fill `into` from the head of r's pipe (it holds r.left >= into.length bytes). */
  private readPipe(r: SplicedReply, into: Buffer): boolean {
    let got = 0;
    while (got < into.length) {
      const n = this.pipes!.io.read(r.pipe.readFd, into, got, into.length - got);
      if (n <= 0) return false;
      got += n;
    }
    r.left -= got;
    return true;
  }

  /** The socket failed under a spliced reply (or its pipe did): the connection is dead. */
  private spliceFailed(negErrno: number): false {
    this.log.debug({ errno: negErrno }, 'spliced reply failed: closing the connection');
    this.closedBySocket();
    this.socket.destroy();
    return false;
  }

  /** Bytes of `out` the kernel took in one write(2)/writev(2) on the socket's fd (0 if it must not be tried). */
  /**
   * Bytes may go straight to the fd: the handle we took it from is still the socket's (a destroyed socket's fd
   * may be reused: never write to it then), and the stream holds nothing (order) and is not ended.
   */
  private directWritable(): boolean {
    const s = this.socket;
    return handleIs(s, this.directHandle) && s.writableLength === 0 && !s.writableEnded;
  }

  private writeDirect(out: Buffer[], total: number): number {
    if (!this.directWritable()) return 0;
    if (out.length === 1) {
      const io = fastIo(); // the addon: no exception for EAGAIN, ~0.7 us less wrapper than writeSync (fast-io.ts)
      if (io !== null) return Math.max(0, io.write(this.directFd, out[0]!, 0, total, -1));
    }
    try {
      return out.length === 1 ? writeSync(this.directFd, out[0]!, 0, total) : writevSync(this.directFd, out);
    } catch {
      return 0; // EAGAIN (socket buffer full) or an error the stream will report: the stream takes it all
    }
  }

  private streamWritten(err: Error | null | undefined, pooled?: Buffer[]): void {
    this.streamWriting = false;
    if (pooled !== undefined && !err) for (const b of pooled) this.pool.release(b);
    if (this.closed) return;
    if (this.spliceQ.length > 0) this.pump();
    else if (this.outBytes > 0) this.flushOut(); // (replies may sit in outBuf only: not yet in `out`)
    if (this.paused) this.maybeResume();
  }

  private onFlushTick(): void {
    this.flushQueued = false;
    this.flushOut();
  }

  private checkFinished(): void {
    if (this.state === STATE_CLOSING && this.inFlightRequests === 0 && this.spliceQ.length === 0) {
      this.flushOut(true); // every reply is in the socket before the connection ends it
      this.finishedResolve();
    }
  }

  private fatal(reason: string): void {
    this.stop();
    this.onFatal(reason);
  }

  /** True if the client sent NBD_CMD_DISC (a clean end). */
  get clientDisconnected(): boolean {
    return this.disconnectRequested;
  }

  /** For TCP sockets. */
  static tune(socket: Duplex): void {
    const s = socket as Partial<Socket>;
    if (typeof s.setNoDelay === 'function') s.setNoDelay(true);
  }
}

const NO_BUFFERS: Buffer[] = [];

/** A successful READ reply's header at buf[0]: an offset-data chunk (structured replies) or a simple reply. */
function encodeReadHeader(buf: Buffer, structured: boolean, cookieHi: number, cookieLo: number, off: number, len: number): void {
  if (structured) encodeOffsetDataPrefix(buf, 0, C.NBD_REPLY_FLAG_DONE, cookieHi, cookieLo, off, len);
  else encodeSimpleReply(buf, 0, 0, cookieHi, cookieLo);
}

/** write(2) of buf[off, off + len) on a non-blocking fd: bytes written, or -errno (EAGAIN: the socket is full). */
function writeSome(fd: number, buf: Buffer, off: number, len: number): number {
  const io = fastIo();
  if (io !== null) return io.write(fd, buf, off, len, -1);
  try {
    return writeSync(fd, buf, off, len);
  } catch (err) {
    const errno = (err as NodeJS.ErrnoException).errno;
    return typeof errno === 'number' ? errno : EIO;
  }
}

function cookieOf(h: RequestHeader): string {
  return h.cookieHi.toString(16).padStart(8, '0') + h.cookieLo.toString(16).padStart(8, '0');
}

/** Export extents -> wire descriptors: nonzero, within u32, summing to <= the request length. */
export function toWireExtents(extents: readonly Extent[], lengthBytes: number, reqOne: boolean): WireExtent[] {
  const out: WireExtent[] = [];
  let left = lengthBytes;
  for (const e of extents) {
    if (left === 0 || out.length >= EXTENTS_PER_REPLY_MAX) break;
    let n = Math.min(e.lengthBytes, left, U32_MAX);
    if (!(n > 0)) continue;
    n = Math.floor(n);
    out.push({ lengthBytes: n, flags: e.flags & (C.NBD_STATE_HOLE | C.NBD_STATE_ZERO) });
    left -= n;
    if (reqOne) break;
  }
  if (out.length === 0) out.push({ lengthBytes: Math.min(lengthBytes, U32_MAX), flags: 0 }); // status 0 is always safe
  return out;
}
