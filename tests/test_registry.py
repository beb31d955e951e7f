"""The Registry class, and every entry of every registry built and run as a user selects it."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from trainpipe.errors import ConfigError
from trainpipe.registry import AUGMENTS, FAMILIES, Registry


def test_register_build_and_describe() -> None:
    reg = Registry("widget")

    @reg.register("double")
    def double(x: int, /, *, factor: int = 2) -> int:
        """Multiplies by a factor.

        More text that is not part of the description."""
        return x * factor

    assert reg.names() == ["double"]
    assert reg.build("double", 3, factor=5) == 15
    assert reg.describe() == [("double", "Multiplies by a factor.")]
    assert list(reg.get("double").options()) == ["factor"]


def test_unknown_name_lists_choices_and_suggests() -> None:
    reg = Registry("widget")
    for name in ("cosine", "constant"):
        reg.register(name)(lambda: None)
    with pytest.raises(ConfigError) as e:
        reg.get("cosin", key="sched.name")
    msg = str(e.value)
    assert msg.startswith("sched.name: unknown widget 'cosin'; did you mean cosine?")
    assert "constant" in msg and "cosine" in msg


def test_duplicate_registration_is_refused() -> None:
    reg = Registry("widget")
    reg.register("a")(lambda: 1)
    with pytest.raises(ValueError):
        reg.register("a")(lambda: 2)


def test_fallback_resolves_unlisted_names() -> None:
    from trainpipe.registry import Entry

    reg = Registry("widget")

    @reg.register_fallback(names=lambda: ["xylophone", "yodel"], hint="Any name starting with x works too.")
    def resolve(n: str) -> Entry | None:
        return Entry(n, lambda: n.upper(), "dynamic") if n.startswith("x") else None

    assert reg.build("xyz") == "XYZ"
    assert "xyz" in reg and "abc" not in reg
    with pytest.raises(ConfigError, match=r"unknown widget 'yodl'; did you mean yodel\?.*starting with x"):
        reg.get("yodl")


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_has_described_entries(family: str) -> None:
    reg = FAMILIES[family]
    assert reg.names(), f"no {family} registered"
    for name, desc in reg.describe():
        assert desc, f"{family} {name} has no one-line description"


# ------------------------------------------------- every entry, built and run
# Each registered entry is selected the way a user selects it (its name in a config,
# with its default options) and runs one short training on digits, or on small files
# written in its dataset's real format; then the test checks what that entry is for.
# A new entry is picked up by name; one that needs more than its defaults to run gets a
# line in EXTRA. Names a registry resolves without listing them (its fallback) are
# represented by one each.

EXTRA: dict[tuple[str, str], dict[str, object]] = {
    ("model", "speednet"): {"model.input_size": 16},  # three 2x2 poolings need 9 px or more; digits have 8
    ("model", "wide_resnet"): {"model.depth": 10, "model.widen_factor": 2},  # WRN-28-10 takes 7 s an epoch here
    ("scheduler", "chain"): {"sched.schedulers": [{"name": "linear", "start_factor": 0.1, "end_factor": 1.0,
                                                   "until_epoch": 1}, {"name": "cosine"}]},
    ("tracker", "wandb"): {"tracking.wandb": {"mode": "offline", "project": "every-entry"}},
    # Augmentation ops take op options here. color_jitter's defaults are torchvision's: no change.
    ("augment", "color_jitter"): {"brightness": 0.4, "contrast": 0.4, "saturation": 0.4},
}
FALLBACKS = [("augment", "TrivialAugmentWide"), ("optimizer", "lamb")]
QUICK = {"train.epochs": 1, "data.fraction": 0.2, "data.batch_size": 32, "tracking.plots": False,
         "tracking.progress": "none"}


def _entries() -> list[tuple[str, str]]:
    return [(f, n) for f, reg in sorted(FAMILIES.items()) for n in reg.names()] + FALLBACKS


def _train(tmp_path: Path, overrides: dict[str, object], *, own_process: bool = False) -> tuple[dict, list[dict], Path]:
    """One short run; `own_process`: as `trainpipe train` in a fresh interpreter (for libraries
    like wandb that keep process-wide state a later test in this process would inherit)."""
    import trainpipe

    run_dir = tmp_path / "run"
    if own_process:
        args = [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
                for k, v in {**QUICK, **overrides}.items()]
        done = subprocess.run([sys.executable, "-m", "trainpipe", "train", *args, "--output", str(run_dir), "--quiet"],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    else:
        trainpipe.train(None, {**QUICK, **overrides}, output=run_dir, quiet=True)
    summary = json.loads((run_dir / "summary.json").read_text())
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert summary["status"] == "completed" and summary["epochs_run"] == len(metrics) >= 1
    for m in metrics:
        assert all(math.isfinite(v) for v in m.values() if isinstance(v, float)), m
    return summary, metrics, run_dir


def _dataset_files(name: str, root: Path) -> dict[str, object]:
    """Small files in the dataset's own format under root; the overrides that read them."""
    import numpy as np

    import data_formats as fmt

    root.mkdir(parents=True, exist_ok=True)
    writers = {"mnist": lambda: fmt.write_mnist(root), "fashion_mnist": lambda: fmt.write_mnist(root, "FashionMNIST"),
               "cifar10": lambda: fmt.write_cifar10(root), "cifar100": lambda: fmt.write_cifar100(root),
               "svhn": lambda: fmt.write_svhn(root), "oxford_pets": lambda: fmt.write_pets(root)}
    if name in writers:
        writers[name]()
        return {"data.root": str(root), "data.image_size": 16} if name == "oxford_pets" else {"data.root": str(root)}
    if name == "imagefolder":
        fmt.write_image_folder(root / "folder", {"cat": 8, "dog": 8})
        return {"data.path": str(root / "folder")}
    if name == "arrays":
        rng = np.random.default_rng(0)
        x, y = rng.integers(0, 256, (40, 9, 9, 3), dtype=np.uint8), np.arange(40) % 4
        np.savez(root / "d.npz", train_x=x, train_y=y, test_x=x[:8], test_y=y[:8])
        return {"data.path": str(root / "d.npz")}
    if name == "frames":
        fmt.write_frames_flat(root / "f.npz", {"train": [30, 30], "test": [12]})
        return {"data.path": str(root / "f.npz"), "data.context": 2, "model.name": "mlp"}
    assert name == "digits", f"dataset {name!r}: write its files here"
    return {}


