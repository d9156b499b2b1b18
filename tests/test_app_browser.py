"""End to end in a real browser: `streamlit run app/main.py` on a free loopback port, headless
Chromium presses Start on digits, the weight histograms and the UMAP appear, Stop stops the run.

Needs Debian's ``chromium`` and ``chromium-driver`` (``make test`` installs them); skips with the
reason where they are missing. The helpers here are also what ``benchmarks/bench_app.py`` uses.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("CACR_LAB_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CACR_LAB_CHROMEDRIVER", "/usr/bin/chromedriver")
WEIGHTS_TITLE = "Conditional weights at step"
UMAP_TITLE = "UMAP of the embedding sample"


def browser_missing() -> str | None:
    """Why the browser test cannot run here, or None."""
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not (Path(path).is_file() and os.access(path, os.X_OK)):
            return f"{path} not found: install Debian's {package} package (make test does)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(runs_root: Path, port: int, log_path: Path) -> subprocess.Popen:
    """`streamlit run app/main.py` on 127.0.0.1:port, reading and writing runs in runs_root."""
    env = os.environ | {"CACR_LAB_RUNS": str(runs_root)}
    cmd = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        "app/main.py",
        "--server.address",
        "127.0.0.1",
        "--server.port",
        str(port),
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
    ]
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


def wait_healthy(port: int, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                if r.read().strip() == b"ok":
                    return
        except OSError:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"streamlit not healthy on port {port} after {timeout:.0f} s")


def stop_process_group(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM the process (and its group), then SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout)


def kill_trainers(runs_root: Path) -> None:
    """SIGKILL the trainers still writing under ``runs_root`` (a test's own temp folder), found
    by their command line: one may still be starting, before its status.json names its pid."""
    needle = str(runs_root).encode()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if b"cacr_lab" in args and any(needle in a for a in args):
            try:
                os.kill(int(cmdline.parent.name), signal.SIGKILL)
            except ProcessLookupError:
                pass


def make_driver(profile_dir: Path, width: int = 1600, height: int = 1500):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-extensions",
        f"--user-data-dir={profile_dir}",
        f"--window-size={width},{height}",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    return driver


def chart_titles(driver) -> list[str]:
    """Titles of the plotly charts drawn on the page."""
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('.js-plotly-plot .gtitle'))"
        ".map(e => e.textContent);"
    )


def wait_until(predicate: Callable[[], object], timeout: float, what: str, poll: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def button(driver, key: str):
    """The page's button with Streamlit key ``key`` (not the toolbar's own Stop), or None."""
    from selenium.webdriver.common.by import By

    found = driver.find_elements(By.CSS_SELECTOR, f".st-key-{key} button")
    return found[0] if found else None


def open_page(driver, port: int, expect: str) -> None:
    """Load the page and wait until its first run has drawn ``expect``."""
    driver.get(f"http://127.0.0.1:{port}/")
    wait_until(lambda: expect in body_text(driver), 90, repr(expect))
    wait_until(
        lambda: button(driver, "start") is not None and button(driver, "start").is_enabled(),
        30,
        "the Start button",
    )


def type_run_name(driver, name: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = driver.find_element(By.XPATH, "//input[starts-with(@aria-label, 'Run name')]")
    box.send_keys(name, Keys.ENTER)
    wait_until(lambda: box.get_attribute("value") == name, 10, "the run name")
    time.sleep(1.0)  # let the rerun that commits the name finish before pressing Start


def press_start_and_wait(driver, timeout: float = 120.0) -> dict[str, float]:
    """Press Start; return seconds until the first weight histogram and the first UMAP."""
    button(driver, "start").click()
    t0 = time.monotonic()
    seen: dict[str, float] = {}
    while len(seen) < 2:
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(
                f"after {timeout:.0f} s only {sorted(seen)} appeared; charts: "
                f"{chart_titles(driver)}"
            )
        titles = chart_titles(driver)
        for key, prefix in (("weights", WEIGHTS_TITLE), ("umap", UMAP_TITLE)):
            if key not in seen and any(t.startswith(prefix) for t in titles):
                seen[key] = time.monotonic() - t0
        time.sleep(0.1)
    return seen


def body_text(driver) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.TAG_NAME, "body").text


@pytest.mark.slow
@pytest.mark.skipif(browser_missing() is not None, reason=browser_missing() or "")
def test_start_in_a_browser_shows_weights_and_umap_then_stop(tmp_path):
    runs_root = tmp_path / "runs"
    port = free_port()
    server = start_server(runs_root, port, tmp_path / "streamlit.log")
    driver = None
    try:
        wait_healthy(port, server)
        driver = make_driver(tmp_path / "chromium-profile")
        open_page(driver, port, "No runs yet")
        type_run_name(driver, "browser-run")
        times = press_start_and_wait(driver, timeout=150)
        run_dir = runs_root / "browser-run"
        assert (run_dir / "config.json").is_file() and (run_dir / "train.log").is_file()

        titles = chart_titles(driver)
        assert any(t.startswith("Training loss") for t in titles), titles
        assert any(t.startswith(UMAP_TITLE + " · browser-run") for t in titles), titles
        text = body_text(driver)
        assert "browser-run" in text and "cacr" in text
        assert "running" in text or "finished" in text
        shot = tmp_path / "dashboard.png"
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
        print(
            f"weights after {times['weights']:.1f} s, UMAP after {times['umap']:.1f} s; "
            f"screenshot {shot}"
        )

        wait_until(lambda: button(driver, "stop_browser-run"), 30, "the Stop button").click()
        wait_until(lambda: "stopped at step" in body_text(driver), 60, "the stopped status")
        status = json.loads((run_dir / "status.json").read_text())
        assert status["state"] == "stopped"
    finally:
        if driver is not None:
            driver.quit()
        stop_process_group(server)
        kill_trainers(runs_root)
        shutil.rmtree(tmp_path / "chromium-profile", ignore_errors=True)
    assert server.poll() is not None
