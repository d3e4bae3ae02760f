// The idle poll's adaptive window (src/nbd/server/poll-window.ts): qemu's rule. Starts at 0; a wait within
// the max and longer than the window grows it (4 us, then x2, capped at the max); a wait past the max drops it to 0; a wait the window
// already covered leaves it; fast-check: the window is always 0 or in [start, max], and a late gap always
// ends at 0. SharedInput: one busy connection (or several far apart) may spin; two busy within 1 ms may not,
// until 1 ms after the last such pair.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { POLL_GROW_START_NS, PollWindow, SHARED_GAP_MS, SharedInput } from '../../../src/nbd/server/poll-window.js';

const US = 1000;

describe('PollWindow', () => {
  it('grows from 0 through 4, 8, 16 us to the max on short waits, and stays there', () => {
    const w = new PollWindow(32 * US);
    expect(w.windowNs).toBe(0);
    const seen: number[] = [];
    for (let i = 0; i < 6; i++) {
      w.waited(20 * US);
      seen.push(w.windowNs / US);
    }
    expect(seen).toEqual([4, 8, 16, 32, 32, 32]);
  });

  it('drops to 0 when the next request came later than the max (idle or slow client), and grows back', () => {
    const w = new PollWindow(32 * US);
    for (let i = 0; i < 4; i++) w.waited(20 * US);
    expect(w.windowNs).toBe(32 * US);
    w.waited(32 * US + 1);
    expect(w.windowNs).toBe(0);
    w.waited(5_000_000_000); // 5 s idle
    expect(w.windowNs).toBe(0);
    w.waited(1 * US);
    expect(w.windowNs).toBe(POLL_GROW_START_NS);
  });

  it('keeps the window when the wait was within it (the spin was not tried or its time had not come)', () => {
    const w = new PollWindow(32 * US);
    w.waited(3 * US);
    w.waited(3 * US); // within 4 us: stays
    expect(w.windowNs).toBe(4 * US);
    w.waited(5 * US);
    expect(w.windowNs).toBe(8 * US);
    w.waited(8 * US);
    expect(w.windowNs).toBe(8 * US);
    w.waited(9 * US);
    expect(w.windowNs).toBe(16 * US);
  });

  it('a max below the first step caps the first step', () => {
    const w = new PollWindow(2 * US);
    w.waited(1 * US);
    expect(w.windowNs).toBe(2 * US);
    w.waited(2 * US);
    expect(w.windowNs).toBe(2 * US);
  });

  it('property: 0 or within [min(start, max), max]; a gap past the max always leaves 0', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 1000 }), fc.array(fc.integer({ min: 0, max: 2_000_000 }), { maxLength: 50 }), (maxUs, gaps) => {
        const w = new PollWindow(maxUs * US);
        for (const g of gaps) {
          w.waited(g);
          const n = w.windowNs;
          expect(n === 0 || (n >= Math.min(POLL_GROW_START_NS, w.maxNs) && n <= w.maxNs)).toBe(true);
          if (g > w.maxNs) expect(n).toBe(0);
        }
      }),
    );
  });
});

describe('SharedInput', () => {
  it('one connection alone may spin, however often it has input', () => {
    const s = new SharedInput();
    const a = {};
    for (let t = 0; t < 10; t += 0.03) s.note(a, t);
    expect(s.alone(10)).toBe(true);
  });

  it('two connections with input within 1 ms: nobody spins until 1 ms after the last such pair', () => {
    const s = new SharedInput();
    const a = {};
    const b = {};
    s.note(a, 100);
    s.note(b, 100.2);
    expect(s.alone(100.3)).toBe(false);
    s.note(a, 100.25);
    s.note(a, 100.5); // a alone since 100.25
    expect(s.alone(100.25 + SHARED_GAP_MS - 0.01)).toBe(false);
    expect(s.alone(100.25 + SHARED_GAP_MS)).toBe(true);
  });

  it('an idle connection that had input long ago does not hold a busy one back', () => {
    const s = new SharedInput();
    const idle = {};
    const busy = {};
    s.note(idle, 0);
    s.note(busy, 5);
    for (let t = 5; t < 8; t += 0.03) s.note(busy, t);
    expect(s.alone(8)).toBe(true);
  });
});
