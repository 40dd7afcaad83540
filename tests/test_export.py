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
from rnnpolicy.export.pt2 import aoti_metadata, export_program, load_aoti, load_program
from rnnpolicy.export.step_module import PolicyStep, step_module
from rnnpolicy.export.torchscript import load_torchscript
from rnnpolicy.spec import SPEC_METADATA_KEY, ActionSpec, LmuSpec, ObsNormSpec, PolicySpec
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
    "continuous-lmu-2cores": ("policy", "lmu", BOX, 2),
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
        lmu=LmuSpec(order=5, theta=6.0, memory_inputs=2) if cell == "lmu" else None,
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
    assert exported.files == (exported.onnx_path, exported.program_path, exported.spec_path, exported.verify_path)
    for path in exported.files:
        assert path.is_file() and path.stat().st_size > 0
    assert not exported.torchscript_path.exists() and not exported.aoti_path.exists()  # both opt-in
    assert exported.verify is not None and exported.verify.passed, exported.verify.failures
    record = json.loads(exported.verify_path.read_text())
    assert record["status"] == "passed" and record["batch_sizes"] == [1, 3, 64] and record["steps"] >= 200
    assert record["episode_starts"] > 0
    assert list(record["runtimes"]) == ["onnxruntime", "torch.export"]
    for parity in record["runtimes"].values():
        assert set(parity["max_abs_diff"]) == set(exported.spec.output_names)
    assert PolicySpec.from_json(exported.spec_path.read_text()) == exported.spec
    summary = exported.summary()
    assert "state_h float32" in summary and "model.onnx" in summary and "passed" in summary


def test_interface_matches_spec(exported: ExportReport) -> None:
    spec = exported.spec
    session, onnx_spec = load_onnx_policy(exported.onnx_path)
    assert onnx_spec == spec
    assert [i.name for i in session.get_inputs()] == list(spec.input_names)
    assert [o.name for o in session.get_outputs()] == list(spec.output_names)
    module, program_spec = load_program(exported.program_path)
    assert program_spec == spec
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
    module, _ = load_program(exported.program_path)
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
            np.testing.assert_allclose(c.numpy(), a, atol=1e-5, err_msg=f"torch.export {name} at batch {batch}")


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
    module, _ = load_program(exported.program_path)
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
    assert not any(f.startswith("torch.export") for f in result.failures)
    assert json.loads((out / "verify.json").read_text())["status"] == "failed"


def test_verify_catches_a_wrong_or_foreign_program(gru_checkpoint: Path, tmp_path: Path) -> None:
    report = export_checkpoint(gru_checkpoint, tmp_path / "e", verify=False)
    model = step_module(build_model(report.spec)).model
    model.load_state_dict(torch.load(gru_checkpoint, weights_only=True)["state_dict"])
    export_program(_NoReset(model.eval()), tmp_path / "e" / "model.pt2")
    result = verify_export(tmp_path / "e", steps=50, batch_sizes=(3,))
    assert any(f.startswith("torch.export: next_state_h") for f in result.failures), result.failures
    assert not any(f.startswith("onnxruntime") for f in result.failures)
    other = make_checkpoint(tmp_path / "other.pt", make_spec("q", "lstm", DISCRETE, 1))
    export_checkpoint(other, tmp_path / "o", verify=False)
    (tmp_path / "e" / "model.pt2").write_bytes((tmp_path / "o" / "model.pt2").read_bytes())
    with pytest.raises(ValueError, match="'model.pt2' does not match .*spec.json'"):
        verify_export(tmp_path / "e")


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
    with pytest.raises(ValueError, match="garbage.onnx' is not a loadable torch.export program"):
        load_program(garbage)
    with pytest.raises(ValueError, match="garbage.onnx' is not a loadable AOTInductor package"):
        load_aoti(garbage)
    with pytest.raises(ValueError, match="torch.export program .*missing.pt2' does not exist"):
        load_program(tmp_path / "missing.pt2")
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


