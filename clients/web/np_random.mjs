// numpy's default random generator, ported exactly: gymnasium seeds every environment with
// `np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed)))`, so an environment ported
// to JavaScript on top of this draws the same episodes as the Python one for the same seed.
//
// Only what the built-in tasks use: SeedSequence (seed -> 128-bit PCG64 state and increment),
// PCG64 (XSL-RR output), Generator.random() and Generator.integers(n).

const MASK32 = 0xffffffffn;
const MASK64 = (1n << 64n) - 1n;
const MASK128 = (1n << 128n) - 1n;
const PCG64_MULTIPLIER = 0x2360ed051fc65da44385df649fccf645n;

// SeedSequence constants (numpy/random/bit_generator.pyx, after O'Neill's seed_seq_fe).
const POOL_SIZE = 4;
const INIT_A = 0x43b0d7e5;
const MULT_A = 0x931e8875;
const INIT_B = 0x8b51f9dd;
const MULT_B = 0x58f38ded;
const MIX_MULT_L = 0xca01f9dd;
const MIX_MULT_R = 0x4973f715;
const XSHIFT = 16;

/** An integer seed as numpy's little-endian uint32 words (0 gives [0]). */
function seedWords(seed) {
  let n = BigInt(seed);
  if (n < 0n) throw new RangeError(`seed must be a non-negative integer, got ${seed}`);
  const words = [];
  do {
    words.push(Number(n & MASK32));
    n >>= 32n;
  } while (n > 0n);
  return words;
}

/** `np.random.SeedSequence(seed).generate_state(nWords, np.uint32)`. */
export function seedSequenceState(seed, nWords) {
  const entropy = seedWords(seed);
  const pool = new Array(POOL_SIZE).fill(0);
  let hashConst = INIT_A;
  const hashmix = (value) => {
    value = (value ^ hashConst) >>> 0;
    hashConst = Math.imul(hashConst, MULT_A) >>> 0;
    value = Math.imul(value, hashConst) >>> 0;
    return (value ^ (value >>> XSHIFT)) >>> 0;
  };
  const mix = (x, y) => {
    const result = (Math.imul(MIX_MULT_L, x) - Math.imul(MIX_MULT_R, y)) >>> 0;
    return (result ^ (result >>> XSHIFT)) >>> 0;
  };
  for (let i = 0; i < POOL_SIZE; i++) pool[i] = hashmix(i < entropy.length ? entropy[i] : 0);
  for (let src = 0; src < POOL_SIZE; src++) {
    for (let dst = 0; dst < POOL_SIZE; dst++) {
      if (src !== dst) pool[dst] = mix(pool[dst], hashmix(pool[src]));
    }
  }
  for (let src = POOL_SIZE; src < entropy.length; src++) {
    for (let dst = 0; dst < POOL_SIZE; dst++) pool[dst] = mix(pool[dst], hashmix(entropy[src]));
  }
  const out = [];
  let hashB = INIT_B;
  for (let i = 0; i < nWords; i++) {
    let value = (pool[i % POOL_SIZE] ^ hashB) >>> 0;
    hashB = Math.imul(hashB, MULT_B) >>> 0;
    value = Math.imul(value, hashB) >>> 0;
    out.push((value ^ (value >>> XSHIFT)) >>> 0);
  }
  return out;
}

/** `np.random.Generator(np.random.PCG64(seed))`: the generator gymnasium's `reset(seed=...)` makes. */
export class NumpyGenerator {
  constructor(seed) {
    // generate_state(4, np.uint64): words 0-1 are the state's high and low halves, 2-3 the stream.
    const w = seedSequenceState(seed, 8).map(BigInt);
    const u64 = (i) => w[2 * i] | (w[2 * i + 1] << 32n);
    const initState = (u64(0) << 64n) | u64(1);
    const initSeq = (u64(2) << 64n) | u64(3);
    this.inc = ((initSeq << 1n) | 1n) & MASK128;
    this.state = 0n;
    this.#advance();
    this.state = (this.state + initState) & MASK128;
    this.#advance();
    this.spareUint32 = null; // PCG64 hands out 32-bit draws as the two halves of one 64-bit draw
  }

  #advance() {
    this.state = (this.state * PCG64_MULTIPLIER + this.inc) & MASK128;
  }

  /** The next 64-bit output as a BigInt. */
  nextUint64() {
    this.#advance();
    const xored = ((this.state >> 64n) ^ this.state) & MASK64;
    const rot = this.state >> 122n;
    return ((xored >> rot) | (xored << ((64n - rot) & 63n))) & MASK64;
  }

  nextUint32() {
    if (this.spareUint32 !== null) {
      const out = this.spareUint32;
      this.spareUint32 = null;
      return out;
    }
    const next = this.nextUint64();
    this.spareUint32 = Number(next >> 32n);
    return Number(next & MASK32);
  }

  /** `Generator.random()`: a double in [0, 1) from the top 53 bits of one 64-bit draw. */
  random() {
    return Number(this.nextUint64() >> 11n) / 9007199254740992;
  }

  /** `Generator.integers(n)` for 1 <= n <= 2**32: Lemire's bounded draw on 32-bit outputs, as numpy does. */
  integers(n) {
    if (!Number.isInteger(n) || n < 1 || n > 2 ** 32) throw new RangeError(`integers(n) needs 1 <= n <= 2**32, got ${n}`);
    if (n === 1) return 0;
    if (n === 2 ** 32) return this.nextUint32();
    const bound = BigInt(n);
    let m = BigInt(this.nextUint32()) * bound;
    let leftover = m & MASK32;
    if (leftover < bound) {
      const threshold = ((1n << 32n) - bound) % bound;
      while (leftover < threshold) {
        m = BigInt(this.nextUint32()) * bound;
        leftover = m & MASK32;
      }
    }
    return Number(m >> 32n);
  }
}
