"""The baseline of `python -m bench defaults`: a CIFAR-10 training written by hand in plain
PyTorch, the way course notebooks write it (and nothing from trainpipe).

torchvision's ImageFolder decodes the JPEGs with PIL in 2 DataLoader workers and applies
RandomCrop(32, padding=4) (zero padding, torchvision's default) + RandomHorizontalFlip + ToTensor + Normalize per image;
timm's model; SGD with Nesterov momentum and weight decay under torch's OneCycleLR, stepped
every batch; the running loss read with `.item()` every step; the test accuracy at the end.
No speed option is set: the default memory format, torch's default optimizer kernels and
threads. Prints one JSON line: {"seconds", "test_acc", "steps"}.

    python -m bench.plain_cifar --data DIR [--epochs 1] [--batch-size 256] [--lr 0.2] [--fraction 1]
"""

from __future__ import annotations

import argparse
import json
import time

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="an image folder with train/ and test/")
    p.add_argument("--model", default="resnet18")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=0.2)
    p.add_argument("--fraction", type=float, default=1.0, help="train on this share of the training images")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="cuda_if_available")
    a = p.parse_args()
    start = time.perf_counter()

    import timm
    import torch
    import torch.nn.functional as F
    from torchvision import datasets
    from torchvision import transforms as T

    device = torch.device("cuda" if a.device == "cuda_if_available" and torch.cuda.is_available()
                          else "cpu" if a.device == "cuda_if_available" else a.device)
    torch.manual_seed(0)
    train_tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(),
                          T.ToTensor(), T.Normalize(MEAN, STD)])
    train_set = datasets.ImageFolder(f"{a.data}/train", train_tf)
    if a.fraction < 1:
        keep = torch.randperm(len(train_set))[: int(len(train_set) * a.fraction)]
        train_set = torch.utils.data.Subset(train_set, keep.tolist())
    test_set = datasets.ImageFolder(f"{a.data}/test", T.Compose([T.ToTensor(), T.Normalize(MEAN, STD)]))
    train_loader = torch.utils.data.DataLoader(train_set, batch_size=a.batch_size, shuffle=True, drop_last=True,
                                               num_workers=a.workers, pin_memory=device.type == "cuda")
    test_loader = torch.utils.data.DataLoader(test_set, batch_size=1000, num_workers=a.workers)

    model = timm.create_model(a.model, num_classes=len(test_set.classes)).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=a.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=a.lr, total_steps=a.epochs * len(train_loader))
    steps = 0
    for epoch in range(a.epochs):
        model.train()
        running = 0.0
        for x, y in train_loader:
            x, y = x.to(device), y.to(device)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            running += loss.item()
            steps += 1
        print(f"epoch {epoch + 1}: loss {running / max(len(train_loader), 1):.4f}", flush=True)
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in test_loader:
            correct += (model(x.to(device)).argmax(1).cpu() == y).sum().item()
            total += len(y)
    print(json.dumps({"seconds": time.perf_counter() - start, "test_acc": correct / max(total, 1), "steps": steps}))


if __name__ == "__main__":
    main()
