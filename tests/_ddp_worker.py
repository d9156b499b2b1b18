"""One rank (or the single-process reference) of tests/test_distributed.py; not a test itself.

    python tests/_ddp_worker.py OUT.pt RUN_DIR [VIEWS_FROM.pt ...]

Under torchrun-style variables (WORLD_SIZE=2, RANK, ...) it takes one training step's loss and
gradients through the real Trainer (DDP + gathered negatives) and saves them with its local
views. Without them it rebuilds the global batch from the ranks' saved views and does the same
in one process.
"""

import sys

import torch


def main() -> None:
    from cacr_lab.train import TrainConfig, Trainer

    out, run_dir, *rank_files = sys.argv[1:]
    config = TrainConfig(
        dataset="toy",
        batch_size=16,
        positives=2,
        max_steps=1,
        device="cpu",
        loss_options={"tau_pos": 2.0, "tau_neg": 3.0},
    )
    trainer = Trainer(config, run_dir, progress=False)
    if rank_files:  # the one-process reference on the ranks' global batch
        views = torch.cat([torch.load(f)["views"] for f in rank_files], dim=1)
    else:
        views = trainer.batch_views(0, trainer.epoch_order(0))
    trainer.forward_model.train()
    loss = trainer.loss_of(views).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters()}
    torch.save({"loss": loss.detach(), "grads": grads, "views": views}, out)


if __name__ == "__main__":
    main()
