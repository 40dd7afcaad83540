"""Per-step latency and throughput of an exported policy: onnxruntime vs TorchScript vs eager PyTorch.

    python benchmarks/export_bench.py [--quick]

Q-networks with one recurrent layer of 64, 128 (the target) and 256 LSTM and GRU units, batch
1 and 256, one thread everywhere. Each call feeds the previous call's state back, as a client
does. Medians and ratios come from one run and are written to
benchmarks/results/export_bench.json and .md. Targets: onnxruntime batch-1 step of the 128-unit
LSTM <= 50 us median; export of a small model < 10 s.

Two figures put the onnxruntime times in context: "ort call floor", the same call on a graph
that only copies the same inputs to as many outputs (what onnxruntime's Python call costs
before any kernel runs), the median of each of the 10 rounds, because this VM's vCPUs
change speed by up to 2x for tens of seconds at a time, and the target call made after 0.5 ms
and 20 ms of sleep, as a fixed-rate client makes it (an idle vCPU comes back with cold caches).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import onnxruntime as ort
import torch

from machine import cpu_ticks, loadavg, steal_pct
from rnnpolicy.encoding import ObsEncoding
from rnnpolicy.export.exporter import export_checkpoint
from rnnpolicy.export.runtime import feed_runner, load_onnx_policy, session_options, zero_state
from rnnpolicy.export.step_module import step_module
from rnnpolicy.export.torchscript import load_torchscript
from rnnpolicy.spec import ActionSpec, ObsNormSpec, PolicySpec
from rnnpolicy.train.checkpoint import load_checkpoint, save_checkpoint
from rnnpolicy.train.models import build_model

RESULTS = Path(__file__).resolve().parent / "results"
OBS_DIM = 16
N_ACTIONS = 4
MODELS = (("lstm", 64), ("lstm", 128), ("lstm", 256), ("gru", 64), ("gru", 256))
BATCHES = (1, 256)
TARGET_US = 50.0
TARGET_MODEL = ("lstm", 128, 1)
ISSUE_EAGER_US = 300.0  # the issue's figure for eager PyTorch on this machine, for the same step
IDLE_GAPS_S = (0.0005, 0.02)  # after a stream's round trip; a 50 Hz control loop
ROUNDS = 10

Step = Callable[[np.ndarray, list[Any]], list[Any]]
"""One policy step: ``(obs, state) -> next state``, in a runtime's own array type."""


def _spec(cell: str, hidden: int) -> PolicySpec:
    return PolicySpec(
        kind="q",
        cell=cell,  # type: ignore[arg-type]
        num_layers=1,
        hidden_size=hidden,
        obs_encoding=ObsEncoding.flat(OBS_DIM),
        action=ActionSpec("discrete", n=N_ACTIONS),
        obs_norm=ObsNormSpec(mean=(0.0,) * OBS_DIM, var=(1.0,) * OBS_DIM),
    )


def _passthrough_session(spec: PolicySpec) -> ort.InferenceSession:
    """A graph with ``spec``'s inputs and as many outputs, each a copy of an input: the call floor."""
    inputs = [
        onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, ["batch", OBS_DIM] if name == "obs" else None)
        for name in spec.input_names
    ]
    n_head = len(spec.output_names) - len(spec.state_tensors)
    sources = ["obs"] * n_head + list(spec.input_names[2:])  # next_state_* copy state_*
    outputs = [onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None) for name in spec.output_names]
    nodes = [onnx.helper.make_node("Identity", [src], [dst]) for src, dst in zip(sources, spec.output_names)]
    graph = onnx.helper.make_graph(nodes, "passthrough", inputs, outputs)
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=8)
    return ort.InferenceSession(model.SerializeToString(), session_options(1), providers=["CPUExecutionProvider"])


