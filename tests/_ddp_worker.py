"""One rank (or the single-process reference) of tests/test_distributed.py; not a test itself.

    python tests/_ddp_worker.py OUT.pt RUN_DIR [VIEWS_FROM.pt ...]

Under torchrun-style variables (WORLD_SIZE=2, RANK, ...) it takes one training step's loss and
gradients through the real Trainer (DDP + gathered negatives) and saves them with its local
views. Without them it rebuilds the global batch from the ranks' saved views and does the same
in one process. ``CACR_DDP_METHOD=moco`` runs method moco instead of cacr; its ranks also save
their local predictions and keys, and its reference is the loss of the ranks' gathered
predictions and keys (the predictor's BatchNorm sees each rank's batch, so a one-process run
on the global batch would not be the same computation).
"""

import os
import sys

import torch


def main() -> None:
    from cacr_lab.losses import moco_cacr_loss
    from cacr_lab.train import TrainConfig, Trainer

    out, run_dir, *rank_files = sys.argv[1:]
    method = os.environ.get("CACR_DDP_METHOD", "cacr")
    options = {"temperature": 0.5} if method == "moco" else {"tau_pos": 2.0, "tau_neg": 3.0}
    if method == "moco" and rank_files:  # the reference: the gathered predictions and keys
        ranks = [torch.load(f) for f in rank_files]
        q, k = (torch.cat([r[name] for r in ranks], dim=1) for name in ("q", "k"))
        torch.save({"loss": moco_cacr_loss(q, **options, keys=k).loss}, out)
        return
    config = TrainConfig(
        dataset="toy",
        method=method,
        batch_size=16,
        positives=2,
        max_steps=1,
        device="cpu",
        loss_options=options,
    )
    trainer = Trainer(config, run_dir, progress=False)
    if rank_files:  # the one-process reference on the ranks' global batch
        views = torch.cat([torch.load(f)["views"] for f in rank_files], dim=1)
    else:
        views = trainer.batch_views(0, trainer.epoch_order(0))
    trainer.forward_model.train()
    loss = trainer.loss_of(views).loss
    loss.backward()
    named = list(trainer.model.named_parameters())
    if trainer.moco is not None:
        named += [("predictor." + n, p) for n, p in trainer.moco.predictor.named_parameters()]
    saved = {"loss": loss.detach(), "grads": {n: p.grad.clone() for n, p in named}}
    if trainer.moco is not None:  # this rank's own predictions and keys, outside DDP
        online = getattr(trainer.forward_model, "module", trainer.forward_model)
        with torch.no_grad():
            saved |= {"q": online(views), "k": trainer.moco.key_model(views)}
    torch.save(saved | {"views": views}, out)


if __name__ == "__main__":
    main()
