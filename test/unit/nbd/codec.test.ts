// Codec against independently built bytes (wire.ts): request header, replies, options, infos.

import { describe, expect, it } from 'vitest';
import * as C from '../../../src/nbd/codec/constants.js';
import { errnoToNbd, errorToNbd, nbdToErrno } from '../../../src/nbd/codec/errors.js';
import * as O from '../../../src/nbd/codec/option.js';
import * as R from '../../../src/nbd/codec/reply.js';
import { decodeExtendedRequestHeader, decodeRequestHeader, encodeRequestHeader, newRequestHeader } from '../../../src/nbd/codec/request.js';
import { ExportError } from '../../../src/nbd/export.js';
import { be, bytes, W } from './wire.js';

describe('constants', () => {
  it('match doc/proto.md', () => {
    expect(C.NBD_MAGIC).toBe(BigInt('0x' + Buffer.from('NBDMAGIC').toString('hex')));
    expect(C.NBD_OPTS_MAGIC).toBe(BigInt('0x' + Buffer.from('IHAVEOPT').toString('hex')));
    expect(C.NBD_REP_ERR_UNSUP).toBe(2 ** 31 + 1);
    expect(C.NBD_REP_ERR_EXT_HEADER_REQD).toBe(2 ** 31 + 10);
    expect(C.NBD_REPLY_TYPE_ERROR).toBe(2 ** 15 + 1);
    expect(C.NBD_REPLY_TYPE_ERROR_OFFSET).toBe(2 ** 15 + 2);
    expect([C.NBD_FLAG_SEND_CACHE, C.NBD_FLAG_SEND_FAST_ZERO, C.NBD_FLAG_CAN_MULTI_CONN]).toEqual([1 << 10, 1 << 11, 1 << 8]);
    expect([C.NBD_CMD_FLAG_FUA, C.NBD_CMD_FLAG_NO_HOLE, C.NBD_CMD_FLAG_DF, C.NBD_CMD_FLAG_REQ_ONE, C.NBD_CMD_FLAG_FAST_ZERO]).toEqual([1, 2, 4, 8, 16]);
  });
});

describe('request header', () => {
  it('decodes at any position, with 64-bit cookie halves and offset', () => {
    const req = W.request(0x11, 6, 0x0102030405060708n, 0x0000_0123_4567_89abn, 0xfedcba98);
    const buf = bytes([9, 9, 9], req);
    const h = newRequestHeader();
    decodeRequestHeader(buf, 3, h);
    expect(h).toEqual({
      magic: 0x25609513,
      flags: 0x11,
      type: 6,
      cookieHi: 0x01020304,
      cookieLo: 0x05060708,
      offsetBytes: 0x0123_4567_89ab,
      lengthBytes: 0xfedcba98,
    });
  });

  it('offsets above 2^53 stay above any export size', () => {
    const h = newRequestHeader();
    decodeRequestHeader(W.request(0, 0, 1n, 0xffff_ffff_ffff_ffffn, 1), 0, h);
    expect(h.offsetBytes).toBeGreaterThan(Number.MAX_SAFE_INTEGER);
  });

  it('extended header has a 64-bit length', () => {
    const buf = bytes(be(32, 0x21e41c71), be(16, 1), be(16, 0), be(64, 5n), be(64, 4096), be(64, 2 ** 33));
    const h = newRequestHeader();
    decodeExtendedRequestHeader(buf, 0, h);
    expect(h.magic).toBe(C.NBD_EXTENDED_REQUEST_MAGIC);
    expect(h.lengthBytes).toBe(2 ** 33);
  });

  it('encodes what the independent builder builds', () => {
    const b = Buffer.alloc(28);
    encodeRequestHeader(b, 0, { flags: 1, type: 1, cookieHi: 0, cookieLo: 42, offsetBytes: 2 ** 40 + 5, lengthBytes: 4096 });
    expect(b).toEqual(W.request(1, 1, 42n, 2n ** 40n + 5n, 4096));
    expect(() => encodeRequestHeader(b, 0, { flags: 0, type: 0, cookieHi: 0, cookieLo: 0, offsetBytes: -1, lengthBytes: 0 })).toThrow(RangeError);
  });
});

