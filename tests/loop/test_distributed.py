"""DDP on the CPU: `trainpipe train ... --nproc 2` (gloo) against a one-process run.

The two multi-process runs (a training and a resume of it) are real subprocesses
through the CLI; everything else runs in this process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import trainpipe
from trainpipe import data as data_mod
from trainpipe.loop import distributed
from trainpipe.cli import main
from trainpipe.config import load
from trainpipe.data.base import Split
from trainpipe.data.loaders import DeviceLoader
from trainpipe.errors import ConfigError
from trainpipe.registry import AUGMENTS

from engine_kit import TensorLoader, blobs, ddp_accumulation_rank, make_trainer, mlp

EPOCHS = 5
OVERRIDES = [f"train.epochs={EPOCHS}", "model.width=16", "tracking.plots=false", f"train.checkpoint.keep={EPOCHS}"]


def _trainpipe(args: list[str], cwd: Path, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CI": "1", "TRAINPIPE_CACHE_DIR": str(cache)}
    return subprocess.run([sys.executable, "-m", "trainpipe", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def ddp(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, subprocess.CompletedProcess]:
    work = tmp_path_factory.mktemp("ddp")
    run_dir = work / "run"
    proc = _trainpipe(["train", *OVERRIDES, "--nproc", "2", "--output", str(run_dir)], work,
                      tmp_path_factory.getbasetemp() / "cache")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return work, run_dir, proc


@pytest.mark.slow
def test_two_processes_write_one_run_directory(ddp: tuple[Path, Path, subprocess.CompletedProcess]) -> None:
    work, run_dir, _ = ddp
    assert sorted(p.name for p in work.iterdir()) == ["run"]  # no second runs/<name>-<time> from rank 1
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["processes"] == 2
    history = (run_dir / "history.jsonl").read_text().splitlines()
    assert len(history) == 1  # the train event, recorded by rank 0 only
    assert (run_dir / "checkpoints" / "last.pt").is_file() and (run_dir / "checkpoints" / "best.pt").is_file()


@pytest.mark.slow
def test_metrics_and_console_lines_appear_once_per_epoch(ddp: tuple[Path, Path, subprocess.CompletedProcess]) -> None:
    _, run_dir, proc = ddp
    assert [r["epoch"] for r in _rows(run_dir)] == list(range(1, EPOCHS + 1))
    for epoch in range(1, EPOCHS + 1):
        assert proc.stdout.count(f"epoch {epoch}/{EPOCHS} ") == 1, proc.stdout
    assert proc.stdout.count("run directory:") == 1
    assert "Warning" not in proc.stderr, proc.stderr


@pytest.mark.slow
def test_accuracy_trend_matches_one_process(ddp: tuple[Path, Path, subprocess.CompletedProcess],
                                            tmp_path: Path) -> None:
    _, run_dir, _ = ddp
    single = trainpipe.train(None, OVERRIDES, output=tmp_path / "one", quiet=True)
    two, one = _rows(run_dir), list(single.metrics)
    assert two[-1]["train/loss"] < 0.5 * two[0]["train/loss"]
    assert abs(two[-1]["val/acc"] - one[-1]["val/acc"]) <= 0.05
    summary = json.loads((run_dir / "summary.json").read_text())
    assert abs(summary["test/acc"] - single.summary["test/acc"]) <= 0.05
    # The global batch is the configured one: same steps per epoch as one process.
    last = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    cfg = load(None, OVERRIDES)
    batches = len(data_mod.build(cfg.data, seed=cfg.seed, device=torch.device("cpu")).train)
    assert last["state"]["step"] == EPOCHS * batches


@pytest.mark.slow
def test_resume_under_ddp_ends_where_the_uninterrupted_run_ended(
    ddp: tuple[Path, Path, subprocess.CompletedProcess], tmp_path_factory: pytest.TempPathFactory
) -> None:
    work, run_dir, _ = ddp
    # A copy of the run as it was on disk after epoch 3, as if killed then.
    crashed = tmp_path_factory.mktemp("crashed") / "run"
    shutil.copytree(run_dir, crashed)
    ckpts = crashed / "checkpoints"
    shutil.copy(ckpts / "epoch-0003.pt", ckpts / "last.pt")
    for p in ckpts.iterdir():
        if p.name not in ("last.pt", "epoch-0003.pt"):
            p.unlink()
    summary = json.loads((crashed / "summary.json").read_text())
    (crashed / "summary.json").write_text(json.dumps({**summary, "status": "running"}))

    proc = _trainpipe(["resume", str(crashed), "--nproc", "2"], crashed.parent,
                      tmp_path_factory.getbasetemp() / "cache")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("resuming") == 1 and proc.stdout.count(f"epoch 5/{EPOCHS} ") == 1
    assert [r["epoch"] for r in _rows(crashed)] == list(range(1, EPOCHS + 1))
    events = [json.loads(line)["event"] for line in (crashed / "history.jsonl").read_text().splitlines()]
    assert events == ["train", "resume"]
    a = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]
    b = torch.load(ckpts / "last.pt", weights_only=True)["model"]
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=k)


@pytest.mark.slow
def test_accumulation_under_ddp_reduces_once_per_step_and_matches_one_process(tmp_path: Path) -> None:
    # Two gloo ranks, each with half of every global batch of 8, accumulating 4 micro-batches
    # per optimizer step: the weights must equal one process's with the whole batches, and
    # the micro-batches before a step's last must not all-reduce (DDP's no_sync).
    out = tmp_path / "rank0.pt"
    torch.multiprocessing.spawn(ddp_accumulation_rank, args=(2, str(tmp_path / "init"), str(out), 8, 4),
                                nprocs=2, join=True)
    ddp = torch.load(out, weights_only=True)
    x, y = blobs(64)
    single = make_trainer(mlp(), TensorLoader(x, y, 8), overrides=["train.grad_accum_steps=4"])
    single.train_epoch(0)
    assert ddp["steps"] == single.state.step == 2
    assert ddp["reductions"] == 2  # one bucket per optimizer step; 8 without no_sync
    for k, v in single.model.state_dict().items():
        torch.testing.assert_close(ddp["model"][k], v, rtol=1e-5, atol=1e-6, msg=k)


def test_sync_bn_is_refused_where_torch_cannot_run_it() -> None:
    cfg = load(None, ["train.sync_bn=true", "train.device=cpu"])
    with pytest.raises(ConfigError, match=r"train\.sync_bn: .*GPUs only"):
        distributed.check(cfg, 2)
    distributed.check(cfg, 1)  # one process: nothing to synchronise, nothing to refuse


# ------------------------------------------------------------------ in-process parts
def test_shards_split_every_global_batch_between_ranks() -> None:
    n = 40
    split = Split(torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8), torch.arange(n))
    common = dict(batch_size=8, device=torch.device("cpu"), mean=None, std=None, shuffle=True, drop_last=True,
                  ops=[AUGMENTS.build("hflip")], seed=3)
    full, r0, r1 = (DeviceLoader(split, **common) for _ in range(3))
    r0.shard(0, 2)
    r1.shard(1, 2)
    for ld in (full, r0, r1):
        ld.set_epoch(2)
    assert len(r0) == len(r1) == len(full) == 5 and r0.num_samples == full.num_samples
    for (_, y), (x0, y0), (x1, y1) in zip(full, r0, r1):
        assert torch.equal(y0, y[0::2]) and torch.equal(y1, y[1::2])
        assert x0.shape[0] == x1.shape[0] == 4


def test_helpers_are_identities_in_one_process() -> None:
    assert not distributed.is_distributed() and distributed.is_main() and distributed.world_size() == 1
    t = torch.arange(6.0).reshape(3, 2)
    assert distributed.gather_rows(t) is t
    s, c, n = distributed.all_reduce_sums(torch.tensor(1.5), torch.tensor(3), 7)
    assert (float(s), int(c), n) == (1.5, 3, 7)
    model = torch.nn.Linear(2, 2)
    assert distributed.wrap(model, torch.device("cpu")) is model


def test_batch_size_must_split_evenly(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match=r"data\.batch_size.*divisible by 4"):
        distributed.check(load(None, ["data.batch_size=66"]), 4)
    with pytest.raises(ConfigError, match="divisible by 3"):
        distributed.check(load(None, ["data.batch_size=66", "train.batch_size_schedule={2: 128}"]), 3)
    # The CLI refuses before starting any process: one message, exit code 2.
    assert main(["train", "data.batch_size=63", "--nproc", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "divisible by 2" in err


def test_more_processes_than_gpus_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # One visible GPU (faked where there is none): train.device=cuda on a machine without
    # any is refused earlier, by the device check.
    if not torch.cuda.is_available():
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    nproc = torch.cuda.device_count() + 1
    with pytest.raises(ConfigError, match=rf"--nproc {nproc}: each process trains on its own GPU"):
        distributed.check(load(None, ["train.device=cuda"]), nproc)


def test_launch_refuses_bad_counts_and_nesting(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="--nproc"):
        distributed.launch(0, ["train"])
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(ConfigError, match="already runs under torchrun"):
        distributed.launch(2, ["train"])


@pytest.mark.slow
def test_each_rank_draws_its_own_random_stream_and_saves_it(ddp: tuple[Path, Path, subprocess.CompletedProcess]) -> None:
    # Dropout and drop-path masks come from the global torch RNG: with one seed for every rank
    # they would repeat across ranks. Each rank's state is saved, so a resume continues each stream.
    _, run_dir, _ = ddp
    last = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    ranks = last["rng_ranks"]
    assert len(ranks) == 2
    assert not torch.equal(ranks[0]["torch"], ranks[1]["torch"])
    assert torch.equal(ranks[0]["torch"], last["rng"]["torch"])


def test_ranks_resume_their_own_random_streams() -> None:
    from trainpipe.loop.trainer import rank_rng

    saved = {"rng": {"id": 0}, "rng_ranks": [{"id": 0}, {"id": 1}]}
    assert rank_rng(saved, 1, 2) == ({"id": 1}, [])
    own, notes = rank_rng(saved, 0, 4)  # resumed with more processes than wrote it
    assert own == {"id": 0} and "2 process(es) and 4" in notes[0]
    assert rank_rng({"rng": {"id": 0}}, 0, 1) == ({"id": 0}, [])  # a one-process run
