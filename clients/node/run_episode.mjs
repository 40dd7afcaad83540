// Run an exported rnnpolicy policy step by step in Node.js, carrying the recurrent state.
//
//   node run_episode.mjs EXPORT_DIR/model.onnx [INPUTS_JSON]
//
// INPUTS_JSON is {"obs": [T][batch][obs_dim], "episode_start": [T][batch]}; without it a
// deterministic 20-step demo episode (batch 1, a new episode at step 10) is made up.
// Prints one JSON line per step: {"step": t, "action": [...one entry per batch row...]}.
import { readFileSync } from "node:fs";
import * as ort from "onnxruntime-node";

const [modelPath, inputsPath] = process.argv.slice(2);
if (!modelPath) {
  console.error("usage: node run_episode.mjs MODEL_ONNX [INPUTS_JSON]");
  process.exit(2);
}

// Low-latency session, as the Python loader sets it up.
const session = await ort.InferenceSession.create(modelPath, {
  intraOpNumThreads: 1,
  executionMode: "sequential",
  graphOptimizationLevel: "all",
}).catch((err) => {
  console.error(`run_episode: error: cannot load ${modelPath}: ${err.message}`);
  process.exit(1);
});
// The file describes itself: obs is [batch, obs_dim], each state input [layers, batch, hidden].
const meta = Object.fromEntries(session.inputMetadata.map((m) => [m.name, m]));
const obsDim = meta.obs.shape[1];
const stateNames = session.inputNames.filter((name) => name.startsWith("state_"));

const inputs = inputsPath ? JSON.parse(readFileSync(inputsPath, "utf8")) : demoEpisode(20, obsDim);
const batch = inputs.obs[0].length;

// An episode starts from the zero state; episode_start = 1 also zeroes a row inside the graph.
let state = Object.fromEntries(
  stateNames.map((name) => {
    const [layers, , hidden] = meta[name].shape;
    return [name, new ort.Tensor("float32", new Float32Array(layers * batch * hidden), [layers, batch, hidden])];
  }),
);

for (let t = 0; t < inputs.obs.length; t++) {
  const out = await session.run({
    obs: new ort.Tensor("float32", Float32Array.from(inputs.obs[t].flat()), [batch, obsDim]),
    episode_start: new ort.Tensor("float32", Float32Array.from(inputs.episode_start[t], Number), [batch]),
    ...state,
  });
  // Carry the state: this step's next_state_* is the next step's state_*.
  state = Object.fromEntries(stateNames.map((name) => [name, out[`next_${name}`]]));
  console.log(JSON.stringify({ step: t, action: rows(out.action) }));
}

/** A tensor as one entry per batch row: a number (discrete) or an array (continuous). */
function rows(tensor) {
  const values = Array.from(tensor.data, Number); // int64 arrives as BigInt
  if (tensor.dims.length === 1) return values;
  const width = tensor.dims[1];
  return Array.from({ length: tensor.dims[0] }, (_, i) => values.slice(i * width, (i + 1) * width));
}

/** A made-up episode: observations in [-1, 1) from a fixed-seed generator, a reset at step T/2. */
function demoEpisode(steps, dim) {
  let seed = 12345;
  const next = () => ((seed = (seed * 1103515245 + 12345) % 2147483648) / 1073741824) - 1;
  return {
    obs: Array.from({ length: steps }, () => [Array.from({ length: dim }, next)]),
    episode_start: Array.from({ length: steps }, (_, t) => [t === 0 || t === steps / 2 ? 1 : 0]),
  };
}
