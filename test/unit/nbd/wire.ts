// Independent builder of expected NBD bytes for codec tests. Deliberately shares nothing with
// src/nbd/codec (not even constants): every magic and field is spelled out from doc/proto.md,
// so a bug in the production encoder cannot hide on both sides.

export function be(bits: 16 | 32 | 64, v: number | bigint): number[] {
  let x = BigInt(v);
  const n = bits / 8;
  const out: number[] = new Array<number>(n);
  for (let i = n - 1; i >= 0; i--) {
    out[i] = Number(x & 0xffn);
    x >>= 8n;
  }
  return out;
}

export const bytes = (...parts: (number[] | string | Buffer)[]): Buffer =>
  Buffer.concat(parts.map((p) => (typeof p === 'string' ? Buffer.from(p, 'utf8') : Buffer.isBuffer(p) ? p : Buffer.from(p))));

export const W = {
  greeting: (flags: number) => bytes('NBDMAGIC', 'IHAVEOPT', be(16, flags)),
  option: (opt: number, data: Buffer = Buffer.alloc(0)) => bytes('IHAVEOPT', be(32, opt), be(32, data.length), data),
  optionReply: (opt: number, type: number, data: Buffer = Buffer.alloc(0)) =>
    bytes(be(64, 0x3e889045565a9n), be(32, opt), be(32, type), be(32, data.length), data),
  request: (flags: number, type: number, cookie: bigint, offset: bigint | number, length: number) =>
    bytes(be(32, 0x25609513), be(16, flags), be(16, type), be(64, cookie), be(64, offset), be(32, length)),
  simpleReply: (error: number, cookie: bigint) => bytes(be(32, 0x67446698), be(32, error), be(64, cookie)),
  chunk: (flags: number, type: number, cookie: bigint, payload: Buffer) =>
    bytes(be(32, 0x668e33ef), be(16, flags), be(16, type), be(64, cookie), be(32, payload.length), payload),
};

/**
 * Split transmission-phase server output into messages (simple replies carry no data here:
 * structured replies are negotiated) and sort them, since replies go out in completion order.
 */
export function sortedReplies(buf: Buffer): string[] {
  const out: string[] = [];
  let at = 0;
  while (at < buf.length) {
    const magic = buf.readUInt32BE(at);
    const n = magic === 0x67446698 ? 16 : 20 + buf.readUInt32BE(at + 16);
    out.push(buf.subarray(at, at + n).toString('hex'));
    at += n;
  }
  return out.sort();
}

/** The cookies of a run of simple replies, each of which must be a success (throws naming the first that is not). */
export function successCookies(buf: Buffer): bigint[] {
  if (buf.length % 16 !== 0) throw new Error(`${buf.length} bytes is not a whole number of 16-byte simple replies`);
  const out: bigint[] = [];
  for (let at = 0; at < buf.length; at += 16) {
    const magic = buf.readUInt32BE(at);
    const error = buf.readUInt32BE(at + 4);
    if (magic !== 0x67446698 || error !== 0) throw new Error(`reply at byte ${at}: magic 0x${magic.toString(16)}, error ${error}`);
    out.push(buf.readBigUInt64BE(at + 8));
  }
  return out;
}
