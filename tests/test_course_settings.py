"""`make course` opens JupyterLab without the Jupyter-news pop-up, with no user settings."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OVERRIDES = Path(sys.prefix) / "share" / "jupyter" / "lab" / "settings" / "overrides.json"
NOTIFICATION = "@jupyterlab/apputils-extension:notification"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_overrides_that_make_installs_turn_off_the_news_pop_up() -> None:
    source = json.loads((ROOT / "tools" / "jupyterlab_overrides.json").read_text())
    assert source[NOTIFICATION]["fetchNews"] == "false"
    assert OVERRIDES.is_file(), f"{OVERRIDES} is missing: run `make setup` (make test does)"
    assert json.loads(OVERRIDES.read_text()) == source


def test_a_fresh_jupyterlab_reads_fetch_news_off(tmp_path: Path) -> None:
    """The server's settings API, with an empty user settings folder, defaults to no news."""
    port, token = _free_port(), secrets.token_hex(16)
    env = {**os.environ, "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "user-settings")}
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root",
         "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
         f"--ServerApp.root_dir={tmp_path}", f"--IdentityProvider.token={token}",
         f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/lab/api/settings/{NOTIFICATION}?token={token}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(url, timeout=2) as answer:
                    settings = json.load(answer)
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise AssertionError("JupyterLab did not start within 90 s") from None
                time.sleep(0.5)
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
    # JupyterLab applies overrides.json to the schema defaults; no user settings are set.
    assert settings["settings"] == {}
    defaults = settings["schema"]["properties"]
    assert defaults["fetchNews"]["default"] == "false"
    assert defaults["checkForUpdates"]["default"] is False
