"""GPU checks: the same numbers on CUDA as on the CPU, autocast, and a short CUDA training.

Skipped where no CUDA device exists (CI, laptops); run on a GPU machine with
``pytest tests/test_gpu.py``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cacr_lab.losses import LOSSES

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("method", list(LOSSES))
def test_cuda_loss_and_gradient_match_cpu(method):
    x = torch.randn(5, 64, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    results = []
    for device in ("cpu", "cuda"):
        xd = x.to(device).requires_grad_(True)
        out = LOSSES[method](F.normalize(xd, dim=-1))
        out.loss.backward()
        results.append((out.loss.detach().cpu(), xd.grad.cpu()))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(results[1][1], results[0][1], rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("method", list(LOSSES))
def test_cuda_autocast_is_finite_and_close(method, dtype):
    lin = torch.nn.Linear(128, 128).cuda()
    x = torch.randn(5, 256, 128, device="cuda")
    ref = LOSSES[method](F.normalize(lin(x), dim=-1)).loss
    with torch.autocast("cuda", dtype=dtype):
        out = LOSSES[method](F.normalize(lin(x), dim=-1))
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    out.loss.backward()
    assert torch.isfinite(lin.weight.grad).all()
    torch.testing.assert_close(out.loss, ref, rtol=0.05, atol=0.05)


def test_cuda_large_tau_neg_is_finite():
    x = torch.randn(5, 512, 128, device="cuda", requires_grad=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = LOSSES["cacr"](F.normalize(x, dim=-1), tau_pos=50.0, tau_neg=50.0)
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(x.grad).all()


def test_batched_augmentation_runs_on_the_gpu():
    from cacr_lab.data import batch_augment_for

    aug = batch_augment_for("cifar10", 32, (0.49, 0.48, 0.45), (0.25, 0.24, 0.26))
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, device="cuda")
    views = aug(images, 5, generator=torch.Generator(device="cuda").manual_seed(0))
    assert views.shape == (5, 64, 3, 32, 32) and views.is_cuda and torch.isfinite(views).all()


def test_short_cuda_training_with_amp(tmp_path):
    from cacr_lab.runs import load_run
    from cacr_lab.train import TrainConfig, train

    cfg = TrainConfig(
        dataset="digits",
        device="cuda",
        epochs=1,
        batch_size=128,
        max_steps=5,
        log_every=1,
        view_batching="joint",
    )
    run = load_run(train(cfg, tmp_path / "r", progress=False))
    assert run.status["state"] == "finished"
    assert run.config["device_resolved"].startswith("cuda")
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in run.train_records())
