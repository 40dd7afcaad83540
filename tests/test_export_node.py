"""The Node.js embedding example runs an episode and picks the same actions as Python onnxruntime."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from rnnpolicy.export import export_checkpoint, load_onnx_policy, zero_state
from rnnpolicy.spec import ACTION, ActionSpec
from test_export import BOX, DISCRETE, make_checkpoint, make_spec
from components import require
from rollout import env_rollout, first_episode

NODE_DIR = Path(__file__).resolve().parents[1] / "clients" / "node"
SCRIPT = NODE_DIR / "run_episode.mjs"


def _node_skip_reason() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed (needs Node.js >= 18)"
    if not (NODE_DIR / "node_modules" / "onnxruntime-node").is_dir():
        return f"onnxruntime-node is not installed: cd {NODE_DIR} && ONNXRUNTIME_NODE_INSTALL=skip npm install"
    return None


@pytest.fixture(autouse=True)
def node() -> None:
    require(_node_skip_reason())


def _python_actions(model: Path, obs: np.ndarray, starts: np.ndarray) -> list[np.ndarray]:
    session, spec = load_onnx_policy(model)
    state = zero_state(spec, obs.shape[1])
    actions = []
    for t in range(obs.shape[0]):
        outputs = dict(zip(spec.output_names, session.run(None, {"obs": obs[t], "episode_start": starts[t], **state})))
        state = {name: outputs["next_" + name] for name in state}
        actions.append(outputs[ACTION])
    return actions


@pytest.mark.parametrize("cell, action", [("lstm", DISCRETE), ("gru", BOX), ("lmu", DISCRETE)])
def test_node_example_matches_python(cell: str, action: ActionSpec, tmp_path: Path) -> None:
    kind = "q" if action.is_discrete else "policy"
    checkpoint = make_checkpoint(tmp_path / "checkpoint.pt", make_spec(kind, cell, action, 1))
    report = export_checkpoint(checkpoint, tmp_path / "export", verify=False)
    rng = np.random.default_rng(7)
    steps, batch = 40, 3
    obs = rng.standard_normal((steps, batch, report.spec.obs_dim), dtype=np.float32)
    starts = np.zeros((steps, batch), dtype=np.float32)
    starts[0] = 1.0
    starts[[12, 25, 31], [0, 1, 2]] = 1.0  # episodes restarting mid-run, row by row
    inputs = tmp_path / "inputs.json"
    inputs.write_text(json.dumps({"obs": obs.tolist(), "episode_start": starts.tolist()}))

    result = subprocess.run(
        ["node", str(SCRIPT), str(report.onnx_path), str(inputs)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["step"] for line in lines] == list(range(steps))
    for t, (line, expected) in enumerate(zip(lines, _python_actions(report.onnx_path, obs, starts))):
        if action.is_discrete:
            assert line["action"] == expected.tolist(), f"step {t}"
        else:
            np.testing.assert_allclose(np.array(line["action"]), expected, atol=1e-5, err_msg=f"step {t}")


def test_node_example_demo_episode(tmp_path: Path) -> None:
    checkpoint = make_checkpoint(tmp_path / "checkpoint.pt", make_spec("q", "lstm", DISCRETE, 1))
    report = export_checkpoint(checkpoint, tmp_path / "export", verify=False)
    result = subprocess.run(["node", str(SCRIPT), str(report.onnx_path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == 20 and all(len(line["action"]) == 1 for line in lines)


def test_readme_node_loop_runs_and_matches_python(serve_export_dirs, tmp_path: Path) -> None:
    """The README's Node.js block, saved in clients/node/ as it says (here: a copy whose node_modules and ../web link there)."""
    readme = (NODE_DIR.parents[1] / "README.md").read_text()
    block = re.search(r"### JavaScript \(Node\.js\)\n.*?```js\n(.*?)```", readme, re.S).group(1)
    export_dir = serve_export_dirs["tmaze"]
    (tmp_path / "node").mkdir()
    (tmp_path / "node" / "node_modules").symlink_to(NODE_DIR / "node_modules")
    (tmp_path / "web").symlink_to(NODE_DIR.parent / "web")
    script = tmp_path / "node" / "loop.mjs"
    script.write_text(block.replace("runs/tmaze-ppo/export", str(export_dir)))
    result = subprocess.run(["node", str(script)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    success, steps = first_episode(env_rollout(export_dir, "rnnpolicy/TMaze-v0", seed=0, steps=40)[0])
    assert result.stdout == f"success: {str(success).lower()} after {steps} steps\n"
