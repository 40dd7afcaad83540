"""Export stage: interface from the spec, dynamic batch, reset inside the graph, parity, bad files."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx.reference
import pytest
import torch

from rnnpolicy.encoding import ObsEncoding
from rnnpolicy.export import export_checkpoint, graph_inputs, graph_outputs, load_onnx_policy, verify_export, zero_state
from rnnpolicy.export.cli import add_export_arguments, add_verify_arguments, run_export, run_verify
from rnnpolicy.export.exporter import ExportReport
from rnnpolicy.export.onnx_export import export_onnx
from rnnpolicy.export import feed_runner
from rnnpolicy.export.step_module import PolicyStep, step_module
from rnnpolicy.export.torchscript import load_torchscript
from rnnpolicy.spec import SPEC_METADATA_KEY, ActionSpec, ObsNormSpec, PolicySpec
from rnnpolicy.train.checkpoint import save_checkpoint
from rnnpolicy.train.models import RecurrentState, build_model

OBS_DIM = 6
DISCRETE = ActionSpec("discrete", n=4)
BOX = ActionSpec("box", shape=(2,), low=(-1.0, -0.5), high=(1.0, 0.5))

# name -> (kind, cell, action, num_cores)
CASES = {
    "q-lstm": ("q", "lstm", DISCRETE, 1),
    "q-gru": ("q", "gru", DISCRETE, 1),
    "discrete-lstm-2cores": ("policy", "lstm", DISCRETE, 2),
    "continuous-gru": ("policy", "gru", BOX, 1),
    "continuous-lstm-2cores": ("policy", "lstm", BOX, 2),
    "discrete-ff": ("policy", "ff", DISCRETE, 1),
}


def make_spec(kind: str, cell: str, action: ActionSpec, num_cores: int, num_layers: int = 2) -> PolicySpec:
    return PolicySpec(
        kind=kind,  # type: ignore[arg-type]
        cell=cell,  # type: ignore[arg-type]
        num_layers=num_layers,
        hidden_size=16,
        obs_encoding=ObsEncoding.flat(OBS_DIM),
        action=action,
        num_cores=num_cores,
        obs_norm=ObsNormSpec(mean=tuple(np.linspace(-0.5, 0.5, OBS_DIM)), var=tuple(np.linspace(0.5, 2.0, OBS_DIM))),
    )


def make_checkpoint(path: Path, spec: PolicySpec, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = build_model(spec)
    with torch.no_grad():  # larger heads than the init's gain 0.01, so actions are far from ties
        for p in model.parameters():
            p.mul_(3.0)
    return save_checkpoint(path, spec, model, {"seed": seed})


@pytest.fixture(scope="module", params=list(CASES))
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> ExportReport:
    root = tmp_path_factory.mktemp(request.param)
    checkpoint = make_checkpoint(root / "run" / "checkpoint.pt", make_spec(*CASES[request.param]))
    return export_checkpoint(checkpoint, root / "export")


@pytest.fixture(scope="module")
def gru_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("gru") / "checkpoint.pt", make_spec("q", "gru", DISCRETE, 1))


def _random_inputs(spec: PolicySpec, batch: int, seed: int = 1, start: float = 0.0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feed = {
        "obs": rng.standard_normal((batch, spec.obs_dim), dtype=np.float32),
        "episode_start": np.full(batch, start, dtype=np.float32),
    }
    feed.update({k: rng.standard_normal(v.shape, dtype=np.float32) for k, v in zero_state(spec, batch).items()})
    return feed


def test_export_writes_files_and_passes_parity(exported: ExportReport) -> None:
    for path in (exported.onnx_path, exported.torchscript_path, exported.spec_path, exported.verify_path):
        assert path.is_file() and path.stat().st_size > 0
    assert exported.seconds < 10.0
    assert exported.verify is not None and exported.verify.passed, exported.verify.failures
    record = json.loads(exported.verify_path.read_text())
    assert record["status"] == "passed" and record["batch_sizes"] == [1, 3, 64] and record["steps"] >= 200
    assert record["episode_starts"] > 0
    assert set(record["runtimes"]["onnxruntime"]["max_abs_diff"]) == set(exported.spec.output_names)
    assert PolicySpec.from_json(exported.spec_path.read_text()) == exported.spec
    summary = exported.summary()
    assert "state_h float32" in summary and "model.onnx" in summary and "passed" in summary


def test_interface_matches_spec(exported: ExportReport) -> None:
    spec = exported.spec
    session, onnx_spec = load_onnx_policy(exported.onnx_path)
    assert onnx_spec == spec
    assert [i.name for i in session.get_inputs()] == list(spec.input_names)
    assert [o.name for o in session.get_outputs()] == list(spec.output_names)
    module, ts_spec = load_torchscript(exported.torchscript_path)
    assert ts_spec == spec
    batch = 5
    feed = _random_inputs(spec, batch)
    outputs = session.run(None, feed)
    ts_outputs = module(*(torch.from_numpy(feed[n]) for n in spec.input_names))
    assert len(ts_outputs) == len(outputs)
    for info, out, ts_out in zip(graph_outputs(spec), outputs, ts_outputs):
        expected = tuple(batch if d == "batch" else d for d in info.shape)
        assert out.shape == expected and out.dtype == np.dtype(info.dtype), info
        assert tuple(ts_out.shape) == expected
    for info, value in zip(graph_inputs(spec), session.get_inputs()):
        assert len(value.shape) == len(info.shape)


def test_dynamic_batch(exported: ExportReport) -> None:
    session, spec = load_onnx_policy(exported.onnx_path)
    module, _ = load_torchscript(exported.torchscript_path)
    full = _random_inputs(spec, 130)
    full_out = session.run(None, full)
    for batch in (1, 2, 130):
        rows = {
            k: (v[:, :batch] if k.startswith("state") else v[:batch]) for k, v in full.items()
        }
        out = session.run(None, rows)
        ts_out = module(*(torch.from_numpy(rows[n]) for n in spec.input_names))
        for name, a, b, c in zip(spec.output_names, out, full_out, ts_out):
            b = b[:, :batch] if name.startswith("next_state") else b[:batch]
            np.testing.assert_allclose(a, b, atol=1e-5, err_msg=f"{name} at batch {batch}")
            np.testing.assert_allclose(c.numpy(), a, atol=1e-5, err_msg=f"TorchScript {name} at batch {batch}")


def test_feed_runner_equals_session_run_and_still_rejects_bad_feeds(exported: ExportReport) -> None:
    session, spec = load_onnx_policy(exported.onnx_path)
    run = feed_runner(session, spec.output_names[::-1])  # any order the caller asks for
    feed = _random_inputs(spec, 4)
    for fast, checked in zip(run(feed), session.run(list(spec.output_names[::-1]), feed)):
        np.testing.assert_array_equal(fast, checked)
    missing = {k: v for k, v in feed.items() if k != spec.input_names[-1]}
    with pytest.raises(Exception, match=spec.input_names[-1]):
        run(missing)
    with pytest.raises(Exception, match="data type"):
        run({**feed, "obs": feed["obs"].astype(np.float64)})


def test_episode_start_resets_inside_graph(exported: ExportReport) -> None:
    session, spec = load_onnx_policy(exported.onnx_path)
    module, _ = load_torchscript(exported.torchscript_path)
    reset = _random_inputs(spec, 4, start=1.0)  # random state, all rows start an episode
    fresh = {**reset, "episode_start": np.zeros(4, np.float32), **zero_state(spec, 4)}
    for run in (
        lambda feed: session.run(None, feed),
        lambda feed: [t.numpy() for t in module(*(torch.from_numpy(feed[n]) for n in spec.input_names))],
    ):
        for name, a, b in zip(spec.output_names, run(reset), run(fresh)):
            np.testing.assert_allclose(a, b, atol=1e-6, err_msg=name)
    # Only the rows that start are reset.
    mixed = {**reset, "episode_start": np.array([1, 0, 1, 0], np.float32)}
    kept = session.run(None, {**reset, "episode_start": np.zeros(4, np.float32)})
    out = session.run(None, mixed)
    for name, a, b, c in zip(spec.output_names, out, session.run(None, reset), kept):
        rows = (slice(None), [0, 2]) if name.startswith("next_state") else ([0, 2],)
        other = (slice(None), [1, 3]) if name.startswith("next_state") else ([1, 3],)
        np.testing.assert_allclose(a[rows], b[rows], atol=1e-6, err_msg=name)
        np.testing.assert_allclose(a[other], c[other], atol=1e-6, err_msg=name)


def test_onnx_checker_and_reference_evaluator(exported: ExportReport) -> None:
    model = onnx.load(str(exported.onnx_path))
    onnx.checker.check_model(model, full_check=True)
    assert {p.key for p in model.metadata_props} == {SPEC_METADATA_KEY}
    assert all(value.doc_string for value in model.graph.input)
    session, spec = load_onnx_policy(exported.onnx_path)
    feed = _random_inputs(spec, 3)
    feed["episode_start"][1] = 1.0
    reference = onnx.reference.ReferenceEvaluator(model).run(None, feed)
    for name, a, b in zip(spec.output_names, reference, session.run(None, feed)):
        np.testing.assert_allclose(a, b, atol=1e-5, err_msg=name)


class _NoReset(PolicyStep):
    """A GRU step that ignores ``episode_start``: what a graph without the in-graph reset computes."""

    def forward(self, obs: torch.Tensor, episode_start: torch.Tensor, state_h: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self._step(obs, torch.zeros_like(episode_start), RecurrentState(state_h))


class _ResetAfterStep(PolicyStep):
    """A GRU step that zeroes the *next* state at an episode start instead of the incoming one."""

    def forward(self, obs: torch.Tensor, episode_start: torch.Tensor, state_h: torch.Tensor) -> tuple[torch.Tensor, ...]:
        *heads, next_h = self._step(obs, torch.zeros_like(episode_start), RecurrentState(state_h))
        return (*heads, next_h * (1.0 - episode_start).view(1, -1, 1))


class _InvertedReset(PolicyStep):
    """A GRU step with the mask the wrong way round: ``state * episode_start``."""

    def forward(self, obs: torch.Tensor, episode_start: torch.Tensor, state_h: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self._step(obs, 1.0 - episode_start, RecurrentState(state_h))


@pytest.mark.parametrize("broken", [_NoReset, _ResetAfterStep, _InvertedReset])
def test_gru_parity_catches_wrong_reset(broken: type[PolicyStep], gru_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "export"
    report = export_checkpoint(gru_checkpoint, out, verify=False)
    model = step_module(build_model(report.spec)).model
    model.load_state_dict(torch.load(gru_checkpoint, weights_only=True)["state_dict"])
    export_onnx(broken(model.eval()), out / "model.onnx")
    result = verify_export(out, steps=50, batch_sizes=(3,))
    assert not result.passed
    assert any(f.startswith("onnxruntime: next_state_h") for f in result.failures), result.failures
    assert not any(f.startswith("torchscript") for f in result.failures)
    assert json.loads((out / "verify.json").read_text())["status"] == "failed"


def test_cli_export_no_verify_then_verify(gru_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    add_export_arguments(parser)
    args = parser.parse_args([str(gru_checkpoint), "--out", str(tmp_path / "e"), "--no-verify", "--opset", "18"])
    assert run_export(args) == 0
    printed = capsys.readouterr().out
    assert "inputs:  obs float32 [batch, 6]" in printed and "skipped" in printed
    assert json.loads((tmp_path / "e" / "verify.json").read_text())["status"] == "skipped"
    assert onnx.load(str(tmp_path / "e" / "model.onnx")).opset_import[0].version == 18
    parser = argparse.ArgumentParser()
    add_verify_arguments(parser)
    assert run_verify(parser.parse_args([str(tmp_path / "e"), "--steps", "20"])) == 0  # recorded checkpoint
    assert "passed" in capsys.readouterr().out


def test_cli_verify_fails_with_nonzero_exit(gru_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = export_checkpoint(gru_checkpoint, tmp_path, verify=False)
    model = step_module(build_model(report.spec)).model
    model.load_state_dict(torch.load(gru_checkpoint, weights_only=True)["state_dict"])
    export_onnx(_NoReset(model.eval()), tmp_path / "model.onnx")
    parser = argparse.ArgumentParser()
    add_verify_arguments(parser)
    assert run_verify(parser.parse_args([str(tmp_path), "--steps", "50"])) == 1
    err = capsys.readouterr().err
    assert "rnnpolicy verify: error: exported files disagree with the PyTorch model: onnxruntime:" in err
    assert "next_state_h differs" in err and "verify.json" in err


def test_bad_input_errors(gru_checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="checkpoint .*missing.pt' does not exist"):
        export_checkpoint(tmp_path / "missing.pt", tmp_path / "e")
    with pytest.raises(ValueError, match="opset must be between 9 and 21, got 5"):
        export_checkpoint(gru_checkpoint, tmp_path / "e", opset=5, verify=False)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="garbage.onnx' is not a loadable ONNX model"):
        load_onnx_policy(garbage)
    with pytest.raises(ValueError, match="garbage.onnx' is not a loadable TorchScript model"):
        load_torchscript(garbage)
    with pytest.raises(ValueError, match="threads must be >= 1, got 0"):
        load_onnx_policy(garbage, threads=0)


def test_foreign_and_mismatched_files(gru_checkpoint: Path, tmp_path: Path) -> None:
    export_checkpoint(gru_checkpoint, tmp_path / "e", verify=False)
    model = onnx.load(str(tmp_path / "e" / "model.onnx"))
    del model.metadata_props[:]
    onnx.save(model, str(tmp_path / "plain.onnx"))
    with pytest.raises(ValueError, match="plain.onnx' has no 'rnnpolicy.spec' metadata"):
        load_onnx_policy(tmp_path / "plain.onnx")
    # A spec that promises an LSTM for a GRU graph.
    spec = json.loads((tmp_path / "e" / "spec.json").read_text())
    onnx.helper.set_model_props(model, {SPEC_METADATA_KEY: json.dumps({**spec, "cell": "lstm"})})
    onnx.save(model, str(tmp_path / "lying.onnx"))
    with pytest.raises(ValueError, match="lying.onnx'.*do not match its spec"):
        load_onnx_policy(tmp_path / "lying.onnx")
    # Another policy's checkpoint.
    other = make_checkpoint(tmp_path / "other.pt", make_spec("q", "lstm", DISCRETE, 1))
    with pytest.raises(ValueError, match="other.pt' does not match .*spec.json'"):
        verify_export(tmp_path / "e", other)
    # The recorded checkpoint overwritten after export.
    make_checkpoint(tmp_path / "moved.pt", make_spec("q", "gru", DISCRETE, 1), seed=1)
    copy = tmp_path / "copy.pt"
    copy.write_bytes(gru_checkpoint.read_bytes())
    export_checkpoint(copy, tmp_path / "e2", verify=False)
    copy.write_bytes((tmp_path / "moved.pt").read_bytes())
    with pytest.raises(ValueError, match="copy.pt' has changed since this export"):
        verify_export(tmp_path / "e2")
    (tmp_path / "e2" / "verify.json").unlink()
    with pytest.raises(ValueError, match="records no checkpoint; pass the checkpoint explicitly"):
        verify_export(tmp_path / "e2")
    with pytest.raises(ValueError, match="spec.json' does not exist: is .* an export directory"):
        verify_export(tmp_path, gru_checkpoint)


def test_package_import_is_torch_free() -> None:
    code = (
        "import sys, rnnpolicy.export, rnnpolicy.export.runtime, rnnpolicy.export.cli;"
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
