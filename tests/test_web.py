"""``rnnpolicy web``: the server's routes and errors, and the page in a real browser.

The browser tests drive Debian's Chromium with Playwright (the system browser: no download) and
check that the page, running model.onnx with onnxruntime-web on the JavaScript T-maze or
MemoryGrid, takes the actions Python onnxruntime takes on the Python environment, step for
step over several episodes, for an LSTM and a GRU policy; then the pause, step and restart
controls; and save a screenshot in the test's temporary directory.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from components import require
from rollout import env_rollout, first_episode
from conftest import _export_random
from rnnpolicy.cli import main
from rnnpolicy.clients.web_page import (
    PORTED_ENV_IDS,
    WEB_DIR,
    WebPageConfig,
    create_web_server,
    find_ort_dist,
    ort_web_version,
)
from rnnpolicy.encoding import ObsEncoding
from rnnpolicy.envs import make_env
from rnnpolicy.spec import ActionSpec, LmuSpec, PolicySpec

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


# ---------------------------------------------------------------- the server, with a stand-in for onnxruntime-web


@pytest.fixture
def fake_ort(tmp_path: Path) -> Path:
    dist = tmp_path / "node_modules" / "onnxruntime-web" / "dist"
    dist.mkdir(parents=True)
    (dist / "ort.wasm.min.js").write_text("/* ort */")
    (dist / "ort-wasm-simd-threaded.wasm").write_bytes(b"\0asm")
    (dist.parent / "package.json").write_text(json.dumps({"version": ort_web_version()}))
    return dist


class Served:
    """A running page server: ``get(path) -> (status, content type, body)``."""

    def __init__(self, config: WebPageConfig, ort_dist: Path) -> None:
        self.server, self.port = create_web_server(config, ort_dist)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.port}/"

    def get(self, path: str, method: str = "GET") -> tuple[int, str, bytes]:
        request = urllib.request.Request(self.url + path.lstrip("/"), method=method)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.headers["Content-Type"], response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers["Content-Type"], exc.read()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def served_tmaze(serve_export_dirs, fake_ort):
    served = Served(WebPageConfig.from_export(serve_export_dirs["tmaze"], seed=5, speed=2.5), fake_ort)
    yield served
    served.stop()


def test_server_serves_the_page_the_export_and_onnxruntime_web(served_tmaze, serve_export_dirs) -> None:
    export = serve_export_dirs["tmaze"]
    assert served_tmaze.get("/")[:2] == (200, "text/html; charset=utf-8")
    assert served_tmaze.get("/")[2] == (WEB_DIR / "index.html").read_bytes()
    for name in ("app.mjs", "envs.mjs", "np_random.mjs", "encoding.mjs", "policy.mjs", "draw.mjs"):
        status, kind, body = served_tmaze.get(name)
        assert (status, kind, body) == (200, "text/javascript; charset=utf-8", (WEB_DIR / name).read_bytes())
    assert served_tmaze.get("/style.css")[:2] == (200, "text/css; charset=utf-8")
    assert served_tmaze.get("/export/model.onnx")[2] == (export / "model.onnx").read_bytes()
    assert served_tmaze.get("/export/spec.json")[2] == (export / "spec.json").read_bytes()
    assert served_tmaze.get("/ort/ort.wasm.min.js")[:2] == (200, "text/javascript; charset=utf-8")
    assert served_tmaze.get("/ort/ort-wasm-simd-threaded.wasm")[:2] == (200, "application/wasm")
    status, _, body = served_tmaze.get("/config.json?x=1")
    assert status == 200 and json.loads(body) == {
        "env_id": "rnnpolicy/TMaze-v0", "seed": 5, "speed": 2.5, "title": "tmaze",
        "model_url": "export/model.onnx", "spec_url": "export/spec.json",
    }
    assert served_tmaze.get("/", method="HEAD")[:2] == (200, "text/html; charset=utf-8")


@pytest.mark.parametrize("path", ["/export/verify.json", "/export/checkpoint.pt", "/../pyproject.toml",
                                  "/ort/../package.json", "/%2e%2e/pyproject.toml", "/package.json",
                                  "/node_modules/onnxruntime-web/package.json", "/export/", "/nothing"])
def test_server_answers_404_outside_the_page(served_tmaze, path: str) -> None:
    assert served_tmaze.get(path)[0] == 404


def test_config_picks_the_task_from_the_spec_or_env_and_refuses_what_does_not_fit(serve_export_dirs, tmp_path) -> None:
    config = WebPageConfig.from_export(serve_export_dirs["tmaze"])
    assert (config.env_id, config.seed, config.speed) == ("rnnpolicy/TMaze-v0", 0, 4.0)
    with pytest.raises(ValueError, match=r"export directory .*nowhere does not exist"):
        WebPageConfig.from_export(tmp_path / "nowhere")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "spec.json").write_text((serve_export_dirs["tmaze"] / "spec.json").read_text())
    with pytest.raises(ValueError, match=r"half has no model.onnx"):
        WebPageConfig.from_export(tmp_path / "half")
    with pytest.raises(ValueError, match=r"the page runs rnnpolicy/TMaze-v0 or rnnpolicy/MemoryGrid-v0, and this "
                                         r"policy was trained on 'an unnamed env'; pass --env"):
        WebPageConfig.from_export(serve_export_dirs["q_lstm"])
    with pytest.raises(ValueError, match=r"environment 'rnnpolicy/MemoryGrid-v0' encodes to 15 observation values, "
                                         r"but the policy takes 5: use the environment"):
        WebPageConfig.from_export(serve_export_dirs["q_lstm"], env_id="rnnpolicy/MemoryGrid-v0")
    with pytest.raises(ValueError, match=r"--seed must be >= 0, got -1"):
        WebPageConfig.from_export(serve_export_dirs["tmaze"], seed=-1)
    with pytest.raises(ValueError, match=r"--speed must be > 0 steps per second, got 0"):
        WebPageConfig.from_export(serve_export_dirs["tmaze"], speed=0)


def test_find_ort_dist_looks_in_the_named_places_and_says_how_to_install(fake_ort, tmp_path) -> None:
    node_modules_root = fake_ort.parents[2]
    for given in (fake_ort, fake_ort.parent, node_modules_root):
        assert find_ort_dist(given) == fake_ort.resolve()
    assert find_ort_dist(search=(tmp_path / "empty", node_modules_root)) == fake_ort.resolve()
    with pytest.raises(ValueError, match=rf"onnxruntime-web is not installed \(no ort.wasm.min.js in .*empty.*\); "
                                         rf"install the pinned version with `npm ci --prefix {WEB_DIR} --no-audit"):
        find_ort_dist(search=(tmp_path / "empty",))


def test_find_ort_dist_warns_about_another_version(fake_ort, capsys) -> None:
    (fake_ort.parent / "package.json").write_text(json.dumps({"version": "0.0.1"}))
    find_ort_dist(fake_ort)
    assert f"onnxruntime-web 0.0.1 in {fake_ort.parent}, the page is tested with {ort_web_version()}" in capsys.readouterr().err


def test_the_web_command_reports_bad_input_in_one_line(serve_export_dirs, tmp_path, capsys) -> None:
    assert main(["web", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"rnnpolicy web: error: export directory {tmp_path / 'missing'} does not exist (expected the --out of rnnpolicy export)"
    )
    assert main(["web", str(serve_export_dirs["tmaze"]), "--ort-dir", str(tmp_path)]) == 2
    assert "rnnpolicy web: error: onnxruntime-web is not installed" in capsys.readouterr().err


def test_the_web_command_names_a_port_in_use(serve_export_dirs, fake_ort, capsys) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["web", str(serve_export_dirs["tmaze"]), "--port", str(port), "--ort-dir", str(fake_ort)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"rnnpolicy web: error: cannot listen on 127.0.0.1:{port}: Address already in use (--port 0 picks a free port)"
    )


def test_the_web_command_serves_without_torch(serve_export_dirs, fake_ort) -> None:
    code = ("import sys; sys.modules['torch'] = None; from rnnpolicy.cli import main; "
            "sys.exit(main(sys.argv[1:]))")
    with _web_command([sys.executable, "-c", code, "web", str(serve_export_dirs["tmaze"]), "--port", "0",
                       "--ort-dir", str(fake_ort)]) as url:
        with urllib.request.urlopen(url + "config.json", timeout=10) as response:
            assert json.loads(response.read())["env_id"] == "rnnpolicy/TMaze-v0"


@contextlib.contextmanager
def _web_command(argv: list[str]) -> Iterator[str]:
    """Run an ``rnnpolicy web`` command line for the T-maze export until the block ends; yields the page's URL."""
    process = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        assert line.startswith("rnnpolicy web: rnnpolicy/TMaze-v0 with "), process.stderr.read() if not line else line
        yield line.split(" at ", 1)[1].split("/ ", 1)[0] + "/"
    finally:
        process.terminate()
        process.wait(10)


