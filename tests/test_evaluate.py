"""Tests for cacr_lab.evaluate: features, kNN, linear probes and geometry diagnostics."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cacr_lab.config import TrainConfig
from cacr_lab.data import ImageData, load_dataset, probe_transforms
from cacr_lab.evaluate import (
    ProbeResult,
    alignment_uniformity,
    embed,
    extract_features,
    knn_accuracy,
    knn_evaluation,
    knn_k_for,
    linear_probe,
    linear_probe_paper,
    per_class_accuracy,
    weight_stats,
)
from cacr_lab.models import MLPEncoder, SmallCNN


def _clusters(n_per_class: int, n_classes: int = 4, dim: int = 16, seed: int = 0):
    """Well-separated Gaussian clusters: (N, dim) features and (N,) labels."""
    gen = torch.Generator().manual_seed(seed)
    centres = 5.0 * torch.randn(n_classes, dim, generator=gen)
    labels = torch.arange(n_classes).repeat_interleave(n_per_class)
    return centres[labels] + 0.5 * torch.randn(len(labels), dim, generator=gen), labels


@pytest.fixture(scope="module")
def clusters():
    train, train_labels = _clusters(100, seed=0)
    test, test_labels = _clusters(50, seed=0)
    test = test + 0.1 * torch.randn_like(test)  # same centres, different points
    return train, train_labels, test, test_labels


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


# --------------------------------------------------------------------------------------------
# Features
# --------------------------------------------------------------------------------------------


def test_extract_features_and_embed(digits):
    torch.manual_seed(0)
    model = SmallCNN(1, 16, 8)
    model.train()
    images = digits.test.images[:37]
    feats = extract_features(model, images, mean=digits.mean, std=digits.std, batch_size=16)
    assert feats.shape == (37, 128) and feats.dtype == torch.float32
    assert model.training  # mode restored
    # Eval mode and no augmentation: batching does not change the result.
    again = extract_features(model, images, mean=digits.mean, std=digits.std, batch_size=37)
    torch.testing.assert_close(feats, again, atol=1e-5, rtol=1e-5)
    z = embed(model, images, mean=digits.mean, std=digits.std)
    assert z.shape == (37, 8)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(37))
    # Larger stored images get a centre view at the model's input size.
    big = torch.randint(0, 256, (3, 1, 24, 24), dtype=torch.uint8)
    assert extract_features(model, big, mean=(0.5,), std=(0.5,)).shape == (3, 128)


def test_extract_features_points_and_errors():
    model = MLPEncoder(3, hidden=8)
    points = F.normalize(torch.randn(10, 3), dim=1)
    assert extract_features(model, points, mean=(0.0,), std=(1.0,)).shape == (10, 8)
    with pytest.raises(ValueError, match="uint8"):
        extract_features(model, torch.zeros(2, 1, 4, 4), mean=(0.0,), std=(1.0,))
    with pytest.raises(ValueError, match="batch_size.*0"):
        extract_features(model, points, mean=(0.0,), std=(1.0,), batch_size=0)


# --------------------------------------------------------------------------------------------
# kNN and fast linear probe
# --------------------------------------------------------------------------------------------


def test_knn_separable_clusters_is_perfect(clusters):
    acc, preds = knn_accuracy(*clusters, k=20, return_predictions=True)
    assert acc == 1.0 and torch.equal(preds, clusters[3])
    assert knn_accuracy(*clusters, k=10_000) == 1.0  # k clipped to the train size


def test_knn_shuffled_labels_is_near_chance():
    train, train_labels = _clusters(500, n_classes=4, seed=1)
    test, test_labels = _clusters(500, n_classes=4, seed=2)
    shuffled = train_labels[
        torch.randperm(len(train_labels), generator=torch.Generator().manual_seed(0))
    ]
    assert knn_accuracy(train, shuffled, test, test_labels, k=200) < 0.25 + 0.1


def test_knn_default_temperature_is_instdisc_s_007():
    """One query, a neighbour of class 0 at similarity 1 and two of class 1 at 0.94: the votes
    exp(s / T) elect class 0 at InstDisc's T = 0.07 (e^(0.06/0.07) = 2.36 > 2) and class 1 at
    T = 0.1 (e^0.6 = 1.82 < 2)."""
    c = math.sqrt(1 - 0.94**2)
    train = torch.tensor([[1.0, 0.0], [0.94, c], [0.94, -c]])
    labels, query = torch.tensor([0, 1, 1]), torch.tensor([[1.0, 0.0]])
    assert knn_accuracy(train, labels, query, torch.tensor([0])) == 1.0
    assert knn_accuracy(train, labels, query, torch.tensor([0]), temperature=0.07) == 1.0
    assert knn_accuracy(train, labels, query, torch.tensor([1]), temperature=0.1) == 1.0
    assert TrainConfig().knn_temperature == 0.07 and TrainConfig().knn_k == 0  # 0: follow the data


def test_knn_k_follows_the_data_200_on_cifar10_half_the_smallest_class_on_digits():
    """k = min(200, smallest class of the kNN bank // 2): 200 with CIFAR-10's 5,000 (or 4,500
    after a held-out split) images per class; 65 on the digits train split (131 in its smallest
    class); a k given explicitly is kept."""
    cifar = torch.arange(10).repeat_interleave(5000)
    assert knn_k_for(0, cifar) == 200 and knn_k_for(0, cifar[:-500]) == 200
    assert knn_k_for(0, load_dataset("digits").train.labels) == 65
    assert knn_k_for(0, torch.tensor([0] * 30 + [1] * 7 + [3] * 50)) == 3  # absent class 2 skipped
    assert knn_k_for(0, torch.tensor([0, 1, 1])) == 1  # never 0
    assert knn_k_for(20, cifar) == 20
    with pytest.raises(ValueError, match="knn k must be an integer >= 0.*got -1"):
        knn_k_for(-1, cifar)
    with pytest.raises(ValueError, match="knn_k must be an integer >= 0; got -2"):
        TrainConfig(knn_k=-2)


def test_knn_k_within_one_class_keeps_a_perfect_cluster_perfect():
    """Why half the smallest class: two tight classes of 10 and 100 bank points; with k = 200
    (the CIFAR default) every query of the small class is outvoted by the 100 others, with the
    rule's k = 5 it is not."""
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    labels = torch.tensor([0] * 10 + [1] * 100)
    bank = centres[labels] + 0.6 * torch.randn(110, 3, generator=g)
    query_labels = torch.tensor([0] * 20)
    queries = centres[query_labels] + 0.6 * torch.randn(20, 3, generator=g)
    k = knn_k_for(0, labels)
    assert k == 5
    small_k = knn_accuracy(bank, labels, queries, query_labels, k=k, temperature=1.0)
    big_k = knn_accuracy(bank, labels, queries, query_labels, k=200, temperature=1.0)
    assert small_k > big_k


