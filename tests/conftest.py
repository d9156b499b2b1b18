"""Shared fixtures of the tests: ``fake_stl10``, a tiny STL-10 for tests without the network.

torchvision's ``STL10`` reads ``ROOT/stl10_binary/{train,test,unlabeled}_X.bin`` (uint8 images,
3 x 96 x 96 each, every channel stored column-major) and ``{train,test}_y.bin`` (uint8 labels,
1-based), plus ``class_names.txt``. Every image here is identifiable: pixel (c, h, w) of the
image with id g is ``g + h`` (ids: train 10.., unlabeled 40.., test 70..), so a test can tell
from the pixels which file an image came from and that it is the right way up.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

SIDE = 96
CLASSES = [f"class{c}" for c in range(10)]
FIRST_ID = {"train": 10, "unlabeled": 40, "test": 70}

# The tests' helper modules (_browser, _faults) import by name: --import-mode=importlib leaves
# sys.path alone, and tests/ is no package.
sys.path.insert(0, str(Path(__file__).parent))


def image_ids(images) -> list[int]:
    """The id g of each ``(N, 3, 96, 96)`` image written by `write_fake_stl10` (pixel (0, 0, 0))."""
    return [int(v) for v in np.asarray(images)[:, 0, 0, 0]]


def write_fake_stl10(
    root: Path, n_train: int = 8, n_unlabeled: int = 12, n_test: int = 6
) -> dict[str, list[int]]:
    """Write the fake files under ``root``; returns the 0-based labels of train and test."""
    folder = Path(root) / "stl10_binary"
    folder.mkdir(parents=True, exist_ok=True)
    labels = {}
    for split, n in (("train", n_train), ("unlabeled", n_unlabeled), ("test", n_test)):
        ids = FIRST_ID[split] + np.arange(n)
        rows = np.arange(SIDE)
        # (N, C, H, W) with pixel (c, h, w) = id + h, then stored as (N, C, W, H).
        images = (ids[:, None, None, None] + rows[None, None, :, None]).astype(np.uint8)
        images = np.broadcast_to(images, (n, 3, SIDE, SIDE))
        np.ascontiguousarray(images.transpose(0, 1, 3, 2)).tofile(folder / f"{split}_X.bin")
        if split != "unlabeled":
            labels[split] = [int(i) % 10 for i in range(n)]
            np.asarray([c + 1 for c in labels[split]], dtype=np.uint8).tofile(
                folder / f"{split}_y.bin"
            )
    (folder / "class_names.txt").write_text("\n".join(CLASSES) + "\n")
    return labels


@pytest.fixture
def fake_stl10(tmp_path, monkeypatch) -> SimpleNamespace:
    """A fake STL-10 under ``tmp_path / "stl"`` (8 train, 12 unlabeled, 6 test images):
    ``root``, ``labels`` (0-based, of train and test) and ``image_ids`` (a function)."""
    from torchvision.datasets import STL10

    root = tmp_path / "stl"
    labels = write_fake_stl10(root)
    # The fake files cannot match torchvision's MD5 sums: skip its integrity check.
    monkeypatch.setattr(STL10, "_check_integrity", lambda self: True)
    return SimpleNamespace(root=root, labels=labels, image_ids=image_ids)
