"""How fast the live lab shows a new run on a busy machine: seconds from pressing Start (digits,
the page's classroom mode) to the first weight histogram, the first UMAP and the run's end in a
real browser, while a second training process runs; and the time of one UMAP refresh of the
embedding sample once warmed up.

    .venv/bin/python benchmarks/bench_app.py [--no-busy] [--no-classroom] [--screenshot PATH]

Busy (the default): before Start, a second ``python -m cacr_lab train`` (digits, 1000 epochs,
nice 0, outside the page's runs folder) starts, as a teacher's other work would; it is killed
once the measured run has finished. ``--no-classroom`` measures the form's defaults instead
(20 epochs; the run's end is then not waited for).

Targets on a 2-core CPU running a second training: first histogram < 10 s, the classroom run
finished < 120 s, first UMAP < 20 s, one UMAP refresh < 3 s. Drives headless Chromium with the
helpers of tests/_browser.py (Debian's chromium and chromium-driver). Writes nothing in
the repository except the optional screenshot.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def browser_helpers():
    """tests/_browser.py: the browser tests' server and browser helpers."""
    sys.path.insert(0, str(ROOT / "tests"))
    import _browser

    return _browser


def umap_refresh_seconds(run_dir: Path, repeats: int = 3) -> tuple[float, int]:
    """Median seconds of compute_umap on the run's latest embedding sample, after a warm-up."""
    from cacr_lab import figures
    from cacr_lab.runs import latest_snapshot

    snap = latest_snapshot(run_dir)
    figures.warm_up_umap()
    times = []
    for seed in range(repeats):
        start = time.perf_counter()
        figures.compute_umap(snap.embeddings, seed=seed)
        times.append(time.perf_counter() - start)
    return statistics.median(times), snap.embeddings.shape[0]


def page_umap_refresh(h, driver, run_dir: Path, index: int = 1, timeout: float = 120.0):
    """Seconds from snapshot number ``index`` (0-based) being written to its UMAP being on the
    page; None if the run never wrote it."""
    from cacr_lab.runs import list_snapshots

    def snapshot():
        snaps = list_snapshots(run_dir)
        return snaps[index] if len(snaps) > index else None

    try:
        snap = h.wait_until(snapshot, timeout, f"snapshot {index}", poll=0.05)
    except TimeoutError:
        return None
    written = time.time()  # polled every 50 ms, so within 0.05 s of the write
    step = int(snap.stem.split("_")[1])
    # The page wraps the title onto lines (textContent joins them without spaces) and puts
    # "step N (epoch E)" on a line of its own: compare with the spaces taken out.
    # A later snapshot may already have replaced it on the page: that one counts too.
    head = "".join(h.UMAP_TITLE.split())

    def shown(t: str) -> bool:
        flat = "".join(t.split())
        at = re.search(r"step(\d+)\(", flat)
        return flat.startswith(head) and run_dir.name in flat and bool(at) and int(at[1]) >= step

    h.wait_until(
        lambda: any(shown(t) for t in h.chart_titles(driver)),
        timeout,
        f"the UMAP of step {step} or later",
        poll=0.05,
    )
    return time.time() - written


def first_snapshot_after(run_dir: Path, clicked: float) -> float | None:
    """Seconds from pressing Start to the trainer writing its first snapshot."""
    from cacr_lab.runs import list_snapshots

    snaps = list_snapshots(run_dir)
    return snaps[0].stat().st_mtime - clicked if snaps else None


def start_busy_trainer(tmp: Path) -> subprocess.Popen:
    """A second training process at nice 0 (digits, 1000 epochs): the machine's other work."""
    cmd = [sys.executable, "-m", "cacr_lab", "train", "--dataset", "digits", "--epochs", "1000"]
    cmd += ["--run-dir", str(tmp / "busy-run"), "--no-progress"]
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    log = open(tmp / "busy.log", "ab")  # noqa: SIM115 -- kept open for the process's life
    return subprocess.Popen(
        cmd, cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )


def stop_busy_trainer(proc: subprocess.Popen | None) -> None:
    if proc is not None and proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def finished_after(run_dir: Path, clicked: float, timeout: float = 300.0) -> float | None:
    """Seconds from pressing Start to the run's status saying "finished" (None: not in time)."""
    status = run_dir / "status.json"
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            state = json.loads(status.read_text()).get("state")
        except (OSError, ValueError):
            state = None
        if state == "finished":
            return status.stat().st_mtime - clicked
        if state in ("failed", "stopped"):
            return None
        time.sleep(0.2)
    return None


