"""The page's JavaScript ports (clients/web/*.mjs), run under Node, equal the Python originals.

- ``np_random.mjs``: numpy's ``Generator(PCG64(SeedSequence(seed)))``, draw for draw;
- ``envs.mjs``: the T-maze and MemoryGrid give the same observations, rewards and ends as
  ``rnnpolicy.envs`` for the same seeds and actions, over several episodes per seed
  (``reset(seed=...)`` then ``reset()``, as gymnasium does);
- ``encoding.mjs``: the same encoded vector as ``ObsEncoding.encode`` for nested spaces.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from gymnasium import spaces

from rnnpolicy.encoding import ObsEncoding
from rnnpolicy.envs import make_env
from components import require

WEB_DIR = Path(__file__).resolve().parents[1] / "clients" / "web"




@pytest.fixture(autouse=True)
def node() -> None:
    require(None if shutil.which("node") else "node is not installed (needs Node.js >= 18)")

# Reads {"kind": ..., ...} cases as JSON on stdin, answers one JSON list on stdout.
DRIVER = """
import { readFileSync } from "node:fs";
const web = process.argv[1];
const { NumpyGenerator } = await import(`${web}/np_random.mjs`);
const { makeEnv } = await import(`${web}/envs.mjs`);
const { encodeObservation } = await import(`${web}/encoding.mjs`);
const cases = JSON.parse(readFileSync(0, "utf8"));
const answers = cases.map((c) => {
  if (c.kind === "rng") {
    const g = new NumpyGenerator(BigInt(c.seed));
    return c.draws.map(([what, n]) => (what === "random" ? g.random() : g.integers(n)));
  }
  if (c.kind === "env") {
    const env = makeEnv(c.env_id);
    const steps = [];
    let { obs } = env.reset({ seed: c.seed });
    steps.push({ reset: Array.from(obs) });
    for (const action of c.actions) {
      const r = env.step(action);
      steps.push({ obs: Array.from(r.obs), reward: r.reward, terminated: r.terminated, truncated: r.truncated,
                   success: r.info.is_success ?? null });
      if (r.terminated || r.truncated) steps.push({ reset: Array.from(env.reset().obs) });
    }
    return steps;
  }
  return Array.from(encodeObservation(c.encoding, c.obs));
});
console.log(JSON.stringify(answers));
"""


def _run_node(cases: list[dict]) -> list:
    result = subprocess.run(["node", "--input-type=module", "-e", DRIVER, str(WEB_DIR)], input=json.dumps(cases),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


RNG_SEEDS = [0, 1, 7, 42, 12345, 2**31 - 1, 2**32 - 1, 2**32, 2**40 + 3, 2**64 + 17]
RNG_DRAWS = [("random", 0), ("integers", 4), ("integers", 4), ("integers", 3), ("random", 0), ("integers", 1000),
             ("integers", 3_000_000_001), ("integers", 2**32), ("integers", 1), ("integers", 7), ("random", 0)] * 5


def test_numpy_generator_port_draws_what_numpy_draws() -> None:
    answers = _run_node([{"kind": "rng", "seed": str(seed), "draws": RNG_DRAWS} for seed in RNG_SEEDS])
    for seed, got in zip(RNG_SEEDS, answers):
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed)))
        expected = [rng.random() if what == "random" else int(rng.integers(n)) for what, n in RNG_DRAWS]
        assert got == expected, f"seed {seed}"


def _python_episodes(env_id: str, seed: int, actions: list[int]) -> list[dict]:
    env = make_env(env_id).unwrapped  # the bare environment, as the port (no TimeLimit or checker wrappers)
    obs, _ = env.reset(seed=seed)
    steps: list[dict] = [{"reset": obs.tolist()}]
    for action in actions:
        obs, reward, terminated, truncated, info = env.step(action)
        steps.append({"obs": obs.tolist(), "reward": float(reward), "terminated": terminated, "truncated": truncated,
                      "success": info.get("is_success")})
        if terminated or truncated:
            steps.append({"reset": env.reset()[0].tolist()})
    return steps


def _actions(env_id: str, seed: int, count: int) -> list[int]:
    rng = np.random.default_rng(1000 + seed)
    if env_id == "rnnpolicy/TMaze-v0":  # mostly forward, so that episodes reach the junction and turn
        return rng.choice(3, size=count, p=[0.8, 0.1, 0.1]).tolist()
    return rng.integers(4, size=count).tolist()


@pytest.mark.parametrize("env_id", ["rnnpolicy/TMaze-v0", "rnnpolicy/MemoryGrid-v0"])
def test_env_port_gives_python_observations_rewards_and_ends(env_id: str) -> None:
    seeds = list(range(12)) + [2**32 + 1]
    cases = [{"kind": "env", "env_id": env_id, "seed": seed, "actions": _actions(env_id, seed, 200)} for seed in seeds]
    answers = _run_node(cases)
    outcomes = set()
    for case, got in zip(cases, answers):
        expected = _python_episodes(env_id, case["seed"], case["actions"])
        assert got == expected, f"{env_id} seed {case['seed']}"
        outcomes.update((s["terminated"], s["truncated"], s["success"]) for s in expected if "reward" in s)
        outcomes.update(("first obs", tuple(s["reset"][:4])) for s in expected if "reset" in s)
    # Not vacuous: both kinds of end, successes and failures, and every cue were compared.
    assert {(True, False, True), (True, False, False)} <= outcomes
    assert (False, True, False) in outcomes
    cues = {o[1] for o in outcomes if o[0] == "first obs"}
    assert len(cues) == (2 if env_id == "rnnpolicy/TMaze-v0" else 4), cues


def test_env_port_refuses_bad_actions_and_unknown_ids() -> None:
    script = f"""
    const {{ makeEnv }} = await import("{WEB_DIR}/envs.mjs");
    const errors = [];
    for (const [id, action] of [["rnnpolicy/TMaze-v0", 3], ["rnnpolicy/MemoryGrid-v0", -1]]) {{
      const env = makeEnv(id); env.reset({{ seed: 0 }});
      try {{ env.step(action); }} catch (err) {{ errors.push(err.message); }}
    }}
    try {{ makeEnv("CartPole-v1"); }} catch (err) {{ errors.push(err.message); }}
    console.log(JSON.stringify(errors));
    """
    result = subprocess.run(["node", "--input-type=module", "-e", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [
        "T-maze action must be 0, 1 or 2, got 3",
        "MemoryGrid action must be in [0, 4), got -1",
        'no JavaScript port of environment "CartPole-v1"; ported: rnnpolicy/TMaze-v0, rnnpolicy/MemoryGrid-v0',
    ]


def test_encoding_port_matches_python_for_nested_spaces() -> None:
    space = spaces.Dict({
        "pos": spaces.Box(-1.0, 1.0, shape=(2, 3), dtype=np.float32),
        "mode": spaces.Discrete(3, start=2),
        "flags": spaces.MultiBinary(4),
        "pair": spaces.Tuple((spaces.MultiDiscrete([3, 5]), spaces.Box(0.0, 1.0, shape=(1,), dtype=np.float32))),
    })
    space.seed(3)
    encoding = ObsEncoding.from_space(space)
    samples = [space.sample() for _ in range(20)]

    def to_json(obs):
        if isinstance(obs, dict):
            return {k: to_json(v) for k, v in obs.items()}
        if isinstance(obs, tuple):
            return [to_json(v) for v in obs]
        return np.asarray(obs).tolist()

    answers = _run_node([{"kind": "encode", "encoding": encoding.to_dict(), "obs": to_json(s)} for s in samples])
    for sample, got in zip(samples, answers):
        assert got == encoding.encode(sample).tolist()
