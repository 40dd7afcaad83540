"""benchmarks/default_runs_bench.py's success rate: the environment's own, or a positive return where it has none."""

import sys
from pathlib import Path

from rnnpolicy.train.evaluate import EvalResult

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from default_runs_bench import success_rate  # noqa: E402


def test_the_environments_success_rate_is_kept_and_a_missing_one_is_the_share_of_positive_returns():
    assert success_rate(EvalResult(4, 0.5, 0.1, 0.25, [0.9, 0.0, 0.0, 0.0])) == (0.25, False)
    assert success_rate(EvalResult(4, 0.5, 0.1, None, [0.9, 0.0, 0.8, -0.1])) == (0.5, True)


def test_run_conditions_record_the_load_and_describe_it_in_one_sentence():
    from machine import RunConditions, describe

    conditions = RunConditions().finish()
    assert set(conditions) == {"load_average_before", "load_average_after", "steal_pct", "cores", "cpu", "reference_ms"}
    assert len(conditions["load_average_after"]) == 3 and conditions["steal_pct"] >= 0.0
    before, after = conditions["reference_ms"]
    assert before > 0 and after > 0
    sentence = describe(conditions)
    assert sentence.startswith("Load average before/after ")
    assert f" cores shared with other work, CPU {conditions['cpu']}, reference workload {before:g} / {after:g} ms before/after" in sentence
    assert f"steal {conditions['steal_pct']}%" in sentence


def test_the_reference_workload_reports_its_median_repeat_in_milliseconds(monkeypatch):
    import machine

    ticks = iter([0.0, 1.0, 1.0, 4.0, 4.0, 6.0])  # repeats of 1, 3 and 2 s on an injected clock
    monkeypatch.setattr(machine.time, "perf_counter", lambda: next(ticks))
    assert machine.reference_ms(repeats=3) == 2000.0


def test_keep_refuses_a_folder_that_already_holds_a_seeds_run(tmp_path):
    import subprocess

    (tmp_path / "seed2").mkdir()
    bench = Path(__file__).resolve().parents[1] / "benchmarks" / "default_runs_bench.py"
    done = subprocess.run([sys.executable, str(bench), "--name", "unused", "--env", "CartPole-v1", "--threshold", "1",
                           "--seeds", "1", "2", "--keep", str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    assert f"--keep {tmp_path}: {tmp_path / 'seed2'} already exist(s); choose a new folder" in done.stderr
    assert not (tmp_path / "seed1").exists()  # refused before any run
