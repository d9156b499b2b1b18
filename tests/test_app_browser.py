"""End to end in a real browser: `streamlit run app/main.py` on a free loopback port, headless
Chromium presses Start on digits, the weight histograms and the UMAP appear, Stop stops the run;
and per tab (Live run on a CACR run and on an InfoNCE run, Compare runs, Study) a screenshot and a
check of the page's charts: no two titles overlap, every panel shows data or a message in itself.

Needs Debian's ``chromium`` and ``chromium-driver`` (``make test`` installs them); skips with the
reason where they are missing. The server and browser helpers are tests/_browser.py's.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from _browser import (
    UMAP_TITLE,
    WEIGHTS_TITLE,
    body_text,
    browser_missing,
    button,
    chart_titles,
    free_port,
    kill_trainers,
    make_driver,
    open_page,
    open_tab,
    page_figures,
    picture_problems,
    press_start_and_wait,
    screenshot,
    select_option,
    start_server,
    stop_process_group,
    type_run_name,
    type_study_folder,
    wait_for_charts,
    wait_healthy,
    wait_until,
)


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


# --------------------------------------------------------------------------------------------
# One test per tab: a screenshot, no overlapping titles, no panel without data or message
# --------------------------------------------------------------------------------------------

TAB_RUNS = {"cacr": "cacr-run", "infonce": "infonce-run"}


def train_tab_runs(root: Path, **overrides) -> None:
    """Finished digits runs of CACR and InfoNCE under ``root`` (tiny unless ``overrides``)."""
    from cacr_lab.train import TrainConfig, train

    base = dict(dataset="digits", epochs=1, max_steps=8, batch_size=64, log_every=1)
    base |= dict(eval_every_steps=4, snapshot_size=128, knn_k=20) | overrides
    for method, name in TAB_RUNS.items():
        train(TrainConfig(method=method, **base), root / name, reuse=True, progress=False)


@pytest.fixture(scope="module")
def tab_page(tmp_path_factory):
    """The page on two finished runs, in one browser for the module's tests."""
    if browser_missing() is not None:
        pytest.skip(browser_missing())
    tmp = tmp_path_factory.mktemp("tabs")
    runs_root = tmp / "runs"
    train_tab_runs(runs_root)
    port = free_port()
    server = start_server(runs_root, port, tmp / "streamlit.log")
    driver = None
    try:
        wait_healthy(port, server)
        driver = make_driver(tmp / "chromium-profile", width=1280, height=2400)
        driver.get(f"http://127.0.0.1:{port}/")
        wait_until(lambda: "Watch run" in body_text(driver), 90, "the Live tab")
        yield driver
    finally:
        if driver is not None:
            driver.quit()
        stop_process_group(server)
        shutil.rmtree(tmp / "chromium-profile", ignore_errors=True)


def check_pictures(driver, shot: Path, must_show: list[str]) -> None:
    """The tab's charts named by ``must_show`` are drawn, a screenshot is taken, and no chart
    has overlapping titles or a panel with neither data nor a message."""
    wait_for_charts(driver, must_show)
    assert screenshot(driver, shot).stat().st_size > 50_000
    assert picture_problems(driver) == []


@pytest.mark.slow
@pytest.mark.parametrize("method", list(TAB_RUNS))
def test_live_tab_pictures(tab_page, tmp_path, method):
    name = TAB_RUNS[method]
    open_tab(tab_page, "Live run")
    select_option(tab_page, "watch", name)
    check_pictures(
        tab_page,
        tmp_path / f"live-{method}.png",
        [WEIGHTS_TITLE, "Training loss", f"{UMAP_TITLE} · {name}", "Evaluation"],
    )
    # InfoNCE's panels without positives say so in the panel itself (issue 14 item 1)
    weights = next(f for f in page_figures(tab_page) if f["title"].startswith(WEIGHTS_TITLE))
    notes = [t["text"] for t in weights["titles"] if "annotation" in t["cls"]]
    assert any("not recorded" in n for n in notes) == (method == "infonce"), notes


@pytest.mark.slow
def test_compare_tab_pictures(tab_page, tmp_path):
    open_tab(tab_page, "Compare runs")
    for name in TAB_RUNS.values():
        select_option(tab_page, "compare", name)
    check_pictures(
        tab_page,
        tmp_path / "compare.png",
        ["Training loss", "Concentration", "Evaluation", f"{UMAP_TITLE} · cacr-run"],
    )
    titles = [f["title"] for f in page_figures(tab_page)]
    assert sum(t.startswith(UMAP_TITLE) for t in titles) == 2, titles


def make_tiny_study(out: Path) -> Path:
    """A real study on the toy points: CACR and InfoNCE, balanced and exponential, 2 seeds, 4
    steps (seconds)."""
    from cacr_lab.study import study

    overrides = dict(dataset="toy", epochs=1, batch_size=64, max_steps=4)
    kw = dict(methods="cacr,infonce", profiles="none,exponential", seeds=2, progress=False)
    return study("cpu-digits", out=out, overrides=overrides, **kw)


@pytest.mark.slow
def test_study_tab_pictures(tab_page, tmp_path):
    folder = make_tiny_study(tmp_path / "study")
    open_tab(tab_page, "Study")
    type_study_folder(tab_page, str(folder))
    check_pictures(
        tab_page,
        tmp_path / "study.png",
        [
            "CACR − baseline, paired by seed",
            "CACR's drop − baseline's drop",
            "Accuracy on the rarer",
        ],
    )
    assert "study cpu-digits: toy" in body_text(tab_page)