describe('replies', () => {
  it('simple reply', () => {
    expect(R.simpleReply(22, 0xaabbccdd, 0x11223344)).toEqual(W.simpleReply(22, 0xaabbccdd11223344n));
  });

  it('OFFSET_DATA prefix in front of data in one buffer', () => {
    const b = Buffer.alloc(R.OFFSET_DATA_PREFIX_BYTES + 3);
    b.write('abc', R.OFFSET_DATA_PREFIX_BYTES);
    R.encodeOffsetDataPrefix(b, 0, 1, 0, 7, 2 ** 35, 3);
    expect(b).toEqual(W.chunk(1, 1, 7n, bytes(be(64, 2 ** 35), 'abc')));
  });

  it('hole, none, error and block status chunks', () => {
    expect(R.offsetHoleChunk(0, 0, 9, 512, 1024)).toEqual(W.chunk(0, 2, 9n, bytes(be(64, 512), be(32, 1024))));
    expect(R.noneChunk(1, 2)).toEqual(W.chunk(1, 0, 0x100000002n, Buffer.alloc(0)));
    expect(R.errorChunk(0, 3, 28, 'full')).toEqual(W.chunk(1, 0x8001, 3n, bytes(be(32, 28), be(16, 4), 'full')));
    expect(R.errorChunk(0, 3, 5, 'x'.repeat(5000)).length).toBe(20 + 6 + 4096);
    expect(R.blockStatusChunk(1, 0, 4, 1, [{ lengthBytes: 10, flags: 3 }, { lengthBytes: 20, flags: 0 }])).toEqual(
      W.chunk(1, 5, 4n, bytes(be(32, 1), be(32, 10), be(32, 3), be(32, 20), be(32, 0))),
    );
    expect(() => R.blockStatusChunk(1, 0, 4, 1, [])).toThrow(RangeError);
  });

  it('decodes simple and structured headers and payloads', () => {
    const h = R.newReplyHeader();
    R.decodeReplyHeader(W.simpleReply(5, 77n), 0, h);
    expect(h).toMatchObject({ magic: C.NBD_SIMPLE_REPLY_MAGIC, error: 5, cookieHi: 0, cookieLo: 77 });
    R.decodeReplyHeader(W.chunk(1, 5, 78n, Buffer.alloc(12)), 0, h);
    expect(h).toMatchObject({ magic: C.NBD_STRUCTURED_REPLY_MAGIC, flags: 1, type: 5, cookieLo: 78, lengthBytes: 12 });
    expect(R.replyHeaderBytes(0x12345678)).toBe(0);
    expect(R.decodeErrorPayload(bytes(be(32, 22), be(16, 2), 'no'), 0x8001)).toEqual({ error: 22, message: 'no' });
    expect(R.decodeErrorPayload(bytes(be(32, 22), be(16, 0), be(64, 4096)), 0x8002)).toEqual({ error: 22, message: '', offsetBytes: 4096 });
    expect(R.decodeErrorPayload(bytes(be(32, 22), be(16, 9), 'no'), 0x8001)).toBeNull();
    expect(R.decodeOffsetHolePayload(bytes(be(64, 1), be(32, 2)))).toEqual({ offsetBytes: 1, holeBytes: 2 });
    expect(R.decodeBlockStatusPayload(bytes(be(32, 1), be(32, 10), be(32, 3)))).toEqual({ contextId: 1, extents: [{ lengthBytes: 10, flags: 3 }] });
    expect(R.decodeBlockStatusPayload(bytes(be(32, 1), be(32, 10)))).toBeNull();
  });
});

