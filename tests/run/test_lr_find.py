"""`trainpipe lr-find`: the range test on the digits quickstart, its files, its suggestion
and range, the sweep line it prints, and bad input (exit 2)."""

from __future__ import annotations

import csv
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from trainpipe.cli import main
from trainpipe.errors import ConfigError
from trainpipe.run.lr_find import LrFindResult, choose, lr_find, smooth
from trainpipe.run.train import train


def read_csv(path: Path) -> list[dict[str, float]]:
    with path.open() as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def explode(tmp_path_factory: pytest.TempPathFactory) -> tuple[LrFindResult, Path, str]:
    """The quickstart from its own saved initial weights, with the lr pushed up to 10, far past
    where SGD on digits diverges, so the test must stop early."""
    from trainpipe import data as data_mod
    from trainpipe import models
    from trainpipe.run.train import resolve

    tmp = tmp_path_factory.mktemp("lr_find")
    cfg = resolve("quickstart")
    spec = data_mod.build(cfg.data, seed=0, device=torch.device("cpu")).spec
    torch.manual_seed(1)
    weights = tmp / "init.pt"
    torch.save(models.build("cnn_small", cfg.model.options(), spec).state_dict(), weights)
    digest = sha256(weights)
    result = lr_find("quickstart", [f"model.weights={weights}", "train.device=cpu"], tmp / "out",
                     steps=80, min_lr=1e-6, max_lr=10.0, quiet=True)
    return result, weights, digest


def test_csv_holds_increasing_lrs_from_min_lr_up_to_the_recorded_stop(explode: tuple) -> None:
    result, _, _ = explode
    rows = read_csv(result.out_dir / "lr_find.csv")
    lrs = [r["lr"] for r in rows]
    assert [r["step"] for r in rows] == list(range(len(rows)))
    assert lrs[0] == pytest.approx(1e-6)
    assert all(b > a for a, b in zip(lrs, lrs[1:]))
    # Exponential: a constant ratio between steps, the one that reaches max_lr at the last of 80.
    assert lrs[1] / lrs[0] == pytest.approx((10.0 / 1e-6) ** (1 / 79))
    assert [r["smoothed_loss"] for r in rows] == pytest.approx(smooth([r["loss"] for r in rows], 0.75), nan_ok=True)
    info = json.loads((result.out_dir / "lr_find.json").read_text())
    # SGD on digits diverges long before lr 10: the stop is recorded, at the last row's lr.
    assert info["stop"]["reason"] in ("diverged", "non_finite") and result.stop_reason == info["stop"]["reason"]
    assert len(rows) < 80 and info["steps_run"] == len(rows)
    assert info["stop"]["lr"] == pytest.approx(lrs[-1]) and info["stop"]["step"] == len(rows) - 1
    finite = [r["smoothed_loss"] for r in rows[:-1]]
    assert not math.isfinite(rows[-1]["loss"]) or rows[-1]["smoothed_loss"] > 4 * min(finite)


def test_png_is_a_plot(explode: tuple) -> None:
    from matplotlib.image import imread

    result, _, _ = explode
    png = result.out_dir / "lr_find.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = imread(png)
    assert img.shape[0] > 300 and img.shape[1] > 500
    colours = np.unique((img[..., :3].reshape(-1, 3) * 255).astype(np.uint8), axis=0)
    assert len(colours) > 50  # curves, labels, shaded range: not a blank canvas


def test_suggestion_and_range_lie_inside_the_test_and_below_the_divergence(explode: tuple) -> None:
    result, _, _ = explode
    rows = read_csv(result.out_dir / "lr_find.csv")
    assert 1e-6 <= result.low < result.suggestion <= result.high <= result.stop_lr
    assert result.suggestion <= result.stop_lr / 4
    # The suggestion sits where the smoothed loss was falling: below its start, above its minimum.
    at = {r["lr"]: r["smoothed_loss"] for r in rows}
    lowest = min(v for v in at.values() if math.isfinite(v))
    assert lowest < at[result.suggestion] < rows[10]["smoothed_loss"]
    assert at[result.lr_at_min_loss] == lowest
    info = json.loads((result.out_dir / "lr_find.json").read_text())
    assert info["still_falling_at_max_lr"] is False
    assert info["suggestion"] == pytest.approx(result.suggestion)
    assert info["range"] == pytest.approx([result.low, result.high])