def test_the_wheel_ships_the_page(tmp_path) -> None:
    source = tmp_path / "source"  # a copy: building in place would leave build/ in the checkout
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".*", "node_modules", "__pycache__", "build", "runs",
                                                                "demo", "*.egg-info", "tests", "benchmarks"))
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                             "-w", str(tmp_path), str(source)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    (wheel,) = tmp_path.glob("rnnpolicy-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    page = {f"rnnpolicy/clients/web/{p.name}" for p in WEB_DIR.iterdir() if p.is_file()}
    assert page and page <= names
    assert not any("node_modules" in name for name in names)


# ---------------------------------------------------------------- the page in Chromium


def _browser_missing() -> str | None:
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is not installed (apt-get install -y chromium; make test does it as root)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -c constraints.txt playwright; make setup does it)"
    try:
        find_ort_dist(search=(WEB_DIR,))
    except ValueError as exc:
        return str(exc)
    return None


@pytest.fixture(scope="module")
def browser():
    require(_browser_missing())
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def grid_gru_export(tmp_path_factory) -> Path:
    """A GRU actor-critic (2 layers, separate actor and critic cores) for MemoryGrid, random weights."""
    env = make_env("rnnpolicy/MemoryGrid-v0")
    spec = PolicySpec(kind="policy", cell="gru", num_layers=2, hidden_size=8, num_cores=2,
                      obs_encoding=ObsEncoding.from_space(env.observation_space),
                      action=ActionSpec("discrete", n=int(env.action_space.n)), env_id="rnnpolicy/MemoryGrid-v0")
    return _export_random(tmp_path_factory.mktemp("web_models"), "grid_gru", spec, 31)


