"""Evaluation splits: a ``folder:`` tree with train/ and test/, a flat one, and every eval record
and report naming the split it measured on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cacr_lab.cli import main
from cacr_lab.config import TrainConfig
from cacr_lab.data import class_counts, load_dataset, stratified_split
from cacr_lab.experiments import evaluate_run
from cacr_lab.runs import eval_split_of, load_run, read_evaluation
from cacr_lab.train import Trainer, train

CLASSES = ["ant", "bee", "cat"]
SIDE = 8


def write_tree(root: Path, counts: dict[str, int], first_id: int) -> dict[int, str]:
    """``root/<class>/<i>.png``: 8x8 RGB images, each identifiable by pixel (0, 0, 0) (its id,
    counting up from ``first_id``); the rest seeded noise. Returns {id: class}."""
    gen = np.random.default_rng(first_id)
    ids, next_id = {}, first_id
    for cls, n in counts.items():
        (root / cls).mkdir(parents=True)
        for i in range(n):
            pixels = gen.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)
            pixels[0, 0, 0] = next_id
            Image.fromarray(pixels).save(root / cls / f"{i}.png")
            ids[next_id] = cls
            next_id += 1
    return ids


def split_tree(root: Path, train_n: int = 4, test_n: int = 2) -> tuple[dict, dict]:
    """PATH/train (ids 10..) and PATH/test (ids 100..) trees with the same three classes."""
    train_ids = write_tree(root / "train", dict.fromkeys(CLASSES, train_n), 10)
    test_ids = write_tree(root / "test", dict.fromkeys(CLASSES, test_n), 100)
    return train_ids, test_ids


def ids_and_classes(data) -> dict[int, str]:
    """{id: class name} of every image of an `ImageData` (ids unique by construction)."""
    ids = data.images[:, 0, 0, 0].tolist()
    assert len(set(ids)) == len(ids)
    return {i: data.classes[c] for i, c in zip(ids, data.labels.tolist(), strict=True)}


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def test_a_split_tree_trains_on_train_and_evaluates_on_test(tmp_path):
    train_ids, test_ids = split_tree(tmp_path / "tree")
    name = f"folder:{tmp_path / 'tree'}"
    splits = load_dataset(name, image_size=SIDE, progress=False)
    # Exactly the train/ images (with their classes) in .train, the test/ ones in .test.
    assert ids_and_classes(splits.train) == train_ids
    assert ids_and_classes(splits.test) == test_ids
    assert splits.train.classes == splits.test.classes == CLASSES
    assert splits.eval_split == "test/ tree" and splits.pretrain is None
    # Pixels untouched (8 px PNGs stored at 8 px): the file of id 100 is test/ant/0.png.
    first = torch.from_numpy(np.array(Image.open(tmp_path / "tree/test/ant/0.png")))
    assert torch.equal(
        splits.test.images[splits.test.images[:, 0, 0, 0] == 100][0], first.permute(2, 0, 1)
    )
    # Normalisation statistics from the training images only.
    pixels = splits.train.images[:, 0].double() / 255
    assert splits.mean[0] == pytest.approx(pixels.mean().item(), rel=1e-9)
    # The held-out fraction and the seed play no part: the test/ tree is the test split.
    again = load_dataset(name, image_size=SIDE, progress=False, seed=5, val_fraction=0.5)
    assert torch.equal(again.train.images, splits.train.images)
    assert torch.equal(again.test.images, splits.test.images)


def test_a_split_tree_allows_one_image_per_class_and_side(tmp_path):
    split_tree(tmp_path / "tree", train_n=1, test_n=1)
    splits = load_dataset(f"folder:{tmp_path / 'tree'}", image_size=SIDE, progress=False)
    assert class_counts(splits.train.labels, 3) == class_counts(splits.test.labels, 3) == [1, 1, 1]


def test_a_flat_tree_keeps_the_stratified_held_out_split(tmp_path):
    ids = write_tree(tmp_path / "flat", dict.fromkeys(CLASSES, 4), 10)
    splits = load_dataset(
        f"folder:{tmp_path / 'flat'}", image_size=SIDE, progress=False, seed=3, val_fraction=0.25
    )
    train, test = ids_and_classes(splits.train), ids_and_classes(splits.test)
    assert not set(train) & set(test) and train | test == ids
    assert class_counts(splits.test.labels, 3) == [1, 1, 1]  # round(0.25 * 4) per class
    # The same images stratified_split picks from the files in class order.
    labels = torch.arange(3).repeat_interleave(4)
    _, held = stratified_split(labels, 0.25, 3)
    assert sorted(test) == sorted(10 + int(i) for i in held)
    assert splits.eval_split == "held-out 25 % of the folder (stratified, seed 3)"


def test_a_flat_tree_with_a_class_named_train_stays_flat(tmp_path):
    write_tree(tmp_path / "flat", {"train": 2, "zebra": 2}, 10)
    splits = load_dataset(f"folder:{tmp_path / 'flat'}", image_size=SIDE, progress=False)
    assert splits.train.classes == ["train", "zebra"]
    assert splits.eval_split.startswith("held-out 10 % of the folder")


def test_every_loader_names_its_evaluation_split(fake_stl10):
    assert load_dataset("digits").eval_split == "held-out 25 % of digits (stratified, fixed seed 0)"
    assert (
        load_dataset("toy", seed=2).eval_split == "held-out 10 % of the points (stratified, seed 2)"
    )
    stl = load_dataset("stl10", root=fake_stl10.root, progress=False)
    assert stl.eval_split == "official test split"


def test_mismatched_class_lists_are_one_line_naming_the_classes(tmp_path):
    root = tmp_path / "tree"
    write_tree(root / "train", dict.fromkeys(["ant", "bee", "cat"], 2), 10)
    write_tree(root / "test", dict.fromkeys(["ant", "bee", "dog", "emu"], 2), 100)
    with pytest.raises(ValueError) as err:
        load_dataset(f"folder:{root}", progress=False)
    message = str(err.value)
    assert "\n" not in message
    assert message == (
        f"folder:{root}: the class folders of train/ and test/ must match; classes in train/ "
        "but not in test/: cat; in test/ but not in train/: dog, emu"
    )


def test_bad_split_trees_are_refused_naming_the_folder(tmp_path):
    # Only train/ (with class folders): half a split tree, not a flat tree with one class.
    write_tree(tmp_path / "half" / "train", dict.fromkeys(CLASSES, 2), 10)
    with pytest.raises(
        ValueError, match=r"holds train/ class folders but no test/.*use folder:.*half/train$"
    ):
        load_dataset(f"folder:{tmp_path / 'half'}", progress=False)
    # A class of test/ without images.
    split_tree(tmp_path / "tree")
    for file in (tmp_path / "tree/test/bee").iterdir():
        file.unlink()
    with pytest.raises(ValueError, match=r"class folder .*test/bee holds no images"):
        load_dataset(f"folder:{tmp_path / 'tree'}", progress=False)
    # test/ without class folders.
    write_tree(tmp_path / "flat_test" / "train", dict.fromkeys(CLASSES, 2), 10)
    (tmp_path / "flat_test" / "test").mkdir()
    (tmp_path / "flat_test" / "test" / "x.png").write_bytes(b"")
    with pytest.raises(ValueError, match=r"flat_test/test has no class subfolders"):
        load_dataset(f"folder:{tmp_path / 'flat_test'}", progress=False)
    # A flat tree still needs two images per class for its held-out split.
    write_tree(tmp_path / "one", {"ant": 2, "bee": 1}, 10)
    with pytest.raises(ValueError, match=r"one/bee holds only 1 image.*at least 2"):
        load_dataset(f"folder:{tmp_path / 'one'}", progress=False)


# --------------------------------------------------------------------------------------------
# Training and reports
# --------------------------------------------------------------------------------------------


def tiny_folder(root: Path, **kw) -> TrainConfig:
    base = dict(
        dataset=f"folder:{root}",
        encoder="small-cnn",
        epochs=1,
        batch_size=6,
        max_steps=2,
        knn_k=3,
        snapshot_size=6,
        positives=1,
    )
    return TrainConfig(**(base | kw))


def test_an_imbalance_profile_thins_the_training_split_only(tmp_path):
    _, test_ids = split_tree(tmp_path / "tree")
    trainer = Trainer(
        tiny_folder(tmp_path / "tree", imbalance="linear"), tmp_path / "r", progress=False
    )
    try:
        assert trainer.counts == [1, 2, 4]  # floor((i + 1) / 3 * 4) of the 4 train/ images
        assert len(trainer.splits.train) == 12  # the kNN bank and the probe keep all of train/
        assert ids_and_classes(trainer.splits.test) == test_ids  # test/ untouched
    finally:
        trainer.writer.close()


def test_a_run_on_a_split_tree_names_the_split_everywhere(tmp_path, capsys):
    split_tree(tmp_path / "tree")
    run_dir = train(tiny_folder(tmp_path / "tree"), tmp_path / "r", progress=False)
    evals = load_run(run_dir).eval_records()
    assert len(evals) == 2 and {r["eval_split"] for r in evals} == {"test/ tree"}
    assert "probe_acc" in evals[-1]
    result = evaluate_run(run_dir)
    assert result["eval_split"] == "test/ tree"
    assert read_evaluation(run_dir)["fast"]["eval_split"] == "test/ tree"
    assert main(["eval", str(run_dir)]) == 0
    assert "evaluated on: test/ tree\n" in capsys.readouterr().out


def test_a_run_older_than_the_field_reads_as_not_recorded(tmp_path):
    assert (
        eval_split_of({"kind": "eval", "knn_acc": 0.5}) == "not recorded (run older than the field)"
    )
    assert eval_split_of({"eval_split": None}) == "not recorded (run older than the field)"
    # A run folder whose eval records lack the field still makes a compare row.
    from cacr_lab.experiments import _report, _row

    split_tree(tmp_path / "tree", train_n=2, test_n=1)
    config = tiny_folder(tmp_path / "tree", batch_size=4, max_steps=1)
    run_dir = train(config, tmp_path / "old", progress=False)
    metrics = run_dir / "metrics.jsonl"
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    for r in records:
        r.pop("eval_split", None)
    metrics.write_text("".join(json.dumps(r) + "\n" for r in records))
    row = _row("cacr", 0, run_dir)
    assert row["eval_split"] == "not recorded (run older than the field)"
    report = _report([row], config, 1)
    assert "Evaluated on: not recorded (run older than the field)." in report


def test_the_cli_help_describes_both_folder_layouts(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "PATH/train/<class>/<img> + PATH/test/<class>/<img> (evaluates on test/)" in text
    assert "PATH/<class>/<img> (evaluates on a held-out 10% of it" in text


def test_the_page_describes_both_folder_layouts(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setattr("cacr_lab.figures.warm_up_umap", lambda: 0.0)
    monkeypatch.setenv("CACR_LAB_RUNS", str(tmp_path / "runs"))
    app = Path(__file__).resolve().parents[1] / "app" / "main.py"
    at = AppTest.from_file(str(app), default_timeout=120).run()
    at.selectbox(key="dataset").select("folder").run()
    box = at.text_input(key="folder_path")
    assert "PATH/train/" in box.label and "PATH/test/" in box.label
    assert "`PATH/train/<class>/<image>` and `PATH/test/<class>/<image>`" in box.help
    assert "held-out 10 %" in box.help