def test_the_suggested_lr_trains_and_the_divergence_lr_does_not(explode: tuple, tmp_path: Path) -> None:
    result, _, _ = explode
    common = ["train.epochs=1", "sched.name=constant", "tracking.plots=false", "train.device=cpu"]
    good = train("quickstart", [*common, f"optim.lr={result.suggestion}"], tmp_path / "good", quiet=True)
    bad = train("quickstart", [*common, f"optim.lr={result.stop_lr}"], tmp_path / "bad", quiet=True)
    good_acc = good.summary["best/val/acc"]
    bad_acc = bad.summary["best/val/acc"] if bad.status == "completed" else None
    assert good.status == "completed" and good_acc > 0.6
    assert bad_acc is None or bad_acc < good_acc - 0.3


def test_weights_file_is_left_as_it_was(explode: tuple) -> None:
    result, weights, digest = explode
    assert sha256(weights) == digest
    assert sorted(p.name for p in result.out_dir.iterdir()) == ["config.yaml", "lr_find.csv", "lr_find.json",
                                                                 "lr_find.png"]
    assert yaml.safe_load((result.out_dir / "config.yaml").read_text())["model"]["weights"] == str(weights)


def test_choose_finds_the_steepest_point_of_a_known_curve() -> None:
    # A loss that falls as a logistic in log10(lr), steepest at 1e-3, then rises past 1e-1.
    lrs = list(np.logspace(-7, 0, 141))
    x = np.log10(lrs)
    loss = 2.3 - 2.0 / (1 + np.exp(-3 * (x + 3))) + np.where(x > -1, 10 * (x + 1) ** 2, 0.0)
    (suggestion, at_min, low, high), problem = choose(lrs, list(loss), 1e-7)
    assert problem is None
    assert suggestion == pytest.approx(1e-3, rel=0.13)  # within a step of the grid (10 ** 0.05)
    assert at_min < 1e-1 * 1.2 and low == pytest.approx(suggestion / 10)
    assert high == pytest.approx(min(at_min, 10 * suggestion))


def test_cli_writes_the_files_and_prints_a_sweep_line_the_sweep_accepts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "lr"
    assert main(["lr-find", "quickstart", "train.epochs=1", "--steps", "60", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    info = json.loads((out / "lr_find.json").read_text())
    assert (out / "lr_find.png").is_file()
    rows = read_csv(out / "lr_find.csv")
    assert rows[0]["lr"] == pytest.approx(1e-8)
    if info["stop"]["reason"] == "max_lr":  # the whole default range ran
        assert len(rows) == 60 and rows[-1]["lr"] == pytest.approx(1.0)
    assert f"suggested lr: {info['suggestion']:.2g}" in printed
    assert ("was still falling at --max-lr" in printed) == info["still_falling_at_max_lr"]
    line = next(l.strip() for l in printed.splitlines() if l.strip().startswith("optim.lr:"))
    assert line == info["sweep"]

    from trainpipe.sweep import load_spec

    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(f"method: random\nmetric: {{name: val/acc, goal: maximize}}\nparameters:\n  {line}\n")
    (param,) = load_spec(sweep).params
    assert (param.key, param.distribution) == ("optim.lr", "log_uniform_values")
    lo, hi = info["range"]
    assert param.low == pytest.approx(lo, rel=0.05) and param.high == pytest.approx(hi, rel=0.05)
    assert param.low < info["suggestion"] < param.high * 1.05


@pytest.mark.parametrize("args, words", [
    (["--min-lr", "0.1", "--max-lr", "0.01"], ["--min-lr", "smaller"]),
    (["--min-lr", "1", "--max-lr", "1"], ["--min-lr", "smaller"]),
    (["--steps", "5"], ["--steps", ">= 20"]),
    (["--min-lr", "-1"], ["--min-lr", "positive"]),
    (["optim.lrr=0.1"], ["optim.lrr", "did you mean optim.lr"]),
])
def test_bad_input_exits_2_before_anything_is_written(
    args: list[str], words: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "lr"
    assert main(["lr-find", *args, "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert all(w in err for w in words), err
    assert "Traceback" not in err
    assert not out.exists()


def test_a_loss_that_never_decreases_exits_2_and_keeps_the_curve(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "lr"
    # lrs of 1e-9 .. 1e-7 cannot move the quickstart's loss in 20 steps.
    assert main(["lr-find", "model.width=8", "--steps", "20", "--min-lr", "1e-9", "--max-lr", "1e-7",
                 "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "never decreased" in err and "--max-lr" in err and "Traceback" not in err
    assert len(read_csv(out / "lr_find.csv")) == 20 and (out / "lr_find.png").is_file()
    assert json.loads((out / "lr_find.json").read_text())["suggestion"] is None


def test_a_loss_that_explodes_at_once_exits_2(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="diverged .* before there was a curve to judge"):
        lr_find("quickstart", ["model.width=8"], tmp_path, steps=20, min_lr=1e3, max_lr=1e6, quiet=True)
