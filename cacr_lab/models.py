"""Encoders for the CACR lab.

Every encoder has the same small interface, so the trainer and the evaluation code never ask
which one they hold:

- ``forward(x) -> (B, feat_dim)``: the L2-normalised projection z = f(x) that the contrastive loss
  sees (a point on the unit sphere);
- ``features(x) -> (B, feature_dim)``: the representation that evaluation reads (kNN, linear
  probe): fc7 for `SmallAlexNet`, the pooled backbone for the others;
- attributes ``feature_dim``, ``feat_dim`` and ``input_size`` (the side length the encoder
  expects, ``None`` when any size works).

`build_encoder` constructs one by name; `default_encoder` picks the lab's choice for a dataset.
Only convolutions, batch norm, pooling, flatten and linear layers are used, so every model also
runs with ``channels_last`` inputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ENCODERS",
    "MLPEncoder",
    "ResNet18Cifar",
    "SmallAlexNet",
    "SmallCNN",
    "build_encoder",
    "default_encoder",
]

ENCODERS = ("small-alexnet", "resnet18", "small-cnn", "mlp")


def _conv_bn_relu(c_in: int, c_out: int, stride: int = 1) -> list[nn.Module]:
    # No conv bias: the following batch norm has its own shift.
    return [
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    ]


class SmallAlexNet(nn.Module):
    """The small-scale encoder of the reference code (docs/method.md §7.1).

    Five 3x3 conv blocks (no bias, BN, ReLU) with 96 (+ max-pool 3/2), 192 (+ max-pool 3/2),
    384, 384, 192 (+ max-pool 3/2) channels; 32 px inputs leave 192 x 3 x 3, 64 px leave
    192 x 7 x 7. Then fc6 (-> 4096, BN1d, ReLU), fc7 (4096 -> 4096, BN1d, ReLU) and fc8
    (4096 -> feat_dim, then L2 normalisation). fc6 and fc7 have no bias (BN follows). Conv and
    linear weights start from N(0, 0.02), biases at 0, BN gamma 1 and beta 0.

    Args:
        in_channels: image channels (3 for colour).
        image_size: 32 (CIFAR) or 64 (STL-10 crops).
        feat_dim: output dimension of fc8, the projection the loss sees.

    Shapes: ``x: (B, in_channels, S, S)`` float -> ``forward``: ``(B, feat_dim)`` unit vectors,
    ``features``: ``(B, 4096)`` (fc7).
    """

    def __init__(self, in_channels: int = 3, image_size: int = 32, feat_dim: int = 128):
        super().__init__()
        spatial = {32: 3, 64: 7}  # 32 -> 15 -> 7 -> 3 and 64 -> 31 -> 15 -> 7 after three pools
        if image_size not in spatial:
            raise ValueError(f"SmallAlexNet supports image_size 32 or 64, got {image_size!r}")
        _check_positive(in_channels=in_channels, feat_dim=feat_dim)
        pool = nn.MaxPool2d(kernel_size=3, stride=2)
        self.conv = nn.Sequential(
            *_conv_bn_relu(in_channels, 96),
            pool,
            *_conv_bn_relu(96, 192),
            pool,
            *_conv_bn_relu(192, 384),
            *_conv_bn_relu(384, 384),
            *_conv_bn_relu(384, 192),
            pool,
        )
        side = spatial[image_size]
        self.fc6 = nn.Sequential(
            nn.Flatten(),
            nn.Linear(192 * side * side, 4096, bias=False),
            nn.BatchNorm1d(4096),
            nn.ReLU(inplace=True),
        )
        self.fc7 = nn.Sequential(
            nn.Linear(4096, 4096, bias=False), nn.BatchNorm1d(4096), nn.ReLU(inplace=True)
        )
        self.fc8 = nn.Linear(4096, feat_dim)
        self.feature_dim, self.feat_dim, self.input_size = 4096, feat_dim, image_size
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.normal_(module.weight, 0.0, 0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc7(self.fc6(self.conv(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.fc8(self.features(x)), dim=1)


class ResNet18Cifar(nn.Module):
    """torchvision's ResNet-18 with the usual CIFAR stem and a projection head.

    The 7x7 stride-2 stem and its max-pool would shrink a 32 px image to 8 px before the first
    block, so the stem is a 3x3 stride-1 convolution without max-pool. ``features`` is the
    512-d globally pooled backbone output (torchvision's ``fc`` replaced by the identity).

    Args:
        in_channels: image channels.
        feat_dim: projection dimension.
        head: ``"linear"`` (default): ``Linear(512, feat_dim)``; ``"mlp"``: SimCLR's two-layer
            head ``Linear(512, 512) - ReLU - Linear(512, feat_dim)``.

    Shapes: ``x: (B, in_channels, S, S)`` -> ``forward``: ``(B, feat_dim)`` unit vectors,
    ``features``: ``(B, 512)``.
    """

    HEADS = ("linear", "mlp")

    def __init__(self, in_channels: int = 3, feat_dim: int = 128, head: str = "linear"):
        super().__init__()
        from torchvision.models import resnet18

        if head not in self.HEADS:
            raise ValueError(f"unknown head {head!r}; valid: {self.HEADS}")
        _check_positive(in_channels=in_channels, feat_dim=feat_dim)
        backbone = resnet18(weights=None)
        backbone.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        backbone.maxpool = nn.Identity()
        backbone.fc = nn.Identity()
        self.backbone = backbone
        if head == "linear":
            self.head = nn.Linear(512, feat_dim)
        else:
            self.head = nn.Sequential(
                nn.Linear(512, 512), nn.ReLU(inplace=True), nn.Linear(512, feat_dim)
            )
        self.feature_dim, self.feat_dim, self.input_size = 512, feat_dim, None

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head(self.features(x)), dim=1)


class SmallCNN(nn.Module):
    """A small CNN that trains on 16 px digits in seconds on a CPU.

    conv 32 -> conv 64 (stride 2) -> conv 128 (stride 2), each 3x3 + BN + ReLU, then global
    average pooling to 128-d ``features`` and ``Linear(128, feat_dim)`` as the projection.

    Shapes: ``x: (B, in_channels, S, S)`` (any S >= 4) -> ``forward``: ``(B, feat_dim)`` unit
    vectors, ``features``: ``(B, 128)``.
    """

    def __init__(self, in_channels: int = 1, image_size: int = 16, feat_dim: int = 64):
        super().__init__()
        _check_positive(in_channels=in_channels, image_size=image_size, feat_dim=feat_dim)
        self.conv = nn.Sequential(
            *_conv_bn_relu(in_channels, 32),
            *_conv_bn_relu(32, 64, stride=2),
            *_conv_bn_relu(64, 128, stride=2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(128, feat_dim)
        self.feature_dim, self.feat_dim, self.input_size = 128, feat_dim, image_size

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head(self.features(x)), dim=1)


class MLPEncoder(nn.Module):
    """Two hidden layers for the ``toy`` points: ``(B, in_dim)`` -> ``(B, feat_dim)`` unit vectors.

    ``features`` is the second hidden layer, ``(B, hidden)``. The default ``feat_dim=3`` gives
    an embedding on the 2-sphere that a figure can show as it is.
    """

    def __init__(self, in_dim: int, hidden: int = 64, feat_dim: int = 3):
        super().__init__()
        _check_positive(in_dim=in_dim, hidden=hidden, feat_dim=feat_dim)
        self.body = nn.Sequential(
            nn.Linear(in_dim, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
        )
        self.head = nn.Linear(hidden, feat_dim)
        self.feature_dim, self.feat_dim, self.input_size = hidden, feat_dim, None

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head(self.features(x)), dim=1)


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def build_encoder(
    name: str, *, in_channels: int, image_size: int, feat_dim: int = 128
) -> nn.Module:
    """Build an encoder by name (one of `ENCODERS`).

    ``in_channels`` and ``image_size`` come from `cacr_lab.data.DataSplits`; for ``"mlp"`` (toy
    points, ``in_channels == 0``) ``image_size`` is the point dimension D.

    >>> build_encoder("small-cnn", in_channels=1, image_size=16, feat_dim=32).feat_dim
    32
    """
    if name == "small-alexnet":
        return SmallAlexNet(in_channels, image_size, feat_dim)
    if name == "resnet18":
        return ResNet18Cifar(in_channels, feat_dim)
    if name == "small-cnn":
        return SmallCNN(in_channels, image_size, feat_dim)
    if name == "mlp":
        return MLPEncoder(image_size, feat_dim=feat_dim)
    raise ValueError(f"unknown encoder {name!r}; valid: {', '.join(ENCODERS)}")


def default_encoder(dataset_name: str) -> str:
    """The lab's encoder for a dataset: digits -> small-cnn, toy -> mlp, else small-alexnet.

    >>> default_encoder("digits"), default_encoder("cifar10")
    ('small-cnn', 'small-alexnet')
    """
    return {"digits": "small-cnn", "toy": "mlp"}.get(dataset_name, "small-alexnet")
