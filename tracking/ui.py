"""The MLflow UI as a user opens it: a local `mlflow server` over a store, and headless
Chromium (Debian's `chromium`, driven by Playwright) to look at its pages.

Used by docs/screenshots.py and by the tests that check what the UI reads.
"""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SQLITE_PREFIX = "sqlite:///"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def chromium_path() -> str | None:
    """The system Chromium Playwright drives; None where it is not installed."""
    return shutil.which("chromium") or (CHROMIUM if Path(CHROMIUM).exists() else None)


@contextmanager
def mlflow_server(
    tracking_uri: str, port: int | None = None, timeout: float = 180
) -> Iterator[str]:
    """Serves `tracking_uri` on 127.0.0.1 and yields the base URL; stops the server after."""
    port = port or free_port()
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        tracking_uri,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    if tracking_uri.startswith(SQLITE_PREFIX):
        # Runs keep the artifact location their experiment was created with; this is only
        # where a new experiment made through the server would put its files.
        store = Path(tracking_uri.removeprefix(SQLITE_PREFIX)).parent
        command += ["--artifacts-destination", str(store / "artifacts")]
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            _wait_healthy(url, server, timeout, log)
            yield url
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def _wait_healthy(url: str, server: subprocess.Popen, timeout: float, log) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            log.seek(0)
            tail = log.read().decode(errors="replace")[-2000:]
            raise RuntimeError(f"mlflow server exited with {server.returncode}:\n{tail}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.5)
    raise RuntimeError(f"mlflow server at {url} did not answer /health in {timeout:.0f} s")


@contextmanager
def chromium_page(width: int = 1400, height: int = 900):
    """A Playwright page in headless system Chromium."""
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    if executable is None:
        raise RuntimeError("no chromium found; install it with `apt-get install -y chromium`")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable, headless=True, args=CHROMIUM_FLAGS
        )
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            yield page
        finally:
            browser.close()
