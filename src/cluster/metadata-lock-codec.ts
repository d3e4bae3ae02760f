// metadata-lock-codec.ts — wire format of the pool metadata lock's messages (pure; no I/O).
//
// Owns: encoding/decoding of the five messages the lock (metadata-lock.ts) multicasts on a pool's CPG
// group, with named limits. Every message: 8 bytes of magic "NBDMLCK1", then UTF-8 JSON of one object
// with a `t` field. Decoding validates every field and throws MetadataLockCodecError; callers drop what
// does not decode.
//   REQ        {t:'req', reqId, op, sinceMs}              ask for the lock
//   ACK        {t:'ack', toNode, toPid, toReq, ahead}     answer to a REQ: the answerer's own request if it
//                                                         was ordered before that REQ and is not released
//   UNLOCK     {t:'unlock', reqId}                        release
//   COMMITTED  {t:'committed', seqno, volumes}            metadata number seqno is on the devices; these
//                                                         volumes' tables may have changed
//   PREPARE    {t:'prepare', seqno, volume}               the holder's intent seqno changes `volume`: every
//                                                         server of it loads the new table and suspends
//   PREPARED   {t:'prepared', seqno, ok, serving, error}  a member's answer to PREPARE
//   FINISH     {t:'finish', seqno, commit}                resume with the new table (commit) or the old one

export const LOCK_MAGIC = 'NBDMLCK1';
/** Largest encoded message. */
export const LOCK_MESSAGE_BYTES_MAX = 16 * 1024;
/** Longest operation description carried in a request. */
export const LOCK_OP_CHARS_MAX = 200;
/** Most volume names one COMMITTED names. */
export const COMMITTED_VOLUMES_MAX = 256;
const VOLUME_NAME_CHARS_MAX = 128;
/** Longest error text in a PREPARED. */
export const ERROR_CHARS_MAX = 2000;

export class MetadataLockCodecError extends Error {
  override name = 'MetadataLockCodecError';
}

export interface LockRequestInfo {
  readonly nodeId: number;
  readonly pid: number;
  readonly reqId: number;
  readonly op: string;
  readonly sinceMs: number;
}

export type LockMessage =
  | { readonly t: 'req'; readonly reqId: number; readonly op: string; readonly sinceMs: number }
  | { readonly t: 'ack'; readonly toNode: number; readonly toPid: number; readonly toReq: number; readonly ahead: LockRequestInfo | null }
  | { readonly t: 'unlock'; readonly reqId: number }
  | { readonly t: 'committed'; readonly seqno: number; readonly volumes: readonly string[] }
  | { readonly t: 'prepare'; readonly seqno: number; readonly volume: string }
  | { readonly t: 'prepared'; readonly seqno: number; readonly ok: boolean; readonly serving: boolean; readonly error: string }
  | { readonly t: 'finish'; readonly seqno: number; readonly commit: boolean };

const isU32 = (n: unknown): n is number => typeof n === 'number' && Number.isInteger(n) && n >= 0 && n <= 0xffffffff;
const isCount = (n: unknown): n is number => typeof n === 'number' && Number.isSafeInteger(n) && n >= 0;
const isOp = (s: unknown): s is string => typeof s === 'string' && s.length <= LOCK_OP_CHARS_MAX;

function need(cond: boolean, what: string): void {
  if (!cond) throw new MetadataLockCodecError(`metadata lock message: bad ${what}`);
}

export function encodeLockMessage(m: LockMessage): Buffer {
  const b = Buffer.concat([Buffer.from(LOCK_MAGIC, 'ascii'), Buffer.from(JSON.stringify(m), 'utf8')]);
  if (b.length > LOCK_MESSAGE_BYTES_MAX) throw new RangeError(`metadata lock message of ${b.length} bytes exceeds ${LOCK_MESSAGE_BYTES_MAX}`);
  return b;
}

function checkInfo(a: unknown): LockRequestInfo {
  const i = a as LockRequestInfo;
  need(typeof i === 'object' && i !== null, 'ahead');
  need(isU32(i.nodeId) && isU32(i.pid) && isCount(i.reqId) && isOp(i.op) && isCount(i.sinceMs), 'ahead fields');
  return { nodeId: i.nodeId, pid: i.pid, reqId: i.reqId, op: i.op, sinceMs: i.sinceMs };
}

export function decodeLockMessage(b: Uint8Array): LockMessage {
  const buf = Buffer.from(b.buffer, b.byteOffset, b.byteLength);
  need(buf.length >= LOCK_MAGIC.length && buf.length <= LOCK_MESSAGE_BYTES_MAX, 'length');
  need(buf.toString('ascii', 0, LOCK_MAGIC.length) === LOCK_MAGIC, 'magic');
  let o: Record<string, unknown>;
  try {
    o = JSON.parse(buf.toString('utf8', LOCK_MAGIC.length)) as Record<string, unknown>;
  } catch {
    throw new MetadataLockCodecError('metadata lock message: not JSON');
  }
  need(typeof o === 'object' && o !== null, 'body');
  switch (o.t) {
    case 'req':
      need(isCount(o.reqId) && isOp(o.op) && isCount(o.sinceMs), 'req fields');
      return { t: 'req', reqId: o.reqId as number, op: o.op as string, sinceMs: o.sinceMs as number };
    case 'ack':
      need(isU32(o.toNode) && isU32(o.toPid) && isCount(o.toReq), 'ack fields');
      return { t: 'ack', toNode: o.toNode as number, toPid: o.toPid as number, toReq: o.toReq as number, ahead: o.ahead === null ? null : checkInfo(o.ahead) };
    case 'unlock':
      need(isCount(o.reqId), 'unlock fields');
      return { t: 'unlock', reqId: o.reqId as number };
    case 'committed': {
      need(isCount(o.seqno) && Array.isArray(o.volumes) && o.volumes.length <= COMMITTED_VOLUMES_MAX, 'committed fields');
      const volumes = o.volumes as unknown[];
      for (const v of volumes) need(typeof v === 'string' && v.length > 0 && v.length <= VOLUME_NAME_CHARS_MAX, 'volume name');
      return { t: 'committed', seqno: o.seqno as number, volumes: volumes as string[] };
    }
    case 'prepare':
      need(isCount(o.seqno) && typeof o.volume === 'string' && o.volume.length > 0 && o.volume.length <= VOLUME_NAME_CHARS_MAX, 'prepare fields');
      return { t: 'prepare', seqno: o.seqno as number, volume: o.volume as string };
    case 'prepared':
      need(isCount(o.seqno) && typeof o.ok === 'boolean' && typeof o.serving === 'boolean' && typeof o.error === 'string' && o.error.length <= ERROR_CHARS_MAX, 'prepared fields');
      return { t: 'prepared', seqno: o.seqno as number, ok: o.ok as boolean, serving: o.serving as boolean, error: o.error as string };
    case 'finish':
      need(isCount(o.seqno) && typeof o.commit === 'boolean', 'finish fields');
      return { t: 'finish', seqno: o.seqno as number, commit: o.commit as boolean };
    default:
      throw new MetadataLockCodecError(`metadata lock message: unknown type ${String(o.t)}`);
  }
}