@pytest.fixture(scope="module")
def tmaze_lmu_export(tmp_path_factory) -> Path:
    """A Legendre memory actor-critic for TMaze (memory 2 x 10 wider than its 8 units), random weights."""
    env = make_env("rnnpolicy/TMaze-v0")
    spec = PolicySpec(kind="policy", cell="lmu", num_layers=1, hidden_size=8, lmu=LmuSpec(order=10, theta=12.0),
                      obs_encoding=ObsEncoding.from_space(env.observation_space),
                      action=ActionSpec("discrete", n=int(env.action_space.n)), env_id="rnnpolicy/TMaze-v0")
    return _export_random(tmp_path_factory.mktemp("web_models"), "tmaze_lmu", spec, 32)


def _colored_pixels(page, canvas_id: str) -> int:
    """Pixels of a canvas in a clear colour (not white, grey or black)."""
    return page.evaluate("""(id) => {
        const c = document.getElementById(id);
        const data = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
        let n = 0;
        for (let i = 0; i < data.length; i += 4) {
            const [r, g, b, a] = data.slice(i, i + 4);
            if (a > 0 && Math.max(r, g, b) - Math.min(r, g, b) > 40) n++;
        }
        return n;
    }""", canvas_id)


@pytest.mark.parametrize("policy", ["tmaze_lstm", "grid_gru", "tmaze_lmu"])
def test_page_acts_as_python_onnxruntime_and_its_controls_work(policy, browser, serve_export_dirs, grid_gru_export,
                                                               tmaze_lmu_export, tmp_path) -> None:
    export_dir = {"tmaze_lstm": serve_export_dirs["tmaze"], "grid_gru": grid_gru_export, "tmaze_lmu": tmaze_lmu_export}[policy]
    config = WebPageConfig.from_export(export_dir, seed=3)
    served = Served(config, find_ort_dist(search=(WEB_DIR,)))
    page = browser.new_page(viewport={"width": 1200, "height": 760})
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("console", lambda msg: problems.append(f"console {msg.type}: {msg.text}") if msg.type == "error" else None)
    try:
        page.goto(served.url + "?speed=1000")
        page.wait_for_function("() => document.body.dataset.status !== 'loading'", timeout=60_000)
        assert page.evaluate("() => window.rnnpolicy.status") == "ready", page.evaluate("() => window.rnnpolicy.error")
        page.wait_for_function("() => window.rnnpolicy.trace.length >= 150", timeout=60_000)
        page.click("#play")  # pause
        assert page.inner_text("#play") == "Play"
        page.wait_for_function("() => !window.rnnpolicy.busy")  # a step under way when paused lands first

        # Step: one model step at a time while paused (after an episode's end, the first Step starts the next).
        if page.evaluate("() => window.rnnpolicy.phase === 'reset'"):
            page.click("#step")
            page.wait_for_function("() => document.getElementById('stat-step').textContent.startsWith('0 /')")
        steps = page.evaluate("() => window.rnnpolicy.trace.length")
        page.click("#step")
        page.wait_for_function(f"() => document.body.dataset.steps === '{steps + 1}'")
        page.wait_for_timeout(200)
        trace, state = page.evaluate("() => [window.rnnpolicy.trace, window.rnnpolicy.state]")
        assert len(trace) == steps + 1  # paused: nothing more

        # The same actions, observations, rewards and ends as Python, over several episodes.
        expected, expected_state = env_rollout(export_dir, config.env_id, 3, len(trace))
        keys = ("obs", "episode_start", "action", "reward", "terminated", "truncated")
        for t, (got, want) in enumerate(zip(trace, expected)):
            assert {k: got[k] for k in keys} == want, f"step {t}"
        assert sum(step["episode_start"] for step in trace) >= 4  # several episodes, each from a reset
        for name, value in expected_state.items():
            np.testing.assert_allclose(np.array(state[name]), value.ravel(), atol=1e-5, err_msg=name)

        # Restart: the first episode of the seed again, from an empty trace.
        page.click("#restart")
        page.wait_for_function("() => document.body.dataset.steps === '0'")
        assert page.inner_text("#stat-episode") == "1 (seed 3)"
        page.click("#play")
        page.wait_for_function("() => window.rnnpolicy.trace.length >= 20")
        page.click("#play")
        again = page.evaluate("() => window.rnnpolicy.trace.map((s) => s.action)")
        assert again[:20] == [step["action"] for step in trace[:20]]

        # The keys: space plays and pauses, r restarts, the right arrow steps. A few steps into a fresh
        # episode for the picture: the task, the state's columns and the outputs drawn.
        played = len(again)
        page.keyboard.press(" ")
        page.wait_for_function(f"() => window.rnnpolicy.trace.length > {played} + 5")
        page.keyboard.press(" ")
        assert page.inner_text("#play") == "Play"
        page.keyboard.press("r")
        page.wait_for_function("() => document.body.dataset.steps === '0'")
        for i in range(1, 7):
            page.keyboard.press("ArrowRight")
            page.wait_for_function(f"() => document.getElementById('stat-step').textContent.startsWith('{i} /')")
        assert _colored_pixels(page, "task") > 500
        assert _colored_pixels(page, "heatmap") > 6 * 100  # six columns of units, far from zero in places
        assert _colored_pixels(page, "head") > 200
        screenshot = tmp_path / f"web_{policy}.png"
        page.screenshot(path=str(screenshot))
        assert screenshot.stat().st_size > 10_000
        assert problems == []
    finally:
        page.close()
        served.stop()