describe('handshake messages', () => {
  it('greeting and client flags', () => {
    expect(O.encodeGreeting(3)).toEqual(W.greeting(3));
    expect(O.decodeGreeting(W.greeting(1))).toBe(1);
    expect(O.decodeGreeting(bytes('NBDMAGIC', be(64, 0x00420281861253n), be(16, 0)))).toBeNull();
    expect(O.encodeClientFlags(3)).toEqual(Buffer.from(be(32, 3)));
  });

  it('options and option replies', () => {
    expect(O.encodeOption(8)).toEqual(W.option(8));
    expect(O.decodeOptionHeader(W.option(7, Buffer.alloc(9)))).toEqual({ option: 7, lengthBytes: 9 });
    expect(O.decodeOptionHeader(bytes('IHAVEOPX', be(32, 1), be(32, 0)))).toBeNull();
    expect(O.encodeOptionReply(3, 2, Buffer.from('x'))).toEqual(W.optionReply(3, 2, Buffer.from('x')));
    expect(O.encodeOptionReply(3, 0x80000001)).toEqual(W.optionReply(3, 0x80000001));
    expect(O.decodeOptionReplyHeader(W.optionReply(3, 0x80000003, Buffer.alloc(4)))).toEqual({ option: 3, type: 0x80000003, lengthBytes: 4 });
  });

  it('INFO/GO data round trip and malformed data', () => {
    const data = bytes(be(32, 4), 'disk', be(16, 2), be(16, 3), be(16, 1));
    expect(O.decodeInfoRequest(data)).toEqual({ name: 'disk', infos: [3, 1] });
    expect(O.encodeInfoRequest({ name: 'disk', infos: [3, 1] })).toEqual(data);
    expect(O.decodeInfoRequest(bytes(be(32, 4), 'disk'))).toMatch(/too short|exceeds/);
    expect(O.decodeInfoRequest(bytes(be(32, 100), 'disk', be(16, 0)))).toMatch(/exceeds/);
    expect(O.decodeInfoRequest(bytes(be(32, 0), be(16, 2), be(16, 3)))).toMatch(/count/);
  });

  it('META_CONTEXT data round trip and malformed data', () => {
    const data = bytes(be(32, 1), 'd', be(32, 2), be(32, 5), 'base:', be(32, 15), 'base:allocation');
    expect(O.decodeMetaContextRequest(data, 10)).toEqual({ name: 'd', queries: ['base:', 'base:allocation'] });
    expect(O.encodeMetaContextRequest({ name: 'd', queries: ['base:', 'base:allocation'] })).toEqual(data);
    expect(O.decodeMetaContextRequest(data, 1)).toMatch(/too many/);
    expect(O.decodeMetaContextRequest(bytes(be(32, 1), 'd', be(32, 1), be(32, 50), 'base:'), 10)).toMatch(/exceeds/);
    expect(O.decodeMetaContextRequest(bytes(be(32, 0), be(32, 0), 'x'), 10)).toMatch(/trailing/);
  });

  it('infos, REP_SERVER, META_CONTEXT, EXPORT_NAME reply', () => {
    expect(O.encodeInfoExport(2 ** 40, 0x1234)).toEqual(bytes(be(16, 0), be(64, 2 ** 40), be(16, 0x1234)));
    expect(O.encodeInfoString(1, 'n')).toEqual(bytes(be(16, 1), 'n'));
    expect(O.encodeInfoBlockSize({ minimumBytes: 1, preferredBytes: 4096, maximumBytes: 2 ** 25 })).toEqual(
      bytes(be(16, 3), be(32, 1), be(32, 4096), be(32, 2 ** 25)),
    );
    expect(O.decodeInfo(bytes(be(16, 0), be(64, 2 ** 40), be(16, 0x1234)))).toEqual({ type: 0, sizeBytes: 2 ** 40, transmissionFlags: 0x1234 });
    expect(O.decodeInfo(bytes(be(16, 3), be(32, 512), be(32, 4096), be(32, 1 << 20)))).toEqual({
      type: 3,
      minimumBytes: 512,
      preferredBytes: 4096,
      maximumBytes: 1 << 20,
    });
    expect(O.decodeInfo(bytes(be(16, 0), be(32, 1)))).toBeNull();
    expect(O.decodeInfo(bytes(be(16, 99)))).toEqual({ type: 'unknown', code: 99 });
    expect(O.encodeRepServer('a', 'desc')).toEqual(bytes(be(32, 1), 'a', 'desc'));
    expect(O.decodeRepServer(bytes(be(32, 1), 'a', 'desc'))).toEqual({ name: 'a', description: 'desc' });
    expect(O.encodeRepMetaContext(1, 'base:allocation')).toEqual(bytes(be(32, 1), 'base:allocation'));
    expect(O.encodeExportNameReply(1024, 3, false)).toEqual(bytes(be(64, 1024), be(16, 3), Buffer.alloc(124)));
    expect(O.encodeExportNameReply(1024, 3, true)).toEqual(bytes(be(64, 1024), be(16, 3)));
  });
});

describe('errno mapping (the one place)', () => {
  it('maps names both ways, EDQUOT/EFBIG to ENOSPC, anything else to EIO', () => {
    expect(errnoToNbd('ENOSPC')).toBe(28);
    expect(errnoToNbd('EDQUOT')).toBe(28);
    expect(errnoToNbd('EFBIG')).toBe(28);
    expect(errnoToNbd('EROFS')).toBe(1);
    expect(errnoToNbd('EWHATEVER')).toBe(5);
    expect(errorToNbd(new ExportError('EOVERFLOW', 'x'))).toBe(75);
    expect(errorToNbd(Object.assign(new Error('x'), { code: 'ENOSPC' }))).toBe(28);
    expect(errorToNbd('string')).toBe(5);
    for (const e of ['EPERM', 'EIO', 'ENOMEM', 'EINVAL', 'ENOSPC', 'EOVERFLOW', 'ENOTSUP', 'ESHUTDOWN'] as const) {
      expect(nbdToErrno(errnoToNbd(e))).toBe(e);
    }
    expect(nbdToErrno(1234)).toBe('EIO');
  });
});