def test_knn_evaluation_is_the_knn_of_the_rule_s_k_with_its_per_class_view():
    """The eval record's kNN part: the accuracy of knn_accuracy at the rule's k (two classes of
    10 and 100 bank points: k = 5), that k, and the per-class accuracies of its predictions."""
    g = torch.Generator().manual_seed(1)
    centres = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    labels = torch.tensor([0] * 10 + [1] * 100)
    bank = centres[labels] + 0.8 * torch.randn(110, 3, generator=g)
    query_labels = torch.tensor([0] * 20 + [1] * 20)
    queries = centres[query_labels] + 0.8 * torch.randn(40, 3, generator=g)
    got = knn_evaluation(bank, labels, queries, query_labels, temperature=1.0)
    acc, preds = knn_accuracy(
        bank, labels, queries, query_labels, k=5, temperature=1.0, return_predictions=True
    )
    assert got["knn_k"] == 5 and got["knn_acc"] == acc
    assert got["knn_per_class_acc"] == pytest.approx(
        [float((preds[query_labels == c] == c).double().mean()) for c in (0, 1)]
    )
    assert knn_evaluation(bank, labels, queries, query_labels, k=7)["knn_k"] == 7


def test_knn_bad_arguments(clusters):
    with pytest.raises(ValueError, match="k must.*0"):
        knn_accuracy(*clusters, k=0)
    with pytest.raises(ValueError, match="temperature.*-1"):
        knn_accuracy(*clusters, temperature=-1)
    train, train_labels, test, test_labels = clusters
    with pytest.raises(ValueError, match="same F"):
        knn_accuracy(train, train_labels, test[:, :3], test_labels)
    with pytest.raises(ValueError, match="num_classes=2"):
        knn_accuracy(*clusters, num_classes=2)


