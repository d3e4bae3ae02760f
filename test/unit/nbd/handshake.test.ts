// Server handshake, option by option, against independently built bytes: what each option
// answers, NO_ZEROES, STARTTLS refused by policy, unknown options UNSUP, violations disconnect.

import { describe, expect, it } from 'vitest';
import { be, bytes, W } from './wire.js';
import { runScript } from './server-harness.js';

const GREETING = W.greeting(3);
const REP_ERR = (n: number) => 0x80000000 + n;
const infoExport = (size: number, flags: number) => bytes(be(16, 0), be(64, size), be(16, flags));
const FLAGS_PLAIN = 0x0d6d; // no structured replies: no SEND_DF
const infoData = (name: string, ...infos: number[]) => bytes(be(32, Buffer.byteLength(name)), name, be(16, infos.length), ...infos.map((i) => be(16, i)));
const metaData = (name: string, ...qs: string[]) =>
  bytes(be(32, Buffer.byteLength(name)), name, be(32, qs.length), ...qs.map((q) => bytes(be(32, Buffer.byteLength(q)), q)));

function expectPrefix(out: Buffer, ...parts: Buffer[]): Buffer {
  const want = bytes(...parts);
  expect(out.subarray(0, want.length).toString('hex')).toBe(want.toString('hex'));
  return out.subarray(want.length);
}

