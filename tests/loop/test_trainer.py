"""The loop's features: accumulation, clipping, label smoothing, EMA, TTA, precision, metrics, no host syncs."""

from __future__ import annotations

import copy
import functools
import math
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from engine_kit import TensorLoader, blobs, make_trainer, mlp
from torch import nn

import trainpipe
from trainpipe.loop.device import resolve_device
from trainpipe.loop.trainer import metrics_from_logits, predict
from trainpipe.errors import ConfigError

TINY = ["model.width=8", "tracking.plots=false", "train.device=cpu"]


def _params(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("n", [256, 160])  # 160: the last accumulation group holds one batch
def test_two_accumulated_batches_of_32_equal_one_batch_of_64(n: int) -> None:
    x, y = blobs(n)
    a, b = mlp(), mlp()
    make_trainer(a, TensorLoader(x, y, 64)).fit()
    make_trainer(b, TensorLoader(x, y, 32), overrides=["train.grad_accum_steps=2"]).fit()
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)
    c = mlp()
    make_trainer(c, TensorLoader(x, y, 32)).fit()  # without accumulation: twice the steps, other weights
    assert not torch.allclose(next(a.parameters()), next(c.parameters()), atol=1e-4)


def test_grad_clip_bounds_the_step() -> None:
    x, y = blobs(64)
    x = x * 50  # large inputs, large gradients
    model = mlp()
    before = _params(model)
    make_trainer(model, TensorLoader(x, y, 64), overrides=["optim.lr=1.0", "train.grad_clip=0.5"]).fit()
    step = torch.cat([(p - q).flatten() for p, q in zip(model.parameters(), before)])
    assert step.norm().item() == pytest.approx(0.5, rel=1e-4)  # plain SGD, lr 1: the step is the clipped gradient

    free = mlp()
    make_trainer(free, TensorLoader(x, y, 64), overrides=["optim.lr=1.0"]).fit()
    free_step = torch.cat([(p - q).flatten() for p, q in zip(free.parameters(), before)])
    assert free_step.norm().item() > 5


def test_train_loss_and_acc_are_means_over_samples_of_the_epoch() -> None:
    """train/loss weighs each batch's mean loss by its size (a short last batch counts less)."""
    x, y = blobs(100)
    model = mlp()
    tr = make_trainer(model, TensorLoader(x, y, 32))
    seen: list[tuple[torch.Tensor, torch.Tensor, int]] = []
    step = tr.train_step

    def recording(xb: torch.Tensor, yb: torch.Tensor, group: int, step_now: bool):
        loss, logits = step(xb, yb, group, step_now)
        seen.append((loss.detach().clone(), logits.detach().argmax(1) == yb, len(yb)))
        return loss, logits

    tr.train_step = recording
    out = tr.train_epoch(0)
    assert [n for *_, n in seen] == [32, 32, 32, 4]
    loss_sum = torch.zeros(())
    for loss, _, n in seen:
        loss_sum += loss * n
    assert out["train/loss"] == (loss_sum / torch.tensor(100.0)).item()
    assert out["train/acc"] == sum(int(c.sum()) for _, c, _ in seen) / 100


def test_label_smoothing_reaches_the_loss() -> None:
    x, y = blobs(32)
    model = mlp()
    tr = make_trainer(model, TensorLoader(x, y, 32), overrides=["train.label_smoothing=0.2"])
    loss, logits = tr._loss(x, y)
    logp = F.log_softmax(logits, dim=1)
    expected = 0.8 * F.nll_loss(logp, y) + 0.2 * (-logp.mean(dim=1)).mean()
    torch.testing.assert_close(loss, expected)
    assert not torch.allclose(loss, F.cross_entropy(logits, y))


