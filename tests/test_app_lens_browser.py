"""The "query under the lens" panel in a real browser, on a digits run, with a screenshot.

`streamlit run app/main.py` on a free loopback port serves a runs folder holding one short
CACR run on digits (trained here); headless Chromium opens the Live tab, waits for the lens
panel, picks another query in its select box, and saves the panel as a PNG. With
``CACR_LAB_UPDATE_SCREENSHOTS=1`` the PNG replaces ``docs/lens.png`` (the README's picture).

The server and browser helpers are tests/_browser.py's; skips with the reason where
chromium, chromedriver or selenium are missing.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import _browser as web
import pytest

from cacr_lab.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]


LENS_TITLE = "Query {q} under the lens"


def lens_run(root: Path) -> Path:
    """A short CACR run on digits: enough steps for the weights to leave uniform."""
    config = TrainConfig(
        dataset="digits",
        method="cacr",
        epochs=2,
        batch_size=128,
        positives=4,
        eval_every=1,
        snapshot_size=256,
        knn_k=50,
    )
    return train(config, root / "cacr-digits-lens", progress=False)


def lens_chart(driver, q: int):
    """The plotly chart whose title starts with the lens title of query ``q``, or None."""
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('.js-plotly-plot')).find("
        "p => (p.querySelector('.gtitle') || {}).textContent?.startsWith(arguments[0]));",
        LENS_TITLE.format(q=q),
    )


def pick_query(driver, q: int) -> None:
    """Choose query ``q`` in the lens panel's select box (a Streamlit baseweb select)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = driver.find_element(By.CSS_SELECTOR, ".st-key-lens_query_cacr-digits-lens input")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", box)
    box.click()
    box.send_keys(f"query {q} ", Keys.ENTER)


@pytest.mark.slow
@pytest.mark.skipif(web.browser_missing() is not None, reason=web.browser_missing() or "")
def test_the_lens_panel_in_a_browser(tmp_path):
    runs_root = tmp_path / "runs"
    lens_run(runs_root)
    port = web.free_port()
    server = web.start_server(runs_root, port, tmp_path / "streamlit.log")
    driver = None
    try:
        web.wait_healthy(port, server)
        driver = web.make_driver(tmp_path / "profile", width=1400, height=1200)
        driver.get(f"http://127.0.0.1:{port}/")
        web.wait_until(lambda: "cacr-digits-lens" in web.body_text(driver), 90, "the run")
        web.wait_until(lambda: lens_chart(driver, 0), 120, "the lens panel of query 0")
        titles = web.chart_titles(driver)
        assert any(t.startswith("False negatives") for t in titles), titles
        pick_query(driver, 3)
        chart = web.wait_until(lambda: lens_chart(driver, 3), 60, "the lens panel of query 3")
        # 3 rows of thumbnails and the comparison: the images are drawn
        images = driver.execute_script(
            "return arguments[0].querySelectorAll('.layer-above image, .imagelayer image').length;",
            chart,
        )
        assert images >= 3 + 2 * 8, images
        driver.execute_script("arguments[0].scrollIntoView({block: 'start'});", chart)
        time.sleep(1.0)  # let the scroll settle before the picture
        shot = tmp_path / "lens.png"
        assert chart.screenshot(str(shot)) and shot.stat().st_size > 20_000
        if os.environ.get("CACR_LAB_UPDATE_SCREENSHOTS") == "1":
            shutil.copyfile(shot, ROOT / "docs" / "lens.png")
    finally:
        if driver is not None:
            driver.quit()
        web.stop_process_group(server)
