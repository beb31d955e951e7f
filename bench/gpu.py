"""GPU benchmarks, one command: `python -m bench gpu [--cifar10 PATH] [--cifar100 ROOT] [--airbench FILE]`.

Always measured (random data of the right shapes; the pixel values do not change the cost):
- resnet18_cifar training images/s at batch 512 in bf16, channels-last, compiled, through
  trainpipe's Trainer, against the hardware bound: peak dense bf16 FLOP/s divided by the
  FLOPs of one training step per image (3 x 2 x the forward MACs: about 3.3 GFLOP), and
  against a plain hand-written loop doing the same in the same run (the step overhead on
  a GPU);
- the same for the CIFAR-100 preset's model and batch (100 classes);
- DeviceLoader images/s on the GPU (`bench.data`), against the 1M images/s bound.
With data (both on the same copy, so that the ratio means something):
- `--cifar10 PATH`: cifar10_speed's training time and test accuracy over `--runs` seeds,
  after a warm-up run that compiles (its time is not counted, as the records do);
- `--airbench FILE`: the airbench94 script, run on that same data, for the time ratio;
- `--cifar100 ROOT`: cifar100_speed at 15 and 30 epochs (the 70% and 75% targets).
Training time = the sum of the epochs' times + one test evaluation (with the preset's
TTA), which is what airbench94's total_time_seconds counts too.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from bench import Section, add_write_option, hardware, publish, table, today

# Peak dense bf16 tensor-core FLOP/s (no sparsity) from the vendors' data sheets, matched
# against torch.cuda.get_device_name(); --peak-tflops overrides.
PEAK_BF16_TFLOPS = [
    ("H200", 989.0), ("GH200", 989.0), ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0),
    ("A100", 312.0), ("L40S", 362.0), ("L40", 181.0), ("L4", 121.0), ("A10G", 70.0), ("A10", 125.0), ("B200", 2250.0),
]
NO_GPU = (
    "bench gpu: no CUDA device here (torch.cuda.is_available() is False). This section measures "
    "GPU training throughput, time to 94% on CIFAR-10 and the DeviceLoader on a GPU; run the same "
    "command on a machine with an NVIDIA GPU. BENCHMARKS.md lists these numbers under 'Unmeasured'."
)


def peak_tflops(name: str) -> float | None:
    for key, value in PEAK_BF16_TFLOPS:
        if key.lower() in name.lower():
            return value
    return None


def data_overrides(path: Path, dataset: str) -> list[str]:
    """An image folder (train/, test/ inside) or a torchvision data root."""
    if (path / "train").is_dir():
        return ["data.dataset=imagefolder", f"data.path={path}", "data.download=false"]
    return [f"data.dataset={dataset}", f"data.root={path}", "data.download=false"]


# ------------------------------------------------------------------ throughput
def throughput_rows(peak: float | None, *, quick: bool) -> list[list[str]]:
    from bench.step import Workload, measure

    fast = ["train.precision=bf16", "train.channels_last=true", "train.compile=true"]
    samples = 8192 if quick else 50_000
    loads = [
        Workload("resnet18_cifar, CIFAR-10 shape", (3, 32, 32), samples, 512, ["model.name=resnet18_cifar"], fast),
        Workload("resnet18_cifar, CIFAR-100 shape", (3, 32, 32), samples, 512, ["model.name=resnet18_cifar"], fast,
                 classes=100),
    ]
    rows = []
    with tempfile.TemporaryDirectory(prefix="trainpipe-bench-gpu-") as tmp:
        for i, w in enumerate(loads):
            m = measure(w, rounds=2 if quick else 5, folder=Path(tmp) / str(i))
            flops = _train_flops_per_image(w.classes)
            bound = peak * 1e12 / flops if peak else None
            rows.append([
                f"{w.name}, batch 512, bf16, channels-last, compiled: trainpipe images/s",
                f"{m.images_per_s:,.0f}",
                f"{bound:,.0f} images/s at {peak:g} TFLOP/s, {flops / 1e9:.2f} GFLOP/image" if bound else
                "pass --peak-tflops for the bound",
                f"{m.images_per_s / bound:.1%} of the bound" if bound else "-",
            ])
            rows.append([f"{w.name}: step overhead, trainpipe vs plain loop (s/epoch)",
                         f"{statistics.median(m.trainpipe):.3f}", f"plain loop {statistics.median(m.plain):.3f}",
                         f"ratio {m.ratio:.3f}"])
    return rows


def _train_flops_per_image(classes: int) -> float:
    from trainpipe import models
    from trainpipe.data.base import DataSpec

    spec = DataSpec((3, 32, 32), classes)
    macs = models.model_stats(models.build("resnet18_cifar", {}, spec), spec)["macs_per_image"]
    return 3 * 2 * macs  # forward + backward (about twice the forward), 2 FLOPs per MAC


def loader_rows(quick: bool) -> list[list[str]]:
    from bench import data

    rows = data.rows(quick, device="cuda")
    dl = next(r for r in rows if r["loader"] == "device")
    return [["DeviceLoader (crop + flip + normalise, batch 512) images/s", f"{dl['images_per_s']:,.0f}",
             f"bound {data.MIN_RATE_GPU:,}", "met" if dl["images_per_s"] >= data.MIN_RATE_GPU else "NOT MET"]]


# ---------------------------------------------------------------- time to accuracy
def speed_runs(config: str, overrides: list[str], runs: int) -> list[dict[str, float]]:
    """Train `config` `runs` times (seeds 0..runs-1) after a warm-up run; time and test accuracy of each."""
    import trainpipe
    from trainpipe.loop.callbacks import Callback

    from bench import sync

    class Capture(Callback):
        def on_fit_start(self, trainer: Any) -> None:
            self.trainer = trainer

    results = []
    with tempfile.TemporaryDirectory(prefix="trainpipe-bench-speed-") as tmp:
        trainpipe.train(config, [*overrides, "train.epochs=1"], output=Path(tmp) / "warmup", quiet=True)
        for seed in range(runs):
            cap = Capture()
            r = trainpipe.train(config, [*overrides, f"seed={seed}"], output=Path(tmp) / f"run{seed}", quiet=True,
                                callbacks=[cap])
            tr = cap.trainer
            sync(tr.device)
            start = time.perf_counter()
            tr.evaluate(tr.data.test, prefix="test")  # the same evaluation the run ended with
            sync(tr.device)
            eval_s = time.perf_counter() - start
            train_s = sum(m["epoch_time_s"] for m in r.metrics)
            results.append({"seed": seed, "time_s": train_s + eval_s, "test_acc": r.summary["test/acc"]})
            print(f"  {config} seed {seed}: {train_s + eval_s:.2f}s, test acc {r.summary['test/acc']:.4f}", flush=True)
    return results


def summarise(name: str, results: list[dict[str, float]], target: float, data_note: str) -> list[str]:
    accs = [r["test_acc"] for r in results]
    times = [r["time_s"] for r in results]
    spread = f" +- {statistics.stdev(accs):.4f}" if len(accs) > 1 else ""
    hit = sum(a >= target for a in accs)
    return [f"{name}: time (median of {len(times)} runs) and test acc, {data_note}",
            f"{statistics.median(times):.2f}s",
            f"acc {statistics.mean(accs):.4f}{spread}",
            f"{hit}/{len(accs)} runs >= {target:.0%}"]


def airbench(script: Path, data_path: Path) -> list[dict[str, float]]:
    """Run the airbench94 script on the same data (its cifar10/{train,test}.pt format)."""
    from trainpipe import config, data

    cfg = config.load("cifar10_speed", [*data_overrides(data_path, "cifar10"), "data.val_split=0"])
    bundle = data.build(cfg.data, seed=0, device=torch.device("cpu"))
    with tempfile.TemporaryDirectory(prefix="trainpipe-bench-airbench-") as tmp:
        folder = Path(tmp) / "cifar10"
        folder.mkdir()
        classes = list(bundle.spec.classes)
        for name, loader in (("train", bundle.train), ("test", bundle.test)):
            split = loader.split
            torch.save({"images": split.x.permute(0, 2, 3, 1).contiguous(), "labels": split.y, "classes": classes},
                       folder / f"{name}.pt")
        proc = subprocess.run([sys.executable, str(script.resolve())], cwd=tmp, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{script} failed:\n{proc.stderr[-2000:]}")
    return parse_airbench(proc.stdout)


def parse_airbench(stdout: str) -> list[dict[str, float]]:
    """The final ('eval') row of each run in airbench94's table: tta_val_acc and total_time_seconds."""
    header: list[str] | None = None
    out = []
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if "total_time_seconds" in cells:
            header = cells
        elif header and len(cells) == len(header) and cells[header.index("epoch")] == "eval":
            row = dict(zip(header, cells))
            out.append({"time_s": float(row["total_time_seconds"]), "test_acc": float(row["tta_val_acc"])})
    return out


