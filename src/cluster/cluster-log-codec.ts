// cluster-log-codec.ts — wire format of the cluster log's totally ordered messages (pure; no I/O).
//
// Owns: encoding/decoding of requests (numbered as dm-log-userspace, DM_ULOG_*) and of checkpoint
// parts, plus the checkpoint (replicated state snapshot) body. Decoding validates everything and throws
// ClusterLogCodecError; callers drop (and log) what does not decode.
//
// Every message: u8 version (1), u8 type, u16 reserved (0), u32 seq (sender's counter), then the body.
// All integers little-endian.
//   FLUSH 9              u32 nMarks, u32 nClears, u32 marks[nMarks], u32 clears[nClears]
//   GET_RESYNC_WORK 12   (empty)
//   SET_REGION_SYNC 13   u32 region, u8 inSync
//   IS_REMOTE_RECOVERING 17  u32 region        (a write waits on the region: recover it next)
//   CHECKPOINT 128       u32 id, u32 part, u32 parts, u32 nTargets, {u32 nodeId, u32 pid, u32 epoch}[],
//                        u32 chunkBytes, chunk
//   MERGE_WAITING 129    (empty)
//   FLUSH_ACK 130        u32 nodeId, u32 pid, u32 flushSeq   (this member applied that member's FLUSH)
//   DISK_MARK 131        (empty)                             (clustered-disk: the server's write point)
//   DISK_DONE 132        u32 markSeq                         (that write is durable on the log device)
//   REPAIR 133           devices removed, then (optional) devices added   (cluster-wide repair: drop these legs,
//                        add these spares), a device list being u32 count, count x (u32 bytes, UTF-8 name)
//   LEGS 134             device list: the sender's data legs, table order (after each activation)
//   LEG_FAILED 135       device list: legs the sender's mirror failed (every member stops using them;
//                        each acknowledges with FLUSH_ACK flushSeq = this seq), then u8 again (1: failed
//                        before, re-announced into a state re-taken after a partition merge; else 0)

export const ClusterLogRequest = {
  CTR: 1,
  DTR: 2,
  PRESUSPEND: 3,
  POSTSUSPEND: 4,
  RESUME: 5,
  GET_REGION_SIZE: 6,
  IS_CLEAN: 7,
  IN_SYNC: 8,
  FLUSH: 9,
  MARK_REGION: 10,
  CLEAR_REGION: 11,
  GET_RESYNC_WORK: 12,
  SET_REGION_SYNC: 13,
  GET_SYNC_COUNT: 14,
  STATUS_INFO: 15,
  STATUS_TABLE: 16,
  IS_REMOTE_RECOVERING: 17,
  /** Not a dm request: a part of a state checkpoint for joining members. */
  CHECKPOINT: 128,
  /** Not a dm request: this member lost a partition merge and waits for the state. */
  MERGE_WAITING: 129,
  /** Not a dm request: the sender applied another member's FLUSH (its acknowledgement needs a majority). */
  FLUSH_ACK: 130,
  /** Not a dm request (clustered-disk): the log server's marker; the FLUSHes ordered before it go to its
   *  next log device write. Its id is the header seq. */
  DISK_MARK: 131,
  /** Not a dm request: the server's write for DISK_MARK `markSeq` is durable on the log device. */
  DISK_DONE: 132,
  /** Not a dm request: every node repairs the volume, dropping these leg devices (nbd-mirror repair). */
  REPAIR: 133,
  /** Not a dm request: the sender's mirror now runs on these data legs (a leg new to the log is resynced). */
  LEGS: 134,
  /** Not a dm request: the sender's mirror failed these legs; every node stops using them (stale legs). */
  LEG_FAILED: 135,
} as const;

/** A REPAIR names at most this many devices, each at most REPAIR_DEVICE_BYTES_MAX bytes. */
export const REPAIR_DEVICES_MAX = 32;
export const REPAIR_DEVICE_BYTES_MAX = 4096;

export const WIRE_VERSION = 1;
const HEADER_BYTES = 8;

export class ClusterLogCodecError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ClusterLogCodecError';
  }
}