def test_linear_probe_separable_and_shuffled(clusters):
    result = linear_probe(*clusters)
    assert isinstance(result, ProbeResult)
    assert result.accuracy == 1.0 and result.per_class == [1.0] * 4
    assert result.predictions.shape == (200,)
    train, train_labels = _clusters(300, n_classes=4, dim=8, seed=1)
    test, test_labels = _clusters(300, n_classes=4, dim=8, seed=2)
    shuffled = train_labels[
        torch.randperm(len(train_labels), generator=torch.Generator().manual_seed(0))
    ]
    assert linear_probe(train, shuffled, test, test_labels, max_iter=50).accuracy < 0.25 + 0.1


def test_linear_probe_is_deterministic_and_validates(clusters):
    a, b = linear_probe(*clusters, max_iter=5), linear_probe(*clusters, max_iter=5)
    assert torch.equal(a.predictions, b.predictions)
    with pytest.raises(ValueError, match="linear_probe_paper"):
        linear_probe(*clusters, protocol="paper")
    with pytest.raises(ValueError, match="'slow'.*fast"):
        linear_probe(*clusters, protocol="slow")


def test_per_class_accuracy_hand_example():
    preds = torch.tensor([0, 0, 1, 1, 2, 0])
    labels = torch.tensor([0, 1, 1, 1, 2, 2])
    assert per_class_accuracy(preds, labels, 3) == [1.0, 2 / 3, 0.5]
    with_absent = per_class_accuracy(preds, labels, 4)
    assert with_absent[:3] == [1.0, 2 / 3, 0.5] and math.isnan(with_absent[3])
    with pytest.raises(ValueError, match="num_classes=2"):
        per_class_accuracy(preds, labels, 2)


def test_linear_probe_paper_one_epoch(digits):
    torch.manual_seed(0)
    model = SmallCNN(1, 16, 8)
    train = digits.train.subset(torch.arange(64))
    test = digits.test.subset(torch.arange(40))
    train_tf, test_tf = probe_transforms("digits", 16, digits.mean, digits.std)
    result = linear_probe_paper(
        model,
        train,
        test,
        train_transform=train_tf,
        test_transform=test_tf,
        epochs=1,
        batch_size=32,
    )
    assert len(result.per_class) == 10 and 0.0 <= result.accuracy <= 1.0
    assert result.predictions.shape == (40,)
    assert model.training  # mode restored
    same = linear_probe_paper(
        model,
        train,
        test,
        train_transform=train_tf,
        test_transform=test_tf,
        epochs=1,
        batch_size=32,
    )
    assert torch.equal(result.predictions, same.predictions)  # seeded
    default = linear_probe_paper(
        model, train, test, mean=digits.mean, std=digits.std, epochs=1, batch_size=32
    )
    assert torch.equal(result.predictions, default.predictions)  # the same transforms
    with pytest.raises(ValueError, match="mean and std"):
        linear_probe_paper(model, train, test, epochs=1)
    with pytest.raises(ValueError, match="epochs.*0"):
        linear_probe_paper(
            model, train, test, train_transform=train_tf, test_transform=test_tf, epochs=0
        )


def test_probe_transforms_shapes():
    images = ImageData(
        torch.randint(0, 256, (2, 3, 96, 96), dtype=torch.uint8),
        torch.zeros(2).long(),
        ["x"],
        "stl10",
    )
    train_tf, test_tf = probe_transforms("stl10", 64, (0.5,) * 3, (0.25,) * 3)
    assert train_tf(images.images[0]).shape == (3, 64, 64)
    assert test_tf(images.images[0]).shape == (3, 64, 64)
    _, test_tf = probe_transforms("cifar10", 32, (0.0,) * 3, (1.0,) * 3)
    image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    torch.testing.assert_close(test_tf(image), image.float() / 255)  # centre view = identity


