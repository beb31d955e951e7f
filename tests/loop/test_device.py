"""The device, the precision `auto` picks, and the process-wide torch settings a run holds and gives back."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from gpu_kit import A100, H100, T4, V100, fake_gpus

import trainpipe
from trainpipe.loop.callbacks import Callback
from trainpipe.loop.device import TorchSettings, current_settings, resolve_precision, run_settings, settings_for

TINY = ["model.width=8", "tracking.plots=false", "train.device=cpu", "train.epochs=1", "model.name=mlp"]


class _SeeSettings(Callback):
    """Records the torch settings while the run trains."""

    def __init__(self) -> None:
        self.seen: TorchSettings | None = None

    def on_epoch_end(self, trainer: object) -> None:
        self.seen = current_settings()


def test_a_deterministic_run_gives_the_process_its_torch_settings_back(tmp_path: Path) -> None:
    before = current_settings()
    assert not before.deterministic
    spy = _SeeSettings()
    r = trainpipe.train(None, TINY + ["train.deterministic=true"], output=tmp_path / "a", quiet=True,
                        callbacks=[spy])
    assert r.status == "completed"
    assert spy.seen is not None and spy.seen.deterministic and spy.seen.cudnn_deterministic
    assert not spy.seen.deterministic_warn_only  # strict: an op with no deterministic kernel raises
    assert current_settings() == before  # the next run (a notebook cell, a sweep trial) starts clean


def test_settings_are_put_back_when_the_run_fails() -> None:
    before = current_settings()
    with pytest.raises(RuntimeError, match="boom"):
        with run_settings(TorchSettings(deterministic=True, cudnn_benchmark=not before.cudnn_benchmark,
                                        threads=before.threads + 1)):
            assert torch.are_deterministic_algorithms_enabled()
            assert torch.get_num_threads() == before.threads + 1
            raise RuntimeError("boom")
    assert current_settings() == before


def test_deterministic_on_cuda_is_strict_and_fixes_the_cublas_workspace(monkeypatch: pytest.MonkeyPatch) -> None:
    # Settings are process flags: they can be set and read without a GPU.
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = current_settings()
    cuda = torch.device("cuda")
    with run_settings(settings_for(SimpleNamespace(deterministic=True), cuda)):
        assert torch.are_deterministic_algorithms_enabled()
        assert not torch.is_deterministic_algorithms_warn_only_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        assert torch.get_float32_matmul_precision() == "highest"  # no TF32
        assert not torch.backends.cudnn.allow_tf32
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    assert current_settings() == before


def test_a_fast_gpu_run_turns_on_tf32_and_the_autotuner_only_while_it_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_gpus(monkeypatch, [A100])  # TF32 is a feature of Ampere and later
    before = current_settings()
    with run_settings(settings_for(SimpleNamespace(deterministic=False), torch.device("cuda"))):
        assert torch.get_float32_matmul_precision() == "high"
        assert torch.backends.cudnn.benchmark and torch.backends.cudnn.allow_tf32
    assert current_settings() == before
    with run_settings(settings_for(SimpleNamespace(deterministic=False), torch.device("cpu"))):
        assert current_settings() == before  # the CPU path changes nothing


@pytest.mark.parametrize("precision", ["auto", "bf16", "fp16"])
def test_mixed_precision_on_ampere_and_later_computes_the_fp32_rest_in_tf32(
        monkeypatch: pytest.MonkeyPatch, precision: str) -> None:
    fake_gpus(monkeypatch, [T4, H100])  # the run trains on cuda:1, not the current GPU
    before = current_settings()
    train = SimpleNamespace(deterministic=False, precision=precision)
    with run_settings(settings_for(train, torch.device("cuda:1"))):
        assert torch.get_float32_matmul_precision() == "high" and torch.backends.cudnn.allow_tf32
        assert torch.backends.cudnn.benchmark
    assert current_settings() == before


def test_before_ampere_a_gpu_run_turns_on_only_the_autotuner(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_gpus(monkeypatch, [H100, T4])  # the current GPU has TF32; the training one does not
    # As a user left it (put back after the test): nothing to gain on this GPU, so untouched.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    before = current_settings()
    with run_settings(settings_for(SimpleNamespace(deterministic=False, precision="auto"), torch.device("cuda:1"))):
        now = current_settings()
        assert now.cudnn_benchmark
        assert (now.matmul_precision, now.cudnn_tf32) == (before.matmul_precision, before.cudnn_tf32)
    assert current_settings() == before


def test_fp32_asked_for_by_name_is_ieee_fp32_on_the_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_gpus(monkeypatch, [A100])
    before = current_settings()
    assert before.cudnn_tf32  # torch's own default: TF32 in cuDNN's convolutions
    with run_settings(settings_for(SimpleNamespace(deterministic=False, precision="fp32"), torch.device("cuda"))):
        assert torch.get_float32_matmul_precision() == "highest"
        assert not torch.backends.cudnn.allow_tf32
        assert torch.backends.cudnn.benchmark  # fixed shapes: the autotuner changes no result's precision
    assert current_settings() == before


def test_settings_read_after_torchs_newer_tf32_switch() -> None:
    # Once torch.backends.cuda.matmul.fp32_precision is set, torch's older getters raise.
    found = torch.backends.cuda.matmul.fp32_precision
    try:
        torch.backends.cuda.matmul.fp32_precision = "tf32"
        assert current_settings().matmul_precision == "high"
    finally:
        torch.backends.cuda.matmul.fp32_precision = found


# ------------------------------------------------------------------ precision: auto
def test_auto_precision_is_fp16_before_ampere_although_torch_says_bf16_is_supported(
        monkeypatch: pytest.MonkeyPatch) -> None:
    for old in (T4, V100):
        fake_gpus(monkeypatch, [old])
        assert torch.cuda.is_bf16_supported()  # emulated bf16: torch says yes
        assert resolve_precision("auto", torch.device("cuda")) is torch.float16
        assert resolve_precision("auto", torch.device("cuda"), fp16_ok=False) is None  # SAM: fp32
    for new in (A100, H100):
        fake_gpus(monkeypatch, [new])
        assert resolve_precision("auto", torch.device("cuda")) is torch.bfloat16


def test_auto_precision_asks_the_training_gpu_not_the_current_one(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_gpus(monkeypatch, [A100, T4])  # device 0 (current) is an A100; the run trains on the T4
    assert resolve_precision("auto", torch.device("cuda:1")) is torch.float16
    assert resolve_precision("auto", torch.device("cuda:0")) is torch.bfloat16
    assert resolve_precision("auto", torch.device("cpu")) is None


# ------------------------------------------------------------------ on a real GPU
@pytest.mark.cuda
def test_auto_precision_on_this_gpu() -> None:
    major, _ = torch.cuda.get_device_capability()
    assert resolve_precision("auto", torch.device("cuda")) is (torch.bfloat16 if major >= 8 else torch.float16)


@pytest.mark.cuda
@pytest.mark.parametrize("name, options", [("speednet", {"widths": [8, 16, 16], "stem_width": 8}),
                                           ("resnet18_cifar", {"width": 8}), ("cnn_small", {"width": 8})])
def test_deterministic_steps_repeat_bit_for_bit_on_this_gpu(name: str, options: dict) -> None:
    import torch.nn.functional as F

    from trainpipe import models
    from trainpipe.data.base import DataSpec

    cuda = torch.device("cuda")
    spec = DataSpec(in_shape=(3, 32, 32), num_classes=10)
    grads = []
    with run_settings(settings_for(SimpleNamespace(deterministic=True), cuda)):  # strict: raises on a gap
        for _ in range(2):
            torch.manual_seed(0)
            model = models.build(name, options, spec).to(cuda)
            x = torch.randn(32, 3, 32, 32, device=cuda)
            y = torch.randint(0, 10, (32,), device=cuda)
            F.cross_entropy(model(x), y).backward()
            grads.append([p.grad.clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*grads))


@pytest.mark.cuda
def test_a_checkpoint_read_onto_this_gpu_restores_its_random_states(tmp_path: Path) -> None:
    from trainpipe.loop.rng import restore_rng
    from trainpipe.run import checkpoints as ckpt

    r = trainpipe.train(None, ["model.width=8", "tracking.plots=false", "train.device=cuda", "train.epochs=1"],
                        output=tmp_path / "run", quiet=True)
    state = ckpt.load(r.run_dir / "checkpoints" / ckpt.LAST, map_location=torch.device("cuda"))
    assert next(iter(state["model"].values())).is_cuda and restore_rng(state["rng"]) == []


def test_a_finished_gpu_run_gives_its_cached_memory_back(monkeypatch: pytest.MonkeyPatch) -> None:
    # torch's caching allocator keeps a run's freed blocks; other processes on the GPU (sweep
    # workers) and the next trial's data-fit check must see them free.
    from trainpipe.loop.device import release_run_caches

    emptied = []
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(True))
    release_run_caches(torch.device("cuda"), compiled=False)
    assert emptied == [True]
    release_run_caches(torch.device("cpu"), compiled=False)
    assert emptied == [True]  # nothing to give back on the CPU