def test_page_shows_an_error_for_a_policy_that_does_not_fit(browser, serve_export_dirs, tmp_path) -> None:
    """A policy that passed the server's check but not the page's (spec edited after start) is named on the page."""
    export = tmp_path / "export"
    shutil.copytree(serve_export_dirs["tmaze"], export)
    served = Served(WebPageConfig.from_export(export), find_ort_dist(search=(WEB_DIR,)))
    spec = json.loads((export / "spec.json").read_text())
    spec["action"]["n"] = 5
    (export / "spec.json").write_text(json.dumps(spec))
    page = browser.new_page()
    try:
        page.goto(served.url)
        page.wait_for_function("() => document.body.dataset.status === 'error'", timeout=60_000)
        assert page.inner_text("#error") == ("error: the policy's action space (discrete, n=5) is not "
                                             "rnnpolicy/TMaze-v0's (discrete, n=3)")
    finally:
        page.close()
        served.stop()


def test_ported_env_ids_are_the_javascript_ones() -> None:
    text = (WEB_DIR / "envs.mjs").read_text()
    assert all(f'static id = "{env_id}"' in text for env_id in PORTED_ENV_IDS)


def _js_block(text: str, heading: str) -> str:
    return re.search(rf"### {re.escape(heading)}\n.*?```js\n(.*?)```", text, re.S).group(1)


