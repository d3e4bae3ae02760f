// The server's and the client's stream parsers are fed the same byte script split at every
// offset (and at random triples); the bytes that come back must be identical to the expected
// bytes built independently (wire.ts). Pins framing across chunk boundaries, the way
// pg-protocol's inbound-parser tests do, instead of relying on luck in TCP chunking.

import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { NbdClient } from '../../../src/nbd/client/client.js';
import type { ClientNegotiated } from '../../../src/nbd/client/handshake.js';
import { Connection } from '../../../src/nbd/server/connection.js';
import { resolveLimits } from '../../../src/nbd/server/limits.js';
import { NULL_LOGGER } from '../../../src/nbd/server/log.js';
import { MemoryExport } from '../../helpers/memory-export.js';
import { FakeSocket, until } from './fake-socket.js';
import { be, bytes, sortedReplies, W } from './wire.js';

const SIZE = 1 << 20;
const limits = resolveLimits({});

// ---- the client's script -----------------------------------------------------------------------
const payload = Buffer.from(Array.from({ length: 100 }, (_, i) => (i * 7 + 1) & 0xff));
const clientScript = bytes(
  be(32, 3), // FIXED_NEWSTYLE | NO_ZEROES
  W.option(8), // STRUCTURED_REPLY
  W.option(10, bytes(be(32, 0), be(32, 1), be(32, 15), 'base:allocation')), // SET_META_CONTEXT
  W.option(99), // unknown -> UNSUP
  W.option(7, bytes(be(32, 0), be(16, 1), be(16, 1))), // GO "" asking NBD_INFO_NAME
  W.request(0, 1, 1n, 65536, 100), // WRITE
  payload,
  W.request(0, 0, 2n, 65536, 100), // READ
  W.request(0, 7, 3n, 0, 3 * 65536), // BLOCK_STATUS
  W.request(0, 3, 4n, 0, 0), // FLUSH
  W.request(0, 1, 5n, SIZE - 10, 50), // WRITE past the end -> ENOSPC, payload discarded
  Buffer.alloc(50, 0xee),
  W.request(0, 0, 6n, SIZE, 1), // READ past the end -> EINVAL
  W.request(0, 2, 7n, 0, 0), // DISC
);

const errPayload = (errno: number, msg: string): Buffer => bytes(be(32, errno), be(16, Buffer.byteLength(msg)), msg);
const expectedHandshake = bytes(
  W.greeting(3),
  W.optionReply(8, 1),
  W.optionReply(10, 4, bytes(be(32, 1), 'base:allocation')),
  W.optionReply(10, 1),
  W.optionReply(99, 0x80000001, Buffer.from('option 99 is not supported')),
  W.optionReply(7, 3, bytes(be(16, 0), be(64, SIZE), be(16, 0x0ded))), // INFO_EXPORT
  W.optionReply(7, 3, bytes(be(16, 1), 'disk')), // INFO_NAME (default export resolved)
  W.optionReply(7, 3, bytes(be(16, 3), be(32, 1), be(32, 4096), be(32, 1 << 25))), // INFO_BLOCK_SIZE
  W.optionReply(7, 1),
);
const expectedReplies = sortedReplies(bytes(
  W.simpleReply(0, 1n),
  W.chunk(1, 1, 2n, bytes(be(64, 65536), payload)),
  W.chunk(1, 5, 3n, bytes(be(32, 1), be(32, 65536), be(32, 3), be(32, 65536), be(32, 0), be(32, 65536), be(32, 3))),
  W.simpleReply(0, 4n),
  W.chunk(1, 0x8001, 5n, errPayload(28, `range ${SIZE - 10}+50 beyond export size ${SIZE}`)),
  W.chunk(1, 0x8001, 6n, errPayload(22, `range ${SIZE}+1 beyond export size ${SIZE}`)),
));

/** Handshake bytes must match exactly; transmission replies as a set (completion order). */
function matches(out: Buffer): boolean {
  const hs = out.subarray(0, expectedHandshake.length);
  if (!hs.equals(expectedHandshake)) return false;
  return JSON.stringify(sortedReplies(out.subarray(expectedHandshake.length))) === JSON.stringify(expectedReplies);
}

async function runServer(chunks: Buffer[]): Promise<Buffer> {
  const sock = new FakeSocket();
  const exp = new MemoryExport({ sizeBytes: SIZE });
  const conn = new Connection(
    1,
    sock,
    { registry: new Map([['disk', { export: exp }]]), defaultExportName: 'disk', limits, shuttingDown: () => false },
    limits,
    NULL_LOGGER,
  );
  for (const c of chunks) {
    sock.push(c);
    await new Promise((r) => setImmediate(r)); // let the server act on each piece separately
  }
  sock.push(null);
  await conn.done;
  return sock.output();
}

