"""The dashboard's browser helpers: `streamlit run app/main.py` on a free loopback port, headless
Chromium (Debian's ``chromium`` and ``chromium-driver``; ``make test`` installs them), waiting
for the page, pressing its buttons, reading its plotly charts and checking their pictures.

Shared by the browser tests (tests/test_app_browser.py, tests/test_app_lens_browser.py,
tests/test_notebook_export.py, which import it by name: tests/conftest.py puts this folder on
``sys.path``), ``benchmarks/bench_app.py`` and ``docs/screenshots/make.py``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

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


# --------------------------------------------------------------------------------------------
# The page's pictures: overlapping titles, panels with neither data nor a message
# --------------------------------------------------------------------------------------------

# Every visible plotly chart of the page (a hidden tab's charts have no size): its titles
# (figure title, subplot titles and notes (annotations), axis and legend titles) with their
# boxes, and per subplot (its plot area: the drag rectangle) whether marks are drawn in it and
# which annotation texts lie inside it.
_FIGURES_JS = r"""
const visible = e => { const r = e.getBoundingClientRect(); return r.width > 0 && r.height > 0; };
const box = e => { const r = e.getBoundingClientRect();
  return {x0: r.left, y0: r.top, x1: r.right, y1: r.bottom}; };
const inside = (b, a) => { const cx = (b.x0 + b.x1) / 2, cy = (b.y0 + b.y1) / 2;
  return cx >= a.x0 && cx <= a.x1 && cy >= a.y0 && cy <= a.y1; };
const drawn = g => Array.from(g.querySelectorAll('path, image, text')).some(e => {
  if (!visible(e)) return false;
  if (e.tagName === 'path') { const d = e.getAttribute('d') || '';
    return d.length > 4 && d !== 'M0,0Z'; }
  return e.tagName !== 'text' || e.textContent.trim() !== ''; });
return Array.from(document.querySelectorAll('.js-plotly-plot')).filter(visible).map((p, i) => {
  const title = (p.querySelector('.gtitle') || {}).textContent || '';
  const titles = Array.from(p.querySelectorAll(
      '.gtitle, .annotation-text, .xtitle, .ytitle, .legendtitletext'))
    .filter(e => visible(e) && e.textContent.trim() !== '')
    .map(e => ({text: e.textContent.trim(), cls: e.getAttribute('class'), box: box(e)}));
  const notes = Array.from(p.querySelectorAll('.annotation')).filter(visible)
    .map(e => ({text: e.textContent.trim(), box: box(e)})).filter(n => n.text !== '');
  const panels = Array.from(p.querySelectorAll('.draglayer > g')).map(g => {
    const drag = g.querySelector('.nsewdrag');
    if (!drag || !visible(drag)) return null;
    const id = Array.from(g.classList).find(c => c !== 'draglayer');
    const layer = p.querySelector('.cartesianlayer .subplot.' + id + ' .overplot');
    const area = box(drag);
    return {id: id, data: !!layer && drawn(layer),
            messages: notes.filter(n => inside(n.box, area)).map(n => n.text)};
  }).filter(x => x);
  return {index: i, title: title, titles: titles, panels: panels, box: box(p)};
});
"""


def page_figures(driver) -> list[dict]:
    """The visible plotly charts: title, titles with boxes, panels with data / messages."""
    return driver.execute_script(_FIGURES_JS)


def overlapping_titles(figure: dict, tolerance: float = 1.0) -> list[tuple[str, str]]:
    """Pairs of one chart's titles whose boxes intersect (by more than ``tolerance`` px)."""
    out, titles = [], figure["titles"]
    for i, a in enumerate(titles):
        for b in titles[i + 1 :]:
            ab, bb = a["box"], b["box"]
            w = min(ab["x1"], bb["x1"]) - max(ab["x0"], bb["x0"])
            h = min(ab["y1"], bb["y1"]) - max(ab["y0"], bb["y0"])
            if w > tolerance and h > tolerance:
                out.append((a["text"], b["text"]))
    return out


def picture_problems(driver) -> list[str]:
    """What is wrong with the page's visible charts: titles that overlap, a panel that shows
    neither data nor a message; one line each (empty: nothing)."""
    problems = []
    for fig in page_figures(driver):
        name = fig["title"] or f"chart {fig['index']}"
        for a, b in overlapping_titles(fig):
            problems.append(f"{name}: titles overlap: {a!r} / {b!r}")
        if not fig["panels"] and not any(t["cls"] == "annotation-text" for t in fig["titles"]):
            problems.append(f"{name}: no panel and no message")
        for panel in fig["panels"]:
            if not panel["data"] and not panel["messages"]:
                problems.append(f"{name}: panel {panel['id']} has neither data nor a message")
    return problems


def select_option(driver, key: str, option: str) -> None:
    """Choose ``option`` in the page's selectbox / multiselect with Streamlit key ``key``."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = driver.find_element(By.CSS_SELECTOR, f".st-key-{key} input")
    box.click()
    box.send_keys(option)
    time.sleep(0.3)
    box.send_keys(Keys.ENTER)
    time.sleep(0.3)
    box.send_keys(Keys.ESCAPE)


def open_tab(driver, label: str) -> None:
    from selenium.webdriver.common.by import By

    tabs = driver.find_elements(By.CSS_SELECTOR, "[role=tab]")
    next(t for t in tabs if label in t.text).click()


def wait_for_charts(driver, titles: list[str], timeout: float = 120.0) -> None:
    """Until a visible chart title starts with each of ``titles`` and the page stopped
    running (no "Running..." status widget)."""

    def flat(text: str) -> str:  # a title wrapped onto lines reads without its line breaks
        return "".join(text.replace("\u200b", " ").split())

    def ready() -> bool:
        shown = [flat(f["title"]) for f in page_figures(driver)]
        if not all(any(t.startswith(flat(w)) for t in shown) for w in titles):
            return False
        return not driver.execute_script(
            "return !!document.querySelector('[data-testid=stStatusWidget]')"
        )

    wait_until(ready, timeout, f"charts {titles}")
    time.sleep(1.0)  # plotly's last relayout


def screenshot(driver, path: Path, top: bool = True) -> Path:
    """Save the window as a PNG at ``path`` (scrolled to the top of the page and sidebar)."""
    if top:
        driver.execute_script(
            "for (const s of ['[data-testid=stSidebarContent]', '[data-testid=stMain]',"
            " 'section.main']) { const e = document.querySelector(s); if (e) e.scrollTop = 0; }"
            "window.scrollTo(0, 0);"
        )
        time.sleep(0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(path))
    return path


def type_study_folder(driver, folder: str) -> None:
    """Replace the Study tab's folder with ``folder`` and commit it (Enter)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = driver.find_element(By.CSS_SELECTOR, ".st-key-study_folder input")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(Keys.DELETE)
    box.send_keys(folder, Keys.ENTER)
    wait_until(lambda: box.get_attribute("value") == folder, 10, "the study folder")
