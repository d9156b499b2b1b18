"""Batched augmentation: `BatchAugment` makes every view of a batch in a few tensor ops.

The trainer's fast path for in-memory data: ``(B, C, H, W) uint8`` in, ``(V, B, C, S, S)``
normalised float views out, on whatever device the batch lives on (CPU or GPU), each sample with
its own parameters drawn from the same distributions as the per-image `view_transform`.
`batch_augment_for` builds the configuration of a dataset from `VIEW_RECIPES`, the table
`view_transform` reads too. All random draws come from the optional ``torch.Generator``, in a
fixed order, so the trainer's per-(seed, step) generator makes a resumed run's views
bit-identical to an uninterrupted one.

Why not kornia (issue 11 asked to evaluate ``kornia.augmentation``, which offers batched
per-sample augmentation on CPU and GPU tensors; ``benchmarks/bench_augment.py`` runs both side by
side and checks kornia against the statistics tests/test_data.py asserts for ours). Measured with
kornia 0.9.0, torch 2.14.1, B = 128 images x V = 5 views per call, one intra-op thread on a
shared 2-core CPU, three runs (2026-12-03):

- CIFAR recipe, 32 px: ours 4,500-5,800 images/s, kornia 3,500-5,200: kornia / ours 0.74-0.89
  (wall clock), 0.83-0.89 (process CPU time). Two-thread runs on the loaded machine were too
  noisy to rank this case (0.89-1.58).
- digits recipe, 16 px: ours 120,000-200,000 images/s, kornia 100,000-150,000: kornia / ours
  0.64-0.84 (wall), 0.72-0.81 (CPU time); two threads 0.60-0.65.
- Statistics: kornia's pipeline (RandomResizedCrop in "resample" mode, flip, ColorJitter,
  RandomGrayscale; RandomAffine + RandomGaussianNoise for digits) passes all four distribution
  checks (crop boxes, flip and grayscale rates, colour jitter, digits affine + noise). It does
  differ where the tests do not look: its ColorJitter draws one op order per call for the whole
  batch (torchvision and ours: one per image), and its translations are not whole pixels.
- Seeding: kornia has no generator argument (the constructor refuses ``generator=``, forward
  has none); it draws from torch's global RNG, so any other global draw in between changes the
  views. The trainer's per-(seed, step) generator, which makes a resumed run's views
  bit-identical, could only be emulated by reseeding the global RNG inside
  ``torch.random.fork_rng`` around every call.

kornia is slower on CPU for both recipes and cannot take a generator, so BatchAugment stays and
kornia is not a dependency.

Imports `views` (the recipe table); no other module of the package but `__init__` imports it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .views import VIEW_RECIPES, view_recipe

__all__ = ["BatchAugment", "batch_augment_for"]

# Luma weights used by torchvision's rgb_to_grayscale (ITU-R 601-2).
_GRAY_WEIGHTS = (0.2989, 0.587, 0.114)

# BatchAugment's defaults: the CIFAR recipe's crop and colour, the digits recipe's affine and
# noise, the toy recipe's jitter.
_CROP, _AFFINE, _SPHERE = VIEW_RECIPES["cifar"], VIEW_RECIPES["digits"], VIEW_RECIPES["toy"]


# --------------------------------------------------------------------------------------------
# Colour helpers (per-sample, batched)
# --------------------------------------------------------------------------------------------


def _uniform(
    n: int,
    low: float,
    high: float,
    like: torch.Tensor,
    generator: torch.Generator | None,
    cols: int | None = None,
) -> torch.Tensor:
    """``(n,)`` (or ``(n, cols)``) float32 samples of U(low, high) on ``like``'s device."""
    shape = (n,) if cols is None else (n, cols)
    u = torch.rand(shape, generator=generator, device=like.device)
    return low + (high - low) * u


