"""Data loading throughput: DeviceLoader and StreamLoader against the pipeline users have today.

The baseline is what a CIFAR notebook does: a torchvision-style dataset that turns each
uint8 HWC array into a PIL image and applies transforms.Compose([RandomCrop(32,
padding=4), RandomHorizontalFlip(), ToTensor(), Normalize(...)]) in a DataLoader with
batch_size=512 and num_workers=2 (persistent workers and a warm-up pass, which only
favours it). trainpipe runs the same augmentation (random_crop with padding 4, reflect;
hflip; normalise) in DeviceLoader (whole batches of uint8 data held on the device) and in
StreamLoader (per-sample torchvision v2 transforms in 2 workers, mixing-free).

Data: 50,000 CIFAR-shaped random uint8 images (3x32x32): the pixel values do not change
the cost of these ops. On the CPU, every loader is timed over the same number of images
(a subset: the per-image rate is flat), so that the slow baseline fits the time budget;
on a GPU, DeviceLoader is timed over whole epochs. Rounds alternate the order of the
pipelines, so that a busy shared machine slows them alike; the table gives the median
images/s over rounds, and the ratio of medians against the baseline.
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch

from bench import Section, add_write_option, hardware, median, publish, table, timed, today

N_IMAGES = 50_000
BATCH = 512
WORKERS = 2
MIN_RATIO_CPU = 5.0  # the bound for DeviceLoader on the 2-core CPU
MIN_RATE_GPU = 1_000_000  # and on a GPU, images/s
# Published CIFAR-10 statistics, as users' notebooks write them.
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


class PilCifar(torch.utils.data.Dataset):
    """torchvision's CIFAR10.__getitem__: array -> PIL image -> transform."""

    def __init__(self, x_hwc: np.ndarray, y: np.ndarray, transform: Callable) -> None:
        self.x, self.y, self.transform = x_hwc, y, transform

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        return self.transform(Image.fromarray(self.x[i])), int(self.y[i])


def baseline_loader(x_nchw: torch.Tensor, y: torch.Tensor, device: torch.device) -> torch.utils.data.DataLoader:
    from torchvision import transforms as T

    tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(MEAN, STD)])
    ds = PilCifar(x_nchw.permute(0, 2, 3, 1).contiguous().numpy(), y.numpy(), tf)
    return torch.utils.data.DataLoader(ds, batch_size=BATCH, shuffle=True, num_workers=WORKERS,
                                       persistent_workers=True, pin_memory=device.type == "cuda")


def trainpipe_loaders(x: torch.Tensor, y: torch.Tensor, x_sub: torch.Tensor, y_sub: torch.Tensor,
                      device: torch.device) -> dict[str, Any]:
    from trainpipe.config import augment_specs
    from trainpipe.data.augment import build_pipeline, stream_transform
    from trainpipe.data.base import Split
    from trainpipe.data.loaders import DeviceLoader, StreamLoader

    ops = build_pipeline(augment_specs([{"name": "random_crop", "padding": 4, "padding_mode": "reflect"}, "hflip"]))
    common = dict(batch_size=BATCH, device=device, mean=MEAN, std=STD, shuffle=True, seed=0)
    return {
        "device": DeviceLoader(Split(x, y), ops=ops, **common),
        "stream": StreamLoader(Split(x_sub, y_sub), transform=stream_transform(ops), num_workers=WORKERS, **common),
    }


def consume(batches: Iterable[tuple[torch.Tensor, torch.Tensor]], device: torch.device, limit: int | None) -> int:
    """Iterate (at most `limit` batches), with every batch on `device`; returns the images seen."""
    n = 0
    for x, y in itertools.islice(batches, limit):
        x = x.to(device, non_blocking=True)  # a no-op for trainpipe's loaders: already there
        n += y.shape[0]
    return n


def measure(*, device: torch.device, timed_images: int, rounds: int) -> list[dict[str, Any]]:
    """images/s per pipeline (median over rounds) and the ratio against the baseline."""
    threads = torch.get_num_threads()
    if device.type == "cpu":
        # One thread in the main process (the baseline has two worker processes besides):
        # on a shared 2-core machine, OpenMP threads waiting for each other at every op
        # cost more than a second thread gives.
        torch.set_num_threads(1)
    try:
        return _measure(device=device, timed_images=timed_images, rounds=rounds)
    finally:
        torch.set_num_threads(threads)


