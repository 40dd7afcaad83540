"""benchmarks/code_image_bench.py's bookkeeping: the first evaluation during training that solved the task, the steps run."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from code_image_bench import SOLVED, first_solved_step, steps_run  # noqa: E402


def _metrics(tmp_path, evals):
    path = tmp_path / "metrics.csv"
    rows = [f"{step},{value}" for step, value in evals]
    path.write_text("step,eval_return\n" + "\n".join(rows) + "\n")
    return path


def test_the_first_evaluation_at_the_threshold_counts_and_rows_without_one_are_skipped(tmp_path):
    path = _metrics(tmp_path, [(1024, "nan"), (2048, 0.6), (3072, "nan"), (4096, SOLVED), (5120, 1.0)])
    assert first_solved_step(path) == 4096


def test_a_run_that_never_reaches_the_threshold_has_no_solved_step(tmp_path):
    assert first_solved_step(_metrics(tmp_path, [(1024, 0.5), (2048, 0.94)])) is None


def test_speed_counts_the_steps_the_run_took_not_those_asked_for(tmp_path):
    assert steps_run(_metrics(tmp_path, [(1024, 0.5), (99328, 0.6)])) == 99328