def test_the_documented_browser_loop_is_loop_html() -> None:
    page = (WEB_DIR / "loop.html").read_text()
    script = re.search(r'<script type="module">\n(.*?)</script>', page, re.S).group(1)
    for doc in (ROOT / "README.md", ROOT / "docs" / "export.md"):
        block = _js_block(doc.read_text(), "JavaScript (browser)")
        assert block.split("\n", 1)[1] == script, doc.name  # after the comment line naming the script tags


def test_loop_html_runs_the_episode_python_runs(browser, serve_export_dirs) -> None:
    export_dir = serve_export_dirs["tmaze"]
    served = Served(WebPageConfig.from_export(export_dir), find_ort_dist(search=(WEB_DIR,)))
    page = browser.new_page()
    try:
        page.goto(served.url + "loop.html")
        page.wait_for_function("() => !document.getElementById('out').textContent.startsWith('running')",
                               timeout=60_000)
        success, steps = first_episode(env_rollout(export_dir, "rnnpolicy/TMaze-v0", seed=0, steps=40)[0])
        assert page.inner_text("#out") == f"success: {str(success).lower()} after {steps} steps"
    finally:
        page.close()
        served.stop()


def test_readme_web_command_runs_as_written(serve_export_dirs, tmp_path) -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Watch the policy in a browser", 1)[1]
    commands = re.search(r"```bash\n(.*?)```", section, re.S).group(1).splitlines()
    assert commands[0].startswith("(cd clients/web && npm ci --no-audit --no-fund)")  # what make test runs
    command = commands[1].split("#")[0].strip()
    assert command == ".venv/bin/rnnpolicy web runs/tmaze-ppo/export --port 8000"
    argv = command.replace("runs/tmaze-ppo/export", str(serve_export_dirs["tmaze"])).replace("8000", "0").split()
    require(None if (WEB_DIR / "node_modules" / "onnxruntime-web").is_dir() else "onnxruntime-web is not installed")
    assert argv[0] == ".venv/bin/rnnpolicy"  # this interpreter's own, wherever its environment lives
    with _web_command([str(Path(sys.executable).parent / "rnnpolicy"), *argv[1:]]) as url:
        with urllib.request.urlopen(url + "ort/ort.wasm.min.js", timeout=10) as response:
            assert response.status == 200
        with urllib.request.urlopen(url, timeout=10) as response:
            assert b'<script type="module" src="app.mjs">' in response.read()
