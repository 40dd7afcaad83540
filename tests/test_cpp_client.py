"""The C++ control loop (clients/cpp) builds with CMake against the wheel's libtorch, runs the
AOTInductor package carrying the state itself, and acts as Python onnxruntime does."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import require_tools
from rnnpolicy.export import ExportReport, load_onnx_policy, zero_state
from rnnpolicy.spec import ACTION, VALUE

pytestmark = pytest.mark.cpp

CPP_DIR = Path(__file__).resolve().parents[1] / "clients" / "cpp"
SUMMARY = re.compile(r"policy_loop: (\d+) steps at (.+?): step latency p50 ([\d.]+) us, p99 ([\d.]+) us, max ([\d.]+) us; (\d+) overruns")


@pytest.fixture(scope="session")
def policy_loop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``clients/cpp`` configured and built in a temporary directory, as the README says (once per session)."""
    import torch

    require_tools("cmake", "make", "g++")
    build = tmp_path_factory.mktemp("cpp_build")
    configure = ["cmake", "-S", str(CPP_DIR), "-B", str(build), f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}"]
    for command in (configure, ["cmake", "--build", str(build), "-j", "2"]):
        result = subprocess.run(command, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return build / "policy_loop"


def _rollout(obs_dim: int, steps: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Observations ``(T, obs_dim)`` and episode starts ``(T,)``: one at step 0 and two in the middle."""
    rng = np.random.default_rng(seed)
    obs = 2.0 * rng.standard_normal((steps, obs_dim), dtype=np.float32)
    starts = np.zeros(steps, np.float32)
    starts[[0, steps // 3, 2 * steps // 3 + 1]] = 1.0
    return obs, starts


def _input_text(obs: np.ndarray, starts: np.ndarray) -> str:
    lines = ["# episode_start obs..."]
    lines += [" ".join([f"{s:g}", *(repr(float(x)) for x in row)]) for s, row in zip(starts, obs)]
    return "\n".join(lines) + "\n"


def _onnxruntime_steps(model: Path, obs: np.ndarray, starts: np.ndarray) -> list[dict[str, np.ndarray]]:
    session, spec = load_onnx_policy(model)
    state = zero_state(spec, 1)
    steps = []
    for t in range(len(obs)):
        feed = {"obs": obs[t : t + 1], "episode_start": starts[t : t + 1], **state}
        outputs = dict(zip(spec.output_names, session.run(None, feed)))
        state = {name: outputs["next_" + name] for name in state}
        steps.append(outputs)
    return steps


def _run(binary: Path, *args: str, stdin: str | None = None, tmpdir: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = None if tmpdir is None else {**os.environ, "TMPDIR": str(tmpdir)}
    return subprocess.run([str(binary), *args], input=stdin, capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.parametrize("name", ["lstm-discrete", "gru-box"])
def test_cpp_actions_equal_onnxruntime(name: str, policy_loop: Path, aot_exports: dict[str, ExportReport], tmp_path: Path) -> None:
    _assert_cpp_equals_onnxruntime(aot_exports[name], policy_loop, tmp_path)


@pytest.mark.slow
def test_cpp_lmu_actions_equal_onnxruntime(policy_loop: Path, lmu_aot_export: ExportReport, tmp_path: Path) -> None:
    """The LMU's step compiles, and the program sizes its two state tensors (widths 12 and 10) from the package."""
    assert [tensor.hidden for tensor in lmu_aot_export.spec.state_tensors] == [12, 10]
    _assert_cpp_equals_onnxruntime(lmu_aot_export, policy_loop, tmp_path)


def _assert_cpp_equals_onnxruntime(report: ExportReport, policy_loop: Path, tmp_path: Path) -> None:
    spec = report.spec
    obs, starts = _rollout(spec.obs_dim, steps=90, seed=7)
    inputs = tmp_path / "inputs.txt"
    inputs.write_text(_input_text(obs, starts))
    result = _run(policy_loop, str(report.aoti_path), "--input", str(inputs))
    assert result.returncode == 0, result.stderr
    printed = [json.loads(line) for line in result.stdout.splitlines()]
    expected = _onnxruntime_steps(report.onnx_path, obs, starts)
    assert [p["step"] for p in printed] == list(range(len(obs)))
    for t, (cpp, ref) in enumerate(zip(printed, expected)):
        if spec.action.is_discrete:
            assert cpp["action"] == int(ref[ACTION][0]), f"step {t}"
        else:
            np.testing.assert_allclose(cpp["action"], ref[ACTION][0], atol=1e-4, err_msg=f"step {t}")
        assert abs(cpp["value"] - float(ref[VALUE][0])) <= 1e-4, f"step {t}"
    if spec.action.is_discrete:  # the inputs are not degenerate: the policy changes its mind
        assert len({p["action"] for p in printed}) > 1
    summary = SUMMARY.search(result.stderr)
    assert summary, result.stderr
    assert summary.group(1) == "90" and summary.group(2) == "full speed" and summary.group(6) == "0"
    p50, p99, most = map(float, summary.group(3, 4, 5))
    assert 0 < p50 <= p99 <= most


def test_cpp_state_is_carried_and_reset(policy_loop: Path, aot_exports: dict[str, ExportReport]) -> None:
    """Two episodes of the same observations give the same values only because the start resets the state."""
    report = aot_exports["lstm-discrete"]
    obs, _ = _rollout(report.spec.obs_dim, steps=12, seed=3)
    twice = np.concatenate([obs, obs])
    starts = np.zeros(24, np.float32)
    starts[[0, 12]] = 1.0
    values = [json.loads(line)["value"] for line in _run(policy_loop, str(report.aoti_path), stdin=_input_text(twice, starts)).stdout.splitlines()]
    assert values[:12] == values[12:]
    starts[12] = 0.0  # no reset: the second pass starts from the first pass's state
    carried = [json.loads(line)["value"] for line in _run(policy_loop, str(report.aoti_path), stdin=_input_text(twice, starts)).stdout.splitlines()]
    assert carried[:12] == values[:12] and carried[12:] != values[12:]


def test_cpp_fixed_rate_from_stdin(policy_loop: Path, aot_exports: dict[str, ExportReport]) -> None:
    report = aot_exports["gru-box"]
    obs, starts = _rollout(report.spec.obs_dim, steps=20, seed=1)
    started = time.perf_counter()
    result = _run(policy_loop, str(report.aoti_path), "--hz", "100", "--input", "-", stdin=_input_text(obs, starts))
    elapsed = time.perf_counter() - started
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 20
    summary = SUMMARY.search(result.stderr)
    assert summary and summary.group(1) == "20" and summary.group(2) == "100 Hz", result.stderr
    assert elapsed >= 19 / 100  # 20 ticks 10 ms apart: the loop waits for each


def test_cpp_bad_input_and_arguments(policy_loop: Path, aot_exports: dict[str, ExportReport], tmp_path: Path) -> None:
    model = str(aot_exports["gru-box"].aoti_path)
    cases = [
        ((model,), "1 0.5 0.5 0.5\n0 0.5 0.5\n", "line 2: expected 1 + 3 numbers (episode_start, then the observation), got 3"),
        ((model,), "1 0.5 abc 0.5\n", "line 1: 'abc' is not a number"),
        ((model,), "2 0.5 0.5 0.5\n", "line 1: episode_start must be 0 or 1, got 2"),
        ((model, "--hz", "-5"), "", "--hz must be >= 0 (0: as fast as possible), got -5"),
        ((model, "--threads", "x"), "", "--threads needs a number, got x"),
        ((model, "--input", str(tmp_path / "missing.txt")), "", "cannot read input file"),
        ((str(aot_exports["gru-box"].onnx_path),), "", "cannot load AOTInductor package"),
        ((), "", "no model given; usage: policy_loop MODEL.aoti.pt2"),
    ]
    extracted = tmp_path / "tmp"  # where the package loader unpacks the model while it runs
    extracted.mkdir()
    for args, stdin, message in cases:
        result = _run(policy_loop, *args, stdin=stdin, tmpdir=extracted)
        assert result.returncode == 2, (args, result.stderr)
        assert "policy_loop: error: " + message in result.stderr, (args, result.stderr)
        assert "terminate called" not in result.stderr
        assert not list(extracted.iterdir()), f"{args}: the extracted model was left behind"