def _gray(x: torch.Tensor) -> torch.Tensor:
    """Luma of ``x: (N, C, H, W)`` float as ``(N, 1, H, W)`` (identity for one channel)."""
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    return (_GRAY_WEIGHTS[0] * r + _GRAY_WEIGHTS[1] * g + _GRAY_WEIGHTS[2] * b).unsqueeze(1)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``clamp(f * x + (1 - f) * other, 0, 1)`` with per-sample ``factor: (N,)``."""
    f = factor.view(-1, 1, 1, 1)
    return (f * x + (1 - f) * other).clamp_(0.0, 1.0)


def _blend_steps(
    x: torch.Tensor,
    order: torch.Tensor,
    factors: torch.Tensor,
    active: torch.Tensor,
    which: range,
) -> torch.Tensor:
    """Apply each sample's brightness / contrast / saturation steps ``which`` to ``x``.

    ``order: (N, 4)`` is each sample's op per step (0-2 the blend ops, 3 hue, skipped here),
    ``factors: (N, 3)`` their factors, ``active: (N, 4)`` marks the steps to apply in this pass.
    One `_blend` per step serves all three ops: ``other`` is 0 (brightness), the mean luma
    (contrast) or the luma image (saturation), and f = 1 leaves a sample unchanged.
    """
    for step in which:
        op = order[:, step]
        use = active[:, step] & (op < 3)
        f = torch.where(use, factors.gather(1, op.clamp(max=2)[:, None]).squeeze(1), 1.0)
        gray = _gray(x)
        other = (
            torch.where(use & (op == 1), 1.0, 0.0).view(-1, 1, 1, 1)
            * gray.mean(dim=(1, 2, 3), keepdim=True)
            + torch.where(use & (op == 2), 1.0, 0.0).view(-1, 1, 1, 1) * gray
        )
        x = _blend(x, other, f)
    return x


def _rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """``(N, 3, H, W)`` RGB in [0, 1] to HSV in [0, 1] (same formulas as torchvision)."""
    r, g, b = x.unbind(1)
    maxc, _ = x.max(dim=1)
    minc, _ = x.min(dim=1)
    delta = maxc - minc
    flat = delta == 0  # grey pixels: hue and saturation are 0 (avoid dividing by zero)
    s = delta / torch.where(flat, torch.ones_like(maxc), maxc)
    d = torch.where(flat, torch.ones_like(delta), delta)
    rc, gc, bc = (maxc - r) / d, (maxc - g) / d, (maxc - b) / d
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(flat, torch.zeros_like(h), h)
    return torch.stack(((h / 6.0) % 1.0, s, maxc), dim=1)


def _hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """Inverse of `_rgb_to_hsv` on ``(N, 3, H, W)``.

    Channel c = V - V S clamp(min(k, 4 - k), 0, 1) with k = (n_c + 6 H) mod 6 and n = 5, 3, 1
    for R, G, B: the six-sector formula without a lookup table (no host-to-device copy).
    """
    h, s, v = x.unbind(1)
    n = torch.tensor([5.0, 3.0, 1.0], dtype=x.dtype).to(x.device, non_blocking=True)
    k = (n.view(1, 3, 1, 1) + 6.0 * h.unsqueeze(1)) % 6.0
    ramp = torch.minimum(k, 4.0 - k).clamp(0.0, 1.0)
    return (v.unsqueeze(1) * (1.0 - s.unsqueeze(1) * ramp)).clamp(0.0, 1.0)


def _adjust_hue(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    hsv = _rgb_to_hsv(x)
    hsv[:, 0] = (hsv[:, 0] + factor.view(-1, 1, 1)) % 1.0
    return _hsv_to_rgb(hsv)


# --------------------------------------------------------------------------------------------
# BatchAugment
# --------------------------------------------------------------------------------------------


class BatchAugment:
    """Batched views for in-memory tensors, on whatever device the batch is on.

    ``augment(images, n_views)`` maps ``images: (B, C, H, W) uint8`` to
    ``(V, B, C, S, S) float32`` normalised views (``(B, D)`` toy points to ``(V, B, D)``).
    Each sample draws its own parameters from the same distributions as `view_transform`:

    - ``kind="crop"`` (CIFAR, STL-10, folders): RandomResizedCrop with torchvision's sampling rule
      (10 tries, else the whole image), resampled with ``roi_align`` (bilinear, averaging several
      points per output pixel when shrinking, like antialiasing; unlike torchvision it samples the
      true pixels just outside the crop at its border instead of repeating the edge); flip with
      p = 0.5; ColorJitter brightness, contrast, saturation and hue in a random order per sample;
      grayscale with ``grayscale_p``; normalise.
    - ``kind="affine"`` (digits): rotation, integer translation and scale as
      ``RandomAffine`` (bilinear, zero fill), Gaussian pixel noise clipped to [0, 1], normalise;
      the views keep the input's size.
    - ``kind="sphere"`` (toy): Gaussian jitter re-normalised onto the sphere.

    ``generator`` (optional) must live on the images' device; pass one for reproducible views.
    Build the usual configuration with `batch_augment_for`.
    """

    KINDS = ("crop", "affine", "sphere")

    def __init__(
        self,
        kind: str,
        *,
        image_size: int,
        mean: Sequence[float] = (0.0,),
        std: Sequence[float] = (1.0,),
        crop_scale: tuple[float, float] = _CROP.crop_scale,
        crop_ratio: tuple[float, float] = _CROP.crop_ratio,
        flip_p: float = _CROP.flip_p,
        jitter: tuple[float, float, float, float] = _CROP.jitter,
        grayscale_p: float = _CROP.grayscale_p,
        degrees: float = _AFFINE.degrees,
        translate: float = _AFFINE.translate,
        scale: tuple[float, float] = _AFFINE.affine_scale,
        noise_sigma: float = _AFFINE.noise_sigma,
        sphere_sigma: float = _SPHERE.sphere_sigma,
    ):
        if kind not in self.KINDS:
            raise ValueError(f"unknown BatchAugment kind {kind!r}; valid: {self.KINDS}")
        self.kind, self.image_size = kind, int(image_size)
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        self.crop_scale, self.crop_ratio, self.flip_p = crop_scale, crop_ratio, flip_p
        self.jitter, self.grayscale_p = jitter, grayscale_p
        self.degrees, self.translate, self.scale = degrees, translate, scale
        self.noise_sigma, self.sphere_sigma = noise_sigma, sphere_sigma

    def __repr__(self) -> str:
        return f"BatchAugment(kind={self.kind!r}, image_size={self.image_size})"

    def __call__(
        self, images: torch.Tensor, n_views: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        self._check(images, n_views)
        batch = images.shape[0]
        # (V*B, ...): view v of sample b sits at row v*B + b, so a reshape gives (V, B, ...).
        x = images.repeat(n_views, *([1] * (images.dim() - 1))).float()
        if self.kind == "sphere":
            noise = torch.randn(x.shape, generator=generator, device=x.device)
            return F.normalize(x + self.sphere_sigma * noise, dim=-1).view(n_views, batch, -1)
        x = x.div_(255.0)
        if self.kind == "crop":
            x = self._crop_jitter(x, generator)
        else:
            x = self._affine_noise(x, generator)
        x = self._normalise(x)
        return x.view(n_views, batch, *x.shape[1:])

    def _check(self, images: torch.Tensor, n_views: int) -> None:
        """ValueError unless ``n_views`` >= 1 and ``images`` has this kind's shape and dtype."""
        if int(n_views) != n_views or n_views < 1:
            raise ValueError(f"n_views must be an integer >= 1, got {n_views!r}")
        if self.kind == "sphere" and images.dim() != 2:
            raise ValueError(f"toy points must be (B, D), got shape {tuple(images.shape)}")
        if self.kind != "sphere" and (images.dim() != 4 or images.dtype != torch.uint8):
            raise ValueError(
                f"images must be (B, C, H, W) uint8, got shape "
                f"{tuple(images.shape)} dtype {images.dtype}"
            )

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        """``(x - mean) / std`` per channel of ``x: (N, C, S, S)``."""
        # non_blocking: a blocking host-to-device copy would wait for all queued GPU work.
        mean = torch.tensor(self.mean).to(x.device, non_blocking=True).view(1, -1, 1, 1)
        std = torch.tensor(self.std).to(x.device, non_blocking=True).view(1, -1, 1, 1)
        return (x - mean) / std

    # -- crop, flip, colour ------------------------------------------------------------------

    def crop_boxes(
        self,
        n: int,
        height: int,
        width: int,
        like: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """``(n, 4)`` float boxes ``(top, left, h, w)`` in pixels, RandomResizedCrop's rule."""
        h, w, none_ok = self._crop_sizes(n, height, width, like, generator)
        top = torch.floor(_uniform(n, 0.0, 1.0, like, generator) * (height - h + 1))
        left = torch.floor(_uniform(n, 0.0, 1.0, like, generator) * (width - w + 1))
        top = torch.where(none_ok, torch.div(height - h, 2, rounding_mode="floor"), top)
        left = torch.where(none_ok, torch.div(width - w, 2, rounding_mode="floor"), left)
        return torch.stack((top, left, h, w), dim=1)

    def _crop_sizes(
        self,
        n: int,
        height: int,
        width: int,
        like: torch.Tensor,
        generator: torch.Generator | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Crop heights and widths ``(n,)`` and where no try fitted ``(n,) bool``.

        Ten tries of (area, log aspect ratio) per sample, all drawn at once; the first try that
        fits the image wins, as in torchvision's loop.
        """
        area = height * width
        tries = 10
        target = area * _uniform(n, *self.crop_scale, like, generator, tries)
        log_r = _uniform(
            n, math.log(self.crop_ratio[0]), math.log(self.crop_ratio[1]), like, generator, tries
        )
        ratio = torch.exp(log_r)
        w = torch.round(torch.sqrt(target * ratio))
        h = torch.round(torch.sqrt(target / ratio))
        ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
        first = ok.float().argmax(dim=1, keepdim=True)  # first successful try per sample
        w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)
        fw, fh = self._fallback_size(height, width)
        none_ok = ~ok.any(dim=1)
        w = torch.where(none_ok, torch.full_like(w, fw), w)
        h = torch.where(none_ok, torch.full_like(h, fh), h)
        return h, w, none_ok

    def _fallback_size(self, height: int, width: int) -> tuple[int, int]:
        """``(w, h)`` of the centre crop torchvision falls back to when no try fitted.

        The whole image, cut to the nearest allowed aspect ratio.
        """
        in_ratio = width / height
        if in_ratio < self.crop_ratio[0]:
            return width, round(width / self.crop_ratio[0])
        if in_ratio > self.crop_ratio[1]:
            return round(height * self.crop_ratio[1]), height
        return width, height

    def _crop_jitter(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Crop, resize, flip, colour-jitter and grey ``x: (N, C, H, W)`` -> ``(N, C, S, S)``."""
        n = x.shape[0]
        x = self._resized_crops(x, generator)
        flip = torch.rand(n, generator=generator, device=x.device) < self.flip_p
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)

        x = self._colour_jitter(x, generator)
        gray = torch.rand(n, generator=generator, device=x.device) < self.grayscale_p
        return torch.where(gray.view(-1, 1, 1, 1), _gray(x).expand_as(x), x)

    def _resized_crops(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """One `crop_boxes` crop per sample of ``x``, resampled to ``(S, S)``."""
        n, _, height, width = x.shape
        top, left, h, w = self.crop_boxes(n, height, width, x, generator).unbind(1)
        rows = torch.arange(n, device=x.device, dtype=x.dtype)
        boxes = torch.stack((rows, left, top, left + w, top + h), dim=1)
        # aligned=True puts sample points at pixel centres, i.e. resize with align_corners=False.
        from torchvision.ops import roi_align  # lazy: importing torchvision.ops costs ~2 s

        return roi_align(
            x,
            boxes,
            (self.image_size, self.image_size),
            spatial_scale=1.0,
            sampling_ratio=-1,
            aligned=True,
        )

    def _colour_jitter(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """ColorJitter with per-sample factors and a per-sample random order of the four ops.

        Brightness, contrast and saturation are all ``clamp(f * x + (1 - f) * other)`` with
        ``other`` = 0, the mean luma, or the luma image, so one blend per step applies whichever
        of the three each sample draws (f = 1 leaves a sample unchanged). The expensive hue op
        runs once on the whole batch, between the steps before and after each sample's hue
        step. No data-dependent indexing: nothing waits for the GPU.
        """
        channels = x.shape[1]
        factors, hue, order = self._jitter_params(x, generator)
        hue_step = (order == 3).float().argmax(dim=1, keepdim=True)  # (n, 1)
        steps = torch.arange(4, device=x.device)
        # Step 3 is never before the hue step.
        x = _blend_steps(x, order, factors, steps < hue_step, range(3))
        if channels == 3 and self.jitter[3] > 0:  # hue does nothing to one-channel images
            x = _adjust_hue(x, hue)
        return _blend_steps(x, order, factors, steps > hue_step, range(1, 4))

    def _jitter_params(
        self, x: torch.Tensor, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-sample colour parameters for ``x: (n, C, S, S)``.

        Returns ``factors: (n, 3)`` (brightness, contrast, saturation), ``hue: (n,)`` and
        ``order: (n, 4)``, each sample's op per step (0-2 the blends, 3 = hue; torchvision's
        randperm), drawn in that order.
        """
        n = x.shape[0]
        b, c, s, h = self.jitter
        factors = torch.stack(
            [
                _uniform(n, max(0.0, 1 - b), 1 + b, x, generator),
                _uniform(n, max(0.0, 1 - c), 1 + c, x, generator),
                _uniform(n, max(0.0, 1 - s), 1 + s, x, generator),
            ],
            dim=1,
        )
        hue = _uniform(n, -h, h, x, generator)
        order = torch.argsort(torch.rand(n, 4, generator=generator, device=x.device), dim=1)
        return factors, hue, order

    # -- digits: affine + noise ----------------------------------------------------------------

    def _affine_noise(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        n, _, height, width = x.shape
        angle = torch.deg2rad(_uniform(n, -self.degrees, self.degrees, x, generator))
        # torchvision rounds the translation to whole pixels.
        tx = torch.round(_uniform(n, -self.translate * width, self.translate * width, x, generator))
        ty = torch.round(
            _uniform(n, -self.translate * height, self.translate * height, x, generator)
        )
        scale = _uniform(n, *self.scale, x, generator)
        theta = _affine_theta(angle, tx, ty, scale, height, width)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        noise = torch.randn(x.shape, generator=generator, device=x.device)
        return (x + self.noise_sigma * noise).clamp_(0.0, 1.0)


def _affine_theta(
    angle: torch.Tensor,
    tx: torch.Tensor,
    ty: torch.Tensor,
    scale: torch.Tensor,
    height: int,
    width: int,
) -> torch.Tensor:
    """``(N, 2, 3)`` `F.affine_grid` matrices for torchvision's ``affine`` convention.

    ``angle`` in radians (counter-clockwise on screen), ``tx, ty`` in pixels, ``scale`` > 0, all
    ``(N,)``, about the image centre. The grid maps output to input, so the matrix is the inverse
    ``R(-angle) / scale`` applied after undoing the translation, in [-1, 1] coordinates.
    """
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    # Pixel-space inverse rotation [[cos, sin], [-sin, cos]]; rescale the off-diagonal terms
    # because x and y are normalised by different lengths when the image is not square.
    a, b = cos, sin * height / width
    c, d = -sin * width / height, cos
    ux, uy = 2 * tx / width, 2 * ty / height  # translation in normalised units
    row0 = torch.stack((a, b, -(a * ux + b * uy)), dim=1)
    row1 = torch.stack((c, d, -(c * ux + d * uy)), dim=1)
    return torch.stack((row0, row1), dim=1)


def batch_augment_for(
    dataset_name: str, image_size: int, mean: Sequence[float], std: Sequence[float]
) -> BatchAugment:
    """The `BatchAugment` matching `view_transform` for ``dataset_name``: both read its
    `VIEW_RECIPES` entry.

    >>> batch_augment_for("stl10", 64, (0.5,) * 3, (0.25,) * 3).crop_scale
    (0.08, 1.0)
    """
    recipe = view_recipe(dataset_name)
    if recipe.kind == "sphere":
        return BatchAugment("sphere", image_size=image_size, sphere_sigma=recipe.sphere_sigma)
    if recipe.kind == "affine":
        return BatchAugment(
            "affine",
            image_size=image_size,
            mean=mean,
            std=std,
            degrees=recipe.degrees,
            translate=recipe.translate,
            scale=recipe.affine_scale,
            noise_sigma=recipe.noise_sigma,
        )
    return BatchAugment(
        "crop",
        image_size=image_size,
        mean=mean,
        std=std,
        crop_scale=recipe.crop_scale,
        crop_ratio=recipe.crop_ratio,
        flip_p=recipe.flip_p,
        jitter=recipe.jitter,
        grayscale_p=recipe.grayscale_p,
    )
