"""`train.channels_last`: what `auto` chooses, that it computes what the forced choice does,
and that checkpoints move between the two formats."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import trainpipe
from trainpipe import models
from trainpipe.data import DataSpec
from trainpipe.loop.callbacks import Callback
from trainpipe.loop.device import resolve_channels_last
from trainpipe.run import rundir
from trainpipe.run.resume import resume

TINY = ["model.width=8", "tracking.plots=false", "train.device=cpu", "data.fraction=0.5"]
IMAGES = DataSpec((1, 8, 8), 10, tuple(range(10)))


def _conv_weight(model: nn.Module) -> torch.Tensor:
    # A convolution with several input channels: with one, both formats have the same strides.
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d) and m.in_channels > 1).weight


def _is_channels_last(t: torch.Tensor) -> bool:
    return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


@pytest.mark.parametrize("device, expected", [("cpu", True), ("cuda", True), ("mps", False)])
def test_auto_is_on_for_a_conv_net_on_cpu_and_cuda_and_off_on_mps(device: str, expected: bool) -> None:
    net = models.build("cnn_small", {"width": 8}, IMAGES)
    assert resolve_channels_last("auto", net, torch.device(device))[0] is expected
    # true / false are kept as given, whatever the model and the device.
    assert resolve_channels_last(not expected, net, torch.device(device))[0] is (not expected)


@pytest.mark.parametrize("spec", [IMAGES, DataSpec((64,), 10, tuple(range(10)))], ids=["images", "features"])
def test_auto_is_off_for_an_mlp(spec: DataSpec) -> None:
    net = models.build("mlp", {"width": 16}, spec)
    for device in ("cpu", "cuda"):
        on, why = resolve_channels_last("auto", net, torch.device(device))
        assert not on and "no 2-D convolutions" in why
    assert resolve_channels_last(True, net, torch.device("cpu"))[0]


def test_a_run_says_what_auto_chose(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conv = trainpipe.train(None, TINY + ["train.epochs=1", "tracking.progress=none"], output=tmp_path / "conv")
    line = capsys.readouterr().out.splitlines()[0]
    assert "channels_last true (auto: 2-D convolutions on cpu)" in line
    assert conv.summary["channels_last"] is True and _is_channels_last(_conv_weight(conv.model))
    header = (tmp_path / "conv" / rundir.CONFIG).read_text()
    assert "# auto chose: train.device=cpu" not in header  # train.device was given
    assert "# auto chose: train.channels_last=true (2-D convolutions on cpu)" in header
    assert "channels_last: auto" in header  # the setting itself stays as written
    mlp = trainpipe.train(None, TINY + ["train.epochs=1", "model={name: mlp, width: 16}"], output=tmp_path / "mlp",
                          quiet=True)
    assert mlp.summary["channels_last"] is False
    assert "train.channels_last=false (the model has no 2-D convolutions)" in (tmp_path / "mlp" / rundir.CONFIG).read_text()


@pytest.mark.parametrize("model, forced", [("cnn_small", "true"), ("mlp", "false")])
def test_auto_trains_and_evaluates_exactly_as_the_forced_choice(tmp_path: Path, model: str, forced: str) -> None:
    # EMA and flip TTA on: evaluation, the EMA copy and TTA follow the same choice.
    common = TINY + ["train.epochs=2", f"model={{name: {model}, width: 16}}", "train.tta=flip",
                     "train.ema={decay: 0.9}"]
    auto = trainpipe.train(None, common, output=tmp_path / "auto", quiet=True)
    fixed = trainpipe.train(None, common + [f"train.channels_last={forced}"], output=tmp_path / "fixed", quiet=True)
    assert auto.metrics == [dict(m, epoch_time_s=a["epoch_time_s"], images_per_s=a["images_per_s"])
                            for m, a in zip(fixed.metrics, auto.metrics)]
    assert auto.summary["test/acc"] == fixed.summary["test/acc"]
    for a, f in zip(auto.model.state_dict().values(), fixed.model.state_dict().values()):
        assert torch.equal(a, f) and a.stride() == f.stride()


class _StopAfterOneEpoch(Callback):
    def on_epoch_end(self, trainer: Any) -> None:
        trainer.state.should_stop, trainer.state.stop_reason = True, "test"


@pytest.mark.parametrize("saved, resumed", [("true", "false"), ("false", "true")])
def test_a_checkpoint_resumes_in_the_other_memory_format(tmp_path: Path, saved: str, resumed: str) -> None:
    common = TINY + ["train.epochs=2", "optim={name: sgd, momentum: 0.9}", "train.deterministic=true"]
    straight = trainpipe.train(None, common + [f"train.channels_last={saved}"], output=tmp_path / "straight",
                               quiet=True)
    run = tmp_path / "run"
    trainpipe.train(None, common + [f"train.channels_last={saved}"], output=run, quiet=True,
                    callbacks=[_StopAfterOneEpoch()])
    r = resume(run, [f"train.channels_last={resumed}"], quiet=True)
    assert r.status == "completed" and r.summary["channels_last"] is (resumed == "true")
    assert _is_channels_last(_conv_weight(r.model)) is (resumed == "true")
    # The same training, up to the rounding of the other format's convolution kernels.
    for a, b in zip(r.model.state_dict().values(), straight.model.state_dict().values()):
        torch.testing.assert_close(a.float(), b.float(), rtol=1e-3, atol=1e-4)
    assert r.metrics[-1]["val/acc"] == pytest.approx(straight.metrics[-1]["val/acc"], abs=0.02)


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_loaded_optimizer_state_takes_its_parameters_memory_format(optimizer: str) -> None:
    from trainpipe import optim
    from trainpipe.loop.trainer import conform_optimizer_state

    def built(fmt: torch.memory_format) -> tuple[nn.Module, torch.optim.Optimizer]:
        torch.manual_seed(0)
        net = models.build("cnn_small", {"width": 8}, IMAGES).to(memory_format=fmt)
        return net, optim.build(optimizer, {}, net, lr=0.1, weight_decay=0.0)

    net, opt = built(torch.channels_last)
    net(torch.randn(4, 1, 8, 8).contiguous(memory_format=torch.channels_last)).sum().backward()
    opt.step()
    other, opt2 = built(torch.contiguous_format)
    other.load_state_dict(net.state_dict())
    opt2.load_state_dict(opt.state_dict())
    conform_optimizer_state(opt2)
    w = _conv_weight(other)
    assert w.is_contiguous() and opt2.state[w]
    for v in opt2.state[w].values():
        if isinstance(v, torch.Tensor) and v.shape == w.shape:
            assert v.stride() == w.stride()
    torch.testing.assert_close(opt2.state[w], opt.state[_conv_weight(net)])
