"""A real-browser check: JupyterLab in headless Chromium runs a notebook as a learner would.

The server is started the way `make course` starts it, on a copy of the notebooks (so
autosave never touches the committed files). The check runs all cells from the Run menu and
asserts that the autograd graph (SVG) and a matplotlib plot render and that no cell shows an
error; a deliberately broken copy proves the check fails when a cell errors. Set
BROWSER_SCREENSHOTS=DIR to keep screenshots (the slider demo among them).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# BROWSER_EXECUTABLE names another Chromium-based browser (e.g. Google Chrome on a CI runner).
CHROMIUM = (os.environ.get("BROWSER_EXECUTABLE") or shutil.which("chromium")
            or shutil.which("chromium-browser"))
CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
# All cells in the DOM (no windowing). No news pop-up either, but that comes from the
# overrides that `make` installs into the venv, as for a learner (test_course_settings.py).
SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
}
DEMO_NOTEBOOK = "01_which_nodes_exist.ipynb"
OUTPUT = ".jp-OutputArea-output"

playwright = pytest.importorskip("playwright.sync_api")

if CHROMIUM is None:
    reason = "Debian's chromium is not installed (make test installs it)"
    if os.environ.get("CI"):
        raise RuntimeError(reason)  # in CI a missing browser is a failure, not a skip
    pytest.skip(reason, allow_module_level=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _write_settings(folder: Path) -> None:
    for name, values in SETTINGS.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))


def _broken_copy(source: Path, target: Path) -> None:
    notebook = json.loads(source.read_text())
    notebook["cells"].insert(2, {
        "cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [],
        "source": "raise RuntimeError('a deliberately broken cell')",
    })
    target.write_text(json.dumps(notebook))


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server over a copy of notebooks/, started like `make course` does."""
    root = tmp_path_factory.mktemp("lab")
    shutil.copytree(ROOT / "notebooks", root / "notebooks")
    _broken_copy(root / "notebooks" / DEMO_NOTEBOOK, root / "notebooks" / "broken.ipynb")
    _write_settings(root / "settings")
    port, token = _free_port(), secrets.token_hex(16)
    env = {**os.environ, "JUPYTERLAB_SETTINGS_DIR": str(root / "settings")}
    env.pop("MPLBACKEND", None)  # the kernel must use Jupyter's inline backend
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root",
         "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
         f"--ServerApp.root_dir={root}", f"--IdentityProvider.token={token}",
         f"--LabApp.workspaces_dir={root / 'workspaces'}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("JupyterLab did not start within 90 s") from None
                time.sleep(0.5)
        yield base, token
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


def wait_for_idle_kernel(lab, path: str, timeout: float = 180) -> None:
    """Wait until the server reports the notebook's kernel started and idle.

    Asks the server's REST API (/api/sessions) rather than reading the status bar, whose
    text can lag or show another panel's kernel; a slow machine gets a generous deadline.
    """
    base, token = lab
    deadline = time.monotonic() + timeout
    state = "no session"
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{base}/api/sessions?token={token}", timeout=5) as answer:
            sessions = json.load(answer)
        kernels = [s["kernel"] for s in sessions if s.get("path") == path and s.get("kernel")]
        state = kernels[0].get("execution_state", "unknown") if kernels else "no session"
        if state == "idle":
            return
        time.sleep(0.5)
    raise AssertionError(f"the kernel of {path} was not idle after {timeout:.0f} s ({state})")


def run_all_cells(browser, lab, notebook: str, screenshot_dir: Path | None) -> dict:
    """Open a notebook, run every cell from the Run menu, and report what rendered."""
    base, token = lab
    page = browser.new_page(viewport={"width": 1500, "height": 1100})
    try:
        workspace = Path(notebook).stem.replace("_", "-")
        page.goto(f"{base}/lab/workspaces/{workspace}/tree/notebooks/{notebook}?token={token}")
        panel = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)")
        panel.locator(".jp-Cell").first.wait_for(timeout=60_000)
        wait_for_idle_kernel(lab, f"notebooks/{notebook}")
        page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
        page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
        prompts = panel.locator(".jp-CodeCell .jp-InputArea-prompt")

        def finished() -> bool:
            texts = prompts.all_inner_texts()
            return bool(texts) and all("*" not in t and t.strip() != "[ ]:" for t in texts)

        deadline = time.monotonic() + 120
        errors = panel.locator(f"{OUTPUT}[data-mime-type='application/vnd.jupyter.stderr']")
        while not finished() and time.monotonic() < deadline:
            if errors.filter(has_text="Error").count():
                break  # JupyterLab stops running after an error; the rest stay unexecuted
            page.wait_for_timeout(500)
        result = {
            "svg_graphs": panel.locator(f"{OUTPUT}[data-mime-type='image/svg+xml'] img").count(),
            "images": panel.locator(f"{OUTPUT}[data-mime-type='image/png'] img").count(),
            "errors": [t[-300:] for t in errors.all_inner_texts() if "Error" in t],
            "finished": finished(),
            "sliders": panel.locator(".widget-slider, .jupyter-widget-slider").count(),
        }
        if screenshot_dir is not None:
            screenshot_dir.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot_dir / f"{Path(notebook).stem}.png"))
        if result["sliders"]:
            result.update(move_slider(page, panel, screenshot_dir))
        return result
    finally:
        page.close()


def move_slider(page, panel, screenshot_dir: Path | None) -> dict:
    """Press the right arrow twice on the freeze-depth slider; report whether the graph redrew."""
    demo = panel.locator(".widget-vbox").first
    demo.scroll_into_view_if_needed()
    graph = demo.locator("[data-mime-type='image/svg+xml'] img").first
    before = graph.get_attribute("src")
    demo.locator(".noUi-handle").first.focus()
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    deadline = time.monotonic() + 30
    while graph.get_attribute("src") == before and time.monotonic() < deadline:
        page.wait_for_timeout(250)
    page.wait_for_timeout(500)
    if screenshot_dir is not None:
        demo.screenshot(path=str(screenshot_dir / "slider_after_two_steps.png"))
    return {
        "slider_redrew": graph.get_attribute("src") != before,
        "slider_readout": demo.locator(".widget-readout").first.inner_text().strip(),
    }


def _screenshot_dir() -> Path | None:
    folder = os.environ.get("BROWSER_SCREENSHOTS")
    return Path(folder) if folder else None


def test_notebook_runs_in_a_real_browser_with_graphs_and_plots(browser, lab):
    result = run_all_cells(browser, lab, DEMO_NOTEBOOK, _screenshot_dir())
    assert result["errors"] == [], result["errors"]
    assert result["finished"], "not every cell finished running"
    assert result["svg_graphs"] > 0, "no autograd graph (SVG) rendered"
    assert result["images"] > 0, "no matplotlib plot rendered"
    assert result["sliders"] > 0, "the freeze-depth slider did not render"
    assert result["slider_readout"] == "2", result
    assert result["slider_redrew"], "moving the slider did not redraw the graph"


def test_the_check_fails_when_a_cell_errors(browser, lab):
    result = run_all_cells(browser, lab, "broken.ipynb", None)
    assert any("deliberately broken" in e for e in result["errors"]), result
    assert not result["finished"], "cells after the error should not have run"
