// xorshift32: the tests' deterministic PRNG (the simulator seeds one per scenario, so a run replays).

/** Numbers in [0, 1) from a 32-bit xorshift state seeded with `seed` (0 counts as 1). */
export function xorshift32(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x / 0x100000000;
  };
}
