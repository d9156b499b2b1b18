"""The dashboard (app/main.py) through Streamlit's AppTest: no runs, a finished run made by a real
short training, comparison, bad input, damaged run folders, and Start -> growing run -> Stop.

The charts are read back as the plotly specs the page sends to the browser.
"""

from __future__ import annotations

import ast
import base64
import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from cacr_lab.losses import LOSSES
from cacr_lab.runs import load_run, run_state
from cacr_lab.stats import t_interval
from cacr_lab.study import study
from cacr_lab.train import TrainConfig, train

APP = str(Path(__file__).resolve().parents[1] / "app" / "main.py")
TIMEOUT = 240  # one AppTest run; the first UMAP of a process compiles numba code


def app(root: Path, monkeypatch) -> AppTest:
    monkeypatch.setenv("CACR_LAB_RUNS", str(root))
    # The Study tab also looks in ./results: from the test's own folder, not a developer's.
    monkeypatch.chdir(root.parent)
    return AppTest.from_file(APP, default_timeout=TIMEOUT)


def charts(at: AppTest) -> dict[str, dict]:
    """{figure title: plotly spec} of every chart on the page."""
    specs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    return {s["layout"]["title"]["text"]: s for s in specs}


def chart(at: AppTest, title_start: str) -> dict:
    found = [s for t, s in charts(at).items() if t.startswith(title_start)]
    assert found, f"no chart titled {title_start!r}; have {list(charts(at))}"
    return found[0]


def trace_names(spec: dict) -> list[str]:
    return [d.get("name") for d in spec["data"]]


def values(data) -> np.ndarray:
    """A plotly spec's array: a list, or plotly's base64 typed array {"dtype", "bdata"}."""
    if isinstance(data, dict) and "bdata" in data:
        return np.frombuffer(base64.b64decode(data["bdata"]), dtype=data["dtype"])
    return np.asarray(data)


def texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A real (short) CACR training on imbalanced digits: what a user's finished run looks like."""
    root = tmp_path_factory.mktemp("runs")
    config = TrainConfig(
        dataset="digits",
        method="cacr",
        epochs=1,
        max_steps=4,
        batch_size=64,
        positives=2,
        imbalance="linear",
        log_every=1,
        snapshot_size=128,
        knn_k=20,
    )
    return train(config, root / "cacr-digits", progress=False)


def test_page_renders_with_no_runs(tmp_path, monkeypatch):
    at = app(tmp_path / "runs", monkeypatch).run()
    assert not at.exception
    assert "No runs yet" in texts(at.info)
    assert at.button(key="start").label == "Start" and not at.button(key="start").disabled
    assert at.selectbox(key="dataset").value == "digits"
    assert at.selectbox(key="method").options == list(LOSSES)
    # CACR's options with the paper's defaults for digits (the CIFAR-10 values)
    by_label = {n.label: n.value for n in at.sidebar.number_input}
    assert by_label["tau_pos"] == 1.0 and by_label["tau_neg"] == 0.9
    assert by_label["alpha"] == 1.0 and by_label["beta"] == 1.0
    assert at.sidebar.selectbox[2].label == "weighting"
    assert at.sidebar.selectbox[2].value == "full"
    at.selectbox(key="method").select("infonce").run()
    by_label = {n.label: n.value for n in at.sidebar.number_input}
    assert by_label["temperature"] == 0.5 and "tau_neg" not in by_label
    # the only chart is the theory picture to read the live panels by
    assert list(charts(at)) == ["Conditional weight of a negative against its squared distance"]
    names = trace_names(chart(at, "Conditional weight"))
    assert "infonce T=0.5 (implicit)" in names
    # ... drawn only for values the form accepts (it refuses tau_neg = 0)
    taus = [float(n.split("=")[1]) for n in names if n.startswith("cacr tau_neg=")]
    assert taus and min(taus) > 0
    assert at.session_state.live is False