export interface CheckpointTarget {
  nodeId: number;
  pid: number;
  /** Configuration changes the target has seen since its own join, at the snapshot point. */
  epoch: number;
}

export type ClusterLogMessage =
  | { type: typeof ClusterLogRequest.FLUSH; seq: number; marks: number[]; clears: number[] }
  | { type: typeof ClusterLogRequest.GET_RESYNC_WORK; seq: number }
  | { type: typeof ClusterLogRequest.MERGE_WAITING; seq: number }
  | { type: typeof ClusterLogRequest.SET_REGION_SYNC; seq: number; region: number; inSync: boolean }
  | { type: typeof ClusterLogRequest.IS_REMOTE_RECOVERING; seq: number; region: number }
  | { type: typeof ClusterLogRequest.FLUSH_ACK; seq: number; nodeId: number; pid: number; flushSeq: number }
  | { type: typeof ClusterLogRequest.DISK_MARK; seq: number }
  | { type: typeof ClusterLogRequest.DISK_DONE; seq: number; markSeq: number }
  | { type: typeof ClusterLogRequest.REPAIR; seq: number; removed: string[]; added: string[] }
  | { type: typeof ClusterLogRequest.LEGS; seq: number; devices: string[] }
  | { type: typeof ClusterLogRequest.LEG_FAILED; seq: number; devices: string[]; again?: true }
  | {
      type: typeof ClusterLogRequest.CHECKPOINT;
      seq: number;
      id: number;
      part: number;
      parts: number;
      targets: CheckpointTarget[];
      chunk: Buffer;
    };

/** Bytes of a FLUSH carrying n regions in total. */
export function flushMessageBytes(regions: number): number {
  return HEADER_BYTES + 8 + 4 * regions;
}

/** Fixed bytes of a checkpoint part besides its chunk. */
export function checkpointOverheadBytes(targets: number): number {
  return HEADER_BYTES + 16 + 12 * targets + 4;
}

function u32(v: number, what: string): number {
  if (!Number.isInteger(v) || v < 0 || v > 0xffffffff) throw new ClusterLogCodecError(`${what} ${v} is not a u32`);
  return v;
}

function encodeDevices(devices: readonly string[], what: string): Buffer {
  if (devices.length > REPAIR_DEVICES_MAX) throw new ClusterLogCodecError(`${what} names ${devices.length} devices (max ${REPAIR_DEVICES_MAX})`);
  const parts: Buffer[] = [Buffer.alloc(4)];
  parts[0]!.writeUInt32LE(devices.length, 0);
  for (const d of devices) {
    const name = Buffer.from(d, 'utf8');
    if (name.length === 0 || name.length > REPAIR_DEVICE_BYTES_MAX) throw new ClusterLogCodecError(`${what} device name of ${name.length} bytes`);
    const len = Buffer.alloc(4);
    len.writeUInt32LE(name.length, 0);
    parts.push(len, name);
  }
  return Buffer.concat(parts);
}

