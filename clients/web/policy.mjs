// One exported policy step at a time, carrying the recurrent state: the loop of docs/export.md,
// for any onnxruntime JavaScript package (`ort`: onnxruntime-web in the page, onnxruntime-node in Node).

/** Zero state tensors for every state input of the spec: {state_h, [state_c | state_m]}, each [layers, batch, width]. */
export function zeroState(ort, spec, batch = 1) {
  return Object.fromEntries(
    spec.state_tensors.map(({ name, shape: [layers, , width] }) => [
      name,
      new ort.Tensor("float32", new Float32Array(layers * batch * width), [layers, batch, width]),
    ]),
  );
}

/** A session of one exported policy and the state of one episode stream (batch 1). */
export class PolicyRunner {
  constructor(ort, session, spec) {
    if (spec.action.kind !== "discrete") {
      throw new Error(`the page runs policies with discrete actions, this one has a ${spec.action.kind} action space`);
    }
    this.ort = ort;
    this.session = session;
    this.spec = spec;
    this.state = zeroState(ort, spec);
  }

  /** Load `modelUrl` (a URL or path) single-threaded; `spec` is the export's spec.json. */
  static async load(ort, modelUrl, spec) {
    const session = await ort.InferenceSession.create(modelUrl, { executionProviders: ["wasm"], graphOptimizationLevel: "all" });
    return new PolicyRunner(ort, session, spec);
  }

  /**
   * One step: `obs` the encoded observation (Float32Array of spec.obs_encoding.flat_dim), `episodeStart`
   * true at an episode's first observation (the graph zeroes the state). Returns the action (a number),
   * every output as a plain array, and the state after the step.
   */
  async step(obs, episodeStart) {
    const { ort, spec } = this;
    const out = await this.session.run({
      obs: new ort.Tensor("float32", obs, [1, obs.length]),
      episode_start: new ort.Tensor("float32", Float32Array.of(episodeStart ? 1 : 0), [1]),
      ...this.state,
    });
    // Carry the state: this step's next_state_* is the next step's state_*.
    this.state = Object.fromEntries(spec.state_tensors.map(({ name }) => [name, out[`next_${name}`]]));
    const outputs = Object.fromEntries(spec.outputs.map((name) => [name, Array.from(out[name].data, Number)]));
    return { action: outputs.action[0], outputs };
  }
}