def test_finished_run_shows_every_panel(finished_run, monkeypatch):
    at = app(finished_run.parent, monkeypatch).run()
    assert not at.exception
    assert not at.warning
    status = texts(at.markdown)
    assert "cacr-digits" in status and "finished · step 4/4" in status
    assert at.session_state.live is False  # a finished run is not refreshed

    # 1. loss and its CACR parts
    loss = trace_names(chart(at, "Training loss"))
    assert {
        "cacr · cacr-digits · loss",
        "cacr · cacr-digits · attraction",
        "cacr · cacr-digits · repulsion",
    } <= set(loss)
    # 2. weights: histograms of pi_pos and pi_neg, sharpening over time, weight vs distance
    hist = chart(at, "Conditional weights at step 4")
    assert trace_names(hist) == ["pi_pos", "pi_neg"]
    # binned on the server: 40 bars per side, fractions of all the weights summing to 1
    assert [len(values(d["x"])) for d in hist["data"]] == [40, 40]
    assert all(np.isclose(values(d["y"]).sum(), 1.0) for d in hist["data"])
    stats = trace_names(chart(at, "Concentration of the conditional weights"))
    assert "cacr · cacr-digits · pi_pos" in stats and "cacr · cacr-digits · pi_neg" in stats
    assert "query 0" in trace_names(chart(at, "Weight against squared distance"))
    # 3. UMAP of the embedding sample, coloured by class
    umap = chart(at, "UMAP of the embedding sample · cacr-digits")
    assert "step 4 (epoch" in umap["layout"]["title"]["text"]
    # in a half column the title is wrapped, not cut (each line fits 440 px at 16 px)
    assert all(
        len(re.sub(r"<[^>]*>", "", line)) * 16 * 0.55 <= 440
        for line in umap["layout"]["title"]["text"].split("<br>")
    )
    assert sum(len(values(d["x"])) for d in umap["data"]) == 128
    assert set(trace_names(umap)) <= {str(c) for c in range(10)} and len(umap["data"]) >= 5
    # 4. evaluation over time, and per-class accuracy for this imbalanced run
    assert "cacr · cacr-digits · knn_acc" in trace_names(chart(at, "Evaluation"))
    per_class = chart(at, "Per-class accuracy")
    assert per_class["data"][0]["name"] == "cacr · cacr-digits"
    assert len(values(per_class["data"][0]["y"])) == 10


def test_compare_overlays_runs_and_places_umaps_side_by_side(finished_run, tmp_path, monkeypatch):
    root = tmp_path / "runs"
    for name in ("cacr-a", "cacr-b"):
        shutil.copytree(finished_run, root / name)
    at = app(root, monkeypatch).run()
    at.multiselect(key="compare").select("cacr-a").select("cacr-b").run()
    assert not at.exception
    loss = trace_names(chart(at, "Training loss"))
    assert "cacr · cacr-a · loss" in loss and "cacr · cacr-b · loss" in loss
    # why pi_pos hardly moves, under the weight statistics
    assert "K positives are the other views of its own image" in texts(at.caption)
    stats = [
        t
        for s in charts(at).values()
        if s["layout"]["title"]["text"].startswith("Concentration")
        for t in trace_names(s)
    ]
    assert "cacr · cacr-a · pi_neg" in stats and "cacr · cacr-b · pi_neg" in stats
    umaps = [t for t in charts(at) if t.startswith("UMAP")]
    assert any("cacr-a" in t for t in umaps) and any("cacr-b" in t for t in umaps)
    per_class = chart(at, "Per-class accuracy")  # both runs are imbalanced (linear)
    assert {"cacr · cacr-a", "cacr · cacr-b"} <= set(trace_names(per_class))
    table = at.dataframe[0].value
    assert list(table["run"]) == ["cacr-a", "cacr-b"]  # in the order picked


