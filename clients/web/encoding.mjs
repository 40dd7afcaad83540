// Observation encoding as spec.json's "obs_encoding" records it (rnnpolicy.encoding.ObsEncoding):
// Box parts flattened, Discrete and MultiDiscrete parts one-hot, Tuple/Dict parts walked along
// each part's "path" (Dict keys, Tuple indices). The result is the model's `obs` row.

/** Encode one raw observation to a Float32Array of length `encoding.flat_dim`. */
export function encodeObservation(encoding, obs) {
  const out = new Float32Array(encoding.flat_dim);
  let offset = 0;
  for (const part of encoding.parts) {
    const name = part.path.join("/") || "<root>";
    let leaf = obs;
    for (const key of part.path) {
      if (leaf === null || typeof leaf !== "object" || !(key in leaf)) {
        throw new Error(`observation has no part ${name}`);
      }
      leaf = leaf[key];
    }
    const values = flatten(leaf);
    if (part.kind === "box") {
      const width = part.shape.reduce((a, b) => a * b, 1);
      if (values.length !== width) throw new Error(`observation part ${name} has ${values.length} values, expected ${width}`);
      out.set(values, offset);
      offset += width;
      continue;
    }
    if (values.length !== part.nvec.length) {
      throw new Error(`observation part ${name} has ${values.length} discrete entries, expected ${part.nvec.length}`);
    }
    part.nvec.forEach((n, j) => {
      const index = values[j] - part.start[j];
      if (!Number.isInteger(index) || index < 0 || index >= n) {
        throw new Error(`observation part ${name} entry ${j} must lie in [${part.start[j]}, ${part.start[j] + n - 1}], got ${values[j]}`);
      }
      out[offset + index] = 1;
      offset += n;
    });
  }
  return out;
}

function flatten(value) {
  if (typeof value === "number" || typeof value === "boolean") return [Number(value)];
  if (typeof value === "bigint") return [Number(value)];
  return Array.from(value, (v) => flatten(v)).flat();
}
