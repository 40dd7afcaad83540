// The built-in memory tasks, ported from rnnpolicy.envs (core/envs/tmaze.py, core/envs/memory_grid.py).
//
// Same observations, rewards and episode ends as the Python environments for the same seeds and
// actions: `reset({seed})` seeds numpy's generator exactly as gymnasium does, and `reset()`
// without a seed continues from it. tests/test_web_envs.py checks this under Node.
//
// Each env: reset({seed} = {}) -> {obs, info}; step(action) -> {obs, reward, terminated, truncated, info};
// obs is a Float32Array, as the Python environments' float32 arrays.
import { NumpyGenerator } from "./np_random.mjs";

class SeededEnv {
  constructor() {
    this.npRandom = null;
  }

  /** gymnasium's `Env.reset(seed=...)`: a seed makes a new generator; no seed keeps the current one. */
  seed(seed) {
    if (seed !== undefined && seed !== null) {
      this.npRandom = new NumpyGenerator(seed);
    } else if (this.npRandom === null) {
      const words = crypto.getRandomValues(new Uint32Array(2));
      this.npRandom = new NumpyGenerator(BigInt(words[0]) | (BigInt(words[1]) << 32n));
    }
  }
}

export const TMAZE_FORWARD = 0;
export const TMAZE_LEFT = 1;
export const TMAZE_RIGHT = 2;

/** T-maze: walk a corridor, then turn the way the first observation's cue said (see tmaze.py). */
export class TMaze extends SeededEnv {
  static id = "rnnpolicy/TMaze-v0";

  constructor({ corridorLength = 10 } = {}) {
    super();
    if (!Number.isInteger(corridorLength) || corridorLength < 1) {
      throw new RangeError(`corridorLength must be an integer >= 1, got ${corridorLength}`);
    }
    this.corridorLength = corridorLength;
    this.obsDim = 4;
    this.numActions = 3;
    this.actionNames = ["forward", "left", "right"];
    this.maxSteps = 2 * corridorLength + 10;
    this.t = 0;
    this.position = 0;
    this.goal = TMAZE_LEFT;
  }

  obs(showCue) {
    const obs = new Float32Array(4);
    if (showCue) obs[this.goal === TMAZE_LEFT ? 0 : 1] = 1;
    obs[this.position === this.corridorLength ? 3 : 2] = 1;
    return obs;
  }

  reset({ seed } = {}) {
    this.seed(seed);
    this.position = 0;
    this.t = 0;
    this.goal = this.npRandom.random() < 0.5 ? TMAZE_LEFT : TMAZE_RIGHT;
    return { obs: this.obs(true), info: {} };
  }

  step(action) {
    if (![TMAZE_FORWARD, TMAZE_LEFT, TMAZE_RIGHT].includes(action)) {
      throw new RangeError(`T-maze action must be 0, 1 or 2, got ${action}`);
    }
    this.t += 1;
    const atJunction = this.position === this.corridorLength;
    if (!atJunction || action === TMAZE_FORWARD) {
      if (action === TMAZE_FORWARD && !atJunction) this.position += 1;
      if (this.t >= this.maxSteps) {
        return { obs: this.obs(false), reward: 0, terminated: false, truncated: true, info: { is_success: false } };
      }
      return { obs: this.obs(false), reward: 0, terminated: false, truncated: false, info: {} };
    }
    const success = action === this.goal;
    return { obs: this.obs(false), reward: success ? 1 : -0.1, terminated: true, truncated: false, info: { is_success: success } };
  }
}

const GRID_MOVES = [[0, -1], [0, 1], [-1, 0], [1, 0]]; // up, down, left, right as [dx, dy]

/** MemoryGrid: find the goal corner shown only at the first step (see memory_grid.py). */
export class MemoryGrid extends SeededEnv {
  static id = "rnnpolicy/MemoryGrid-v0";

  constructor({ size = 5, waitSteps = 2 } = {}) {
    super();
    if (!Number.isInteger(size) || size < 3 || size % 2 === 0) {
      throw new RangeError(`grid size must be an odd number >= 3, got ${size}`);
    }
    if (!Number.isInteger(waitSteps) || waitSteps < 0) throw new RangeError(`waitSteps must be >= 0, got ${waitSteps}`);
    this.size = size;
    this.waitSteps = waitSteps;
    this.maxSteps = 4 * size + waitSteps;
    this.obsDim = 15;
    this.numActions = 4;
    this.actionNames = ["up", "down", "left", "right"];
    const last = size - 1;
    this.corners = [[0, 0], [last, 0], [0, last], [last, last]];
    this.goal = 0;
    this.pos = [(size - 1) / 2, (size - 1) / 2];
    this.t = 0;
  }

  obs() {
    const obs = new Float32Array(15);
    if (this.t === 0) obs[this.goal] = 1;
    const scale = (this.size - 1) / 2;
    const [x, y] = this.pos;
    obs[4] = x / scale - 1;
    obs[5] = y / scale - 1;
    let i = 6;
    for (const dy of [-1, 0, 1]) {
      for (const dx of [-1, 0, 1]) {
        const [cx, cy] = [x + dx, y + dy];
        obs[i++] = cx >= 0 && cx < this.size && cy >= 0 && cy < this.size ? 0 : 1;
      }
    }
    return obs;
  }

  reset({ seed } = {}) {
    this.seed(seed);
    this.goal = this.npRandom.integers(4);
    this.pos = [(this.size - 1) / 2, (this.size - 1) / 2];
    this.t = 0;
    return { obs: this.obs(), info: {} };
  }

  step(action) {
    if (!Number.isInteger(action) || action < 0 || action >= 4) {
      throw new RangeError(`MemoryGrid action must be in [0, 4), got ${action}`);
    }
    const [dx, dy] = this.t >= this.waitSteps ? GRID_MOVES[action] : [0, 0];
    const clamp = (v) => Math.min(Math.max(v, 0), this.size - 1);
    this.pos = [clamp(this.pos[0] + dx), clamp(this.pos[1] + dy)];
    this.t += 1;
    const obs = this.obs();
    const corner = this.corners.findIndex(([cx, cy]) => cx === this.pos[0] && cy === this.pos[1]);
    if (corner >= 0) {
      const success = corner === this.goal;
      return { obs, reward: success ? 1 : 0, terminated: true, truncated: false, info: { is_success: success } };
    }
    const truncated = this.t >= this.maxSteps;
    return { obs, reward: -0.01, terminated: false, truncated, info: truncated ? { is_success: false } : {} };
  }
}

/** The ported environments by gymnasium id. */
export const ENVS = { [TMaze.id]: TMaze, [MemoryGrid.id]: MemoryGrid };

/** A new environment for a gymnasium id; an error names the ids the page can run. */
export function makeEnv(envId, options = {}) {
  const Env = ENVS[envId];
  if (!Env) throw new Error(`no JavaScript port of environment ${JSON.stringify(envId)}; ported: ${Object.keys(ENVS).join(", ")}`);
  return new Env(options);
}
