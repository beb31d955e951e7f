"""A stand-in for airbench94.py in `python -m bench gpu --rehearse`: same files in, same table out.

It reads what the benchmark writes for airbench94 (cifar10/train.pt and cifar10/test.pt
in the working directory: uint8 NHWC images, labels, class names), fits a nearest-class-mean
classifier on a random half of the training images per run (a few milliseconds on a CPU),
scores the test images with flip TTA, and prints airbench94's table: a header row, and an
'eval' row per run with tta_val_acc and total_time_seconds. The numbers are real for this
classifier and mean nothing for airbench94; the rehearsal only checks the hand-off.
Usage: python airbench_standin.py [RUNS]   (default 3)
"""

from __future__ import annotations

import sys
import time

import torch

COLUMNS = ["run", "epoch", "train_loss", "val_loss", "train_acc", "val_acc", "tta_val_acc", "total_time_seconds"]


def row(values: dict[str, object]) -> str:
    cells = []
    for c in COLUMNS:
        v = values.get(c, "")
        cells.append(f"{v:.4f}" if isinstance(v, float) else str(v))
    return "|  " + "  |  ".join(f"{c:>{max(len(n), 6)}}" for c, n in zip(cells, COLUMNS)) + "  |"


def main(runs: int) -> None:
    train, test = torch.load("cifar10/train.pt"), torch.load("cifar10/test.pt")
    x = train["images"].permute(0, 3, 1, 2).float().div(255).flatten(1)
    y = train["labels"].long()
    tx = test["images"].permute(0, 3, 1, 2).float().div(255)
    ty = test["labels"].long()
    k = len(train["classes"])
    print("|  " + "  |  ".join(f"{c:>6}" for c in COLUMNS) + "  |")
    for run in range(runs):
        start = time.perf_counter()
        g = torch.Generator().manual_seed(run)
        half = torch.randperm(len(y), generator=g)[: max(len(y) // 2, k)]
        means = torch.zeros(k, x.shape[1]).index_add_(0, y[half], x[half])
        means /= torch.bincount(y[half], minlength=k).clamp(min=1)[:, None]
        train_acc = (torch.cdist(x[half], means).argmin(1) == y[half]).float().mean().item()
        plain = -torch.cdist(tx.flatten(1), means)
        flipped = -torch.cdist(tx.flip(-1).flatten(1), means)
        val_acc = (plain.argmax(1) == ty).float().mean().item()
        tta_acc = ((plain + flipped).argmax(1) == ty).float().mean().item()
        elapsed = time.perf_counter() - start
        print(row({"run": run, "epoch": "eval", "train_acc": train_acc, "val_acc": val_acc,
                   "tta_val_acc": tta_acc, "total_time_seconds": elapsed}), flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