# --------------------------------------------------------------------------------------------
# Alignment and uniformity
# --------------------------------------------------------------------------------------------


def test_alignment_uniformity_identities():
    z = F.normalize(torch.randn(64, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    out = alignment_uniformity(z, z)
    assert out["alignment"] == 0.0
    # Reference: Wang & Isola's one-liner with torch.pdist.
    expected = torch.pdist(z.double()).pow(2).mul(-2).exp().mean().log()
    assert out["uniformity"] == pytest.approx(float(expected), abs=1e-9)
    antipodal = alignment_uniformity(z, -z, align_alpha=1.0)
    assert antipodal["alignment"] == pytest.approx(2.0)
    pair = alignment_uniformity(
        torch.tensor([[1.0, 0.0], [-1.0, 0.0]]), torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    )
    assert pair["uniformity"] == pytest.approx(-8.0)  # d^2 = 4, t = 2
    with pytest.raises(ValueError, match="N=1"):
        alignment_uniformity(z[:1], z[:1])
    with pytest.raises(ValueError, match="same shape"):
        alignment_uniformity(z, z[:3])


def test_uniformity_chunking_matches_pdist():
    from cacr_lab.losses.align_uniform import _log_mean_exp_pairs

    z = F.normalize(torch.randn(50, 4, dtype=torch.float64), dim=1)
    expected = float(torch.pdist(z).pow(2).mul(-2).exp().mean().log())
    assert _log_mean_exp_pairs(z, 2.0, chunk=7) == pytest.approx(expected, abs=1e-12)


# --------------------------------------------------------------------------------------------
# Weight statistics
# --------------------------------------------------------------------------------------------


def test_weight_stats_uniform_and_one_hot():
    d2 = torch.rand(3, 5, 10)
    uniform = weight_stats(torch.full((3, 5, 10), 0.1), d2)
    assert uniform["ess"] == pytest.approx(10.0) and uniform["ess_frac"] == pytest.approx(1.0)
    assert uniform["entropy"] == pytest.approx(math.log(10))
    assert uniform["entropy_norm"] == pytest.approx(1.0)
    assert uniform["max_weight"] == pytest.approx(0.1) and uniform["wd_corr"] == 0.0
    one_hot = weight_stats(F.one_hot(torch.zeros(4, dtype=torch.long), 6).float(), torch.rand(4, 6))
    assert one_hot["ess"] == pytest.approx(1.0) and one_hot["entropy"] == pytest.approx(0.0)
    assert one_hot["max_weight"] == 1.0
    single = weight_stats(torch.ones(4, 1), torch.rand(4, 1))  # K = 1 positives
    assert single["entropy_norm"] == 1.0 and single["ess"] == 1.0


def test_weight_stats_correlation_sign():
    d2 = torch.rand(8, 20) * 4
    assert weight_stats(torch.softmax(-0.9 * d2, dim=1), d2)["wd_corr"] < -0.9
    assert weight_stats(torch.softmax(1.0 * d2, dim=1), d2)["wd_corr"] > 0.9
    with pytest.raises(ValueError, match="same shape"):
        weight_stats(torch.rand(2, 3), torch.rand(2, 4))


def test_weight_stats_random_unit_vectors_reference_section_4():
    """128-d random unit vectors, 127 negatives: ESS of pi_neg ~ 97 % of 127 at tau_neg = 0.9."""
    z = F.normalize(torch.randn(128, 128, generator=torch.Generator().manual_seed(0)), dim=1)
    d2 = (2 - 2 * z @ z.T).clamp_min(0)
    off_diagonal = ~torch.eye(128, dtype=torch.bool)
    d2 = d2[off_diagonal].view(128, 127)  # (B, B-1): each query's negatives
    assert d2.mean() == pytest.approx(2.0, abs=0.02)
    stats = weight_stats(torch.softmax(-0.9 * d2, dim=1), d2)
    assert stats["ess_frac"] == pytest.approx(0.97, abs=0.01)
