"""Tests for cacr_lab.models: shapes, unit norm, feature sizes, initialisation, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cacr_lab.models import (
    ENCODERS,
    MLPEncoder,
    ResNet18Cifar,
    SmallAlexNet,
    SmallCNN,
    build_encoder,
    default_encoder,
)


@pytest.fixture(scope="module")
def alexnet32():
    torch.manual_seed(0)
    return SmallAlexNet(in_channels=3, image_size=32, feat_dim=128)


def _check_interface(model: nn.Module, x: torch.Tensor, feat_dim: int, feature_dim: int):
    z = model(x)
    assert z.shape == (x.shape[0], feat_dim)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(x.shape[0]))
    assert model.features(x).shape == (x.shape[0], feature_dim)
    assert model.feat_dim == feat_dim and model.feature_dim == feature_dim


def test_small_alexnet_32px(alexnet32):
    _check_interface(alexnet32, torch.randn(4, 3, 32, 32), 128, 4096)
    assert alexnet32.fc6[1].in_features == 192 * 3 * 3
    assert alexnet32.conv(torch.randn(2, 3, 32, 32)).shape == (2, 192, 3, 3)


def test_small_alexnet_layout(alexnet32):
    convs = [m for m in alexnet32.conv if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [96, 192, 384, 384, 192]
    assert all(c.kernel_size == (3, 3) and c.bias is None for c in convs)
    assert sum(isinstance(m, nn.MaxPool2d) for m in alexnet32.conv) == 3
    assert alexnet32.fc7[0].weight.shape == (4096, 4096)
    assert isinstance(alexnet32.fc6[2], nn.BatchNorm1d)
    assert alexnet32.fc8.out_features == 128


def test_small_alexnet_init_statistics(alexnet32):
    for module in alexnet32.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            w = module.weight.detach()
            assert abs(float(w.mean())) < 0.002
            assert float(w.std()) == pytest.approx(0.02, rel=0.05)
            if module.bias is not None:
                assert torch.count_nonzero(module.bias) == 0
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            assert torch.all(module.weight == 1) and torch.all(module.bias == 0)


def test_small_alexnet_64px_and_bad_size():
    model = SmallAlexNet(in_channels=3, image_size=64, feat_dim=16)
    assert model.fc6[1].in_features == 192 * 7 * 7
    _check_interface(model, torch.randn(2, 3, 64, 64), 16, 4096)
    with pytest.raises(ValueError, match="32 or 64, got 48"):
        SmallAlexNet(image_size=48)


def test_resnet18_cifar_stem_and_heads():
    model = ResNet18Cifar(in_channels=3, feat_dim=32)
    assert model.backbone.conv1.stride == (1, 1) and isinstance(model.backbone.maxpool, nn.Identity)
    _check_interface(model.eval(), torch.randn(2, 3, 16, 16), 32, 512)
    mlp = ResNet18Cifar(in_channels=1, feat_dim=8, head="mlp")
    _check_interface(mlp.eval(), torch.randn(2, 1, 8, 8), 8, 512)
    with pytest.raises(ValueError, match="'deep'.*linear.*mlp"):
        ResNet18Cifar(head="deep")


def test_small_cnn_and_mlp():
    _check_interface(SmallCNN(1, 16, 64), torch.randn(5, 1, 16, 16), 64, 128)
    _check_interface(MLPEncoder(3), torch.randn(5, 3), 3, 64)
    _check_interface(MLPEncoder(4, hidden=16, feat_dim=8), torch.randn(5, 4), 8, 16)


def test_channels_last_gives_the_same_output():
    model = SmallCNN(3, 16, 8).eval()
    x = torch.randn(3, 3, 16, 16)
    torch.testing.assert_close(model(x.contiguous(memory_format=torch.channels_last)), model(x))


def test_build_encoder_and_defaults():
    assert ENCODERS == ("small-alexnet", "resnet18", "small-cnn", "mlp")
    assert isinstance(build_encoder("small-cnn", in_channels=1, image_size=16), SmallCNN)
    mlp = build_encoder("mlp", in_channels=0, image_size=5, feat_dim=3)
    assert mlp(torch.randn(2, 5)).shape == (2, 3)
    assert isinstance(build_encoder("resnet18", in_channels=3, image_size=32), ResNet18Cifar)
    assert default_encoder("digits") == "small-cnn"
    assert default_encoder("toy") == "mlp"
    assert default_encoder("cifar100") == default_encoder("folder:/x") == "small-alexnet"
    with pytest.raises(ValueError, match="'vgg'.*small-alexnet, resnet18, small-cnn, mlp"):
        build_encoder("vgg", in_channels=3, image_size=32)
    with pytest.raises(ValueError, match="feat_dim.*got 0"):
        build_encoder("small-cnn", in_channels=1, image_size=16, feat_dim=0)