def test_ema_weights_differ_from_raw_and_are_the_ones_evaluated() -> None:
    x, y = blobs(256)
    model = mlp()
    val = TensorLoader(x[:64], y[:64], 64)
    tr = make_trainer(model, TensorLoader(x, y, 32), val=val,
                      overrides=["train.ema={decay: 0.9, warmup: false}", "optim.lr=0.5"])
    tr.fit()
    assert tr.eval_model is tr.ema.module and tr.ema.updates == 8
    assert not torch.allclose(tr.ema.module[0].weight, model[0].weight)
    with torch.no_grad():
        ema_metrics = metrics_from_logits(tr.ema.module(x[:64]), y[:64], "val")
        raw_metrics = metrics_from_logits(model(x[:64]), y[:64], "val")
    assert tr.state.metrics["val/loss"] == pytest.approx(ema_metrics["val/loss"], rel=1e-6)
    assert tr.state.metrics["val/loss"] != pytest.approx(raw_metrics["val/loss"], rel=1e-3)


def test_ema_of_a_run_is_saved_and_used_for_best(tmp_path: Path) -> None:
    r = trainpipe.train(None, TINY + ["train.epochs=2", "train.ema={decay: 0.5}", "train.monitor=train/loss",
                                      "train.monitor_mode=min"], output=tmp_path, quiet=True)
    last = torch.load(tmp_path / "checkpoints/last.pt", weights_only=True)
    best = torch.load(tmp_path / "checkpoints/best.pt", weights_only=True)
    assert last["ema"]["updates"] == last["state"]["step"] > 0
    assert r.summary["best_epoch"] == 2
    key = next(iter(last["model"]))
    assert torch.equal(best["model"][key], last["ema"]["module"][key])
    assert not torch.equal(best["model"][key], last["model"][key])


def test_flip_tta_averages_the_mirrored_logits() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.Flatten(), nn.Linear(3 * 16, 4)).eval()
    x, y = torch.randn(10, 1, 4, 4), torch.randint(0, 4, (10,))
    loader = TensorLoader(x, y, 4)
    plain, _ = predict(model, loader, device=torch.device("cpu"))
    tta, labels = predict(model, loader, device=torch.device("cpu"), tta="flip")
    with torch.no_grad():
        expected = (model(x) + model(torch.flip(x, dims=[3]))) / 2
    torch.testing.assert_close(tta, expected)
    assert torch.equal(labels, y) and not torch.allclose(plain, tta)


def test_top5_only_with_more_than_five_classes() -> None:
    y = torch.tensor([0, 1, 5, 2])
    logits = torch.tensor([[9.0, 8, 7, 6, 5, 4], [0, 9, 8, 7, 6, 5], [9, 8, 7, 6, 5, 0], [9, 8, 7, 6, 5, 0]])
    m = metrics_from_logits(logits, y, "val")
    # rows 0, 1 right; row 2's class ranks 6th; row 3's class ranks 3rd (a top-5 hit only)
    assert m["val/acc"] == pytest.approx(2 / 4) and m["val/top5"] == pytest.approx(3 / 4)
    assert metrics_from_logits(logits[:, :5], y.clamp(max=4), "val").keys() == {"val/loss", "val/acc"}


def test_a_run_logs_top5_images_per_second_and_epoch_time(tmp_path: Path) -> None:
    r = trainpipe.train(None, TINY + ["train.epochs=1"], output=tmp_path, quiet=True)
    m = r.metrics[0]
    assert 0 <= m["val/top5"] <= 1 and m["val/top5"] >= m["val/acc"]
    assert m["images_per_s"] > 0 and m["epoch_time_s"] > 0 and "test/top5" in r.summary


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_on_cpu(tmp_path: Path, precision: str) -> None:
    r = trainpipe.train(None, TINY + ["train.epochs=2", f"train.precision={precision}", "train.grad_clip=1.0"],
                        output=tmp_path, quiet=True)
    assert r.status == "completed"
    assert r.metrics[-1]["train/loss"] < r.metrics[0]["train/loss"] and math.isfinite(r.summary["test/loss"])
    last = torch.load(tmp_path / "checkpoints/last.pt", weights_only=True)
    if precision == "fp16":  # the GradScaler ran and its scale is saved for resume
        assert last["scaler"]["scale"] > 0
    else:
        assert last["scaler"] == {}


