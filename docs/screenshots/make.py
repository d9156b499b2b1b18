"""Regenerate the screenshots in this folder: the dashboard's Live tab on a CACR run and on an
InfoNCE run, its Compare tab, its Study tab (with ``--study DIR``), and notebooks 01 and 02 as
exported to HTML, all in headless Chromium (1280 px wide).

    .venv/bin/python docs/screenshots/make.py                 # a few minutes on a 2-core CPU
    .venv/bin/python docs/screenshots/make.py --runs /tmp/shots-runs --smoke --max-steps 30
    .venv/bin/python docs/screenshots/make.py --study results/cpu-digits --no-notebooks

The two runs are the page's classroom mode (``cacr_lab.config.PRESETS["classroom"]``), trained
into ``--runs`` (a temporary folder by default; an existing finished run of the same config is
reused). The notebooks are executed by ``jupyter nbconvert --to html --execute`` with their runs
in a temporary folder (``--smoke``: their CI mode, faster and smaller). Every dashboard picture is
checked as tests/test_app_browser.py checks it (no overlapping titles, no panel without data or
message); a problem is printed and the script exits 1 after writing all pictures. Needs
Debian's chromium and chromium-driver, like the browser test whose helpers it uses.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
WIDTH = 1280
MAX_BYTES = 400_000  # per PNG: larger ones are reduced to a palette
NOTEBOOK_PART = 2400  # px: a notebook's page is cut into parts of at most this height
NOTEBOOKS = {
    "notebook-01": "01_attraction_and_repulsion.ipynb",
    "notebook-02": "02_cacr_vs_contrastive.ipynb",
}


def browser_helpers():
    """tests/_browser.py: the browser tests' server, browser and picture checks."""
    sys.path.insert(0, str(ROOT / "tests"))
    import _browser

    return _browser


def shrink(path: Path) -> None:
    """A PNG over MAX_BYTES is stored with a 128-colour palette (charts keep their colours)."""
    if path.stat().st_size <= MAX_BYTES:
        return
    from PIL import Image

    with Image.open(path) as img:
        img.convert("RGB").quantize(colors=128).save(path, optimize=True)


def train_runs(h, root: Path, max_steps: int | None) -> dict[str, str]:
    """Classroom-mode CACR and InfoNCE runs under ``root``; {method: run name}."""
    from cacr_lab.config import PRESETS
    from cacr_lab.train import TrainConfig, train

    names = {"cacr": "cacr-classroom", "infonce": "infonce-classroom"}
    for method, name in names.items():
        print(f"training {name} …", flush=True)
        config = TrainConfig(method=method, max_steps=max_steps, **PRESETS["classroom"])
        train(config, root / name, reuse=True, progress=False)
    return names


def dashboard(
    h, runs_root: Path, names: dict[str, str], tmp: Path, study: Path | None = None
) -> list[str]:
    """The three dashboard pictures (four with ``study``: a ``cacr-lab study`` folder on the
    Study tab); returns the problems the picture check found."""
    port = h.free_port()
    server = h.start_server(runs_root, port, tmp / "streamlit.log")
    driver, problems = None, []
    try:
        h.wait_healthy(port, server)
        driver = h.make_driver(tmp / "chromium-profile", width=WIDTH, height=2400)
        driver.get(f"http://127.0.0.1:{port}/")
        h.wait_until(lambda: "Watch run" in h.body_text(driver), 120, "the Live tab")
        for method, name in names.items():
            h.open_tab(driver, "Live run")
            h.select_option(driver, "watch", name)
            h.wait_for_charts(driver, [h.WEIGHTS_TITLE, f"{h.UMAP_TITLE} · {name}", "Evaluation"])
            driver.execute_script("document.activeElement.blur()")
            problems += [f"live {method}: {p}" for p in h.picture_problems(driver)]
            save(h, driver, HERE / f"live-{method}.png")
        h.open_tab(driver, "Compare runs")
        for name in names.values():
            h.select_option(driver, "compare", name)
        h.wait_for_charts(driver, ["Training loss", "Evaluation", h.UMAP_TITLE])
        driver.execute_script("document.activeElement.blur()")
        problems += [f"compare: {p}" for p in h.picture_problems(driver)]
        compare = HERE / "compare.png"
        save(h, driver, compare)
        if study is not None:
            driver.set_window_size(WIDTH, 2400)
            h.open_tab(driver, "Study")
            # A study under the repository is typed as a relative path: the page runs from there,
            # and the picture then shows no machine's folder names.
            shown = study.resolve()
            shown = shown.relative_to(ROOT) if shown.is_relative_to(ROOT) else shown
            h.type_study_folder(driver, str(shown))
            h.wait_for_charts(driver, ["CACR − baseline, paired by seed"])
            driver.execute_script("document.activeElement.blur()")
            problems += [f"study: {p}" for p in h.picture_problems(driver)]
            save(h, driver, HERE / "study.png")
    finally:
        if driver is not None:
            driver.quit()
        h.stop_process_group(server)
    return problems


