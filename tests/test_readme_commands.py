"""The README's training command lines that no other test runs, run as written (slow: minutes of training).

Each ``bash`` block line starting with ``.venv/bin/`` that names ``--wrapper``, ``--vector-env async`` or
``torchrun`` runs in a temporary directory (its ``runs/...`` output lands there), with ``.venv/bin/``
meaning this interpreter's bin directory; the run directory it names must hold its checkpoint.
``pip install`` lines run with ``--dry-run`` (the extra must resolve; installing is the setup's job).
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BIN = Path(sys.executable).parent


def _lines(*needles: str) -> list[str]:
    out = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        for line in block.splitlines():
            command = line.split("  #")[0].strip()
            if command.startswith(".venv/bin/") and any(n in command for n in needles):
                out.append(command)
    return out


TRAIN_LINES = _lines("--wrapper", "--vector-env async", "torchrun")


def test_the_readme_names_the_lines_this_module_runs():
    assert len(TRAIN_LINES) == 3, TRAIN_LINES
    assert any("-e '.[bench]'" in line for line in _lines("pip install"))


@pytest.mark.slow
@pytest.mark.parametrize("line", TRAIN_LINES)
def test_a_readme_training_line_runs_as_written(line, tmp_path):
    argv = shlex.split(line)
    argv[0] = str(BIN / Path(argv[0]).name)
    done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    out = argv[argv.index("--out") + 1]
    assert (tmp_path / out / "checkpoint.pt").is_file() and (tmp_path / out / "last.pt").is_file()


@pytest.mark.slow
def test_the_readme_bench_extra_resolves():
    line = next(line for line in _lines("pip install") if "[bench]" in line)
    argv = shlex.split(line)
    argv[0] = str(BIN / "pip")
    done = subprocess.run([*argv, "--dry-run"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