export function encodeMessage(m: ClusterLogMessage): Buffer {
  let body: Buffer;
  switch (m.type) {
    case ClusterLogRequest.FLUSH: {
      body = Buffer.alloc(8 + 4 * (m.marks.length + m.clears.length));
      body.writeUInt32LE(m.marks.length, 0);
      body.writeUInt32LE(m.clears.length, 4);
      let o = 8;
      for (const r of m.marks) o = body.writeUInt32LE(u32(r, 'region'), o);
      for (const r of m.clears) o = body.writeUInt32LE(u32(r, 'region'), o);
      break;
    }
    case ClusterLogRequest.GET_RESYNC_WORK:
    case ClusterLogRequest.MERGE_WAITING:
    case ClusterLogRequest.DISK_MARK:
      body = Buffer.alloc(0);
      break;
    case ClusterLogRequest.DISK_DONE:
      body = Buffer.alloc(4);
      body.writeUInt32LE(u32(m.markSeq, 'markSeq'), 0);
      break;
    case ClusterLogRequest.REPAIR:
      body = Buffer.concat([encodeDevices(m.removed, 'REPAIR'), ...(m.added.length > 0 ? [encodeDevices(m.added, 'REPAIR')] : [])]);
      break;
    case ClusterLogRequest.LEGS:
      body = encodeDevices(m.devices, 'LEGS');
      break;
    case ClusterLogRequest.LEG_FAILED:
      body = Buffer.concat([encodeDevices(m.devices, 'LEG_FAILED'), Buffer.from([m.again ? 1 : 0])]);
      break;
    case ClusterLogRequest.SET_REGION_SYNC:
      body = Buffer.alloc(5);
      body.writeUInt32LE(u32(m.region, 'region'), 0);
      body.writeUInt8(m.inSync ? 1 : 0, 4);
      break;
    case ClusterLogRequest.IS_REMOTE_RECOVERING:
      body = Buffer.alloc(4);
      body.writeUInt32LE(u32(m.region, 'region'), 0);
      break;
    case ClusterLogRequest.FLUSH_ACK:
      body = Buffer.alloc(12);
      body.writeUInt32LE(u32(m.nodeId, 'nodeId'), 0);
      body.writeUInt32LE(u32(m.pid, 'pid'), 4);
      body.writeUInt32LE(u32(m.flushSeq, 'flushSeq'), 8);
      break;
    case ClusterLogRequest.CHECKPOINT: {
      const head = Buffer.alloc(16 + 12 * m.targets.length + 4);
      head.writeUInt32LE(u32(m.id, 'id'), 0);
      head.writeUInt32LE(u32(m.part, 'part'), 4);
      head.writeUInt32LE(u32(m.parts, 'parts'), 8);
      head.writeUInt32LE(m.targets.length, 12);
      let o = 16;
      for (const t of m.targets) {
        o = head.writeUInt32LE(u32(t.nodeId, 'nodeId'), o);
        o = head.writeUInt32LE(u32(t.pid, 'pid'), o);
        o = head.writeUInt32LE(u32(t.epoch, 'epoch'), o);
      }
      head.writeUInt32LE(m.chunk.length, o);
      body = Buffer.concat([head, m.chunk]);
      break;
    }
  }
  const header = Buffer.alloc(HEADER_BYTES);
  header.writeUInt8(WIRE_VERSION, 0);
  header.writeUInt8(m.type, 1);
  header.writeUInt32LE(u32(m.seq, 'seq'), 4);
  return Buffer.concat([header, body]);
}

class Reader {
  o = 0;
  constructor(private readonly b: Buffer) {}
  need(n: number, what: string): void {
    if (this.o + n > this.b.length) throw new ClusterLogCodecError(`truncated ${what} (${this.b.length} bytes)`);
  }
  u32(what: string): number {
    this.need(4, what);
    const v = this.b.readUInt32LE(this.o);
    this.o += 4;
    return v;
  }
  u8(what: string): number {
    this.need(1, what);
    return this.b.readUInt8(this.o++);
  }
  bytes(n: number, what: string): Buffer {
    this.need(n, what);
    const v = this.b.subarray(this.o, this.o + n);
    this.o += n;
    return v;
  }
  remaining(): number {
    return this.b.length - this.o;
  }
  devices(what: string): string[] {
    const n = this.u32('device count');
    if (n > REPAIR_DEVICES_MAX) throw new ClusterLogCodecError(`${what} names ${n} devices (max ${REPAIR_DEVICES_MAX})`);
    const out: string[] = [];
    for (let i = 0; i < n; i++) {
      const len = this.u32('device name bytes');
      if (len === 0 || len > REPAIR_DEVICE_BYTES_MAX) throw new ClusterLogCodecError(`${what} device name of ${len} bytes`);
      out.push(this.bytes(len, 'device name').toString('utf8'));
    }
    return out;
  }
  end(what: string): void {
    if (this.o !== this.b.length) throw new ClusterLogCodecError(`${this.b.length - this.o} trailing bytes after ${what}`);
  }
}