def fit_window(driver) -> None:
    """Make the window as tall as the page's main column, so one picture holds all of it."""
    height = driver.execute_script(
        "const e = document.querySelector('[data-testid=stMain]') ||"
        " document.querySelector('section.main');"
        "return e ? e.scrollHeight : document.documentElement.scrollHeight;"
    )
    driver.set_window_size(WIDTH, int(height) + 140)
    time.sleep(2.0)  # the charts' relayout


def save(h, driver, path: Path) -> None:
    fit_window(driver)
    h.screenshot(driver, path)
    shrink(path)
    print(f"wrote {path.relative_to(ROOT)} ({path.stat().st_size // 1000} kB)", flush=True)


def export_notebook(notebook: str, out: Path, runs: Path, smoke: bool) -> Path:
    """``notebooks/<notebook>`` executed and exported to HTML in ``out``; returns the file."""
    from cacr_lab.figures import mathjax_url

    env = os.environ | {"CACR_LAB_RUNS": str(runs), "PYTHONPATH": str(ROOT)}
    if smoke:
        env["CACR_LAB_SMOKE"] = "1"
    jupyter = Path(sys.executable).with_name("jupyter")
    cmd = [str(jupyter), "nbconvert", "--to", "html", "--execute", "--output-dir", str(out)]
    cmd += [f"--HTMLExporter.mathjax_url={mathjax_url()}"]  # formulas typeset offline too
    cmd += ["--ExecutePreprocessor.timeout=900", str(ROOT / "notebooks" / notebook)]
    for attempt in (1, 2):  # a kernel's start once hung, idle, on a loaded machine: retry once
        try:
            subprocess.run(
                cmd,
                check=True,
                env=env,
                cwd=ROOT / "notebooks",
                timeout=900,
                stdin=subprocess.DEVNULL,
            )
            break
        except subprocess.TimeoutExpired:
            if attempt == 2:
                raise
    return out / Path(notebook).with_suffix(".html").name


def notebook_pictures(h, html: Path, stem: str, tmp: Path) -> list[Path]:
    """The exported page in Chromium, whole, cut into parts of at most NOTEBOOK_PART px."""
    from PIL import Image

    driver = h.make_driver(tmp / f"profile-{stem}", width=WIDTH, height=1000)
    try:
        driver.get(html.as_uri())
        h.wait_until(
            lambda: driver.execute_script("return document.readyState") == "complete", 60, "page"
        )
        time.sleep(3.0)  # plotly draws its figures after the load
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(WIDTH, height + 150)
        time.sleep(2.0)
        whole = tmp / f"{stem}.png"
        driver.save_screenshot(str(whole))
    finally:
        driver.quit()
    for old in HERE.glob(f"{stem}-*.png"):
        old.unlink()
    parts = []
    with Image.open(whole) as img:
        for i, top in enumerate(range(0, img.height, NOTEBOOK_PART), start=1):
            path = HERE / f"{stem}-{i}.png"
            img.crop((0, top, img.width, min(top + NOTEBOOK_PART, img.height))).save(path)
            shrink(path)
            print(f"wrote {path.relative_to(ROOT)} ({path.stat().st_size // 1000} kB)")
            parts.append(path)
    return parts


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=Path, default=None, help="runs folder (default: a temp one)")
    p.add_argument("--smoke", action="store_true", help="execute the notebooks in smoke mode")
    p.add_argument(
        "--max-steps", type=int, default=None, help="cut the two runs short (a quick look)"
    )
    p.add_argument(
        "--study",
        type=Path,
        default=None,
        help="a study folder (cacr-lab study --out) for study.png",
    )
    p.add_argument("--no-notebooks", action="store_true", help="only the dashboard pictures")
    p.add_argument("--no-dashboard", action="store_true", help="only the notebook pictures")
    args = p.parse_args()
    sys.path.insert(0, str(ROOT))
    h = browser_helpers()
    missing = h.browser_missing()
    if missing:
        print(f"cannot take screenshots: {missing}", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="screenshots_"))
    runs_root = args.runs or tmp / "runs"
    problems = []
    if not args.no_dashboard:
        names = train_runs(h, runs_root, args.max_steps)
        problems = dashboard(h, runs_root, names, tmp, args.study)
    if not args.no_notebooks:
        for stem, notebook in NOTEBOOKS.items():
            print(f"executing {notebook} …", flush=True)
            html = export_notebook(notebook, tmp / "html", tmp / "notebook-runs", args.smoke)
            notebook_pictures(h, html, stem, tmp)
    for line in problems:
        print(f"problem: {line}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
