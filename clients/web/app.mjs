// The page: load the export's spec.json and model.onnx, run the built-in task with the policy in
// the browser (onnxruntime-web, single-threaded wasm), draw each step, expose what happened.
//
// `rnnpolicy web EXPORT_DIR` serves this folder with config.json (the task and seed), the export's
// files under export/ and onnxruntime-web's dist/ under ort/. URL parameters override the config:
// ?seed=N (the first episode's seed; later episodes continue its generator, as gymnasium's
// reset() does), ?speed=S (steps per second), ?autoplay=0 (start paused). Keys: space pauses or
// plays, the right arrow steps, r restarts.
//
// window.rnnpolicy (and data-status / data-steps on <body>) exposes the run for tests and tools:
// status ("loading", "ready", "error"), error, envId, spec, trace (one entry per model step:
// episode, t, obs, episode_start, action, outputs (every output but the next state), reward,
// terminated, truncated), episodes (return, steps, success), state (the state after the last
// step, one flat array per state tensor), busy (a step is under way; pausing lets it finish) and
// phase ("step": the next tick steps the policy; "reset": it starts the next episode). trace and
// episodes keep their last TRACE_LIMIT entries.
import { drawHead, drawHeatmap, drawTask } from "./draw.mjs";
import { encodeObservation } from "./encoding.mjs";
import { makeEnv } from "./envs.mjs";
import { PolicyRunner } from "./policy.mjs";

const ort = globalThis.ort;
const TRACE_LIMIT = 100_000;
const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);

const run = {
  status: "loading",
  error: null,
  envId: null,
  spec: null,
  trace: [],
  episodes: [],
  state: null,
  get busy() {
    return busy;
  },
  get phase() {
    return phase;
  },
};
window.rnnpolicy = run;

let env, runner, seed, obs, episodeStart, phase, lastAction, outcome, history, episodeReturn, lastOutputs;
let episodesDone = 0;
let successes = 0;
let speed = 4; // steps per second while playing
let playing = false;
let busy = false;
let timer = null;

main().catch((err) => fail(err));

async function main() {
  if (!ort) throw new Error("onnxruntime-web did not load (ort/ort.wasm.min.js); is it installed? See `rnnpolicy web --help`.");
  // Single-threaded wasm (no SharedArrayBuffer, so no special headers); files from this server.
  ort.env.wasm.numThreads = 1;
  ort.env.wasm.wasmPaths = new URL("ort/", location.href).href;

  const config = await fetchJson("config.json");
  const spec = await fetchJson(config.spec_url);
  run.spec = spec;
  run.envId = config.env_id;
  env = makeEnv(config.env_id);
  checkCompatible(spec, env, config.env_id);
  runner = await PolicyRunner.load(ort, new URL(config.model_url, location.href).href, spec);

  $("title").textContent = `${config.title} · ${spec.kind === "q" ? "Q-network" : "actor-critic"} · ${spec.cell.toUpperCase()} ${spec.num_layers}×${spec.hidden_size}`;
  $("task-name").textContent = config.env_id;
  seed = Number(params.get("seed") ?? config.seed);
  $("seed").value = String(seed);
  speed = Number(params.get("speed") ?? config.speed);
  $("speed").value = String(Math.min(Number($("speed").max), speed));
  $("speed-value").textContent = String(speed);
  wireControls();
  restart();
  setStatus("ready");
  if ((params.get("autoplay") ?? "1") !== "0") play();
  else render();
}

function checkCompatible(spec, env, envId) {
  if (spec.obs_encoding.flat_dim !== env.obsDim) {
    throw new Error(`the policy takes observations of ${spec.obs_encoding.flat_dim} values, ${envId} gives ${env.obsDim}`);
  }
  if (spec.action.kind !== "discrete" || spec.action.n !== env.numActions) {
    throw new Error(`the policy's action space (${spec.action.kind}, n=${spec.action.n}) is not ${envId}'s (discrete, n=${env.numActions})`);
  }
}

function wireControls() {
  const togglePlay = () => (playing ? pause() : play());
  const stepOnce = async () => {
    pause();
    await idle(); // a step under way when paused finishes first; this click then takes one more
    await tick();
  };
  const restartFromSeed = async () => {
    await idle();
    seed = Math.max(0, Math.floor(Number($("seed").value) || 0));
    restart();
  };
  $("play").addEventListener("click", togglePlay);
  $("step").addEventListener("click", stepOnce);
  $("restart").addEventListener("click", restartFromSeed);
  $("speed").addEventListener("input", () => {
    speed = Number($("speed").value);
    $("speed-value").textContent = String(speed);
  });
  document.addEventListener("keydown", (event) => {
    if (event.target instanceof HTMLInputElement || event.repeat) return;
    const action = { " ": togglePlay, ArrowRight: stepOnce, r: restartFromSeed }[event.key];
    if (action) {
      event.preventDefault();
      action();
    }
  });
  for (const id of ["play", "step", "restart"]) $(id).disabled = false;
}