describe('server handshake', () => {
  it('EXPORT_NAME replies size+flags+124 zeroes, or no zeroes with NO_ZEROES', async () => {
    let r = await runScript(bytes(be(32, 1), W.option(1, Buffer.from('disk'))));
    expect(r.out.toString('hex')).toBe(bytes(GREETING, be(64, 1 << 20), be(16, FLAGS_PLAIN), Buffer.alloc(124)).toString('hex'));
    r = await runScript(bytes(be(32, 3), W.option(1, Buffer.from(''))));
    expect(r.out.toString('hex')).toBe(bytes(GREETING, be(64, 1 << 20), be(16, FLAGS_PLAIN)).toString('hex'));
    expect(r.destroyed).toBe(false);
  });

  it('EXPORT_NAME for an unknown export hard-disconnects (it cannot return an error)', async () => {
    const r = await runScript(bytes(be(32, 3), W.option(1, Buffer.from('nope'))));
    expect(r.out).toEqual(GREETING);
    expect(r.destroyed).toBe(true);
  });

  it('unknown client flags disconnect', async () => {
    const r = await runScript(bytes(be(32, 4)));
    expect(r.out).toEqual(GREETING);
    expect(r.destroyed).toBe(true);
  });

  it('LIST names every export with its description', async () => {
    const r = await runScript(bytes(be(32, 3), W.option(3), W.option(3, Buffer.from('x')), W.option(2)));
    expectPrefix(
      r.out,
      GREETING,
      W.optionReply(3, 2, bytes(be(32, 4), 'disk', 'a disk')),
      W.optionReply(3, 2, bytes(be(32, 5), 'other')),
      W.optionReply(3, 1),
      W.optionReply(3, REP_ERR(3), Buffer.from('NBD_OPT_LIST takes no data')),
      W.optionReply(2, 1), // ABORT acknowledged
    );
  });

  it('INFO answers EXPORT, NAME, DESCRIPTION, BLOCK_SIZE and stays in negotiation; unknown infos ignored', async () => {
    const r = await runScript(bytes(be(32, 3), W.option(6, infoData('', 1, 2, 3, 77)), W.option(6, infoData('nope')), W.option(2)));
    expectPrefix(
      r.out,
      GREETING,
      W.optionReply(6, 3, infoExport(1 << 20, FLAGS_PLAIN)),
      W.optionReply(6, 3, bytes(be(16, 1), 'disk')),
      W.optionReply(6, 3, bytes(be(16, 2), 'a disk')),
      W.optionReply(6, 3, bytes(be(16, 3), be(32, 1), be(32, 4096), be(32, 1 << 25))),
      W.optionReply(6, 1),
      W.optionReply(6, REP_ERR(6), Buffer.from('unknown export "nope"')),
      W.optionReply(2, 1),
    );
  });

  it('malformed INFO/GO data is NBD_REP_ERR_INVALID, and negotiation continues', async () => {
    const r = await runScript(bytes(be(32, 3), W.option(7, bytes(be(32, 50), 'disk', be(16, 0))), W.option(7, infoData('other'))));
    const rest = expectPrefix(r.out, GREETING, W.optionReply(7, REP_ERR(3), Buffer.from('export name length exceeds option data')));
    expectPrefix(rest, W.optionReply(7, 3, infoExport(4096, FLAGS_PLAIN)));
  });

  it('STARTTLS is refused by policy (TLS not implemented); with data it is INVALID', async () => {
    const r = await runScript(bytes(be(32, 3), W.option(5), W.option(5, Buffer.from('x')), W.option(2)));
    expectPrefix(
      r.out,
      GREETING,
      W.optionReply(5, REP_ERR(2), Buffer.from('TLS is not supported by this server')),
      W.optionReply(5, REP_ERR(3), Buffer.from('NBD_OPT_STARTTLS takes no data')),
      W.optionReply(2, 1),
    );
  });

  it('unknown options and EXTENDED_HEADERS are NBD_REP_ERR_UNSUP', async () => {
    const r = await runScript(bytes(be(32, 3), W.option(11), W.option(0x12345678, Buffer.alloc(10)), W.option(2)));
    expectPrefix(
      r.out,
      GREETING,
      W.optionReply(11, REP_ERR(1), Buffer.from('option 11 is not supported')),
      W.optionReply(0x12345678, REP_ERR(1), Buffer.from(`option ${0x12345678} is not supported`)),
      W.optionReply(2, 1),
    );
  });

  it('meta contexts: need structured replies; LIST with base: wildcard; SET selects base:allocation', async () => {
    const r = await runScript(
      bytes(
        be(32, 3),
        W.option(10, metaData('disk', 'base:allocation')),
        W.option(8),
        W.option(8),
        W.option(9, metaData('disk')),
        W.option(9, metaData('disk', 'base:', 'qemu:dirty-bitmap:x')),
        W.option(9, metaData('disk', 'other:thing')),
        W.option(10, metaData('disk', 'base:allocation', 'base:')),
        W.option(10, metaData('nope', 'base:allocation')),
        W.option(2),
      ),
    );
    expectPrefix(
      r.out,
      GREETING,
      W.optionReply(10, REP_ERR(3), Buffer.from('negotiate NBD_OPT_STRUCTURED_REPLY first')),
      W.optionReply(8, 1),
      W.optionReply(8, REP_ERR(3), Buffer.from('structured replies already negotiated')),
      W.optionReply(9, 4, bytes(be(32, 0), 'base:allocation')),
      W.optionReply(9, 1),
      W.optionReply(9, 4, bytes(be(32, 0), 'base:allocation')),
      W.optionReply(9, 1),
      W.optionReply(9, 1),
      W.optionReply(10, 4, bytes(be(32, 1), 'base:allocation')),
      W.optionReply(10, 1),
      W.optionReply(10, REP_ERR(6), Buffer.from('unknown export "nope"')),
      W.optionReply(2, 1),
    );
  });

  it('option data above optionBytesMax and bad option magic disconnect', async () => {
    let r = await runScript(bytes(be(32, 3), bytes('IHAVEOPT', be(32, 3), be(32, 1 << 30))), { endInput: false });
    expect(r.out).toEqual(GREETING);
    expect(r.destroyed).toBe(true);
    r = await runScript(bytes(be(32, 3), bytes('IHAVEOPX', be(32, 3), be(32, 0))), { endInput: false });
    expect(r.destroyed).toBe(true);
  });

  it('more than optionsMax options disconnect', async () => {
    const many = Array.from({ length: 5 }, () => W.option(3));
    const r = await runScript(bytes(be(32, 3), ...many), { limits: { optionsMax: 4 }, endInput: false });
    expect(r.destroyed).toBe(true);
  });

  it('a client closing mid-handshake just ends that connection', async () => {
    const r = await runScript(bytes(be(32, 3), bytes('IHAVEOPT', be(32, 7), be(32, 100)), Buffer.alloc(10)));
    expect(r.out).toEqual(GREETING);
  });
});
