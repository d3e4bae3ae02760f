import { describe, expect, it } from 'vitest';
import { TokenBucket } from '../../../src/mirror/resync.js';
import { ManualScheduler } from '../../../src/mirror/scheduler.js';

const settle = async (n = 3) => {
  for (let i = 0; i < n; i++) await new Promise((r) => setImmediate(r));
};

describe('token bucket', () => {
  it('unlimited (0) never waits', async () => {
    const s = new ManualScheduler();
    const b = new TokenBucket(s, 0);
    await b.take(1e9);
    expect(s.pendingTimers()).toBe(0);
  });

  it('limits to rate * elapsed time, and a rate change applies to a waiting taker', async () => {
    const s = new ManualScheduler();
    const b = new TokenBucket(s, 1000); // 1000 B/s
    let done = 0;
    const loop = (async () => {
      for (let i = 0; i < 10; i++) {
        await b.take(100);
        done++;
      }
    })();
    await settle();
    expect(done).toBe(0); // no credit at t=0 (burst starts empty)
    for (let t = 0; t < 500; t += 10) {
      s.advance(10);
      await settle(2);
    }
    // 500 ms at 1000 B/s = 500 B = 5 takes of 100 (tolerance: one take, timer granularity)
    expect(done).toBeGreaterThanOrEqual(4);
    expect(done).toBeLessThanOrEqual(5);
    b.setRate(0);
    s.advance(100); // wake the sleeper; from now on unlimited
    await loop;
    expect(done).toBe(10);
  });
});