def test_default_cli_export_prints_no_warning(gru_checkpoint: Path, tmp_path: Path) -> None:
    """No deprecation (or any other) warning reaches the user of a default export: stderr stays empty."""
    rnnpolicy = Path(sys.executable).with_name("rnnpolicy")
    result = subprocess.run(
        [str(rnnpolicy), "export", str(gru_checkpoint), "--out", str(tmp_path / "e")],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert "model.pt2" in result.stdout and "model.ts" not in result.stdout


def test_export_raises_no_warning_in_process(gru_checkpoint: Path, tmp_path: Path) -> None:
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        export_checkpoint(gru_checkpoint, tmp_path / "e", verify=False)
    assert [str(w.message) for w in caught] == []


def test_torchscript_is_opt_in_verified_and_stale_files_go(gru_checkpoint: Path, tmp_path: Path) -> None:
    report = export_checkpoint(gru_checkpoint, tmp_path, torchscript=True)
    assert report.torchscript_path in report.files and report.torchscript_path.is_file()
    assert report.verify is not None and report.verify.passed, report.verify.failures
    assert list(report.verify.runtimes) == ["onnxruntime", "torch.export", "torchscript"]
    assert "TorchScript, which PyTorch has deprecated" in report.summary()
    module, spec = load_torchscript(report.torchscript_path)
    assert spec == report.spec
    again = export_checkpoint(gru_checkpoint, tmp_path)  # without --torchscript: the old model.ts would be stale
    assert not again.torchscript_path.exists()
    assert again.verify is not None and list(again.verify.runtimes) == ["onnxruntime", "torch.export"]
    assert "deprecated" not in again.summary()


def test_cli_export_flags() -> None:
    parser = argparse.ArgumentParser()
    add_export_arguments(parser)
    args = parser.parse_args(["c.pt", "--out", "e"])
    assert (args.aot, args.torchscript) == (False, False)
    args = parser.parse_args(["c.pt", "--out", "e", "--aot", "--torchscript"])
    assert (args.aot, args.torchscript) == (True, True)
    assert "deprecated" in parser.format_help()


def test_aot_without_compiler_is_a_clear_error(gru_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch._inductor.config  # noqa: F401  (it reads $CXX once, on import: not while the fake one is set)

    monkeypatch.setenv("CXX", "no-such-compiler")
    with pytest.raises(ValueError, match="needs a C\\+\\+ compiler, but 'no-such-compiler' was not found"):
        export_checkpoint(gru_checkpoint, tmp_path, aot=True, verify=False)


def test_program_loads_with_plain_torch_export(exported: ExportReport) -> None:
    """``model.pt2`` is an ordinary torch.export archive: ``torch.export.load`` reads it and its spec."""
    extra = {"spec.json": ""}
    program = torch.export.load(str(exported.program_path), extra_files=extra)
    assert PolicySpec.from_json(extra["spec.json"]) == exported.spec
    assert tuple(program.graph_signature.user_inputs) == exported.spec.input_names
    assert len(program.graph_signature.user_outputs) == len(exported.spec.output_names)


@pytest.mark.cpp
@pytest.mark.parametrize("name", ["lstm-discrete", "gru-box"])
def test_aot_package_passes_parity(name: str, aot_exports: dict[str, ExportReport]) -> None:
    report = aot_exports[name]
    assert report.aoti_path in report.files and report.aot_seconds is not None
    assert report.verify is not None and report.verify.passed, report.verify.failures
    record = json.loads(report.verify_path.read_text())
    assert list(record["runtimes"]) == ["onnxruntime", "torch.export", "aotinductor"]
    assert record["batch_sizes"] == [1, 3, 64] and record["episode_starts"] > 0
    assert record["runtimes"]["aotinductor"]["action_mismatches"] == 0
    assert "AOTInductor compile" in report.summary() and "model.aoti.pt2" in report.summary()


@pytest.mark.cpp
def test_aot_package_metadata_and_dynamic_batch(aot_exports: dict[str, ExportReport]) -> None:
    report = aot_exports["lstm-discrete"]
    compiled, spec = load_aoti(report.aoti_path)
    assert spec == report.spec
    metadata = compiled.get_metadata()
    for key, value in aoti_metadata(spec).items():
        assert metadata[key] == value
    assert metadata["rnnpolicy.state_shapes"] == "4x16,4x16"  # 2 layers x 2 cores, 16 units
    assert metadata["rnnpolicy.input_names"] == "obs,episode_start,state_h,state_c"
    session, _ = load_onnx_policy(report.onnx_path)
    for batch in (1, 2, 130):
        feed = _random_inputs(spec, batch, seed=batch)
        feed["episode_start"][::2] = 1.0
        expected = session.run(None, feed)
        outputs = compiled(*(torch.from_numpy(feed[n]) for n in spec.input_names))
        for name, a, b in zip(spec.output_names, outputs, expected):
            np.testing.assert_allclose(a.numpy(), b, atol=1e-5, err_msg=f"{name} at batch {batch}")