def _times_us(runs: dict[str, tuple[Step, list[Any]]], obs: np.ndarray, calls: int, rounds: int = ROUNDS) -> dict[str, np.ndarray]:
    """Wall times of single calls of each runtime, ``(rounds, calls // rounds)``, feeding each call's state to the next.

    The runtimes take turns in ``rounds`` blocks, so that load from other processes hits all alike.
    """
    states = {name: state for name, (_, state) in runs.items()}
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, (step, _) in runs.items():
            state = states[name]
            for _ in range(max(10, calls // (5 * rounds))):  # warm-up
                state = step(obs, state)
            for _ in range(calls // rounds):
                start = time.perf_counter()
                state = step(obs, state)
                times[name].append(time.perf_counter() - start)
            states[name] = state
    return {name: np.array(t).reshape(rounds, -1) * 1e6 for name, t in times.items()}


def _after_idle_us(step: Step, obs: np.ndarray, state: list[Any], gap_s: float, calls: int) -> float:
    """Median time of a call made ``gap_s`` seconds after the previous one returned (the thread sleeps between).

    A robot at a fixed rate calls this way; on this VM an idle vCPU comes back with cold caches.
    """
    times = []
    for _ in range(calls):
        time.sleep(gap_s)
        start = time.perf_counter()
        state = step(obs, state)
        times.append(time.perf_counter() - start)
    return round(float(np.median(times)) * 1e6, 1)


def _bench_model(cell: str, hidden: int, workdir: Path, calls: int) -> list[dict[str, Any]]:
    spec = _spec(cell, hidden)
    checkpoint = save_checkpoint(workdir / f"{cell}{hidden}" / "checkpoint.pt", spec, build_model(spec), {})
    started = time.perf_counter()
    report = export_checkpoint(checkpoint, workdir / f"{cell}{hidden}" / "export", verify=False)
    export_s = time.perf_counter() - started
    session, _ = load_onnx_policy(report.onnx_path, threads=1)
    scripted, _ = load_torchscript(report.torchscript_path)
    eager = step_module(load_checkpoint(checkpoint).build())
    n_state = len(spec.state_tensors)
    names = spec.input_names

    def run_onnx(session: ort.InferenceSession) -> Step:
        run_feed = feed_runner(session, spec.output_names)  # as the server calls it

        def run(obs: np.ndarray, state: list[Any]) -> list[Any]:
            start = np.zeros(obs.shape[0], np.float32)
            return run_feed(dict(zip(names, (obs, start, *state))))[-n_state:]

        return run

    def run_torch(module: Callable[..., Any]) -> Step:
        def run(obs: np.ndarray, state: list[Any]) -> list[Any]:
            x = torch.from_numpy(obs)
            return list(module(x, torch.zeros(x.shape[0]), *state)[-n_state:])

        return run

    rows = []
    for batch in BATCHES:
        obs = np.random.default_rng(0).standard_normal((batch, OBS_DIM), dtype=np.float32)
        n = calls if batch == 1 else max(50, calls // 20)
        state_np = list(zero_state(spec, batch).values())
        state_t = [torch.from_numpy(s) for s in state_np]
        runs = {
            "onnxruntime": (run_onnx(session), state_np),
            "ort_call_floor": (run_onnx(_passthrough_session(spec)), state_np),
            "torchscript": (run_torch(scripted), state_t),
            "eager": (run_torch(eager), state_t),
        }
        with torch.inference_mode():
            times = _times_us(runs, obs, n)
        medians = {name: float(np.median(t)) for name, t in times.items()}
        rows.append(
            {
                "cell": cell,
                "hidden": hidden,
                "batch": batch,
                "export_s": round(export_s, 3),
                "median_us": {k: round(v, 1) for k, v in medians.items()},
                "rows_per_s": {k: round(batch / v * 1e6) for k, v in medians.items()},
                "eager_over_onnxruntime": round(medians["eager"] / medians["onnxruntime"], 2),
                "torchscript_over_onnxruntime": round(medians["torchscript"] / medians["onnxruntime"], 2),
                "onnxruntime_round_medians_us": [round(float(np.median(r)), 1) for r in times["onnxruntime"]],
            }
        )
        if (cell, hidden, batch) == TARGET_MODEL:
            rows[-1]["onnxruntime_after_idle_us"] = {
                f"{gap * 1e3:g} ms": _after_idle_us(runs["onnxruntime"][0], obs, state_np, gap, max(20, calls // (10 if gap > 0.01 else 3)))
                for gap in IDLE_GAPS_S
            }
        print(_md_row(rows[-1]), flush=True)
    return rows


def _md_row(r: dict[str, Any]) -> str:
    m, t = r["median_us"], r["rows_per_s"]
    return (
        f"| {r['cell']} {r['hidden']} | {r['batch']} | {m['onnxruntime']:.1f} | {m['ort_call_floor']:.1f} "
        f"| {m['torchscript']:.1f} | {m['eager']:.1f} "
        f"| {r['eager_over_onnxruntime']:.1f}x | {r['torchscript_over_onnxruntime']:.1f}x "
        f"| {t['onnxruntime']:,} | {t['torchscript']:,} | {t['eager']:,} | {r['export_s']:.2f} |"
    )


def _markdown(result: dict[str, Any]) -> str:
    header = (
        "| model | batch | onnxruntime us | ort call floor us | TorchScript us | eager us | eager/ort | TS/ort "
        "| ort rows/s | TS rows/s | eager rows/s | export s |\n|" + "---|" * 12
    )
    target = result["target"]
    return "\n".join(
        [
            "# Export benchmark: per-step latency (median) and throughput",
            "",
            f"`python benchmarks/export_bench.py` on {result['machine']}; torch {result['torch']}, "
            f"onnxruntime {result['onnxruntime']}; one thread everywhere; Q-network, 1 recurrent layer, "
            f"obs {OBS_DIM}, {N_ACTIONS} actions; each call carries the state of the previous one. "
            f"{result['cpu_count']} CPUs, 1-min load average {result['load_average_1min'][0]} before and "
            f"{result['load_average_1min'][1]} after the run, {result['steal_pct']}% of CPU time stolen by the "
            f"hypervisor during it (other work on the machine or the host inflates latencies).",
            "",
            header,
            *(_md_row(r) for r in result["rows"]),
            "",
            f"Target: onnxruntime batch-1 step of the 128-unit LSTM <= {TARGET_US:g} us median: "
            f"**{target['onnxruntime_us']:.1f} us, {'met' if target['met'] else 'NOT met'}** "
            f"(eager {target['eager_us']:.1f} us, {target['eager_us'] / target['onnxruntime_us']:.1f}x slower). "
            f"Medians of its {ROUNDS} rounds: {', '.join(f'{t:.1f}' for t in target['round_medians_us'])} us. "
            f"The issue puts eager PyTorch at about {ISSUE_EAGER_US:g} us on this machine; scaled to that speed "
            f"(onnxruntime x {ISSUE_EAGER_US:g} / eager, the two moving together as the host speeds up or slows "
            f"down) this run is {target['onnxruntime_us'] * ISSUE_EAGER_US / target['eager_us']:.1f} us.",
            "",
            "The same call made after the thread slept (a fixed-rate client; the vCPU idles and comes back with cold "
            "caches): " + ", ".join(f"{us:.1f} us after {gap}" for gap, us in target["after_idle_us"].items()) + ".",
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls per measurement (a smoke run)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    load_before = loadavg()[0]
    ticks = cpu_ticks()
    calls = 300 if args.quick else 3000
    with tempfile.TemporaryDirectory() as tmp:
        rows = [row for cell, hidden in MODELS for row in _bench_model(cell, hidden, Path(tmp), calls)]
    target_row = next(r for r in rows if (r["cell"], r["hidden"], r["batch"]) == TARGET_MODEL)
    result = {
        "machine": f"{platform.machine()} {platform.processor() or platform.system()}",
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "calls_per_batch1_measurement": calls,
        "load_average_1min": [load_before, loadavg()[0]],
        "steal_pct": steal_pct(ticks, cpu_ticks()),
        "cpu_count": os.cpu_count(),
        "rows": rows,
        "target": {
            "onnxruntime_us": target_row["median_us"]["onnxruntime"],
            "eager_us": target_row["median_us"]["eager"],
            "round_medians_us": target_row["onnxruntime_round_medians_us"],
            "after_idle_us": target_row["onnxruntime_after_idle_us"],
            "limit_us": TARGET_US,
            "met": target_row["median_us"]["onnxruntime"] <= TARGET_US,
        },
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "export_bench.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "export_bench.md").write_text(_markdown(result))
    print(_markdown(result))


if __name__ == "__main__":
    main()
