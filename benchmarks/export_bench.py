"""Per-step latency and throughput of an exported policy: onnxruntime vs PyTorch runtimes vs C++.

    python benchmarks/export_bench.py [--quick] [--no-cpp]

Q-networks with one recurrent layer of 64, 128 (the target) and 256 LSTM and GRU units, and 64 and 128
units of a Legendre memory cell (its default memory: 2 inputs x 32 coefficients over 32 steps), batch
1 and 256, one thread everywhere. Each call feeds the previous call's state back, as a client
does. Medians and ratios come from one run and are written to
benchmarks/results/export_bench.json and .md. Targets: onnxruntime batch-1 step of the 128-unit
LSTM <= 50 us median; export of a small model < 10 s (``rnnpolicy export`` with default options,
timed as a fresh process, torch's import included, and as the report's own figure).

The PyTorch runtimes: eager, the ``torch.export`` program (``model.pt2``), TorchScript
(``model.ts``, opt-in) and, for the target model, the AOTInductor package called from Python.
C++: the target model's AOTInductor package in ``clients/cpp``'s ``policy_loop`` (built with
CMake into build/cpp, as ``make cpp`` does), its own p50/p99 of the step at full speed and at
50 Hz, beside onnxruntime's from Python (skipped with ``--no-cpp``, or without g++ and cmake,
saying so in the results).

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
import re
import resource
import shutil
import subprocess
import sys
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
from rnnpolicy.export.exporter import ExportReport, export_checkpoint
from rnnpolicy.export.pt2 import load_aoti, load_program
from rnnpolicy.export.runtime import feed_runner, load_onnx_policy, session_options, zero_state
from rnnpolicy.export.step_module import step_module
from rnnpolicy.export.torchscript import load_torchscript
from rnnpolicy.spec import ActionSpec, LmuSpec, ObsNormSpec, PolicySpec
from rnnpolicy.train.checkpoint import load_checkpoint, save_checkpoint
from rnnpolicy.train.models import build_model

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]
CPP_BUILD = ROOT / "build" / "cpp"
CPP_SUMMARY = re.compile(r"step latency p50 ([\d.]+) us, p99 ([\d.]+) us, max ([\d.]+) us; (\d+) overruns")
CPP_HZ = 50.0
OBS_DIM = 16
N_ACTIONS = 4
MODELS = (("lstm", 64), ("lstm", 128), ("lstm", 256), ("gru", 64), ("gru", 256), ("lmu", 64), ("lmu", 128))
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
        lmu=LmuSpec() if cell == "lmu" else None,
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


def _bench_model(cell: str, hidden: int, workdir: Path, calls: int, aot: bool) -> tuple[list[dict[str, Any]], ExportReport]:
    spec = _spec(cell, hidden)
    checkpoint = save_checkpoint(workdir / f"{cell}{hidden}" / "checkpoint.pt", spec, build_model(spec), {})
    started = time.perf_counter()
    report = export_checkpoint(checkpoint, workdir / f"{cell}{hidden}" / "export", verify=False, torchscript=True)
    export_s = time.perf_counter() - started
    if aot:
        report = export_checkpoint(checkpoint, report.out_dir, verify=False, torchscript=True, aot=True)
    session, _ = load_onnx_policy(report.onnx_path, threads=1)
    program, _ = load_program(report.program_path)
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
            "torch.export": (run_torch(program), state_t),
            "torchscript": (run_torch(scripted), state_t),
            "eager": (run_torch(eager), state_t),
        }
        if aot:
            runs["aotinductor"] = (run_torch(load_aoti(report.aoti_path)[0]), state_t)
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
                "p99_us": {k: round(float(np.percentile(t, 99)), 1) for k, t in times.items()},
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
            if aot:
                rows[-1]["aot_compile_s"] = round(report.aot_seconds or 0.0, 1)
        print(_md_row(rows[-1]), flush=True)
    return rows, report


def _cpp_binary() -> tuple[Path | None, str]:
    """``build/cpp/policy_loop``, configured and built as ``make cpp`` does; ``(None, why)`` where it cannot be."""
    missing = [tool for tool in ("cmake", "make", "g++") if shutil.which(tool) is None]
    if missing:
        return None, f"skipped: {', '.join(missing)} not found"
    configure = ["cmake", "-S", str(ROOT / "clients" / "cpp"), "-B", str(CPP_BUILD), f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}"]
    for command in (configure, ["cmake", "--build", str(CPP_BUILD), "-j", "2"]):
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            return None, f"skipped: {' '.join(command[:2])} failed: {result.stderr.strip()[-300:]}"
    return CPP_BUILD / "policy_loop", "built"


def _bench_cpp(binary: Path, report: ExportReport, steps: int, workdir: Path) -> dict[str, Any]:
    """``policy_loop``'s own step latency (p50, p99, max) at full speed and at 50 Hz, on random observations."""
    rng = np.random.default_rng(0)
    lines = [" ".join(["1" if t == 0 else "0", *(f"{x:.6g}" for x in rng.standard_normal(OBS_DIM))]) for t in range(steps)]
    inputs = workdir / "cpp_inputs.txt"
    inputs.write_text("\n".join(lines) + "\n")
    out: dict[str, Any] = {}
    rate_steps = max(50, min(steps, 500))  # 10 s at 50 Hz at most
    for label, args, n in (("full speed", [], steps), (f"{CPP_HZ:g} Hz", ["--hz", str(CPP_HZ)], rate_steps)):
        head = workdir / f"cpp_inputs_{n}.txt"
        head.write_text("\n".join(lines[:n]) + "\n")
        result = subprocess.run([str(binary), str(report.aoti_path), "--input", str(head), *args], capture_output=True, text=True, timeout=600)
        found = CPP_SUMMARY.search(result.stderr)
        if result.returncode != 0 or not found:
            raise RuntimeError(f"policy_loop failed ({result.returncode}): {result.stderr[-500:]}")
        p50, p99, most, overruns = found.groups()
        out[label] = {"steps": n, "p50_us": float(p50), "p99_us": float(p99), "max_us": float(most), "overruns": int(overruns)}
    return out


