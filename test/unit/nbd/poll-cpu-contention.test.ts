// The idle poll's CPU contention check (src/nbd/server/cpu-contention.ts): the runnable count of a
// /proc/loadavg line minus this thread, a malformed line as unknown (-1), and a live sample that is a
// boolean and is cached for CONTENTION_SAMPLE_MS (a second call in that time does not read again).
import { readFileSync } from 'node:fs';
import { expect, it } from 'vitest';
import { CONTENTION_SAMPLE_MS, cpusContended, runnableOthersOf } from '../../../src/nbd/server/cpu-contention.js';
import { setFastIoForTests, fastIo, type FastIo } from '../../../src/nbd/server/fast-io.js';

it('parses the runnable field of /proc/loadavg, minus this thread', () => {
  expect(runnableOthersOf('0.52 0.58 0.59 3/140 12345\n')).toBe(2);
  expect(runnableOthersOf('6.36 4.53 3.16 1/192 999')).toBe(0);
  expect(runnableOthersOf('garbage')).toBe(-1);
  expect(runnableOthersOf('1 2 3 x/5 6')).toBe(-1);
  expect(runnableOthersOf('')).toBe(-1);
});

it.skipIf(process.platform !== 'linux' || fastIo() === null)('samples /proc/loadavg at most every CONTENTION_SAMPLE_MS', () => {
  expect(runnableOthersOf(readFileSync('/proc/loadavg', 'latin1'))).toBeGreaterThanOrEqual(0);
  const real = fastIo()!;
  let reads = 0;
  const counting: FastIo = { ...real, read: (...a) => (reads++, real.read(...a)), write: real.write.bind(real) };
  setFastIoForTests(counting);
  try {
    const t = 1e9; // far from any earlier sample
    expect(typeof cpusContended(t)).toBe('boolean');
    expect(reads).toBe(1);
    cpusContended(t + CONTENTION_SAMPLE_MS / 2);
    expect(reads).toBe(1);
    cpusContended(t + CONTENTION_SAMPLE_MS);
    expect(reads).toBe(2);
  } finally {
    setFastIoForTests(undefined);
  }
});
