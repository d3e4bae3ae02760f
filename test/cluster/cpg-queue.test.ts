// cpg-queue.test.ts — CpgTransport's ordered send queue: CS_ERR_TRY_AGAIN answers are retried with
// back-off without reordering a sender's messages; a lost connection rejects what is queued and tells
// the owner; limits are enforced at the edge. The native layer is replaced by a scripted stand-in
// (fixtures/fake-cpg-addon.cjs) because corosync answers TRY_AGAIN only under real flow control.
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { beforeAll, describe, expect, it } from 'vitest';
import { ADDON_PATH_ENV, CpgError, CpgTransport } from '../../src/cluster/cpg.js';

const fake = path.join(path.dirname(fileURLToPath(import.meta.url)), 'fixtures/fake-cpg-addon.cjs');
type FakeCpg = { sent: string[]; busyEvery: number; calls: number; emit(...a: unknown[]): void };
const instances = (createRequire(import.meta.url)(fake) as { instances: FakeCpg[] }).instances;

beforeAll(() => {
  process.env[ADDON_PATH_ENV] = fake;
});

describe('CpgTransport send queue', () => {
  it('keeps call order through TRY_AGAIN back-off and counts the retries', async () => {
    const t = new CpgTransport({ retryDelayMsMin: 1, retryDelayMsMax: 2 });
    const native = instances.at(-1)!;
    native.busyEvery = 3; // two of three calls are refused
    await t.join('g');
    const sends = Array.from({ length: 200 }, (_, i) => t.mcast(Buffer.from(`m${i}`)));
    await Promise.all(sends);
    expect(native.sent).toEqual(Array.from({ length: 200 }, (_, i) => `m${i}`));
    expect(t.stats.tryAgain).toBeGreaterThanOrEqual(200);
    expect(t.stats.messagesSent).toBe(200);
    await t.close();
  });

  it("a 'lost' event rejects queued sends, fires onLost, and later calls fail", async () => {
    const t = new CpgTransport({ retryDelayMsMin: 5, retryDelayMsMax: 5 });
    const native = instances.at(-1)!;
    native.busyEvery = 1_000_000; // always busy
    await t.join('g');
    const lost: Error[] = [];
    t.onLost((e) => lost.push(e));
    const p = t.mcast(Buffer.from('stuck'));
    native.emit('lost', 2, 'CS_ERR_LIBRARY');
    await expect(p).rejects.toBeInstanceOf(CpgError);
    expect(lost).toHaveLength(1);
    expect((lost[0] as CpgError).code).toBe('CS_ERR_LIBRARY');
    await expect(t.mcast(Buffer.from('after'))).rejects.toThrow(/lost the connection/);
  });

  it('enforces the message size limit and gives up after retryTotalMsMax', async () => {
    const t = new CpgTransport({ retryDelayMsMin: 1, retryDelayMsMax: 5, retryTotalMsMax: 50 });
    const native = instances.at(-1)!;
    await t.join('g');
    expect(t.messageBytesMax).toBe(1000); // min(limit, addon's max atomic size)
    await expect(t.mcast(Buffer.alloc(1001))).rejects.toBeInstanceOf(RangeError);
    native.busyEvery = 1_000_000;
    const a = t.mcast(Buffer.from('a'));
    const b = t.mcast(Buffer.from('b'));
    await expect(a).rejects.toThrow(/still busy/);
    await expect(b).rejects.toThrow(/still busy/);
    await t.close();
    await expect(t.mcast(Buffer.from('c'))).rejects.toThrow(/closed/);
  });

  it('delivers only its own group and maps confchg addresses', async () => {
    const t = new CpgTransport();
    const native = instances.at(-1)!;
    await t.join('mine');
    const got: string[] = [];
    const changes: unknown[] = [];
    t.onDeliver((d) => got.push(`${d.nodeId}/${d.pid}/${d.payload.toString()}`));
    t.onConfigChange((c) => changes.push(c));
    native.emit('deliver', 'other', 1, 2, Buffer.from('x'));
    native.emit('deliver', 'mine', 3, 4, Buffer.from('y'));
    native.emit('confchg', 'mine', [{ nodeid: 3, pid: 4, reason: 0 }], [{ nodeid: 5, pid: 6, reason: 3 }], []);
    expect(got).toEqual(['3/4/y']);
    expect(changes).toEqual([{ members: [{ nodeId: 3, pid: 4 }], left: [{ nodeId: 5, pid: 6, reason: 3 }], joined: [] }]);
    await t.close();
  });
});