def _cli_export_s(workdir: Path) -> dict[str, float]:
    """``rnnpolicy export`` of a small model with default options (parity check included) in a fresh process."""
    spec = _spec("lstm", 64)
    checkpoint = save_checkpoint(workdir / "cli" / "checkpoint.pt", spec, build_model(spec), {})
    rnnpolicy = Path(sys.executable).with_name("rnnpolicy")
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run([str(rnnpolicy), "export", str(checkpoint), "--out", str(workdir / "cli" / "export")],
                            capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise RuntimeError(f"rnnpolicy export failed: {result.stderr[-500:]}")
    files_s = float(re.search(r" in ([\d.]+) s", result.stdout).group(1))
    cpu_s = (after.ru_utime - children.ru_utime) + (after.ru_stime - children.ru_stime)
    return {"process_wall_s": round(wall, 1), "process_cpu_s": round(cpu_s, 1), "model_files_s": files_s,
            "stderr_chars": len(result.stderr)}


def _md_row(r: dict[str, Any]) -> str:
    m, t = r["median_us"], r["rows_per_s"]
    return (
        f"| {r['cell']} {r['hidden']} | {r['batch']} | {m['onnxruntime']:.1f} | {m['ort_call_floor']:.1f} "
        f"| {m['torch.export']:.1f} | {m['torchscript']:.1f} | {m['eager']:.1f} "
        f"| {r['eager_over_onnxruntime']:.1f}x | {r['torchscript_over_onnxruntime']:.1f}x "
        f"| {t['onnxruntime']:,} | {t['torchscript']:,} | {t['eager']:,} | {r['export_s']:.2f} |"
    )


def _cpp_lines(result: dict[str, Any], target_row: dict[str, Any]) -> list[str]:
    cpp = result["cpp"]
    if "runs" not in cpp:
        return [f"C++ (`clients/cpp/policy_loop`): {cpp['status']}.", ""]
    runs = cpp["runs"]
    fast, paced = runs["full speed"], runs[f"{CPP_HZ:g} Hz"]
    m, p99 = target_row["median_us"], target_row["p99_us"]
    idle = target_row["onnxruntime_after_idle_us"]
    return [
        "## C++: the AOTInductor package in `clients/cpp/policy_loop`",
        "",
        f"The target model (LSTM 128, batch 1) compiled with `rnnpolicy export --aot` ({target_row['aot_compile_s']:.1f} s "
        f"for the AOTInductor compile), stepped by the C++ loop carrying its state; the loop's own timing of each step "
        f"(tensors in, the model call, the state carried; not the reading and printing). Beside it, the same model's "
        f"step from Python, from the table's measurement.",
        "",
        "| runtime | how called | p50 us | p99 us | steps |",
        "|---|---|---|---|---|",
        f"| AOTInductor package | C++ `policy_loop`, back to back | {fast['p50_us']:.1f} | {fast['p99_us']:.1f} | {fast['steps']} |",
        f"| AOTInductor package | C++ `policy_loop --hz {CPP_HZ:g}` | {paced['p50_us']:.1f} | {paced['p99_us']:.1f} | {paced['steps']} ({paced['overruns']} overruns) |",
        f"| onnxruntime | Python, back to back | {m['onnxruntime']:.1f} | {p99['onnxruntime']:.1f} | {result['calls_per_batch1_measurement']} |",
        f"| onnxruntime | Python, after 20 ms of sleep (50 Hz) | {idle['20 ms']:.1f} | | |",
        f"| AOTInductor package | Python (`aoti_load_package`), back to back | {m['aotinductor']:.1f} | {p99['aotinductor']:.1f} | {result['calls_per_batch1_measurement']} |",
        f"| `torch.export` program | Python (`model.pt2`), back to back | {m['torch.export']:.1f} | {p99['torch.export']:.1f} | {result['calls_per_batch1_measurement']} |",
        f"| eager PyTorch | Python, back to back | {m['eager']:.1f} | {p99['eager']:.1f} | {result['calls_per_batch1_measurement']} |",
        "",
        f"C++ back to back over onnxruntime from Python (p50): {fast['p50_us'] / m['onnxruntime']:.2f}x.",
        "",
    ]


def _markdown(result: dict[str, Any]) -> str:
    header = (
        "| model | batch | onnxruntime us | ort call floor us | torch.export us | TorchScript us | eager us | eager/ort | TS/ort "
        "| ort rows/s | TS rows/s | eager rows/s | export s |\n|" + "---|" * 13
    )
    target = result["target"]
    target_row = next(r for r in result["rows"] if (r["cell"], r["hidden"], r["batch"]) == TARGET_MODEL)
    cli = result["cli_export"]
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
            "\"export s\": `export_checkpoint` writing model.onnx, model.pt2 and model.ts, without the parity check.",
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
            f"Target: default `rnnpolicy export` of a small model (LSTM 64) < 10 s: **{cli['process_wall_s']:.1f} s "
            f"for the whole command in a fresh process** (imports and the parity check included; "
            f"{'met' if cli['process_wall_s'] < 10 else 'NOT met'}; {cli['process_cpu_s']:.1f} s of CPU time"
            f"), of which writing the model files took "
            f"{cli['model_files_s']:.1f} s (the figure the command prints); {cli['stderr_chars']} characters on stderr.",
            "",
            *_cpp_lines(result, target_row),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls per measurement (a smoke run)")
    parser.add_argument("--no-cpp", action="store_true", help="skip the AOTInductor compile and the C++ loop")
    args = parser.parse_args()
    torch.set_num_threads(1)
    load_before = loadavg()[0]
    ticks = cpu_ticks()
    calls = 300 if args.quick else 3000
    binary, cpp_status = (None, "skipped: --no-cpp") if args.no_cpp else _cpp_binary()
    with tempfile.TemporaryDirectory() as tmp:
        cli_export = _cli_export_s(Path(tmp))
        print(f"default CLI export of LSTM 64: {cli_export}", flush=True)
        rows = []
        cpp: dict[str, Any] = {"status": cpp_status}
        for cell, hidden in MODELS:
            aot = binary is not None and (cell, hidden, 1) == TARGET_MODEL
            model_rows, report = _bench_model(cell, hidden, Path(tmp), calls, aot)
            rows += model_rows
            if aot and binary is not None:
                cpp["runs"] = _bench_cpp(binary, report, calls, Path(tmp))
                print(f"C++ policy_loop: {cpp['runs']}", flush=True)
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
        "cli_export": cli_export,
        "cpp": cpp,
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
    name = "export_bench_quick" if args.quick else "export_bench"
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(_markdown(result))
    print(_markdown(result))


if __name__ == "__main__":
    main()
