"""The README stays true: its first screen, the CI entry point, and its Python examples run."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_first_screen_gives_the_two_commands_and_ci_runs_the_test_one():
    first_block = re.search(r"```bash\n(.*?)```", README, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.splitlines() if line.strip()]
    assert commands == ["make demo", "make test"]
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README, re.S)


def test_readme_python_examples_run_against_a_real_export_and_server(serve_export_dirs, capsys):
    from rnnpolicy.serve import create_server

    export_dir = serve_export_dirs["tmaze"]
    server, port = create_server({"tmaze": export_dir})
    try:
        blocks = python_blocks()
        assert len(blocks) == 3  # embedding with onnxruntime and with torch.export, then the gRPC client
        for block in blocks:
            code = block.replace("runs/tmaze-ppo/export", str(export_dir)).replace("127.0.0.1:50051", f"127.0.0.1:{port}")
            exec(compile(code, "README.md", "exec"), {})
        assert capsys.readouterr().out.count("success:") == 3
    finally:
        server.stop(0)


@pytest.mark.parametrize("path", re.findall(r"\]\(((?:docs|protos)/[^)#]+)\)", README))
def test_linked_files_exist(path):
    assert (ROOT / path).is_file()