def test_fp16_with_sam_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="train.precision.*fp16.*bf16"):
        trainpipe.train(None, TINY + ["train.precision=fp16", "optim={name: sam}"], output=tmp_path, quiet=True)
    r = trainpipe.train(None, TINY + ["train.epochs=1", "train.precision=bf16", "optim={name: sam}"],
                        output=tmp_path / "bf16", quiet=True)
    assert r.status == "completed" and math.isfinite(r.metrics[0]["train/loss"])


def test_channels_last(tmp_path: Path) -> None:
    r = trainpipe.train(None, TINY + ["train.epochs=1", "train.channels_last=true"], output=tmp_path, quiet=True)
    conv = next(m for m in r.model.modules() if isinstance(m, nn.Conv2d))
    assert r.status == "completed" and conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_compile_runs_the_compiled_forward(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Inductor's C++ code generation takes a minute on a small CPU; aot_eager traces the same
    # graph (forward and backward) without it. The inductor path runs in the test below.
    compiled = []
    real = torch.compile

    def spy(model: nn.Module, **kw: object) -> object:
        out = real(model, backend="aot_eager", **kw)
        compiled.append(out)
        return out

    monkeypatch.setattr(torch, "compile", spy)
    base = TINY + ["train.epochs=1", "model.name=mlp", "train.deterministic=true"]
    a = trainpipe.train(None, base + ["train.compile=true"], output=tmp_path / "a", quiet=True)
    b = trainpipe.train(None, base, output=tmp_path / "b", quiet=True)
    assert len(compiled) == 1 and a.status == "completed"
    assert a.metrics[0]["train/loss"] == pytest.approx(b.metrics[0]["train/loss"], rel=1e-4)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("TRAINPIPE_TEST_INDUCTOR"),
                    reason="inductor compiles C++ for a minute on a small CPU; set TRAINPIPE_TEST_INDUCTOR=1")
def test_compile_with_inductor(tmp_path: Path) -> None:
    r = trainpipe.train(None, TINY + ["train.epochs=1", "model.name=mlp", "train.compile=true"],
                        output=tmp_path, quiet=True)
    assert r.status == "completed" and r.metrics[0]["train/acc"] > 0.3


def _count_host_syncs(monkeypatch: pytest.MonkeyPatch, calls: list[str]) -> None:
    for name in ("item", "cpu", "tolist", "__bool__", "__float__", "__int__"):
        real = getattr(torch.Tensor, name)

        @functools.wraps(real)
        def wrapper(self: torch.Tensor, *a: object, _real=real, _name=name, **kw: object) -> object:
            calls.append(_name)
            return _real(self, *a, **kw)

        monkeypatch.setattr(torch.Tensor, name, wrapper)


@pytest.mark.parametrize("policy,syncs", [("stop", False), ("rollback", False), ("skip_step", True)])
def test_no_host_sync_inside_the_step(monkeypatch: pytest.MonkeyPatch, policy: str, syncs: bool) -> None:
    x, y = blobs(64)
    tr = make_trainer(mlp(), TensorLoader(x, y, 16), overrides=[
        "train.grad_accum_steps=2", "train.grad_clip=1.0", "train.ema={decay: 0.9}", "train.label_smoothing=0.1",
        f"train.on_nonfinite={policy}"])
    calls: list[str] = []
    step = tr.train_step

    def counted(*a: object) -> object:
        with monkeypatch.context() as m:
            _count_host_syncs(m, calls)
            return step(*a)

    monkeypatch.setattr(tr, "train_step", counted)
    tr.fit()
    assert tr.state.step == 2
    assert bool(calls) is syncs, calls  # skip_step's documented per-step check is the only sync