def test_compare_gives_each_method_its_own_loss_axis(finished_run, tmp_path, monkeypatch):
    """CACR's loss (~ -1.5, d² units) and InfoNCE's (~ 4-6 nats) on one y-axis flattened
    CACR's curve; the page did not say that the units differ."""
    root = tmp_path / "runs"
    shutil.copytree(finished_run, root / "cacr-a")
    shutil.copytree(finished_run, root / "infonce-a")
    config = json.loads((root / "infonce-a" / "config.json").read_text())
    (root / "infonce-a" / "config.json").write_text(json.dumps({**config, "method": "infonce"}))
    at = app(root, monkeypatch).run()
    at.multiselect(key="compare").select("cacr-a").select("infonce-a").run()
    assert not at.exception
    loss = chart(at, "Training loss")
    axes = {d["name"].split(" · ")[0]: d.get("yaxis", "y") for d in loss["data"]}
    assert axes == {"cacr": "y", "infonce": "y2"}
    assert "infonce · infonce-a · −s⁺/T" in trace_names(loss)
    assert "not comparable across methods" in texts(at.caption)


@pytest.mark.parametrize(
    ("widget", "value", "message"),
    [
        ("tau_neg", -1.0, "tau_neg must be a positive finite number"),
        ("batch_size", 1, "batch_size must be an integer >= 2"),
        ("epochs", 0, "epochs must be an integer >= 1"),
        ("run_name", "../outside", "invalid run name '../outside'"),
        ("run_name", "a/b", "characters ['/'] not allowed"),
    ],
)
def test_bad_input_shows_the_library_message(tmp_path, monkeypatch, widget, value, message):
    at = app(tmp_path / "runs", monkeypatch).run()
    if widget == "tau_neg":
        next(n for n in at.sidebar.number_input if n.label == "tau_neg").set_value(value)
    elif widget == "run_name":
        at.text_input(key="run_name").set_value(value)
    else:
        at.number_input(key=widget).set_value(value)
    at.run()
    assert not at.exception
    assert message in texts(at.sidebar.error)
    assert at.button(key="start").disabled
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_an_existing_run_name_is_refused(finished_run, monkeypatch):
    at = app(finished_run.parent, monkeypatch).run()
    at.text_input(key="run_name").set_value("cacr-digits").run()
    assert "a run named 'cacr-digits' already exists" in texts(at.sidebar.error)


def sidebar_order(at: AppTest) -> list[tuple[str, str | None]]:
    """(element type, key) of the sidebar's elements, top to bottom (expanders opened)."""

    def walk(node) -> list:
        out = []
        for child in getattr(node, "children", {}).values():
            out.append((child.type, getattr(child, "key", None)))
            out += walk(child)
        return out

    return walk(at.sidebar)


@pytest.mark.parametrize(
    ("widget", "value", "field_key"),
    [
        ("batch_size", 1, "batch_size"),
        ("epochs", 0, "epochs"),
        ("tau_neg", -1.0, "opt_cacr_tau_neg_0.9"),
        ("snapshot_size", 1, "snapshot_size"),
        ("run_name", "a/b", "run_name"),
    ],
)
def test_the_form_error_sits_right_under_the_field_it_names(
    tmp_path, monkeypatch, widget, value, field_key
):
    """Issue 14 item 7: the message was drawn under the form, below the fold."""
    at = app(tmp_path / "runs", monkeypatch).run()
    if widget == "tau_neg":
        next(n for n in at.sidebar.number_input if n.label == "tau_neg").set_value(value)
    elif widget == "run_name":
        at.text_input(key="run_name").set_value(value)
    else:
        at.number_input(key=widget).set_value(value)
    at.run()
    order = sidebar_order(at)
    errors = [i for i, (kind, _) in enumerate(order) if kind == "error"]
    assert len(errors) == 1, order
    assert order[errors[0] - 1][1] == field_key, order  # the element just above the message
    assert texts(at.sidebar.error).count("\n") == 0  # one line, naming the value
    assert repr(value) in texts(at.sidebar.error)


def test_an_error_no_field_owns_shows_at_the_top_of_the_form(tmp_path, monkeypatch):
    """The image folder's message sits under the dataset choice; any other above the form."""
    at = app(tmp_path / "runs", monkeypatch).run()
    import sidebar  # the page's module, imported by the script's first run

    assert sidebar.field_named("unknown dataset 'x'; choose one of ...", {"top": 0}) == "top"
    assert sidebar.field_named("image folder '/' is outside ...", {"folder": 0}) == "folder"
    assert sidebar.field_named("positives=9 and batch_size=4096 need", {"positives": 0}) == (
        "positives"
    )
    at.run()
    assert sidebar_order(at)[:2] == [("header", None), ("empty", None)]  # the top slot


