"""Tests for cacr_lab.data: loading, views (per-image and batched) and imbalanced subsets."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from cacr_lab.data import (
    UNLABELED,
    BatchAugment,
    ImageData,
    MultiViewDataset,
    batch_augment_for,
    class_counts,
    imbalance_indices,
    load_dataset,
    make_imbalanced,
    probe_transforms,
    toy_sphere,
    view_transform,
)
from cacr_lab.data.augment import _affine_theta, _rgb_to_hsv


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture
def one_thread():
    """Per-image torchvision ops on tiny tensors run faster without intra-op threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def test_digits_shapes_dtypes_and_stratified_split(digits):
    train, test = digits.train, digits.test
    assert train.images.shape[1:] == (1, 16, 16) and train.images.dtype == torch.uint8
    assert train.labels.dtype == torch.int64 and train.classes == [str(d) for d in range(10)]
    assert len(train) + len(test) == 1797 and len(test) == 450  # test_size=0.25
    assert digits.image_size == 16 and digits.in_channels == 1 and train.num_classes == 10
    # Stratified: each class keeps the same share on both sides (to within one image).
    train_frac = np.array(class_counts(train.labels, 10)) / len(train)
    test_frac = np.array(class_counts(test.labels, 10)) / len(test)
    assert np.abs(train_frac - test_frac).max() < 0.01
    assert 0 < digits.mean[0] < 1 and 0 < digits.std[0] < 1
    assert int(train.images.max()) > 200  # 0..16 was mapped onto 0..255