def _run_dataset(name: str, tmp_path: Path, extra: dict[str, object]) -> None:
    overrides = {"data.dataset": name, **_dataset_files(name, tmp_path / "data"), **extra}
    summary, _, run_dir = _train(tmp_path, overrides)
    assert summary["train_size"] > 0 and summary["test_size"] > 0  # both splits were read
    assert math.isfinite(summary["test/acc"])


def _run_augment(name: str, tmp_path: Path, extra: dict[str, object]) -> None:
    import torch

    from trainpipe.data.augment import build_pipeline

    entry = AUGMENTS.get(name)
    always = {"p": 1.0} if "p" in entry.options() else {}
    (op,) = build_pipeline([{"name": name, **always, **extra}])
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 12, 12, generator=g)
    outs = [op.batch(x, g)] if op.has_batched else []
    outs.append(torch.stack([op.transform()(img) for img in x]))  # the stream loader's form
    for out in outs:
        assert out.shape == x.shape and out.dtype == x.dtype and torch.isfinite(out).all()
        assert not torch.equal(out, x), f"{name} with its defaults left every image unchanged"
    _, _, run_dir = _train(tmp_path, {"data.augment": [{"name": name, **extra}]})
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["data"]["augment"][0]["name"] == name


def _run_model(name: str, tmp_path: Path, extra: dict[str, object]) -> None:
    import torch

    from trainpipe import models
    from trainpipe.data.base import DataSpec

    options = {k.removeprefix("model."): v for k, v in extra.items() if k != "model.input_size"}
    model = models.build(name, options, DataSpec((3, 16, 16), 7), input_size=extra.get("model.input_size"))
    logits = model(torch.rand(2, 3, 16, 16))
    assert logits.shape == (2, 7)
    logits.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    summary, _, _ = _train(tmp_path, {"model.name": name, **extra})
    assert summary["params"] == summary["trainable_params"] > 0


