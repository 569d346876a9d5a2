"""Train a timm student on a finished run's stored teacher labels with a plain PyTorch loop.

    mkd-pipeline run stages/fashion-mnist-demo.yaml          # (or make demo): the label store
    python examples/own_loop.py stages/fashion-mnist-demo.yaml --workers 2 --out student.pth

Each epoch's views come rendered from the shards, paired row by row with the labels the run's
lock records for that epoch (pipeline.LabeledViews); the loss is maskedkd's, as in our trainer.
"""

import argparse
import sys

import timm
import torch

from maskedkd import distill_loss
from pipeline import LabeledViews
from pipeline.errors import PipelineError

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("stages", help="the run's stage file (or its runs/<name>/config.yaml)")
parser.add_argument("--epochs", type=int, default=None, help="default: the run's schedule.epochs")
parser.add_argument("--steps", type=int, default=None, help="stop each epoch after this many steps")
parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
parser.add_argument("--lr", type=float, default=1e-3)
parser.add_argument("--out", default="student.pth")
args = parser.parse_args()

try:  # no run lock, labels not computed yet, a partition that does not match: the CLI's message and exit code
    cfg = LabeledViews.from_config(args.stages, 0).config
except PipelineError as e:
    sys.exit(print(f"error: {e}", file=sys.stderr) or e.exit_code)
student = timm.create_model(cfg.student.model, pretrained=False, **cfg.student.kwargs)
optimizer = torch.optim.AdamW(student.parameters(), lr=args.lr)
for epoch in range(args.epochs or cfg.schedule.epochs):
    data = LabeledViews.from_config(cfg, epoch)  # this epoch's views and the labels stored for them
    loss_sum = steps = 0
    for images, target, labels, _keys in data.loader(num_workers=args.workers):
        loss = distill_loss(student(images), labels, target, lam=cfg.train.lam, tau=cfg.train.tau,
                            kind="hard" if cfg.train.kd == "hard" else "kl", ce_weight=cfg.train.ce_weight)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss_sum, steps = loss_sum + loss.item(), steps + 1
        if steps == args.steps:
            break
    print(f"epoch {epoch}: {steps} steps, loss {loss_sum / steps:.4f}")
torch.save(student.state_dict(), args.out)
print(f"saved {args.out}")