describe('server stream parser', () => {
  it('whole script in one chunk gives the expected bytes', async () => {
    const out = await runServer([clientScript]);
    expect(out.subarray(0, expectedHandshake.length).toString('hex')).toBe(expectedHandshake.toString('hex'));
    expect(sortedReplies(out.subarray(expectedHandshake.length))).toEqual(expectedReplies);
  });

  it('split at every offset gives the same bytes', async () => {
    for (let at = 1; at < clientScript.length; at++) {
      const out = await runServer([clientScript.subarray(0, at), clientScript.subarray(at)]);
      if (!matches(out)) expect.fail(`split at ${at}: ${out.toString('hex')}`);
    }
  });

  it('random three-way splits and one-byte dribble give the same bytes', async () => {
    await fc.assert(
      fc.asyncProperty(fc.integer({ min: 0, max: clientScript.length }), fc.integer({ min: 0, max: clientScript.length }), async (a, b) => {
        const [x, y] = a < b ? [a, b] : [b, a];
        const out = await runServer([clientScript.subarray(0, x), clientScript.subarray(x, y), clientScript.subarray(y)]);
        expect(matches(out)).toBe(true);
      }),
      { numRuns: 50, seed: 42 },
    );
    const dribble = Array.from({ length: clientScript.length }, (_, i) => clientScript.subarray(i, i + 1));
    expect(matches(await runServer(dribble))).toBe(true);
  });
});

// ---- the client's reply parser ----------------------------------------------------------------
const negotiated: ClientNegotiated = {
  sizeBytes: SIZE,
  transmissionFlags: 0x0ded,
  structuredReplies: true,
  baseAllocationContextId: 1,
  blockSizeMinBytes: 1,
  blockSizePreferredBytes: 4096,
  payloadBytesMax: 1 << 25,
};

type ClientCtor = new (socket: FakeSocket, n: ClientNegotiated, leftover: Buffer, opts: object, label: string) => NbdClient;

describe('client reply parser', () => {
  const data = Buffer.from('0123456789abcdef');
  // Replies to cookies 1..5 in a scrambled order, with a read split into data + hole chunks.
  const replies = bytes(
    W.simpleReply(0, 2n), // write
    W.chunk(0, 1, 1n, bytes(be(64, 4096 + 8), data.subarray(8))), // read: second half first
    W.chunk(0, 5, 4n, bytes(be(32, 7), be(32, 1), be(32, 0))), // block status for an unknown context: ignored
    W.chunk(0, 2, 1n, bytes(be(64, 4096), be(32, 4))), // read: hole over bytes 0..3
    W.chunk(1, 1, 1n, bytes(be(64, 4096 + 4), data.subarray(4, 8))), // read: bytes 4..7, DONE
    W.chunk(1, 5, 4n, bytes(be(32, 1), be(32, 512), be(32, 3))), // block status, DONE
    W.chunk(1, 0x8001, 3n, errPayload(28, 'no space')), // error for the zero
    W.simpleReply(22, 5n), // flush error
  );

  async function runClient(chunks: Buffer[]): Promise<{ results: PromiseSettledResult<unknown>[]; target: Buffer }> {
    const sock = new FakeSocket();
    const client = new (NbdClient as unknown as ClientCtor)(sock, negotiated, Buffer.alloc(0), {}, 'fake');
    const target = Buffer.alloc(16, 0xff);
    const ps = [
      client.read(target, 4096),
      client.write(Buffer.from('x'), 0, { fua: false }),
      client.zero(0, 10, { fua: false, mayTrim: true }),
      client.blockStatus(0, 1024),
      client.flush(),
    ];
    const settled = Promise.allSettled(ps); // handlers attached now: rejections are expected
    await until(() => sock.written.length > 0);
    for (const c of chunks) {
      sock.push(c);
      await new Promise((r) => setImmediate(r));
    }
    const results = await settled;
    sock.destroy();
    return { results, target };
  }

  function check(r: { results: PromiseSettledResult<unknown>[]; target: Buffer }): void {
    const [read, write, zero, bs, flush] = r.results;
    expect(read!.status).toBe('fulfilled');
    expect(r.target.toString('hex')).toBe(Buffer.concat([Buffer.alloc(4), data.subarray(4)]).toString('hex'));
    expect(write!.status).toBe('fulfilled');
    expect(zero).toMatchObject({ status: 'rejected', reason: { errno: 'ENOSPC' } });
    expect(bs).toEqual({ status: 'fulfilled', value: [{ lengthBytes: 512, flags: 3 }] });
    expect(flush).toMatchObject({ status: 'rejected', reason: { errno: 'EINVAL' } });
  }

  it('sends the requests the builder expects', async () => {
    const sock = new FakeSocket();
    const client = new (NbdClient as unknown as ClientCtor)(sock, negotiated, Buffer.alloc(0), {}, 'fake');
    void client.read(Buffer.alloc(16), 4096).catch(() => undefined);
    void client.write(Buffer.from('x'), 0, { fua: true }).catch(() => undefined);
    await until(() => sock.written.length > 0);
    expect(sock.output()).toEqual(bytes(W.request(0, 0, 1n, 4096, 16), W.request(1, 1, 2n, 0, 1), 'x'));
    sock.destroy();
  });

  it('parses scrambled replies in one chunk and split at every offset', async () => {
    check(await runClient([replies]));
    for (let at = 1; at < replies.length; at++) check(await runClient([replies.subarray(0, at), replies.subarray(at)]));
  });

  it('a bad magic kills the connection and rejects all pending with EIO', async () => {
    const r = await runClient([bytes(W.simpleReply(0, 2n), be(32, 0xdeadbeef), Buffer.alloc(20))]);
    expect(r.results[1]!.status).toBe('fulfilled');
    for (const i of [0, 2, 3, 4]) expect(r.results[i]).toMatchObject({ status: 'rejected', reason: { errno: 'EIO' } });
  });
});