/** Back to the first episode of `seed`, with a fresh state and an empty trace. */
function restart() {
  run.trace = [];
  run.episodes = [];
  run.state = null;
  episodesDone = 0;
  successes = 0;
  startEpisode(seed);
}

function startEpisode(episodeSeed) {
  ({ obs } = env.reset(episodeSeed === undefined ? {} : { seed: episodeSeed }));
  episodeStart = true; // the graph zeroes the state at this observation
  phase = "step";
  lastAction = null;
  outcome = null;
  history = [];
  episodeReturn = 0;
  lastOutputs = null;
  render();
}

/** One tick: a model step and an environment step, or, after an episode ended, the next episode's start. */
async function tick() {
  if (busy || run.status !== "ready") return;
  busy = true;
  try {
    if (phase === "reset") {
      startEpisode(undefined);
      return;
    }
    const encoded = encodeObservation(run.spec.obs_encoding, obs);
    const { action, outputs } = await runner.step(encoded, episodeStart);
    for (const name of Object.keys(runner.state)) delete outputs[`next_${name}`]; // the state is in run.state
    const before = obs;
    const result = env.step(action);
    run.state = Object.fromEntries(Object.entries(runner.state).map(([name, t]) => [name, Array.from(t.data)]));
    if (run.trace.length >= TRACE_LIMIT) run.trace.shift();
    run.trace.push({
      episode: episodesDone,
      t: history.length,
      obs: Array.from(before),
      episode_start: episodeStart,
      action,
      outputs,
      reward: result.reward,
      terminated: result.terminated,
      truncated: result.truncated,
    });
    history.push(Object.fromEntries(Object.entries(runner.state).map(([name, t]) => [name, Float32Array.from(t.data)])));
    episodeStart = false;
    obs = result.obs;
    lastAction = action;
    lastOutputs = outputs;
    episodeReturn += result.reward;
    if (result.terminated || result.truncated) {
      const success = Boolean(result.info.is_success);
      if (run.episodes.length >= TRACE_LIMIT) run.episodes.shift();
      run.episodes.push({ return: episodeReturn, steps: history.length, success });
      episodesDone += 1;
      successes += success ? 1 : 0;
      outcome = result.truncated ? "timeout" : success ? "success" : "failure";
      phase = "reset";
    }
    render();
  } catch (err) {
    fail(err);
  } finally {
    busy = false;
  }
}

function play() {
  playing = true;
  $("play").textContent = "Pause";
  const generation = (timer = {});
  const loop = async () => {
    if (!playing || timer !== generation) return;
    await tick();
    setTimeout(loop, 1000 / speed);
  };
  loop();
}

/** Resolves once no step is under way. */
async function idle() {
  while (busy) await new Promise((resolve) => setTimeout(resolve, 5));
}

function pause() {
  playing = false;
  timer = null;
  $("play").textContent = "Play";
}

function render() {
  const spec = run.spec;
  drawTask($("task"), env, outcome, lastAction);
  drawHeatmap($("heatmap"), spec.state_tensors.map((s) => s.name), history, env.maxSteps);
  const headName = spec.kind === "q" ? "q_values" : "logits";
  drawHead($("head"), headName, lastOutputs?.[headName], env.actionNames, lastAction);
  $("stat-episode").textContent = `${episodesDone + (phase === "reset" ? 0 : 1)} (seed ${seed})`;
  $("stat-step").textContent = `${history.length} / ${env.maxSteps}`;
  $("stat-return").textContent = episodeReturn.toFixed(2);
  $("stat-action").textContent = lastAction === null ? "-" : env.actionNames[lastAction];
  $("stat-success").textContent = episodesDone ? `${successes} of ${episodesDone} episodes` : "-";
  document.body.dataset.steps = String(run.trace.length);
}

function setStatus(status) {
  run.status = status;
  document.body.dataset.status = status;
}

function fail(err) {
  pause();
  run.error = String(err?.message ?? err);
  setStatus("error");
  $("error").textContent = `error: ${run.error}`;
  $("error").hidden = false;
  console.error(err);
}

async function fetchJson(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`cannot load ${url}: HTTP ${response.status}`);
  return response.json();
}
