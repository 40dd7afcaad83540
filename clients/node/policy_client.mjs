// Step one episode of a served rnnpolicy model over gRPC (rnnpolicy.v1.PolicyService).
//
//   node clients/node/policy_client.mjs --target HOST:PORT [--model NAME] [--steps N]
//       [--obs-json FILE] [--seed S] [--token-file FILE | --token TOKEN] [--ca CA.pem [--cert CERT.pem --key KEY.pem]]
//       [--timeout-ms MS]
//
// It calls ListModels, CreateSession (--model, or empty: the server's only model), then Step
// once per observation, then CloseSession, and prints ONE JSON object on stdout:
//   {"session_id", "model", "model_version",
//    "steps": [{"seq", "action" (an int for discrete actions, a list of ints for multi_discrete and
//               multi_binary ones, a list of floats for box), "value" (or null)}]}
//
// Observations: --obs-json is a JSON list of lists of numbers, one encoded observation per
// step (N = its length). Without it, N = --steps (default 20) observations come from this
// LCG seeded by --seed (default 0), each of the model's obs_shape length:
//   s = seed mod 2^32;  per value: s = (1664525 * s + 1013904223) mod 2^32;  x = s / 2^32 * 2 - 1
// (values in [-1, 1), drawn step by step, element by element).
//
// seq / episode_start: the server keeps the session's recurrent state. seq is 1 on the first
// step and grows by one per step (a uint64, kept as a decimal string here, never a lossy JS
// number); resending the last seq returns the cached answer without advancing the state, any
// other seq is FAILED_PRECONDITION. episode_start is true on the first step only: it zeroes the
// state before that observation. Steps are deterministic (greedy actions).
//
// The token (--token-file FILE holding it alone, else --token, else $RNNPOLICY_TOKEN, as
// `rnnpolicy play` reads it) is sent as `authorization: Bearer TOKEN` metadata on every call, and
// the session id as `x-session-id` metadata on every call on the session (Step, CloseSession), as
// every rnnpolicy client does, so that a proxy can route a session's calls to one replica. --ca uses TLS with that
// root certificate (mutual TLS with --cert and --key); without it the channel is insecure.
// Errors: a failed call prints `error: <RPC>: <STATUS>: <details>` on stderr and exits 2; so
// does a bad argument (`error: ...`). Each call has a deadline of --timeout-ms (default 10000).
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";

// stderr carries one line per failure: no Node deprecation notices (e.g. DEP0123, which grpc-js
// triggers by passing an IP-address target as the TLS server name).
process.noDeprecation = true;

const PROTO = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "protos", "rnnpolicy", "v1", "policy.proto");
const USAGE = `usage: node policy_client.mjs --target HOST:PORT [--model NAME] [--steps N | --obs-json FILE]
       [--seed S] [--token-file FILE | --token TOKEN] [--ca CA.pem [--cert CERT.pem --key KEY.pem]] [--timeout-ms MS]`;
const STATUS_NAMES = Object.fromEntries(Object.entries(grpc.status).map(([name, code]) => [code, name]));

/** Print one line on stderr and exit 2: bad arguments and failed calls alike. */
function fail(message) {
  console.error(`error: ${message}`.replace(/\s*\n\s*/g, " ").trim());
  process.exit(2);
}

function parseOptions(argv) {
  const options = {
    target: { type: "string" }, model: { type: "string" }, steps: { type: "string" }, "obs-json": { type: "string" },
    seed: { type: "string" }, token: { type: "string" }, "token-file": { type: "string" }, ca: { type: "string" }, cert: { type: "string" },
    key: { type: "string" }, "timeout-ms": { type: "string" }, help: { type: "boolean", short: "h" },
  };
  let values;
  try {
    ({ values } = parseArgs({ args: argv, options, strict: true, allowPositionals: false }));
  } catch (err) {
    fail(err.message);
  }
  if (values.help) {
    console.log(USAGE);
    process.exit(0);
  }
  const integer = (name, fallback, min, max) => {
    if (values[name] === undefined) return fallback;
    const n = /^[0-9]+$/.test(values[name]) ? Number(values[name]) : NaN;
    if (!Number.isSafeInteger(n) || n < min || n > max) fail(`--${name} must be an integer in [${min}, ${max}], got ${values[name]}`);
    return n;
  };
  if (!values.target) fail("--target HOST:PORT is required");
  if (values.steps !== undefined && values["obs-json"] !== undefined) fail("give --steps or --obs-json, not both");
  if ((values.cert === undefined) !== (values.key === undefined)) fail("--cert and --key go together");
  if (values.cert !== undefined && values.ca === undefined) fail("--cert/--key need --ca");
  if (values.token !== undefined && values["token-file"] !== undefined) fail("give --token-file or --token, not both");
  const token = values["token-file"] !== undefined ? readFile(values["token-file"]).toString().trim()
    : values.token ?? process.env.RNNPOLICY_TOKEN;
  return {
    target: values.target, model: values.model ?? "", token: token || undefined,
    steps: integer("steps", 20, 1, 1e9),
    seed: integer("seed", 0, 0, Number.MAX_SAFE_INTEGER),
    timeoutMs: integer("timeout-ms", 10000, 1, 1e9),
    obs: values["obs-json"] === undefined ? null : readObservations(values["obs-json"]),
    tls: values.ca === undefined ? null : { ca: readFile(values.ca), cert: values.cert && readFile(values.cert), key: values.key && readFile(values.key) },
  };
}