# ------------------------------------------------------------------------ command
def run(quick: bool = False, *, peak: float | None = None, cifar10: Path | None = None,
        cifar100: Path | None = None, airbench_script: Path | None = None, runs: int = 5) -> Section:
    name = torch.cuda.get_device_name()
    peak = peak or peak_tflops(name)
    rows = throughput_rows(peak, quick=quick) + loader_rows(quick)
    notes = []
    if cifar10 is not None:
        note = f"data {cifar10}" + (" (image folder: the JPEG copy if it is ../shared/data/cifar10)"
                                    if (cifar10 / "train").is_dir() else "")
        ours = speed_runs("cifar10_speed", data_overrides(cifar10, "cifar10"), 1 if quick else runs)
        rows.append(summarise("cifar10_speed", ours, 0.94, note))
        if airbench_script is not None:
            theirs = airbench(airbench_script, cifar10)
            rows.append(summarise("airbench94 script, same data", theirs, 0.94, note))
            ratio = statistics.median(r["time_s"] for r in ours) / statistics.median(r["time_s"] for r in theirs)
            rows.append(["cifar10_speed time / airbench94 time", f"{ratio:.2f}", "-", "-"])
    else:
        notes.append("time to 94%: not run (pass --cifar10 PATH)")
    if cifar100 is not None:
        over = data_overrides(cifar100, "cifar100")
        for epochs, target in ((15, 0.70), (30, 0.75)):
            res = speed_runs("cifar100_speed", [*over, f"train.epochs={epochs}"], 1)
            rows.append(summarise(f"cifar100_speed, {epochs} epochs", res, target, f"data {cifar100}"))
    else:
        notes.append("CIFAR-100 time to 70%/75%: not run (pass --cifar100 ROOT)")
    body = table(["measurement", "value", "reference", "ratio / result"], rows)
    print(body)
    md = "\n".join([
        f"`python -m bench gpu{' --cifar10 ...' if cifar10 else ''}{' --airbench ...' if airbench_script else ''}"
        f"{' --cifar100 ...' if cifar100 else ''}` measured {today()} on {hardware()}"
        f"{' (quick mode: not for quoting)' if quick else ''}.",
        "",
        body,
        *([""] + [f"- {n}" for n in notes] if notes else []),
    ])
    return Section("gpu", md)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench gpu", description=__doc__.splitlines()[0])
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="the GPU's peak dense bf16 TFLOP/s (default: known GPUs by name)")
    p.add_argument("--cifar10", type=Path, default=None,
                   help="CIFAR-10 as an image folder (train/, test/) or a torchvision data root")
    p.add_argument("--airbench", type=Path, default=None, help="airbench94.py, run on the --cifar10 data")
    p.add_argument("--cifar100", type=Path, default=None, help="a torchvision data root holding cifar-100-python/")
    p.add_argument("--runs", type=int, default=5, help="cifar10_speed runs (seeds), default 5")
    p.add_argument("--quick", action="store_true", help="small sizes, one run: checks that it runs")
    add_write_option(p)
    a = p.parse_args(argv)
    if not torch.cuda.is_available():
        print(NO_GPU, file=sys.stderr)
        return 2
    if a.airbench is not None and a.cifar10 is None:
        p.error("--airbench needs --cifar10 PATH: both scripts must train on the same data")
    section = run(a.quick, peak=a.peak_tflops, cifar10=a.cifar10, cifar100=a.cifar100,
                  airbench_script=a.airbench, runs=a.runs)
    publish(section, a)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