def test_classroom_mode_fills_the_form_from_the_preset_and_starts_at_nice_0(tmp_path, monkeypatch):
    """One switch: the preset's values (cacr_lab.config.PRESETS) in the form, its flags in the
    trainer's command, the trainer at the page's own priority; off again: the defaults."""
    from cacr_lab import runs
    from cacr_lab.config import PRESETS, default

    started = []

    class Done:
        pid = 1

        def poll(self):
            return 0

    def fake_start(path, argv, nice, threads):
        started.append((argv, nice, threads))
        return Done()

    monkeypatch.setattr(runs, "start_process", fake_start)
    preset = PRESETS["classroom"]
    at = app(tmp_path / "runs", monkeypatch).run()
    at.toggle(key="classroom").set_value(True).run()
    assert not at.exception
    for name in ("epochs", "batch_size", "eval_every_steps", "snapshot_size"):
        assert at.number_input(key=f"{name}_classroom").value == preset[name], name
    assert not [s for s in at.sidebar.selectbox if s.key == "dataset"]  # digits, fixed
    at.text_input(key="run_name").set_value("lesson").run()
    at.button(key="start").click().run()
    assert not at.exception
    argv, nice, threads = started[0]
    flags = dict(zip(argv[::2], argv[1::2])) | dict(zip(argv[1::2], argv[2::2]))
    assert nice == 0
    assert 1 <= threads <= (os.cpu_count() or 1)  # the idle cores only (runs.spare_cores)
    assert flags["--dataset"] == "digits" and flags["--epochs"] == str(preset["epochs"])
    assert flags["--eval-every-steps"] == str(preset["eval_every_steps"])
    assert flags["--snapshot-size"] == str(preset["snapshot_size"])
    at.toggle(key="classroom").set_value(False).run()
    assert at.number_input(key="epochs").value == default("epochs")
    assert at.number_input(key="eval_every_steps").value == 0


def test_a_damaged_run_warns_and_the_rest_of_the_page_works(finished_run, tmp_path, monkeypatch):
    root = tmp_path / "runs"
    shutil.copytree(finished_run, root / "good")
    bad = root / "bad"
    shutil.copytree(finished_run, bad)
    (bad / "config.json").write_text("{not json")
    (bad / "status.json").write_text('{"state": "runn')  # half-written
    with open(bad / "metrics.jsonl", "ab") as f:
        f.write(b'garbage line\n{"kind": "train", "step": 9')  # corrupt + unterminated
    for snap in (bad / "snapshots").iterdir():
        snap.write_bytes(b"not a zip")
    empty = root / "empty"  # a config.json and nothing else
    empty.mkdir()
    (empty / "config.json").write_text("{}")

    at = app(root, monkeypatch).run()
    assert not at.exception
    warnings = texts(at.warning)
    assert "bad: config.json unreadable" in warnings and "bad: status.json unreadable" in warnings
    assert "skipped corrupt line" in warnings
    at.selectbox(key="watch").select("good").run()
    assert not at.exception
    assert chart(at, "UMAP of the embedding sample · good")
    for name in ("bad", "empty"):
        at.selectbox(key="watch").select(name).run()
        assert not at.exception
        assert "waiting for the first snapshot" in texts(at.info)
        assert chart(at, "Training loss")


