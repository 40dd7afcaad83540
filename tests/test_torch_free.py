"""The serving side installs and runs without torch: a robot should not need torch to ask for an action."""

from __future__ import annotations

import subprocess
import sys

SERVE_AND_STEP = """
import sys
for name in ("torch", "onnx", "onnxscript"):
    sys.modules[name] = None  # any import of them now raises ImportError
import numpy as np
from rnnpolicy.clients import PolicyClient
from rnnpolicy.serve import ServeConfig, create_server
from rnnpolicy.serve.cli import add_serve_arguments
from rnnpolicy.clients.cli import add_play_arguments
srv, port = create_server({"q": sys.argv[1]}, "127.0.0.1:0", ServeConfig(state_dir=sys.argv[2], metrics_port=0))
with PolicyClient(f"127.0.0.1:{port}") as client, client.session("q") as session:
    print("action", session.step(np.zeros(5), episode_start=True).action)
srv.stop(None)
"""


def test_serve_metrics_persistence_and_the_client_run_with_torch_blocked(serve_export_dirs, tmp_path):
    result = subprocess.run([sys.executable, "-c", SERVE_AND_STEP, str(serve_export_dirs["q_lstm"]), str(tmp_path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("action ")


def test_the_serve_command_runs_with_torch_blocked():
    code = ("import sys; sys.modules['torch'] = None; from rnnpolicy.cli import main; "
            "sys.exit(main(['serve', '--help']))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "--state-dir" in result.stdout, result.stderr