def test_device_auto_is_cpu_here_and_names_pass_through() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    if not torch.cuda.is_available() and torch.backends.mps.is_available():
        expected = "mps"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")


def test_trainer_state_round_trips(tmp_path: Path) -> None:
    x, y = blobs(64)
    tr = make_trainer(mlp(), TensorLoader(x, y, 32), overrides=["train.epochs=2"])
    tr.fit()
    saved = copy.deepcopy(tr.state_dict())
    other = make_trainer(mlp(seed=1), TensorLoader(x, y, 32), overrides=["train.epochs=2"])
    other.load_state_dict(saved)
    assert other.state.epoch == 2 and other.state.step == 4 and other.resumed
    for p, q in zip(tr.model.parameters(), other.model.parameters()):
        assert torch.equal(p, q)


def test_auto_precision_picks_by_device(monkeypatch: pytest.MonkeyPatch) -> None:
    from trainpipe.loop.device import resolve_precision

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert resolve_precision("auto", cpu) is None
    # The GPU's compute capability decides: torch's is_bf16_supported() is True on
    # pre-Ampere GPUs too, where bf16 is emulated.
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert resolve_precision("auto", gpu) is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    assert resolve_precision("auto", gpu) is torch.float16  # older GPUs: fp16 with a scaler
    assert resolve_precision("auto", gpu, fp16_ok=False) is None  # SAM cannot run under the scaler
    assert resolve_precision("fp16", cpu) is torch.float16


def test_fp16_on_the_cpu_warns_once(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from trainpipe.loop import device as device_mod

    monkeypatch.setattr(device_mod, "_fp16_warned", False)
    cpu = torch.device("cpu")
    assert device_mod.resolve_precision("auto", cpu) is None
    assert "fp16" not in capsys.readouterr().err
    assert device_mod.resolve_precision("fp16", cpu) is torch.float16  # as asked, with a word
    assert device_mod.resolve_precision("fp16", cpu) is torch.float16
    err = capsys.readouterr().err
    assert err.count("warning: train.precision=fp16 on a CPU") == 1 and "train.precision=auto" in err


def test_grad_clip_runs_on_a_device_without_foreach_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    # What torch answers for Apple's MPS: no foreach kernels there, and foreach=True raises.
    from torch.nn.utils import clip_grad

    monkeypatch.setattr(clip_grad, "_device_has_foreach_support", lambda device: False)
    monkeypatch.setattr(clip_grad, "_has_foreach_support", lambda tensors, device: False)
    x, y = blobs(64)
    model = mlp()
    before = _params(model)
    make_trainer(model, TensorLoader(x * 50, y, 64), overrides=["optim.lr=1.0", "train.grad_clip=0.5"]).fit()
    step = torch.cat([(p - q).flatten() for p, q in zip(model.parameters(), before)])
    assert step.norm().item() == pytest.approx(0.5, rel=1e-4)


def test_each_compiled_run_compiles_afresh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sweep trials run one after another in a process; torch.compile's caches are per
    function, so trials of other shapes reach dynamo's recompile limit (8) and the later ones
    would run eager without a word. Each run leaves the compiler as it found it."""
    from torch._dynamo.utils import counters

    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kw: real(model, backend="aot_eager", **kw))
    graphs = []
    with torch._dynamo.config.patch(recompile_limit=1):  # the limit, reached at once
        for i, width in enumerate((8, 12)):
            before = counters["stats"]["unique_graphs"]
            r = trainpipe.train(None, ["tracking.plots=false", "train.device=cpu", "train.epochs=1", "model.name=mlp",
                                       f"model.widths=[{width}]", "train.compile=true", "data.drop_last=true"],
                                output=tmp_path / str(i), quiet=True)
            assert r.status == "completed"
            graphs.append(counters["stats"]["unique_graphs"] - before)
    assert graphs[0] >= 1 and graphs[1] >= 1  # the second run is compiled too, not run eager