def test_start_shows_a_growing_run_and_stop_marks_it_stopped(tmp_path, monkeypatch):
    root = tmp_path / "runs"
    at = app(root, monkeypatch).run()
    at.number_input(key="positives").set_value(2)
    at.number_input(key="batch_size").set_value(64)
    # Long enough (~230 steps) that the run is still going when Stop is pressed on a fast box.
    at.number_input(key="epochs").set_value(20)
    at.selectbox(key="imbalance").select("linear")
    at.text_input(key="run_name").set_value("from-the-page")
    at.run()
    at.button(key="start").click().run()
    assert not at.exception
    path = root / "from-the-page"
    assert (path / "train.log").is_file()  # the trainer's output goes inside the run folder
    assert at.session_state.live is True and at.session_state.watch == "from-the-page"
    assert at.text_input(key="run_name").value == ""  # ready for the next run
    try:
        steps = []
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and len(set(steps)) < 3:
            time.sleep(1.0)
            at.run()
            assert not at.exception
            line = next((m.value for m in at.markdown if "**from-the-page**" in m.value), "")
            assert "failed" not in line, line
            if "running · step" in line:
                steps.append(int(line.split("running · step ")[1].split("/")[0]))
        assert len(set(steps)) >= 3, f"run did not grow: steps seen {steps}"
        assert steps == sorted(steps)
        assert chart(at, "Training loss")["data"], "no loss curve while running"
        assert chart(at, "Conditional weights at step")
        # an imbalanced run shows per-class kNN accuracy before its final linear probe
        assert any("kNN at step" in n for n in trace_names(chart(at, "Per-class accuracy")))

        at.button(key="stop_from-the-page").click().run()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and run_state(load_run(path)) == "running":
            time.sleep(0.5)
        at.run()
        assert run_state(load_run(path)) == "stopped"
        assert "stopped at step" in texts(at.markdown)
        assert at.session_state.live is False
    finally:
        status = (
            json.loads((path / "status.json").read_text())
            if (path / "status.json").exists()
            else {}
        )
        if status.get("state") == "running" and status.get("pid"):
            try:
                os.kill(status["pid"], signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_runs_written_elsewhere_appear_with_their_state(finished_run, tmp_path, monkeypatch):
    """A run from the CLI or a notebook shows up on the next refresh; a failed run shows the
    error text of its status file."""
    root = tmp_path / "runs"
    at = app(root, monkeypatch).run()
    assert "No runs yet" in texts(at.info)
    shutil.copytree(finished_run, root / "from-cli")
    failed = root / "broken-run"
    shutil.copytree(finished_run, failed)
    status = json.loads((failed / "status.json").read_text())
    status.update(state="failed", step=3, error="non-finite loss at step 3 (epoch 0)")
    (failed / "status.json").write_text(json.dumps(status))
    at.run()
    assert not at.exception
    lines = texts(at.markdown)
    assert "**from-cli** · `cacr` · finished · step 4/4" in lines
    assert "**broken-run** · `cacr` · failed at step 3/4: non-finite loss at step 3 (epoch 0)" in (
        lines
    )
    assert "Traceback" not in lines


def test_a_trainer_that_cannot_start_shows_its_error_line(tmp_path, monkeypatch):
    root = tmp_path / "runs"
    monkeypatch.setenv("CACR_LAB_DATA_DIRS", str(tmp_path))  # image folders the page may read
    at = app(root, monkeypatch).run()
    at.selectbox(key="dataset").select("folder").run()
    at.text_input(key="folder_path").set_value(str(tmp_path / "no-such-folder")).run()
    at.text_input(key="run_name").set_value("bad-folder").run()
    at.button(key="start").click().run()
    deadline = time.monotonic() + 90
    line = ""
    while time.monotonic() < deadline and "failed to start" not in line:
        time.sleep(0.5)
        at.run()
        line = next((m.value for m in at.markdown if "**bad-folder**" in m.value), "")
    assert "failed to start (exit code 2): `error:" in line
    assert "no-such-folder" in line
    assert at.session_state.live is False


@pytest.fixture(scope="module")
def study_root(tmp_path_factory) -> Path:
    """A runs root holding a real (tiny) study made by the library's ``study()``: CACR and
    InfoNCE on the toy points, balanced and exponential, two seeds, 4 steps (seconds)."""
    root = tmp_path_factory.mktemp("study-root")
    overrides = dict(dataset="toy", epochs=1, batch_size=64, max_steps=4)
    study(
        "cpu-digits",
        out=root / "toy-study",
        methods="cacr,infonce",
        profiles="none,exponential",
        seeds=2,
        overrides=overrides,
        progress=False,
    )
    return root


def table(at: AppTest, column: str):
    """The page's dataframe that has ``column``."""
    found = [d.value for d in at.dataframe if column in d.value.columns]
    assert len(found) >= 1, f"no table with a {column!r} column"
    return found[0]


def _pct(values) -> str:
    iv = t_interval(values)
    return f"{100 * iv.mean:.2f} ± {100 * iv.sd:.2f}"


def test_study_tab_shows_the_newest_study_its_tables_intervals_and_bars(study_root, monkeypatch):
    at = app(study_root, monkeypatch).run()
    assert not at.exception
    folder = study_root / "toy-study"
    assert at.text_input(key="study_folder").value == str(folder)  # found under the runs root
    with open(folder / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    shown = table(at, "linear probe")
    for m, q in {(r["method"], r["profile"]) for r in rows}:
        mine = [r for r in rows if (r["method"], r["profile"]) == (m, q)]
        line = shown[(shown["method"] == m) & (shown["profile"] == q)]
        assert len(line) == 1 and len(mine) == 2
        assert line["linear probe"].item() == _pct([float(r["probe_acc"]) for r in mine])
        assert line["kNN"].item() == _pct([float(r["knn_acc"]) for r in mine])
    assert {"untrained encoder (reference)", "raw pixels (reference)"} <= set(shown["method"])
    # CACR − InfoNCE per profile and metric, paired by seed, with its verdict line
    paired = table(at, "verdict")
    by = {(r["method"], r["profile"], r["seed"]): float(r["probe_acc"]) for r in rows}
    d = [by[("cacr", "none", s)] - by[("infonce", "none", s)] for s in ("0", "1")]
    line = paired[(paired["profile"] == "none") & (paired["metric"] == "linear probe")]
    assert line["difference (points, 95 % CI)"].item().startswith(f"{100 * sum(d) / 2:+.2f} [")
    assert all(v.startswith(("inconclusive at this budget", "CACR ")) for v in paired["verdict"])
    assert chart(at, "CACR − baseline, paired by seed")["data"]
    bars = chart(at, "Accuracy on the rarer and the more frequent half")
    assert {"rare half", "frequent half"} <= set(trace_names(bars))


def test_study_tab_names_a_folder_that_is_no_study(study_root, tmp_path, monkeypatch):
    at = app(study_root, monkeypatch).run()
    at.text_input(key="study_folder").input(str(tmp_path)).run()
    assert not at.exception
    assert texts(at.warning) == (
        f"{tmp_path} is not a study folder: it has no study results.csv (make one with "
        "`cacr-lab study --preset cpu-digits --out FOLDER`)"
    )
    assert not [c for c in charts(at) if "paired by seed" in c]


def _cacr_lab_imports(path: Path) -> set[str]:
    """The cacr_lab modules a Python file imports by name (``from cacr_lab import runs``: runs)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "cacr_lab"}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "cacr_lab":
                found |= {f"cacr_lab.{a.name}" for a in node.names}
            elif node.module.startswith("cacr_lab."):
                found.add(node.module)
    return found


def test_the_page_imports_only_config_runs_figures_and_experiments():
    """The page reads run folders and starts the CLI: it never imports the training loop, and
    takes the loss options' choices from cacr_lab.config, not from cacr_lab.losses."""
    app_dir = Path(APP).parent
    allowed = {"cacr_lab.config", "cacr_lab.runs", "cacr_lab.figures", "cacr_lab.experiments"}
    allowed.add("cacr_lab.study_report")  # the Study tab reads a study folder back
    imports = {p.name: _cacr_lab_imports(p) for p in sorted(app_dir.glob("*.py"))}
    assert imports["main.py"], "the page imports cacr_lab"
    assert all(found <= allowed for found in imports.values()), imports
    # ... nor through them: importing the page's modules leaves the trainer unloaded
    code = (
        f"import sys; sys.path.insert(0, {str(app_dir)!r}); import state, sidebar, panels, study; "
        "print(sorted(m for m in sys.modules if m in ('cacr_lab.train', 'cacr_lab.evaluate')))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    )
    assert proc.stdout.strip() == "[]", proc.stdout + proc.stderr