def _run_optimizer(name: str, tmp_path: Path, extra: dict[str, object]) -> None:
    # Two epochs on digits at a small lr: the optimizer must lower the training loss.
    _, metrics, _ = _train(tmp_path, {"optim.name": name, "optim.lr": 0.003, "train.epochs": 2,
                                      "data.fraction": 0.5, **extra})
    assert metrics[-1]["train/loss"] < metrics[0]["train/loss"]


def _run_scheduler(name: str, tmp_path: Path, extra: dict[str, object]) -> None:
    _, metrics, run_dir = _train(tmp_path, {"sched.name": name, "train.epochs": 3, **extra})
    lrs = [m["lr"] for m in metrics]
    assert all(0 <= lr <= 0.05 * (1 + 1e-6) for lr in lrs), lrs  # never above the config's optim.lr
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["sched"]["name"] == name


def _run_tracker(name: str, tmp_path: Path, extra: dict[str, object]) -> None:
    if name == "wandb":
        pytest.importorskip("wandb")
    summary, metrics, run_dir = _train(tmp_path, {"tracking.trackers": [name], **extra}, own_process=name == "wandb")
    made = {
        "jsonl": lambda: len(metrics) == 1 and "val/acc" in metrics[0],
        "plots": lambda: (run_dir / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n",
        "tensorboard": lambda: any(run_dir.rglob("events.out.tfevents.*")),
        "wandb": lambda: any((tmp_path / "wb").rglob("*.wandb")),
    }
    assert name in made, f"tracker {name!r}: say here which file shows that it ran"
    assert made[name](), f"tracker {name} left no trace of the run"


def _run_method(name: str, tmp_path: Path, extra: dict[str, object]) -> None:
    import optuna

    from trainpipe import config as config_mod
    from trainpipe.sweep import parse_spec, trial_overrides

    spec = parse_spec({"method": name, "metric": {"name": "val/acc", "goal": "maximize"},
                       "parameters": {"optim.lr": {"values": [0.01, 0.1]}, "model.width": {"values": [8, 16]}}})
    study = optuna.create_study(direction="maximize", sampler=spec.search().sampler())
    seen = []

    def objective(trial: optuna.Trial) -> float:
        overrides = trial_overrides(trial, spec)
        cfg = config_mod.load(None, overrides)  # what a trial would run
        seen.append((cfg.optim.lr, cfg.model.width))
        return cfg.optim.lr * cfg.model.width

    study.optimize(objective, n_trials=4)
    assert len(seen) == 4 and set(seen) <= {(lr, w) for lr in (0.01, 0.1) for w in (8, 16)}
    if spec.search().points is not None:
        assert len(set(seen)) == 4  # a method with a fixed list visits each point once


RUNNERS = {"dataset": _run_dataset, "augment": _run_augment, "model": _run_model, "optimizer": _run_optimizer,
           "scheduler": _run_scheduler, "tracker": _run_tracker, "method": _run_method}


@pytest.mark.parametrize("family,name", _entries(), ids=[f"{f}:{n}" for f, n in _entries()])
def test_every_entry_builds_and_runs(family: str, name: str, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    assert family in RUNNERS, f"family {family!r} has no runner in this test; add one"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    (tmp_path / "wb").mkdir()
    RUNNERS[family](name, tmp_path, EXTRA.get((family, name), {}))
