"""GPU benchmarks, one command: `python -m bench gpu [--cifar10 PATH] [--cifar100 ROOT] [--airbench FILE]`.

The measurements come in parts, in order of value; each part writes its result file
(`OUT/<part>.json`, rewritten after every row) the moment it has a number, so that a run
cut short still leaves what it had (`bench/gpu_session.sh` runs each part under its own
time cap):
- smoke: do the CUDA paths run at all? 1-epoch quickstart runs in fp32, in bf16 with
  channels-last, torch.compile and the DeviceLoader, and in fp16 with the GradScaler, and a
  1-epoch cifar10_speed run; each checks that the run took the path it asked for;
- throughput: resnet18_cifar training images/s at batch 512 in bf16, channels-last,
  compiled, through trainpipe's Trainer, against the hardware bound: peak dense bf16
  FLOP/s divided by the FLOPs of one training step per image (3 x 2 x the forward MACs:
  about 3.3 GFLOP), and against a plain hand-written loop doing the same in the same run
  (the step overhead on a GPU); random data of the right shapes (the pixel values do not
  change the cost);
- speed (`--cifar10 PATH`): cifar10_speed's training time and test accuracy over `--runs`
  seeds, after a warm-up run that compiles (its time is not counted, as the records do);
- airbench (`--airbench FILE`): the airbench94 script, run on that same data, for the time
  ratio (its first `--airbench-runs` runs);
- rest: the CIFAR-100-shaped throughput, DeviceLoader images/s on the GPU against the
  1M images/s bound, and with `--cifar100 ROOT` cifar100_speed at 15 and 30 epochs (the 70%
  and 75% targets).
Training time = the sum of the epochs' times + one test evaluation (with the preset's
TTA), which is what airbench94's total_time_seconds counts too.

`--rehearse` runs every part on the CPU at tiny sizes through the same code (Trainer,
torch.compile with the `aot_eager` backend, the DeviceLoader, both speed presets, the
airbench hand-off with `bench/airbench_standin.py`, the result files): it checks that the
script runs, before a GPU is spent on it. `--collect OUT` turns the result files into the
table of BENCHMARKS.md's GPU section.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bench import ROOT, Section, add_write_option, hardware, publish, table, today

# Peak dense bf16 tensor-core FLOP/s (no sparsity) from the vendors' data sheets, matched
# against torch.cuda.get_device_name(); --peak-tflops overrides.
PEAK_BF16_TFLOPS = [
    ("H200", 989.0), ("GH200", 989.0), ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0),
    ("A100", 312.0), ("L40S", 362.0), ("L40", 181.0), ("L4", 121.0), ("A10G", 70.0), ("A10", 125.0), ("B200", 2250.0),
]
NO_GPU = (
    "bench gpu: no CUDA device here (torch.cuda.is_available() is False). This section measures "
    "GPU training throughput, time to 94% on CIFAR-10 and the DeviceLoader on a GPU; run the same "
    "command on a machine with an NVIDIA GPU (`python -m bench gpu --rehearse` runs it here on the CPU "
    "at tiny sizes). BENCHMARKS.md lists these numbers under 'Unmeasured'."
)
PARTS = ("smoke", "throughput", "speed", "airbench", "rest")
HEADERS = ["measurement", "value", "reference", "ratio / result"]
STANDIN = Path(__file__).with_name("airbench_standin.py")
DEFAULT_OUT = ROOT / "bench" / "out" / "gpu"
REHEARSAL_BACKEND = "aot_eager"  # inductor would compile C++ for minutes on a small CPU
REHEARSAL_PEAK = 1.0  # a nominal TFLOP/s, so that the bound's code runs in a rehearsal


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


def make_image_folder(folder: Path, *, classes: int = 10, train: int = 8, test: int = 4, seed: int = 0) -> Path:
    """A CIFAR-shaped image folder (train/<class>/*.jpg, test/<class>/*.jpg) of random 32x32 JPEGs."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in (("train", train), ("test", test)):
        for c in range(classes):
            d = folder / split / f"class{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                # A class-dependent tint, so that the stand-ins have something to learn.
                px = rng.integers(0, 160, size=(32, 32, 3)) + (np.arange(3) == c % 3) * 80 + c * 3
                Image.fromarray(px.clip(0, 255).astype(np.uint8)).save(d / f"{i}.jpg", quality=75)
    return folder


# ------------------------------------------------------------------ the plan of a run
@dataclass
class Plan:
    """Where a run measures (cuda, or the CPU in a rehearsal), on which data, at which sizes."""

    device: torch.device
    out: Path
    rehearse: bool = False
    quick: bool = False
    peak: float | None = None
    cifar10: Path | None = None
    cifar100: Path | None = None
    airbench_script: Path | None = None
    runs: int = 5
    airbench_runs: int = 3
    rounds: int | None = None
    command: str = "python -m bench gpu"
    work: Path = field(default_factory=lambda: Path(tempfile.gettempdir()))

    @property
    def device_overrides(self) -> list[str]:
        return [f"train.device={self.device.type}"]

    @property
    def tiny(self) -> list[str]:
        """Rehearsal sizes for the speed presets: small batches and a narrow net."""
        return ["data.batch_size=16", "data.eval_batch_size=64", "train.epochs=2"] if self.rehearse else []

    @property
    def cifar10_speed(self) -> list[str]:
        """cifar10_speed's overrides: the data, the device, and a narrow speednet in a rehearsal."""
        data = self.cifar10_data()
        tiny = [*self.tiny, "model.widths=[16,32,32]", "model.stem_width=8"] if self.rehearse else []
        return [*data_overrides(data, "cifar10"), *tiny, *self.device_overrides]

    def cifar10_data(self) -> Path:
        """The --cifar10 folder; without one, a small random image folder (rehearsal, or smoke on a GPU)."""
        if self.cifar10 is not None:
            return self.cifar10
        folder = self.work / "random-cifar10"
        if not (folder / "test").is_dir():
            n = (8, 4) if self.rehearse else (205, 20)  # a GPU run needs more than one batch of 1024
            make_image_folder(folder, train=n[0], test=n[1])
        return folder


class Results:
    """One part's result file, OUT/<part>.json, rewritten (atomically) after every row."""

    def __init__(self, plan: Plan, part: str) -> None:
        self.plan, self.part = plan, part
        self.path = plan.out / f"{part}.json"
        self.start = time.perf_counter()
        self.data: dict[str, Any] = {
            "part": part, "status": "running", "rehearsal": plan.rehearse, "quick": plan.quick,
            "device": str(plan.device), "hardware": hardware(), "date": today(), "command": plan.command,
            "rows": [], "records": [], "errors": [], "seconds": 0.0,
        }
        self.save()

    def save(self) -> None:
        self.data["seconds"] = round(time.perf_counter() - self.start, 2)
        self.plan.out.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        os.replace(tmp, self.path)

    def row(self, cells: Sequence[object], **record: Any) -> None:
        cells = [str(c) for c in cells]
        self.data["rows"].append(cells)
        self.data["records"].append({"measurement": cells[0], **record})
        print("  | " + " | ".join(cells) + " |", flush=True)
        self.save()

    def not_run(self, what: str, why: str) -> None:
        """A measurement skipped for want of an input; `why` says what to pass."""
        self.row([what, "not run", "-", why], skipped=True)

    def failed(self, what: str, exc: BaseException) -> None:
        msg = f"{what}: {type(exc).__name__}: {exc}"
        self.data["errors"].append(msg)
        self.data["rows"].append([what, "FAILED", "-", f"{type(exc).__name__}: {str(exc)[:200]}"])
        self.data["traceback"] = self.data.get("traceback", "") + traceback.format_exc()[-4000:]
        print(f"  FAILED {msg}\n{traceback.format_exc()[-4000:]}", file=sys.stderr, flush=True)
        self.save()

    @contextlib.contextmanager
    def step(self, what: str) -> Iterator[None]:
        """A measurement that may fail: the failure becomes a row, the part goes on."""
        try:
            yield
        except Exception as e:  # noqa: BLE001 (any failure is a result here)
            self.failed(what, e)

    def finish(self) -> None:
        self.data["status"] = "failed" if self.data["errors"] else "done"
        self.save()


@contextlib.contextmanager
def rehearsal_compile(on: bool) -> Iterator[None]:
    """In a rehearsal, torch.compile (the Trainer's and the hand loop's) uses a fast backend."""
    if not on:
        yield
        return
    original = torch.compile
    torch.compile = functools.partial(original, backend=REHEARSAL_BACKEND)  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.compile = original  # type: ignore[assignment]


# ---------------------------------------------------------------------- 1. smoke
class _Keep:
    """A callback that keeps the trainer of a run, to look at what it ran with."""

    def __init__(self) -> None:
        from trainpipe.loop.callbacks import Callback

        keep = self

        class Cb(Callback):
            def on_fit_start(self, trainer: Any) -> None:
                keep.trainer = trainer

        self.callback = Cb()
        self.trainer: Any = None


def run_facts(trainer: Any) -> dict[str, Any]:
    """What a finished run actually ran with: precision, scaler, compile, memory format, loader."""
    names = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
    convs = [p for p in trainer.model.parameters() if p.dim() == 4 and p.shape[-1] > 1]
    loader = trainer.data.train
    x, _ = next(iter(loader))
    return {
        "device": trainer.device.type,
        "precision": names.get(trainer.amp_dtype, str(trainer.amp_dtype)),
        "grad_scaler": trainer.scaler.is_enabled(),
        "loss_scale": float(trainer.scaler.get_scale()) if trainer.scaler.is_enabled() else None,
        "compiled": hasattr(trainer.forward, "_orig_mod"),
        "channels_last": bool(convs) and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
        and x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last),
        "loader": type(loader).__name__,
        "batch_device": x.device.type,
    }


def smoke_run(plan: Plan, res: Results, label: str, config: str, overrides: list[str],
              expect: dict[str, Any]) -> None:
    import trainpipe

    keep = _Keep()
    with tempfile.TemporaryDirectory(prefix="trainpipe-bench-smoke-") as tmp:
        start = time.perf_counter()
        r = trainpipe.train(config, [*overrides, *plan.device_overrides, "train.epochs=1"],
                            output=Path(tmp) / "run", quiet=True, callbacks=[keep.callback])
        wall = time.perf_counter() - start
        facts = run_facts(keep.trainer)
    loss = r.metrics[-1]["train/loss"] if r.metrics else float("nan")
    acc = r.summary.get("test/acc", float("nan"))
    problems = [f"{k} {facts[k]!r}, expected {v!r}" for k, v in expect.items() if facts[k] != v]
    if r.status != "completed":
        problems.append(f"run status {r.status!r}")
    if not math.isfinite(loss):
        problems.append(f"train loss {loss}")
    if facts["grad_scaler"] and not (facts["loss_scale"] and math.isfinite(facts["loss_scale"])):
        problems.append(f"loss scale {facts['loss_scale']}")
    shown = ", ".join(f"{k} {facts[k]}" for k in expect) + (
        f", loss scale {facts['loss_scale']:g}" if facts["loss_scale"] else "")
    res.row([f"smoke: {label}", f"ran 1 epoch in {wall:.1f}s", f"train loss {loss:.3f}, test acc {acc:.3f}",
             ("ok: " if not problems else "NOT AS ASKED: ") + ("; ".join(problems) or shown)],
            ok=not problems, wall_s=wall, train_loss=loss, test_acc=acc, **facts)
    if problems:
        raise RuntimeError(f"{label}: " + "; ".join(problems))


def smoke(plan: Plan, res: Results) -> None:
    dev = plan.device.type
    small = ["model.width=8", "data.fraction=0.3"] if plan.rehearse else []
    quick = [*small, "tracking.plots=false"]
    fast = ["train.channels_last=true", "train.compile=true", "data.loader=device"]
    checks = [
        ("quickstart, fp32", "quickstart", [*quick, "train.precision=fp32"],
         {"device": dev, "precision": "fp32", "compiled": False}),
        ("quickstart, bf16 + channels-last + compiled + DeviceLoader", "quickstart",
         [*quick, "train.precision=bf16", *fast],
         {"device": dev, "precision": "bf16", "compiled": True, "channels_last": True, "loader": "DeviceLoader",
          "batch_device": dev}),
        ("quickstart, fp16 + GradScaler + compiled", "quickstart", [*quick, "train.precision=fp16", *fast],
         {"device": dev, "precision": "fp16", "grad_scaler": True, "compiled": True}),
    ]
    for label, config, overrides, expect in checks:
        with res.step(f"smoke: {label}"):
            smoke_run(plan, res, label, config, overrides, expect)
    with res.step("smoke: cifar10_speed"):
        data = plan.cifar10_data()
        from trainpipe.loop.device import has_fast_bf16

        # precision: auto is bf16 from compute capability 8 (Ampere) on, fp16 before, fp32 on the CPU.
        auto = "fp32" if dev != "cuda" else "bf16" if has_fast_bf16(plan.device) else "fp16"
        expect = {"device": dev, "precision": auto, "compiled": True,
                  "channels_last": True, "loader": "DeviceLoader", "batch_device": dev}
        smoke_run(plan, res, f"cifar10_speed ({_data_note(plan, data)})", "cifar10_speed", plan.cifar10_speed,
                  expect)
    from bench.gpu_checks import resume_checks

    resume_checks(plan, res)


def _data_note(plan: Plan, data: Path) -> str:
    if plan.cifar10 is None:
        return "random images"
    return f"data {data.name}/"


# ---------------------------------------------------------------- 2. throughput
def _workload(plan: Plan, classes: int) -> Any:
    from bench.step import Workload

    fast = ["train.precision=bf16", "train.channels_last=true", "train.compile=true", *plan.device_overrides]
    shape = "CIFAR-10 shape" if classes == 10 else "CIFAR-100 shape"
    if plan.rehearse:
        return Workload(f"resnet18_cifar (width 8, 16x16), {shape}", (3, 16, 16), 32, 8,
                        ["model.name=resnet18_cifar", "model.width=8"], fast, classes=classes)
    samples = 8192 if plan.quick else 50_000
    return Workload(f"resnet18_cifar, {shape}", (3, 32, 32), samples, 512, ["model.name=resnet18_cifar"], fast,
                    classes=classes)


def throughput_rows(plan: Plan, res: Results, classes: int) -> None:
    from bench.step import measure

    w = _workload(plan, classes)
    rounds = plan.rounds or (1 if plan.rehearse else 2 if plan.quick else 5)
    with tempfile.TemporaryDirectory(prefix="trainpipe-bench-gpu-") as tmp:
        m = measure(w, rounds=rounds, folder=Path(tmp))
    size = 16 if plan.rehearse else 32
    flops = _train_flops_per_image(classes, width=8 if plan.rehearse else 64, size=size)
    peak = plan.peak
    bound = peak * 1e12 / flops if peak else None
    peak_note = f"{peak:g} TFLOP/s" + (" (nominal: rehearsal)" if plan.rehearse else "") if peak else ""
    res.row([f"{w.name}, batch {w.batch_size}, bf16, channels-last, compiled: trainpipe images/s",
             f"{m.images_per_s:,.0f}",
             f"{bound:,.0f} images/s at {peak_note}, {flops / 1e9:.3g} GFLOP/image" if bound else
             "pass --peak-tflops for the bound",
             f"{m.images_per_s / bound:.1%} of the bound" if bound else "-"],
            images_per_s=m.images_per_s, bound_images_per_s=bound, peak_tflops=peak, flops_per_image=flops,
            classes=classes)
    res.row([f"{w.name}: step overhead, trainpipe vs plain loop (s/epoch, median of {rounds})",
             f"{statistics.median(m.trainpipe):.3f}", f"plain loop {statistics.median(m.plain):.3f}",
             f"ratio {m.ratio:.3f}"],
            trainpipe_s=m.trainpipe, plain_s=m.plain, ratio=m.ratio, classes=classes)


def _train_flops_per_image(classes: int, *, width: int = 64, size: int = 32) -> float:
    from trainpipe import models
    from trainpipe.data.base import DataSpec

    spec = DataSpec((3, size, size), classes)
    macs = models.model_stats(models.build("resnet18_cifar", {"width": width}, spec), spec)["macs_per_image"]
    return 3 * 2 * macs  # forward + backward (about twice the forward), 2 FLOPs per MAC


def throughput(plan: Plan, res: Results) -> None:
    with res.step("resnet18_cifar throughput, CIFAR-10 shape"):
        throughput_rows(plan, res, 10)


# ---------------------------------------------------------------- 3. time to accuracy
def speed_runs(config: str, overrides: list[str], runs: int,
               on_result: Callable[[dict[str, float]], None] | None = None) -> list[dict[str, float]]:
    """Train `config` `runs` times (seeds 0..runs-1) after a warm-up run; time and test accuracy of each."""
    import trainpipe

    from bench import sync

    results = []
    with tempfile.TemporaryDirectory(prefix="trainpipe-bench-speed-") as tmp:
        trainpipe.train(config, [*overrides, "train.epochs=1"], output=Path(tmp) / "warmup", quiet=True)
        for seed in range(runs):
            keep = _Keep()
            r = trainpipe.train(config, [*overrides, f"seed={seed}"], output=Path(tmp) / f"run{seed}", quiet=True,
                                callbacks=[keep.callback])
            tr = keep.trainer
            sync(tr.device)
            start = time.perf_counter()
            tr.evaluate(tr.data.test, prefix="test")  # the same evaluation the run ended with
            sync(tr.device)
            eval_s = time.perf_counter() - start
            train_s = sum(m["epoch_time_s"] for m in r.metrics)
            result = {"seed": seed, "time_s": train_s + eval_s, "test_acc": r.summary["test/acc"],
                      "epochs": len(r.metrics)}
            results.append(result)
            print(f"  {config} seed {seed}: {train_s + eval_s:.2f}s, test acc {r.summary['test/acc']:.4f}", flush=True)
            if on_result is not None:
                on_result(result)
    return results


def summarise(name: str, results: list[dict[str, float]], target: float, data_note: str) -> list[str]:
    accs = [r["test_acc"] for r in results]
    times = [r["time_s"] for r in results]
    spread = f" +- {statistics.stdev(accs):.4f}" if len(accs) > 1 else ""
    hit = sum(a >= target for a in accs)
    runs = f"median of {len(times)} runs" if len(times) > 1 else "1 run"
    return [f"{name}: time ({runs}) and test acc, {data_note}",
            f"{statistics.median(times):.2f}s",
            f"acc {statistics.mean(accs):.4f}{spread}",
            f"{hit}/{len(accs)} runs >= {target:.0%}"]


def _cifar10_with_note(plan: Plan) -> tuple[Path, str]:
    """The CIFAR-10 data a part runs on, and the words its rows say about it."""
    data = plan.cifar10_data()
    if plan.cifar10 is None:
        return data, "random images (no --cifar10 given)"
    return data, f"data {data}" + (" (image folder: the JPEG copy of CIFAR-10 if it came from images.tar.gz)"
                                   if (data / "train").is_dir() else "")


def speed(plan: Plan, res: Results) -> None:
    if plan.cifar10 is None and not plan.rehearse:
        res.not_run("cifar10_speed time to 94%", "pass --cifar10 PATH")
        return
    with res.step("cifar10_speed time to 94%"):
        data, note = _cifar10_with_note(plan)
        done: list[dict[str, float]] = []
        runs = 1 if plan.quick else min(plan.runs, 2) if plan.rehearse else plan.runs

        def record(r: dict[str, float]) -> None:
            done.append(r)
            res.data["records"] = [x for x in res.data["records"] if x.get("kind") != "cifar10_speed"]
            res.data["rows"] = [x for x in res.data["rows"] if not x[0].startswith("cifar10_speed:")]
            res.row(summarise("cifar10_speed", done, 0.94, note), kind="cifar10_speed", runs=list(done),
                    median_time_s=statistics.median(x["time_s"] for x in done))

        speed_runs("cifar10_speed", plan.cifar10_speed, runs, on_result=record)


def airbench(script: Path, data_path: Path, *, runs: int | None = None, fraction: float = 1.0,
             on_result: Callable[[dict[str, float]], None] | None = None) -> list[dict[str, float]]:
    """Run the airbench94 script on the same data (its cifar10/{train,test}.pt format).

    Its rows are read as it prints them; with `runs`, it is stopped after that many runs
    (airbench94.py runs 25).
    """
    from trainpipe import config, data

    cfg = config.load("cifar10_speed", [*data_overrides(data_path, "cifar10"), "data.val_split=0",
                                        f"data.fraction={fraction}"])
    bundle = data.build(cfg.data, seed=0, device=torch.device("cpu"))
    out: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="trainpipe-bench-airbench-") as tmp:
        folder = Path(tmp) / "cifar10"
        folder.mkdir()
        classes = list(bundle.spec.classes)
        for name, loader in (("train", bundle.train), ("test", bundle.test)):
            split = loader.split
            torch.save({"images": split.x.permute(0, 2, 3, 1).contiguous(), "labels": split.y, "classes": classes},
                       folder / f"{name}.pt")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        errors = open(Path(tmp) / "stderr.txt", "w+")  # a file: a full pipe would stall the script
        proc = subprocess.Popen([sys.executable, str(script.resolve())], cwd=tmp, stdout=subprocess.PIPE,
                                stderr=errors, text=True, env=env)
        reader = AirbenchRows()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                print(f"  airbench> {line.rstrip()}", flush=True)
                row = reader.feed(line)
                if row is not None:
                    out.append(row)
                    if on_result is not None:
                        on_result(row)
                    if runs is not None and len(out) >= runs:
                        break
        finally:
            if proc.poll() is None and runs is not None and len(out) >= runs:
                proc.terminate()
            try:
                proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
            errors.seek(0)
            err = errors.read()
            errors.close()
    if not out and proc.returncode != 0:
        raise RuntimeError(f"{script} failed (exit {proc.returncode}):\n{err[-2000:]}")
    return out


class AirbenchRows:
    """airbench94's table, line by line: the final ('eval') row of each run."""

    def __init__(self) -> None:
        self.header: list[str] | None = None

    def feed(self, line: str) -> dict[str, float] | None:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if "total_time_seconds" in cells:
            self.header = cells
        elif self.header and len(cells) == len(self.header) and cells[self.header.index("epoch")] == "eval":
            row = dict(zip(self.header, cells))
            return {"time_s": float(row["total_time_seconds"]), "test_acc": float(row["tta_val_acc"])}
        return None


def parse_airbench(stdout: str) -> list[dict[str, float]]:
    """The final ('eval') row of each run in airbench94's table: tta_val_acc and total_time_seconds."""
    reader = AirbenchRows()
    return [r for r in map(reader.feed, stdout.splitlines()) if r is not None]


def airbench_part(plan: Plan, res: Results) -> None:
    script = plan.airbench_script
    if script is None and plan.rehearse:
        script = STANDIN
    if script is None:
        res.not_run("airbench94 script, same data", "pass --airbench FILE (airbench94.py)")
        return
    if plan.cifar10 is None and not plan.rehearse:
        res.not_run("airbench94 script, same data", "needs --cifar10 PATH too")
        return
    with res.step("airbench94 script, same data"):
        data, note = _cifar10_with_note(plan)
        name = "airbench94 script" if script != STANDIN else "airbench stand-in (bench/airbench_standin.py)"
        done: list[dict[str, float]] = []

        def record(r: dict[str, float]) -> None:
            done.append(r)
            res.data["records"], res.data["rows"] = [], []
            res.row(summarise(f"{name}, same data", done, 0.94, note), kind="airbench", runs=list(done),
                    median_time_s=statistics.median(x["time_s"] for x in done), script=str(script))

        airbench(script, data, runs=plan.airbench_runs, on_result=record)
        if not done:
            raise RuntimeError(f"{script} printed no 'eval' row")


# ----------------------------------------------------------------------- 4. the rest
def device_loader_rate(plan: Plan) -> dict[str, float]:
    """DeviceLoader images/s (crop + flip + normalise, batch 512) over whole epochs on the device."""
    from bench import data, median, timed

    n = 2_048 if plan.rehearse else 8_192 if plan.quick else data.N_IMAGES
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    loader = data.trainpipe_loaders(x, y, x[:1], y[:1], plan.device)["device"]
    count = data.consume(loader, plan.device, None)  # warm-up
    rates = []
    for epoch in range(1 if plan.rehearse else 3):
        loader.set_epoch(epoch + 1)
        rates.append(count / timed(lambda: data.consume(loader, plan.device, None), plan.device))
    return {"images": count, "images_per_s": median(rates), "rounds": len(rates)}


def rest(plan: Plan, res: Results) -> None:
    from bench import data

    with res.step("resnet18_cifar throughput, CIFAR-100 shape"):
        throughput_rows(plan, res, 100)
    with res.step("DeviceLoader images/s"):
        r = device_loader_rate(plan)
        ok = r["images_per_s"] >= data.MIN_RATE_GPU
        res.row([f"DeviceLoader (crop + flip + normalise, batch 512) images/s, {r['images']:,} images per epoch",
                 f"{r['images_per_s']:,.0f}", f"bound {data.MIN_RATE_GPU:,}", "met" if ok else "NOT MET"], **r)
    if plan.cifar100 is None and not plan.rehearse:
        res.not_run("cifar100_speed time to 70% / 75%", "pass --cifar100 ROOT")
        return
    if plan.rehearse:  # the preset's config at tiny sizes, on the CIFAR-10-shaped folder
        data_path = plan.cifar10_data()
        over, note = [*data_overrides(data_path, "cifar100"), *plan.tiny, "model.width=8"], "rehearsal data"
        targets = ((1, 0.70),)
    else:
        assert plan.cifar100 is not None
        over, note = data_overrides(plan.cifar100, "cifar100"), f"data {plan.cifar100}"
        targets = ((15, 0.70), (30, 0.75))
    for epochs, target in targets:
        with res.step(f"cifar100_speed, {epochs} epoch{'s' * (epochs != 1)}"):
            found = speed_runs("cifar100_speed", [*over, *plan.device_overrides, f"train.epochs={epochs}"], 1)
            res.row(summarise(f"cifar100_speed, {epochs} epoch{'s' * (epochs != 1)}", found, target, note),
                    kind="cifar100_speed",
                    runs=found)


PART_FUNCS: dict[str, Callable[[Plan, Results], None]] = {
    "smoke": smoke, "throughput": throughput, "speed": speed, "airbench": airbench_part, "rest": rest,
}
PART_TITLES = {
    "smoke": "1. do the CUDA paths run (1-epoch runs)",
    "throughput": "2. resnet18_cifar images/s against the bf16 bound and a hand loop",
    "speed": "3. cifar10_speed time to 94%",
    "airbench": "3. airbench94 on the same data",
    "rest": "4. CIFAR-100 shape, DeviceLoader, cifar100_speed",
}


def run_part(plan: Plan, part: str) -> bool:
    """One part, its failures caught and written down; True when it finished without one."""
    print(f"== bench gpu: {part} ({PART_TITLES[part]})", flush=True)
    res = Results(plan, part)
    try:
        with rehearsal_compile(plan.rehearse):
            PART_FUNCS[part](plan, res)
    except Exception as e:  # noqa: BLE001
        res.failed(part, e)
    res.finish()
    print(f"== bench gpu: {part} {res.data['status']} in {res.data['seconds']:.0f}s -> {res.path}", flush=True)
    return res.data["status"] == "done"


# ------------------------------------------------------------------ result files -> table
def load_results(out: Path) -> dict[str, dict[str, Any]]:
    found = {}
    for part in PARTS:
        path = out / f"{part}.json"
        if path.is_file():
            try:
                found[part] = json.loads(path.read_text())
            except json.JSONDecodeError as e:
                found[part] = {"part": part, "status": "unreadable", "errors": [str(e)], "rows": [], "records": []}
    return found


def ratio_row(found: dict[str, dict[str, Any]]) -> list[str] | None:
    def median_time(part: str, kind: str) -> float | None:
        recs = [r for r in found.get(part, {}).get("records", []) if r.get("kind") == kind]
        return recs[-1]["median_time_s"] if recs else None

    ours, theirs = median_time("speed", "cifar10_speed"), median_time("airbench", "airbench")
    if ours is None or theirs is None:
        return None
    return ["cifar10_speed time / airbench94 time (medians)", f"{ours / theirs:.2f}", "-", "-"]


def build_section(out: Path) -> Section:
    """BENCHMARKS.md's GPU block from the result files of one run."""
    found = load_results(out)
    rows: list[list[str]] = []
    status = []
    for part in PARTS:
        d = found.get(part)
        if d is None:
            status.append(f"- {part}: not run")
            continue
        rows.extend(d["rows"])
        state = {"done": "done", "failed": "FAILED", "running": "cut short (killed or out of time)"}.get(
            d["status"], d["status"])
        errors = "".join(f"; {e}" for e in d.get("errors", []))
        status.append(f"- {part}: {state} ({d.get('seconds', 0):.0f}s){errors}")
    ratio = ratio_row(found)
    if ratio:
        rows.append(ratio)
    first = next(iter(found.values()), {})
    rehearsal = any(d.get("rehearsal") for d in found.values())
    quick = any(d.get("quick") for d in found.values())
    body = table(HEADERS, rows) if rows else "(no results)"
    md = "\n".join([
        f"`{first.get('command', 'python -m bench gpu')}` measured {first.get('date', today())} on "
        f"{first.get('hardware', hardware())}"
        + (" (REHEARSAL on the CPU at tiny sizes: checks that the script runs; not for quoting)" if rehearsal else "")
        + (" (quick mode: not for quoting)" if quick else "") + ".",
        "",
        body,
        "",
        *status,
    ])
    ok = all(found.get(part, {}).get("status") == "done" for part in PARTS)
    return Section("gpu", md, ok)


def collect(out: Path, args: argparse.Namespace) -> int:
    section = build_section(out)
    (out / "summary.md").write_text(section.markdown + "\n")
    print(section.markdown)
    rehearsal = any(d.get("rehearsal") for d in load_results(out).values())
    if rehearsal:
        print(f"   (rehearsal results: {out / 'summary.md'} only, never BENCHMARKS.md)")
    else:
        publish(section, args)
    return 0 if section.ok else 1


# ------------------------------------------------------------------------ command
def run(quick: bool = False, *, peak: float | None = None, cifar10: Path | None = None,
        cifar100: Path | None = None, airbench_script: Path | None = None, runs: int = 5,
        out: Path = DEFAULT_OUT, rehearse: bool = False, parts: Sequence[str] = PARTS, **kw: Any) -> Section:
    device = torch.device("cpu" if rehearse else "cuda")
    if peak is None:
        peak = REHEARSAL_PEAK if rehearse else peak_tflops(torch.cuda.get_device_name())
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="trainpipe-bench-gpu-work-") as work:
        plan = Plan(device, out, rehearse=rehearse, quick=quick, peak=peak, cifar10=cifar10, cifar100=cifar100,
                    airbench_script=airbench_script, runs=runs, work=Path(work), **kw)
        done = [run_part(plan, part) for part in parts]
    section = build_section(out)
    (out / "summary.md").write_text(section.markdown + "\n")
    print(section.markdown)
    section.ok = all(done)  # the parts this run was asked for
    return section


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m bench gpu", description=__doc__.splitlines()[0])
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="the GPU's peak dense bf16 TFLOP/s (default: known GPUs by name)")
    p.add_argument("--cifar10", type=Path, default=None,
                   help="CIFAR-10 as an image folder (train/, test/) or a torchvision data root")
    p.add_argument("--airbench", type=Path, default=None, help="airbench94.py, run on the --cifar10 data")
    p.add_argument("--airbench-runs", type=int, default=3, help="stop the airbench script after N runs (default 3)")
    p.add_argument("--cifar100", type=Path, default=None, help="a torchvision data root holding cifar-100-python/")
    p.add_argument("--runs", type=int, default=5, help="cifar10_speed runs (seeds), default 5")
    p.add_argument("--rounds", type=int, default=None, help="timed epochs per side of the throughput rows (default 5)")
    p.add_argument("--part", choices=PARTS, action="append", help="run only this part (repeatable); default: all")
    p.add_argument("--out", type=Path, default=None,
                   help=f"folder for the result files (default {DEFAULT_OUT.relative_to(ROOT)}, "
                        f"or {DEFAULT_OUT.relative_to(ROOT)}-rehearsal)")
    p.add_argument("--rehearse", action="store_true",
                   help="run every part on the CPU at tiny sizes (checks the script; writes no BENCHMARKS.md)")
    p.add_argument("--collect", type=Path, default=None, metavar="OUT",
                   help="make the table from OUT's result files (OUT/summary.md, and BENCHMARKS.md's block)")
    p.add_argument("--quick", action="store_true", help="small sizes, one run: checks that it runs")
    p.add_argument("--as-command", default=None, help=argparse.SUPPRESS)  # the command a result file names
    add_write_option(p)
    a = p.parse_args(argv)
    if a.collect is not None:
        return collect(a.collect, a)
    if not a.rehearse and not torch.cuda.is_available():
        print(NO_GPU, file=sys.stderr)
        return 2
    if a.airbench is not None and a.cifar10 is None:
        p.error("--airbench needs --cifar10 PATH: both scripts must train on the same data")
    out = a.out or (DEFAULT_OUT.with_name("gpu-rehearsal") if a.rehearse else DEFAULT_OUT)
    section = run(a.quick, peak=a.peak_tflops, cifar10=a.cifar10, cifar100=a.cifar100, airbench_script=a.airbench,
                  runs=a.runs, out=out, rehearse=a.rehearse, parts=a.part or PARTS, airbench_runs=a.airbench_runs,
                  rounds=a.rounds, command=a.as_command or " ".join(["python -m bench gpu", *argv]))
    if not a.rehearse and not a.part:
        publish(section, a)
    return 0 if section.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
