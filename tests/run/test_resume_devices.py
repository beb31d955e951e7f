"""Resume across devices and precisions: a checkpoint read for a GPU, a machine with fewer
GPUs, fp16 after a run without a GradScaler, fused kernels after a CPU start. The GPUs are
emulated (torch.cuda's queries answer as on such a machine; the `meta` device stands for a GPU)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from gpu_kit import T4, fake_gpus

import trainpipe
from trainpipe import optim
from trainpipe.loop.callbacks import Callback
from trainpipe.loop.rng import restore_rng
from trainpipe.run import checkpoints as ckpt
from trainpipe.run import rundir
from trainpipe.run.resume import resume

TINY = ["model.width=8", "tracking.plots=false", "train.device=cpu", "train.epochs=1"]


@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished fp32 CPU run of one epoch (its checkpoint holds no GradScaler state)."""
    out = tmp_path_factory.mktemp("one_epoch") / "run"
    trainpipe.train(None, TINY + ["optim.name=adamw"], output=out, quiet=True)
    return out


def _copy(run: Path, to: Path) -> Path:
    import shutil

    shutil.copytree(run, to)
    return to


def test_a_checkpoint_read_for_a_gpu_keeps_its_rng_states_on_the_cpu(one_epoch: Path, tmp_path: Path) -> None:
    # train.on_nonfinite=rollback reads the last good checkpoint with map_location=<the GPU>.
    last = one_epoch / rundir.CHECKPOINTS / ckpt.LAST
    with_ranks = ckpt.load(last)
    with_ranks["rng_ranks"] = [with_ranks["rng"], with_ranks["rng"]]  # as a DDP run of 2 writes it
    ckpt.save_atomic(with_ranks, tmp_path / "ddp.pt")
    assert all(s["torch"].device.type == "cpu" for s in ckpt.load(tmp_path / "ddp.pt", map_location="meta")["rng_ranks"])
    for state in (ckpt.load(last, map_location="meta"),
                  ckpt.find_resumable(last.parent, map_location=torch.device("meta"))[0]):
        assert next(iter(state["model"].values())).device.type == "meta"  # the weights went to the device
        assert state["rng"]["torch"].device.type == "cpu"
        assert restore_rng(state["rng"]) == []


class _FakeCudaRng:
    """torch.cuda's RNG state functions on an emulated machine: one state per visible GPU;
    an index past the visible count raises IndexError, as torch.cuda.set_rng_state does."""

    def __init__(self, count: int) -> None:
        self.states = {i: torch.zeros(16, dtype=torch.uint8) for i in range(count)}

    def set(self, state: torch.Tensor, device: Any = "cuda") -> None:
        index = device if isinstance(device, int) else (torch.device(device).index or 0)
        if index >= len(self.states):
            raise IndexError("tuple index out of range")
        assert state.device.type == "cpu" and state.dtype == torch.uint8
        self.states[index] = state.clone()

    def get_all(self) -> list[torch.Tensor]:
        return [s.clone() for s in self.states.values()]


def test_resuming_on_fewer_gpus_restores_those_present_and_names_the_others(
        monkeypatch: pytest.MonkeyPatch, one_epoch: Path) -> None:
    state = ckpt.load(one_epoch / rundir.CHECKPOINTS / ckpt.LAST)
    saved = [torch.full((16,), i + 1, dtype=torch.uint8) for i in range(4)]  # a 4-GPU node's states
    state["rng"]["cuda"] = saved

    fake_gpus(monkeypatch, [T4])  # this machine: one GPU
    rng = _FakeCudaRng(1)
    for where in (torch.cuda, torch.cuda.random):
        monkeypatch.setattr(where, "set_rng_state", rng.set)
        monkeypatch.setattr(where, "get_rng_state_all", rng.get_all)
    notes = restore_rng(state["rng"])
    assert torch.equal(rng.states[0], saved[0])
    assert len(notes) == 1 and "4 GPUs" in notes[0] and "sees 1" in notes[0] and "GPUs 1-3" in notes[0]


def test_resuming_in_fp16_a_run_saved_without_a_grad_scaler(one_epoch: Path, tmp_path: Path) -> None:
    run = _copy(one_epoch, tmp_path / "run")
    r = resume(run, ["train.epochs=2", "train.precision=fp16"], quiet=True)
    assert r.status == "completed" and r.summary["epochs_run"] == 2
    assert ckpt.load(run / rundir.CHECKPOINTS / ckpt.LAST)["scaler"]  # the fresh scaler's state is saved


class _SeeOptimizer(Callback):
    def on_fit_start(self, trainer: Any) -> None:
        self.groups = [dict(g) for g in trainer.optimizer.param_groups]


def test_a_run_started_on_the_cpu_resumed_on_a_gpu_gets_fused_kernels(
        monkeypatch: pytest.MonkeyPatch, one_epoch: Path, tmp_path: Path) -> None:
    run = _copy(one_epoch, tmp_path / "run")
    saved = ckpt.load(run / rundir.CHECKPOINTS / ckpt.LAST)
    for g in saved["optimizer"]["param_groups"]:
        g["fused"] = None  # as a device without fused kernels (MPS, or torch's default) saves it
    # What optim chooses for parameters on a GPU (torch also has fused AdamW for the CPU).
    monkeypatch.setattr(optim, "_fast_path", lambda groups: {"fused": True})
    spy = _SeeOptimizer()
    from trainpipe.run.train import execute

    cfg = trainpipe.config.load(run / rundir.CONFIG, ["train.epochs=2"])
    r = execute(cfg, run, device=torch.device("cpu"), quiet=True, extra_callbacks=[spy], resume_state=saved)
    assert r.status == "completed"
    assert {g["fused"] for g in spy.groups} == {True}