def test_digits_match_scikit_learn_without_importing_it():
    """The images and the fixed split are scikit-learn's (load_digits, train_test_split with
    test_size 0.25, stratified, random_state 0), though loading imports no scikit-learn."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    train_idx, test_idx = train_test_split(
        np.arange(len(bunch.target)), test_size=0.25, stratify=bunch.target, random_state=0
    )
    fresh = load_dataset("digits", image_size=8)
    pixels = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    for split, idx in ((fresh.train, train_idx), (fresh.test, test_idx)):
        idx = np.sort(idx)
        assert np.array_equal(split.images[:, 0].numpy(), pixels[idx])
        assert np.array_equal(split.labels.numpy(), bunch.target[idx])
    code = "import sys; from cacr_lab.data import load_dataset; load_dataset('digits'); "
    code += "print('sklearn' in sys.modules)"
    env = os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert out.stdout.strip() == "False"


def test_digits_split_ignores_seed_and_native_size():
    a, b = load_dataset("digits", seed=0), load_dataset("digits", seed=5, image_size=8)
    assert torch.equal(a.test.labels, b.test.labels)
    assert b.train.images.shape[1:] == (1, 8, 8) and b.image_size == 8


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        (dict(name="mnist"), "'mnist'"),
        (dict(name="digits", val_fraction=1.5), "1.5"),
        (dict(name="digits", image_size=0), "0"),
        (dict(name="folder:"), "folder:"),
    ],
)
def test_load_dataset_bad_input_names_the_value(kwargs, needle):
    with pytest.raises(ValueError, match="valid|must|needs") as info:
        load_dataset(**kwargs)
    assert needle in str(info.value)


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(ValueError, match="cifar10.*folder:PATH.*toy"):
        load_dataset("imagenet")


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "stl10"])
def test_missing_torchvision_files_give_a_helpful_error(tmp_path, name):
    with pytest.raises(FileNotFoundError) as info:
        load_dataset(name, root=tmp_path, download=False)
    message = str(info.value)
    assert "\n" not in message
    assert name in message and str(tmp_path) in message
    assert "download=True" in message and "folder:PATH" in message


def test_stl10_pretrains_on_train_plus_unlabeled_and_evaluates_on_train_and_test(fake_stl10):
    """The authors pre-train STL-10 on train+unlabeled and probe train -> test: a fake STL-10
    in torchvision's binary format (8 train, 12 unlabeled, 6 test) shows which images each
    split gets."""
    labels, image_ids = fake_stl10.labels, fake_stl10.image_ids
    splits = load_dataset("stl10", root=fake_stl10.root)
    train, test, pretrain = splits.train, splits.test, splits.pretrain
    assert image_ids(train.images) == list(range(10, 18))
    assert image_ids(test.images) == list(range(70, 76))
    # Pre-training: the labelled train images first, then every unlabeled one.
    assert image_ids(pretrain.images) == list(range(10, 18)) + list(range(40, 52))
    assert splits.pretraining_set is pretrain
    assert train.labels.tolist() == labels["train"] and test.labels.tolist() == labels["test"]
    assert pretrain.labels.tolist() == labels["train"] + [UNLABELED] * 12
    assert pretrain.classes == train.classes == [f"class{c}" for c in range(10)]
    # Right way up (pixel (c, h, w) = id + h), stored at 96 px, seen as 64 px crops.
    assert torch.equal(train.images[0, 2, :, 5], 10 + torch.arange(96, dtype=torch.uint8))
    assert pretrain.images.shape == (20, 3, 96, 96) and splits.image_size == 64
    # Normalisation statistics of the pre-training set (as the authors' STL-10 constants are).
    channel = pretrain.images[:, 0].double() / 255
    assert splits.mean[0] == pytest.approx(channel.mean().item(), rel=1e-9)
    assert splits.std[0] == pytest.approx(channel.std(correction=0).item(), rel=1e-9)
    # The unlabeled images count in no class; an imbalance profile is refused, naming them.
    assert class_counts(pretrain.labels, 10) == class_counts(train.labels, 10)
    assert sum(class_counts(pretrain.labels, 10)) == 8
    assert len(make_imbalanced(pretrain, None)) == 20
    with pytest.raises(ValueError, match="'linear' needs a class.*12 of 20 are unlabeled"):
        make_imbalanced(pretrain, "linear")


def test_datasets_without_a_pretrain_split_pretrain_on_train(digits):
    assert digits.pretrain is None and digits.pretraining_set is digits.train


def test_class_counts_skips_unlabeled_but_rejects_other_negatives():
    assert class_counts(torch.tensor([UNLABELED, 1, 1]), 3) == [0, 2, 0]
    with pytest.raises(ValueError, match=r"\[0, 3\).*-1, unlabeled.*\[-2, 1\]"):
        class_counts(torch.tensor([-2, 1]), 3)


def _write_tree(root, sizes):
    """A tiny ImageFolder tree: classes a and b, images of the given (H, W) sizes."""
    gen = torch.Generator().manual_seed(0)
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i, (h, w) in enumerate(sizes):
            image = torch.randint(0, 256, (h, w, 3), dtype=torch.uint8, generator=gen)
            Image.fromarray(image.numpy()).save(root / cls / f"{i}.png")


def test_folder_loads_resizes_and_splits(tmp_path):
    _write_tree(tmp_path / "tree", [(32, 32)] * 8 + [(40, 50), (20, 20)])
    splits = load_dataset(
        f"folder:{tmp_path / 'tree'}", image_size=16, val_fraction=0.2, progress=False, seed=1
    )
    assert splits.train.classes == ["a", "b"] and splits.in_channels == 3
    assert splits.train.images.shape[1:] == (3, 16, 16) and splits.train.images.dtype == torch.uint8
    assert class_counts(splits.test.labels, 2) == [2, 2]
    assert class_counts(splits.train.labels, 2) == [8, 8]
    again = load_dataset(
        f"folder:{tmp_path / 'tree'}", image_size=16, val_fraction=0.2, progress=False, seed=1
    )
    assert torch.equal(again.test.images, splits.test.images)


def test_folder_keeps_matching_images_untouched(tmp_path):
    _write_tree(tmp_path / "tree", [(8, 8)] * 2)
    splits = load_dataset(
        f"folder:{tmp_path / 'tree'}", image_size=8, val_fraction=0.5, progress=False
    )
    first = torch.from_numpy(np.array(Image.open(tmp_path / "tree" / "a" / "0.png")))
    first = first.permute(2, 0, 1)
    stored = torch.cat([splits.train.images, splits.test.images])
    assert any(torch.equal(first, image) for image in stored)


def test_folder_errors_name_the_path(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(ValueError, match=str(missing)):
        load_dataset(f"folder:{missing}", progress=False)
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "x.png").write_bytes(b"")
    with pytest.raises(ValueError, match="no class subfolders"):
        load_dataset(f"folder:{tmp_path / 'flat'}", progress=False)
    _write_tree(tmp_path / "tree", [(8, 8)] * 2)
    broken = tmp_path / "tree" / "b" / "broken.png"
    broken.write_bytes(b"this is not a png")
    with pytest.raises(ValueError, match="broken.png"):
        load_dataset(f"folder:{tmp_path / 'tree'}", progress=False)


def test_toy_sphere_and_toy_splits():
    pts = toy_sphere(n_per_class=20, n_classes=3, dim=4, seed=1)
    assert pts.images.shape == (60, 4) and pts.images.dtype == torch.float32
    torch.testing.assert_close(pts.images.norm(dim=1), torch.ones(60))
    assert class_counts(pts.labels, 3) == [20, 20, 20]
    splits = load_dataset("toy", image_size=5)
    assert splits.in_channels == 0 and splits.image_size == 5
    assert splits.train.images.shape[1] == 5 and len(splits.test) > 0
    with pytest.raises(ValueError, match="dim"):
        toy_sphere(dim=1)


# --------------------------------------------------------------------------------------------
# Views
# --------------------------------------------------------------------------------------------


def test_multiview_dataset_shapes(digits):
    tf = view_transform("digits", 16, digits.mean, digits.std)
    views, label = MultiViewDataset(digits.train, tf, n_views=5)[3]
    assert views.shape == (5, 1, 16, 16) and views.dtype == torch.float32
    assert label == int(digits.train.labels[3])
    assert not torch.equal(views[0], views[1])  # independent augmentations
    cifar_like = ImageData(
        torch.zeros(4, 3, 40, 40, dtype=torch.uint8), torch.zeros(4).long(), ["x"], "cifar10"
    )
    tf = view_transform("cifar10", 32, (0.5,) * 3, (0.25,) * 3)
    assert MultiViewDataset(cifar_like, tf, 2)[0][0].shape == (2, 3, 32, 32)
    toy = toy_sphere(n_per_class=3)
    views, _ = MultiViewDataset(toy, view_transform("toy", 3, (0.0,), (1.0,)), 4)[0]
    torch.testing.assert_close(views.norm(dim=1), torch.ones(4))
    with pytest.raises(ValueError, match="n_views"):
        MultiViewDataset(toy, None, 0)


def test_view_builders_reject_unknown_dataset():
    with pytest.raises(ValueError, match="'svhn'.*cifar10"):
        view_transform("svhn", 32, (0.5,), (0.5,))
    with pytest.raises(ValueError, match="'svhn'.*cifar10"):
        batch_augment_for("svhn", 32, (0.5,), (0.5,))
    with pytest.raises(ValueError, match="'blur'"):
        BatchAugment("blur", image_size=32)


def test_batch_augment_shapes_and_generator():
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    augment = batch_augment_for("cifar10", 32, (0.5,) * 3, (0.25,) * 3)
    out = augment(images, 4, generator=torch.Generator().manual_seed(0))
    assert out.shape == (4, 6, 3, 32, 32) and out.dtype == torch.float32
    again = augment(images, 4, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, again)
    stl = batch_augment_for("stl10", 64, (0.5,) * 3, (0.25,) * 3)
    assert stl(torch.zeros(2, 3, 96, 96, dtype=torch.uint8), 2).shape == (2, 2, 3, 64, 64)
    toy = batch_augment_for("toy", 3, (0.0,), (1.0,))
    views = toy(toy_sphere(n_per_class=2).images, 3)
    assert views.shape == (3, 8, 3)
    torch.testing.assert_close(views.norm(dim=-1), torch.ones(3, 8))
    with pytest.raises(ValueError, match="uint8"):
        augment(images.float(), 2)


def test_batched_affine_matches_torchvision_affine():
    """The digits path reproduces v2.functional.affine for fixed parameters."""
    image = torch.rand(1, 1, 16, 16)
    for angle, tx, ty, scale in [(10.0, 1, -2, 1.05), (-7.0, 0, 0, 0.9)]:
        ref = v2.functional.affine(
            image[0],
            angle=angle,
            translate=[tx, ty],
            scale=scale,
            shear=[0.0, 0.0],
            interpolation=v2.InterpolationMode.BILINEAR,
        )
        theta = _affine_theta(
            torch.tensor([math.radians(angle)]),
            torch.tensor([float(tx)]),
            torch.tensor([float(ty)]),
            torch.tensor([scale]),
            16,
            16,
        )
        grid = torch.nn.functional.affine_grid(theta, [1, 1, 16, 16], align_corners=False)
        out = torch.nn.functional.grid_sample(image, grid, align_corners=False)
        torch.testing.assert_close(out[0], ref, atol=1e-5, rtol=0)


def test_crop_boxes_match_random_resized_crop_distribution():
    n = 4000
    torch.manual_seed(0)
    rrc = v2.RandomResizedCrop(32, scale=(0.2, 1.0))
    params = [rrc.make_params([torch.zeros(3, 32, 32)]) for _ in range(n)]
    ref = torch.tensor([[p["top"], p["left"], p["height"], p["width"]] for p in params]).float()
    boxes = BatchAugment("crop", image_size=32).crop_boxes(
        n, 32, 32, torch.zeros(1), torch.Generator().manual_seed(0)
    )
    for b in (ref, boxes):  # crops stay inside the image
        assert (b[:, 0] + b[:, 2] <= 32).all() and (b[:, 1] + b[:, 3] <= 32).all()
    for stat in (
        lambda b: b[:, 2] * b[:, 3] / 1024,
        lambda b: b[:, 3] / b[:, 2],
        lambda b: b[:, 0] + b[:, 2] / 2,
    ):
        a, b = stat(ref), stat(boxes)
        assert abs(a.mean() - b.mean()) < 0.03 * a.std()
        assert abs(a.std() - b.std()) < 0.05 * a.std()


def test_batch_augment_is_configured_like_view_transform():
    """Both paths of each dataset draw from the same distributions (same parameters)."""
    for name, scale in (("cifar10", (0.2, 1.0)), ("folder:x", (0.2, 1.0)), ("stl10", (0.08, 1.0))):
        size = 64 if name == "stl10" else 32
        steps = {type(t).__name__: t for t in view_transform(name, size, (0.5,), (0.5,)).transforms}
        augment = batch_augment_for(name, size, (0.5,), (0.5,))
        assert augment.kind == "crop" and augment.image_size == size
        crop, jitter = steps["RandomResizedCrop"], steps["ColorJitter"]
        assert tuple(crop.scale) == augment.crop_scale == scale and tuple(crop.size) == (size, size)
        assert tuple(crop.ratio) == pytest.approx(augment.crop_ratio)
        assert steps["RandomHorizontalFlip"].p == augment.flip_p == 0.5
        assert steps["RandomGrayscale"].p == augment.grayscale_p == 0.2
        b, c, s, h = augment.jitter
        assert (jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue) == (
            (1 - b, 1 + b),
            (1 - c, 1 + c),
            (1 - s, 1 + s),
            (-h, h),
        )
    steps = {type(t).__name__: t for t in view_transform("digits", 16, (0.5,), (0.5,)).transforms}
    augment = batch_augment_for("digits", 16, (0.5,), (0.5,))
    affine = steps["RandomAffine"]
    assert augment.kind == "affine" and "RandomHorizontalFlip" not in steps
    assert affine.degrees == [-augment.degrees, augment.degrees]
    assert affine.translate == (augment.translate,) * 2 and affine.scale == augment.scale
    assert steps["GaussianNoise"].sigma == augment.noise_sigma


@pytest.mark.parametrize(
    ("name", "size", "scale"),
    [("cifar10", 32, (0.2, 1.0)), ("cifar100", 32, (0.2, 1.0)), ("folder:x", 32, (0.2, 1.0))]
    + [("stl10", 64, (0.08, 1.0))],
)
def test_probe_train_crop_follows_the_authors_linear_evaluation(name, size, scale):
    """The paper protocol's train crop: RandomResizedCrop(32, scale 0.2-1) in the authors' CIFAR
    linear evaluation, RandomResizedCrop(64, scale 0.08-1) in their STL-10 one; then a flip."""
    train, test = probe_transforms(name, size, (0.5,) * 3, (0.5,) * 3)
    steps = {type(t).__name__: t for t in train.transforms}
    crop = steps["RandomResizedCrop"]
    assert tuple(crop.scale) == scale and tuple(crop.size) == (size, size)
    assert tuple(crop.ratio) == pytest.approx((3 / 4, 4 / 3))
    assert steps["RandomHorizontalFlip"].p == 0.5
    image = torch.randint(
        0,
        256,
        (3, 96 if name == "stl10" else size, 96 if name == "stl10" else size),
        dtype=torch.uint8,
    )
    assert train(image).shape == test(image).shape == (3, size, size)


def test_batched_flip_and_grayscale_rates():
    # An orange ramp: value rises from left to right, so the ramp's direction reveals a flip
    # whatever the colour jitter does, and the channels differ unless the view is greyscale.
    ramp = 0.2 + 0.8 * torch.linspace(0, 1, 16)
    tint = torch.tensor([1.0, 0.6, 0.3]).view(3, 1, 1)
    image = (tint * ramp.view(1, 1, 16) * torch.ones(1, 16, 1) * 255).round().to(torch.uint8)
    augment = batch_augment_for("cifar10", 16, (0.0,) * 3, (1.0,) * 3)  # identity normalise
    batch = image.unsqueeze(0).repeat(2000, 1, 1, 1)
    views = augment(batch, 1, torch.Generator().manual_seed(0))[0]
    value = views.max(dim=1).values  # (N, S, S) HSV value: hue and saturation leave it alone
    gray = (value - views.min(dim=1).values).amax(dim=(1, 2)) < 0.01
    columns = value.mean(dim=1) - value.mean(dim=(1, 2)).unsqueeze(1)  # (N, S): value along x
    flipped = (columns * torch.linspace(-1, 1, 16)).sum(dim=1) < 0
    assert abs(gray.float().mean() - 0.2) < 0.03  # 3.4 standard errors
    assert abs(flipped.float().mean() - 0.5) < 0.04


def _colour_stats(views: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-view colour statistics of ``views: (N, 3, H, W)`` in [0, 1]."""
    left = views[..., : views.shape[-1] // 2].mean(dim=(2, 3), keepdim=True)
    hsv = _rgb_to_hsv(left)[:, :, 0, 0]  # (N, 3) hue, saturation, value of the left half
    return {
        "brightness": views.mean(dim=(1, 2, 3)),
        "chroma": (views.max(dim=1).values - views.min(dim=1).values).mean(dim=(1, 2)),
        "hue": hsv[:, 0],
        "saturation": hsv[:, 1],
    }


def test_batched_colour_jitter_matches_torchvision_in_distribution(one_thread):
    """Crop and flip off, colour jitter compared with v2.ColorJitter(0.4, 0.4, 0.4, 0.4).

    The bounds (0.12 standard deviations of each statistic, about 3 standard errors for 800
    samples) catch halving any one of the four jitter strengths.
    """
    image = torch.zeros(3, 16, 16, dtype=torch.uint8)
    image[:, :, :8] = torch.tensor([200, 120, 60], dtype=torch.uint8).view(3, 1, 1)  # orange
    image[:, :, 8:] = torch.tensor([60, 120, 250], dtype=torch.uint8).view(3, 1, 1)  # blue
    n = 800
    torch.manual_seed(0)
    jitter = v2.Compose([v2.ColorJitter(0.4, 0.4, 0.4, 0.4), v2.ToDtype(torch.float32, scale=True)])
    ref = _colour_stats(torch.stack([jitter(image) for _ in range(n)]))
    augment = BatchAugment(
        "crop",
        image_size=16,
        crop_scale=(1.0, 1.0),
        crop_ratio=(1.0, 1.0),
        flip_p=0.0,
        grayscale_p=0.0,
    )
    got = _colour_stats(
        augment(image.unsqueeze(0).repeat(n, 1, 1, 1), 1, torch.Generator().manual_seed(1))[0]
    )
    for key, values in ref.items():
        spread = values.std()
        assert abs(values.mean() - got[key].mean()) < 0.12 * spread, key
        assert abs(values.std() - got[key].std()) < 0.12 * spread, key


def test_digits_batch_augment_matches_per_image_pipeline(digits, one_thread):
    image = digits.train.images[0]
    n = 600
    torch.manual_seed(0)
    tf = view_transform("digits", 16, digits.mean, digits.std)
    per_image = torch.stack([tf(image) for _ in range(n)])
    batched = batch_augment_for("digits", 16, digits.mean, digits.std)(
        image.unsqueeze(0).repeat(n, 1, 1, 1), 1, torch.Generator().manual_seed(1)
    )[0]
    coords = torch.arange(16, dtype=torch.float32)

    def stats(views):
        ink = (views * digits.std[0] + digits.mean[0]).clamp(0, 1)[:, 0]  # (N, 16, 16)
        mass = ink.sum(dim=(1, 2))
        centre_x = (ink.sum(1) * coords).sum(1) / mass
        centre_y = (ink.sum(2) * coords).sum(1) / mass
        return ink.mean(dim=(1, 2)), centre_x, centre_y

    for a, b in zip(stats(per_image), stats(batched), strict=True):
        assert abs(a.mean() - b.mean()) < 0.1 * a.std() + 0.01
        assert abs(a.std() - b.std()) < 0.15 * a.std() + 0.01


# --------------------------------------------------------------------------------------------
# Imbalanced sets
# --------------------------------------------------------------------------------------------

CIFAR10_LABELS = torch.arange(10).repeat_interleave(5000)


def test_linear_profile_on_cifar10_counts():
    kept = imbalance_indices(CIFAR10_LABELS, "linear")
    assert class_counts(CIFAR10_LABELS[kept], 10) == [500 * (i + 1) for i in range(10)]
    assert len(kept) == 27_500
    assert torch.equal(kept, kept.sort().values)


def test_exponential_profile_keeps_one_image_in_class_zero():
    kept = imbalance_indices(CIFAR10_LABELS, "exponential")
    assert class_counts(CIFAR10_LABELS[kept], 10) == [1, 1, 4, 12, 33, 91, 248, 676, 1839, 5000]


def test_imbalance_is_seeded():
    a = imbalance_indices(CIFAR10_LABELS, "linear", seed=3)
    assert torch.equal(a, imbalance_indices(CIFAR10_LABELS, "linear", seed=3))
    b = imbalance_indices(CIFAR10_LABELS, "linear", seed=4)
    assert len(a) == len(b) and not torch.equal(a, b)


def test_cifar100_groups_of_ten():
    labels = torch.arange(100).repeat_interleave(500)
    counts = class_counts(labels[imbalance_indices(labels, "linear", groups=10)], 100)
    assert counts == [50 * (c // 10 + 1) for c in range(100)]
    counts = class_counts(labels[imbalance_indices(labels, "exponential", groups=10)], 100)
    expected = [max(math.floor(math.exp(c // 10 + 1 - 10) * 500), 1) for c in range(100)]
    assert counts == expected and counts[0] == 1 and counts[99] == 500


def test_no_profile_keeps_everything_and_bad_profiles_raise():
    labels = torch.tensor([0, 1, 1, 2])
    assert torch.equal(imbalance_indices(labels, None), torch.arange(4))
    assert torch.equal(imbalance_indices(labels, "none"), torch.arange(4))
    with pytest.raises(ValueError, match="'steep'.*linear, exponential"):
        imbalance_indices(labels, "steep")
    with pytest.raises(ValueError, match="groups.*got 2"):
        imbalance_indices(labels, "linear", groups=2)
    with pytest.raises(ValueError, match="num_classes=2"):
        imbalance_indices(labels, "linear", num_classes=2)
    # An absent last class still counts towards C: class 2 of 4 keeps 3/4 of its images.
    many = torch.zeros(8, dtype=torch.long) + 2
    assert len(imbalance_indices(many, "linear", num_classes=4)) == 6
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        class_counts(labels, 2)


def test_make_imbalanced_keeps_classes(digits):
    subset = make_imbalanced(digits.train, "linear", seed=0)
    assert subset.classes == digits.train.classes and subset.name == "digits"
    counts = class_counts(subset.labels, 10)
    full = class_counts(digits.train.labels, 10)
    assert counts == [(i + 1) * n // 10 for i, n in enumerate(full)]
    assert subset.images.shape[1:] == digits.train.images.shape[1:]