def classroom_on(h, driver) -> None:
    """Switch the form's Classroom mode on and wait for its fields."""
    from selenium.webdriver.common.by import By

    driver.find_element(By.CSS_SELECTOR, ".st-key-classroom label").click()
    h.wait_until(
        lambda: driver.find_elements(By.CSS_SELECTOR, ".st-key-epochs_classroom input"),
        30,
        "the classroom form",
    )
    time.sleep(1.0)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--wait-before-start",
        type=float,
        default=10.0,
        help="seconds the page is open before Start is pressed (a user choosing "
        "options; the page warms UMAP up meanwhile)",
    )
    p.add_argument(
        "--busy",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run a second training process meanwhile (default: on)",
    )
    p.add_argument(
        "--classroom",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="start the run in the form's classroom mode (default: on)",
    )
    p.add_argument("--screenshot", type=Path, default=None, help="save a PNG of the page here")
    p.add_argument(
        "--screenshot-epoch",
        type=int,
        default=1,
        help="take the screenshot once the UMAP of this epoch's snapshot is shown",
    )
    args = p.parse_args()

    h = browser_helpers()
    missing = h.browser_missing()
    if missing:
        print(f"skipped: {missing}")
        return 0
    from selenium.common.exceptions import StaleElementReferenceException

    load_before = os.getloadavg()[0]
    tmp = Path(tempfile.mkdtemp(prefix="bench_app_"))
    runs_root, port = tmp / "runs", h.free_port()
    server = h.start_server(runs_root, port, tmp / "streamlit.log")
    driver = busy = None
    run_dir = runs_root / "bench-run"
    finished = None
    try:
        h.wait_healthy(port, server)
        driver = h.make_driver(tmp / "chromium-profile", height=1850)
        t_open = time.monotonic()
        h.open_page(driver, port, "No runs yet")
        page_load = time.monotonic() - t_open
        if args.classroom:
            classroom_on(h, driver)
        h.type_run_name(driver, run_dir.name)
        if args.busy:
            busy = start_busy_trainer(tmp)
        time.sleep(max(0.0, args.wait_before_start - (time.monotonic() - t_open)))
        load_at_start = os.getloadavg()[0]
        clicked = time.time()
        first = h.press_start_and_wait(driver, timeout=180)
        first_snapshot = first_snapshot_after(run_dir, clicked)
        refresh_page = page_umap_refresh(h, driver, run_dir)
        if args.classroom:
            finished = finished_after(run_dir, clicked)
        load_at_end = os.getloadavg()[0]
        busy_alive = busy is not None and busy.poll() is None
        if args.screenshot is not None:
            if args.screenshot_epoch > 1:
                page_umap_refresh(h, driver, run_dir, index=args.screenshot_epoch, timeout=300)
            args.screenshot.parent.mkdir(parents=True, exist_ok=True)
            driver.execute_script(  # show the top of the sidebar, not the run-name field
                "const s = document.querySelector('[data-testid=stSidebarContent]');"
                "if (s) { s.scrollTop = 0; }"
            )
            time.sleep(0.5)
            driver.save_screenshot(str(args.screenshot))
        stop = h.button(driver, f"stop_{run_dir.name}")
        if stop is not None:
            try:
                stop.click()
            except StaleElementReferenceException:  # the run ended and the page redrew it away
                pass
    finally:
        stop_busy_trainer(busy)
        if driver is not None:
            driver.quit()
        h.stop_process_group(server)
        h.kill_trainers(runs_root)
    refresh, n = umap_refresh_seconds(run_dir)
    results = {
        "page_load_s": round(page_load, 2),
        "start_pressed_after_open_s": args.wait_before_start,
        "start_to_first_snapshot_file_s": None
        if first_snapshot is None
        else round(first_snapshot, 2),
        "start_to_first_weight_histogram_s": round(first["weights"], 2),
        "start_to_first_umap_s": round(first["umap"], 2),
        "start_to_run_finished_s": None if finished is None else round(finished, 1),
        "mode": "classroom" if args.classroom else "form defaults",
        "second_training_process": bool(args.busy),
        "second_process_ran_throughout": busy_alive if args.busy else None,
        "snapshot_to_umap_on_page_s": None if refresh_page is None else round(refresh_page, 2),
        "umap_refresh_s": round(refresh, 3),
        "umap_points": n,
        "targets": {"histogram_s": 10, "umap_s": 20, "umap_refresh_s": 3, "classroom_run_s": 120},
        "cpus": os.cpu_count(),
        "load_average_1min_open_start_end": [
            round(load_before, 1),
            round(load_at_start, 1),
            round(load_at_end, 1),
        ],
        "python": sys.version.split()[0],
    }
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