def _measure(*, device: torch.device, timed_images: int, rounds: int) -> list[dict[str, Any]]:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (N_IMAGES, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (N_IMAGES,), generator=g)
    sub = timed_images
    loaders = {"baseline": baseline_loader(x[:sub], y[:sub], device),
               **trainpipe_loaders(x, y, x[:sub], y[:sub], device)}
    # DeviceLoader keeps all 50,000 images and is stopped after the same number of images on
    # the CPU; on a GPU it runs whole epochs. The others iterate their subset to the end, so
    # that no worker is still busy prefetching while the next pipeline is timed.
    device_batches = None if device.type == "cuda" else -(-sub // BATCH)
    limits = {"baseline": None, "stream": None, "device": device_batches}
    images: dict[str, int] = {}
    times: dict[str, list[float]] = {k: [] for k in loaders}
    epoch = 0

    def one_pass(name: str) -> None:
        nonlocal epoch
        ld = loaders[name]
        if hasattr(ld, "set_epoch"):
            ld.set_epoch(epoch)
        epoch += 1
        images[name] = consume(ld, device, limits[name])

    for name in loaders:  # warm-up: worker start, allocator, first-call costs
        one_pass(name)
    names = list(loaders)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            times[name].append(timed(lambda: one_pass(name), device))
    rates = {k: [images[k] / t for t in ts] for k, ts in times.items()}
    base = median(rates["baseline"])
    labels = {
        "baseline": f"users' baseline: PIL + torchvision transforms, DataLoader({WORKERS} workers)",
        "stream": f"trainpipe StreamLoader (v2 transforms, {WORKERS} workers)",
        "device": "trainpipe DeviceLoader (batched ops on the device)",
    }
    return [
        {"pipeline": labels[k], "loader": k, "device": str(device), "batch_size": BATCH,
         "images_per_pass": images[k], "rounds": rounds, "images_per_s": median(rates[k]),
         "min_images_per_s": min(rates[k]), "max_images_per_s": max(rates[k]),
         "ratio_vs_baseline": median(rates[k]) / base}
        for k in ("baseline", "stream", "device")
    ]


def report(rows: Sequence[dict[str, Any]]) -> str:
    return table(
        ["pipeline", "device", "images/pass", "images/s (median)", "min-max", "x baseline"],
        [[r["pipeline"], r["device"], f"{r['images_per_pass']:,}", f"{r['images_per_s']:,.0f}",
          f"{r['min_images_per_s']:,.0f}-{r['max_images_per_s']:,.0f}", f"{r['ratio_vs_baseline']:.1f}"]
         for r in rows],
    )


def run(quick: bool = False, *, rounds: int | None = None, device: str | None = None) -> Section:
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    rounds = rounds or (1 if quick else 3)
    timed_images = 2_048 if quick else 10_240
    rows = measure(device=dev, timed_images=timed_images, rounds=rounds)
    body = report(rows)
    print(body, flush=True)
    dl = next(r for r in rows if r["loader"] == "device")
    if dev.type == "cuda":
        ok, bound = dl["images_per_s"] >= MIN_RATE_GPU, f"{MIN_RATE_GPU:,} images/s on a GPU"
    else:
        ok, bound = dl["ratio_vs_baseline"] >= MIN_RATIO_CPU, f"{MIN_RATIO_CPU:g}x the baseline on the CPU"
    scope = (f"DeviceLoader over whole epochs of {N_IMAGES:,} images, the others over {timed_images:,}"
             if dev.type == "cuda" else f"every pipeline over {timed_images:,} images per pass (a subset of "
             f"{N_IMAGES:,}; the per-image rate is flat, so it extrapolates to a full epoch)")
    md = "\n".join([
        f"`python -m bench data` measured {today()} on {hardware()}. CIFAR-shaped random uint8 data, "
        f"batch {BATCH}, random crop (padding 4) + horizontal flip + normalise; {scope}; median of {rounds} "
        f"alternating rounds after a warm-up pass; one torch thread in the main process on the CPU"
        f"{' (quick mode: not for quoting)' if quick else ''}.",
        "",
        body,
        "",
        f"DeviceLoader: {dl['images_per_s']:,.0f} images/s, {dl['ratio_vs_baseline']:.1f}x the baseline "
        f"(bound: {bound}): {'met' if ok else 'NOT MET'}.",
    ])
    print(md.splitlines()[-1])
    return Section("data", md, ok)


def rows(quick: bool = False, **kw: Any) -> list[dict[str, Any]]:
    """The measurements as dicts, for callers that write their own report."""
    dev = torch.device(kw.pop("device", None) or ("cuda" if torch.cuda.is_available() else "cpu"))
    return measure(device=dev, timed_images=2_048 if quick else 10_240, rounds=kw.pop("rounds", 1 if quick else 3))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench data", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes, one round: checks that it runs")
    p.add_argument("--rounds", type=int, default=None, help="timed rounds per pipeline (default 3)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    add_write_option(p)
    a = p.parse_args(argv)
    section = run(a.quick, rounds=a.rounds, device=a.device)
    publish(section, a)
    return 0 if section.ok else 1
