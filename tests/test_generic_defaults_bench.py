"""benchmarks/generic_defaults_bench.py's score: a final return between the random policy's (0) and the best reached (1)."""

import json
import shlex
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from generic_defaults_bench import CONFIGS, score  # noqa: E402


def _config(*runs):
    return {"runs": [{"seed": i, "best_return": best, "final_return": final} for i, (best, final) in enumerate(runs)]}


def test_scores_run_from_the_random_policy_to_the_best_mean_reached_on_each_task():
    results = {
        "a": {"random_return": -1.0, "configs": {"x": _config((1.0, 1.0), (1.0, 0.0)), "y": _config((0.0, 0.0), (0.0, -1.0))}},
        "b": {"random_return": 0.0, "configs": {"x": _config((10.0, 5.0)), "y": _config((20.0, 20.0))}},
    }
    means = score(results)
    assert results["a"]["best_known_return"] == 1.0 and results["b"]["best_known_return"] == 20.0
    assert results["a"]["configs"]["x"]["final_score"] == 0.75  # mean final 0.5 on [-1, 1]
    assert results["a"]["configs"]["y"]["final_score"] == 0.25
    assert results["b"]["configs"]["x"]["final_score"] == 0.25
    assert means == {"x": pytest.approx(0.5), "y": pytest.approx(0.625)}


def test_a_failed_run_leaves_its_configuration_unscored_on_that_task():
    failed = {"runs": [{"seed": 1, "error": "timed out"}, {"seed": 2, "best_return": 1.0, "final_return": 1.0}]}
    results = {"a": {"random_return": 0.0, "configs": {"x": failed, "y": _config((2.0, 2.0))}}}
    assert score(results) == {"x": None, "y": 1.0}
    assert results["a"]["configs"]["x"]["mean_final_return"] is None


@pytest.mark.parametrize("report", sorted((Path(__file__).resolve().parents[1] / "benchmarks" / "results").glob("generic_defaults*.json")),
                         ids=lambda p: p.stem)
def test_each_recorded_command_names_known_configurations_when_run_as_written(report):
    command = json.loads(report.read_text())["command"]
    argv = shlex.split(command)
    assert argv[:2] == ["python", "benchmarks/generic_defaults_bench.py"]
    if "--configs" in argv:
        start = argv.index("--configs") + 1
        end = next((i for i in range(start, len(argv)) if argv[i].startswith("--")), len(argv))
        assert argv[start:end] and set(argv[start:end]) <= set(CONFIGS), argv[start:end]
