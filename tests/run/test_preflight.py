"""What this machine cannot do (a device it lacks, a model larger than its memory) is refused
with exit 2, naming the key and what the machine has, before the run directory exists.

No GPU is needed: torch's CUDA and MPS queries are replaced with fakes that answer as torch
does on a machine with (or without) those devices."""

from __future__ import annotations

import types
from pathlib import Path

import pytest
import torch

from conftest import tiny_overrides
from trainpipe.cli import main
from trainpipe.config import load
from trainpipe.data.base import DataSpec
from trainpipe.errors import ConfigError
from trainpipe.loop import device as device_mod
from trainpipe.run import preflight


def _gpus(monkeypatch: pytest.MonkeyPatch, count: int, gib: int = 80) -> None:
    """Make torch report `count` visible CUDA GPUs of `gib` GiB each (0: none)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    props = types.SimpleNamespace(name="NVIDIA H100 80GB HBM3", total_memory=gib << 30)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda d=None: (gib << 29, gib << 30))


def _train_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str], *overrides: str) -> str:
    out = tmp_path / "run"
    assert main(["train", *tiny_overrides(), *overrides, "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert not out.exists() and "Traceback" not in err
    return err


def test_cuda_without_a_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    _gpus(monkeypatch, 0)
    err = _train_refused(tmp_path, capsys, "train.device=cuda")
    assert "train.device=cuda: no CUDA GPU is available here" in err and "This machine has cpu." in err
    assert "train.device=auto" in err


def test_cuda_index_past_the_visible_gpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    _gpus(monkeypatch, 2)
    err = _train_refused(tmp_path, capsys, "train.device=cuda:2")
    assert "train.device=cuda:2: this machine has 2 visible GPUs" in err
    assert "cuda:0 (NVIDIA H100 80GB HBM3, 80 GiB)" in err and "cuda:1" in err
    assert device_mod.resolve_device("cuda:1") == torch.device("cuda:1")  # an index it has is taken


def test_mps_off_a_mac(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    _gpus(monkeypatch, 0)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr(device_mod.sys, "platform", "linux")
    err = _train_refused(tmp_path, capsys, "train.device=mps")
    assert "train.device=mps: MPS is Apple's Metal backend, found only on Macs" in err and "has cpu" in err


def test_missing_device_does_not_touch_an_existing_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With --overwrite, the run already in --output is deleted only once the new run can start."""
    out = tmp_path / "run"
    assert main(["train", *tiny_overrides(**{"train.epochs": 1}), "--output", str(out), "--quiet"]) == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    _gpus(monkeypatch, 0)
    assert main(["train", *tiny_overrides(), "train.device=cuda", "--output", str(out), "--overwrite"]) == 2
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_model_too_large_for_the_machine(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = _train_refused(tmp_path, capsys, "model.width=1000000")
    assert "model: cnn_small with model.width=1000000 has" in err and "trillion parameters" in err
    assert "of memory" in err and "Lower model.width" in err


def test_refused_model_leaves_an_empty_output_folder_empty(tmp_path: Path) -> None:
    """A folder made for the run stays, as it was: empty (no config.yaml of a run that never started)."""
    out = tmp_path / "made-by-me"
    out.mkdir()
    assert main(["train", *tiny_overrides(), "model.width=1000000", "--output", str(out), "--quiet"]) == 2
    assert out.is_dir() and list(out.iterdir()) == []


def test_model_is_measured_against_the_device_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same model fits an 80 GiB GPU and not a 1 MiB one; it is never allocated to find out."""
    spec = DataSpec((3, 32, 32), 10)
    cfg = load(None, ["model.width=512"])  # 2.5 million parameters x 8 bytes = about 20 MB
    _gpus(monkeypatch, 1, gib=80)
    preflight.check_model_fits(cfg, spec, torch.device("cuda:0"))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda d=None: (1 << 19, 1 << 20))
    with pytest.raises(ConfigError, match=r"cuda:0 has 1\.0 MiB of GPU memory") as e:
        preflight.check_model_fits(cfg, spec, torch.device("cuda:0"))
    assert "model.width=512" in str(e.value)


def test_default_model_fits_and_unknown_memory_refuses_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = load()
    preflight.check_model_fits(cfg, DataSpec((1, 8, 8), 10), torch.device("cpu"))
    monkeypatch.setattr(device_mod, "memory_of", lambda d: None)
    preflight.check_model_fits(load(None, ["model.width=1000000"]), DataSpec((1, 8, 8), 10), torch.device("cpu"))


def test_sweep_on_a_device_the_machine_lacks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """Every trial would be refused: the sweep says so once, before its directory exists."""
    from sweep_kit import sweep_file

    _gpus(monkeypatch, 0)
    s = sweep_file(tmp_path, {"optim.lr": {"values": [0.05, 0.1]}})
    out = tmp_path / "sweep"
    assert main(["sweep", str(s), "train.device=cuda", "--output", str(out)]) == 2
    assert "train.device=cuda: no CUDA GPU is available here" in capsys.readouterr().err
    assert not out.exists()