function readFile(path) {
  try {
    return readFileSync(path);
  } catch (err) {
    return fail(`cannot read ${path}: ${err.message}`);
  }
}

function readObservations(path) {
  let obs;
  try {
    obs = JSON.parse(readFile(path).toString("utf8"));
  } catch (err) {
    fail(`${path} is not JSON: ${err.message}`);
  }
  const ok = Array.isArray(obs) && obs.length > 0
    && obs.every((row) => Array.isArray(row) && row.every((x) => typeof x === "number" && Number.isFinite(x)));
  if (!ok) fail(`${path} must hold a non-empty JSON list of lists of finite numbers, one observation per step`);
  return obs;
}

/** The documented LCG: `steps` observations of `dim` values in [-1, 1). */
function lcgObservations(seed, steps, dim) {
  let s = seed % 2 ** 32;
  const next = () => {
    s = (Math.imul(1664525, s) + 1013904223) >>> 0; // exact mod 2^32
    return (s / 2 ** 32) * 2 - 1;
  };
  return Array.from({ length: steps }, () => Array.from({ length: dim }, next));
}

/** A promise-returning caller that attaches the token and a deadline to every call, and the session id
 * (`x-session-id`, for proxies that route sessions) to every call on a session. */
function makeCaller(client, { token, timeoutMs }) {
  return (rpc, request, sessionId) => new Promise((resolve, reject) => {
    const metadata = new grpc.Metadata();
    if (token !== undefined) metadata.set("authorization", `Bearer ${token}`);
    if (sessionId !== undefined) metadata.set("x-session-id", sessionId);
    client[rpc](request, metadata, { deadline: Date.now() + timeoutMs }, (err, response) => {
      if (err) {
        err.rpc = rpc;
        reject(err);
      } else resolve(response);
    });
  });
}

/** An error in the shape grpc-js rejects calls with, for a failure found in an answer. */
function callError(rpc, code, details) {
  return Object.assign(new Error(details), { rpc, code, details });
}

async function runEpisode(call, opts) {
  await call("ListModels", {});
  const created = await call("CreateSession", { model: opts.model });
  const sessionId = created.session_id;
  const model = created.model;
  const kind = model.action?.kind;
  // int64 fields arrive as decimal strings (longs: String); action indices fit a JS number.
  const action = (r) =>
    kind === "discrete" ? Number(r.discrete_action)
      : kind === "multi_discrete" || kind === "multi_binary" ? r.multi_action.map(Number)
      : r.continuous_action;
  const obsDim = model.obs_shape.reduce((a, b) => a * Number(b), 1);
  const observations = opts.obs ?? lcgObservations(opts.seed, opts.steps, obsDim);
  const steps = [];
  try {
    let seq = 0n; // the last applied seq (uint64)
    for (const [t, obs] of observations.entries()) {
      seq += 1n;
      const response = await call("Step", {
        session_id: sessionId, seq: seq.toString(), obs, episode_start: t === 0, deterministic: true,
      }, sessionId);
      if (response.error) throw callError("Step", response.error.code, response.error.message);
      if (BigInt(response.seq) !== seq) throw callError("Step", grpc.status.INTERNAL, `answered seq ${response.seq} to seq ${seq}`);
      steps.push({
        seq: Number(response.seq),
        action: action(response),
        value: response._value === "value" ? response.value : null,
      });
    }
  } finally {
    // Free the server's slot even when a step failed; a second error must not hide the first.
    await call("CloseSession", { session_id: sessionId }, sessionId).catch((err) => {
      if (steps.length === observations.length) throw err;
    });
  }
  return { session_id: sessionId, model: model.name, model_version: model.version, steps };
}

const opts = parseOptions(process.argv.slice(2));
const definition = protoLoader.loadSync(PROTO, { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true });
const { PolicyService } = grpc.loadPackageDefinition(definition).rnnpolicy.v1;
let credentials = grpc.credentials.createInsecure();
if (opts.tls) {
  try {
    credentials = grpc.credentials.createSsl(opts.tls.ca, opts.tls.key || null, opts.tls.cert || null);
  } catch (err) {
    fail(`--ca/--cert/--key: not a usable PEM certificate or key: ${err.message}`);
  }
}
const client = new PolicyService(opts.target, credentials);
try {
  const result = await runEpisode(makeCaller(client, opts), opts);
  console.log(JSON.stringify(result));
} catch (err) {
  if (err.rpc === undefined) throw err; // a bug here, not a failed call: keep the stack trace
  fail(`${err.rpc}: ${STATUS_NAMES[err.code] ?? err.code}: ${err.details ?? err.message}`);
} finally {
  client.close();
}