/** Decodes one message; regions are checked against regionCount. */
export function decodeMessage(b: Buffer, regionCount: number): ClusterLogMessage {
  if (b.length < HEADER_BYTES) throw new ClusterLogCodecError(`message of ${b.length} bytes is shorter than the header`);
  if (b[0] !== WIRE_VERSION) throw new ClusterLogCodecError(`unknown wire version ${b[0]}`);
  const type = b[1]!;
  const seq = b.readUInt32LE(4);
  const r = new Reader(b.subarray(HEADER_BYTES));
  const region = (what: string) => {
    const v = r.u32(what);
    if (v >= regionCount) throw new ClusterLogCodecError(`${what} ${v} out of range (regionCount ${regionCount})`);
    return v;
  };
  switch (type) {
    case ClusterLogRequest.FLUSH: {
      const nm = r.u32('mark count');
      const nc = r.u32('clear count');
      r.need(4 * (nm + nc), 'flush regions');
      const marks: number[] = [];
      const clears: number[] = [];
      for (let i = 0; i < nm; i++) marks.push(region('marked region'));
      for (let i = 0; i < nc; i++) clears.push(region('cleared region'));
      r.end('FLUSH');
      return { type, seq, marks, clears };
    }
    case ClusterLogRequest.GET_RESYNC_WORK:
      r.end('GET_RESYNC_WORK');
      return { type, seq };
    case ClusterLogRequest.MERGE_WAITING:
      r.end('MERGE_WAITING');
      return { type, seq };
    case ClusterLogRequest.SET_REGION_SYNC: {
      const reg = region('region');
      const v = r.u8('inSync');
      if (v > 1) throw new ClusterLogCodecError(`inSync ${v} is not 0 or 1`);
      r.end('SET_REGION_SYNC');
      return { type, seq, region: reg, inSync: v === 1 };
    }
    case ClusterLogRequest.IS_REMOTE_RECOVERING: {
      const reg = region('region');
      r.end('IS_REMOTE_RECOVERING');
      return { type, seq, region: reg };
    }
    case ClusterLogRequest.DISK_MARK:
      r.end('DISK_MARK');
      return { type, seq };
    case ClusterLogRequest.REPAIR: {
      const removed = r.devices('REPAIR');
      const added = r.remaining() > 0 ? r.devices('REPAIR') : [];
      r.end('REPAIR');
      return { type, seq, removed, added };
    }
    case ClusterLogRequest.LEGS: {
      const devices = r.devices('LEGS');
      r.end('LEGS');
      return { type, seq, devices };
    }
    case ClusterLogRequest.LEG_FAILED: {
      const devices = r.devices('LEG_FAILED');
      const again = r.u8('again');
      if (again > 1) throw new ClusterLogCodecError(`LEG_FAILED again flag ${again} is not 0 or 1`);
      r.end('LEG_FAILED');
      return again === 1 ? { type, seq, devices, again: true } : { type, seq, devices };
    }
    case ClusterLogRequest.DISK_DONE: {
      const markSeq = r.u32('markSeq');
      r.end('DISK_DONE');
      return { type, seq, markSeq };
    }
    case ClusterLogRequest.FLUSH_ACK: {
      const nodeId = r.u32('nodeId');
      const pid = r.u32('pid');
      const flushSeq = r.u32('flushSeq');
      r.end('FLUSH_ACK');
      return { type, seq, nodeId, pid, flushSeq };
    }
    case ClusterLogRequest.CHECKPOINT: {
      const id = r.u32('checkpoint id');
      const part = r.u32('part');
      const parts = r.u32('parts');
      if (parts === 0 || part >= parts) throw new ClusterLogCodecError(`checkpoint part ${part} of ${parts}`);
      const nt = r.u32('target count');
      r.need(12 * nt, 'targets');
      const targets: CheckpointTarget[] = [];
      for (let i = 0; i < nt; i++) targets.push({ nodeId: r.u32('nodeId'), pid: r.u32('pid'), epoch: r.u32('epoch') });
      const n = r.u32('chunk length');
      const chunk = Buffer.from(r.bytes(n, 'chunk'));
      r.end('CHECKPOINT');
      return { type, seq, id, part, parts, targets, chunk };
    }
    default:
      throw new ClusterLogCodecError(`unknown request type ${type}`);
  }
}
