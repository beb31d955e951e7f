"""`--slurm` on a real one-node Slurm cluster (started by .ci/slurm.sh; skipped where it cannot run).

The options and the generated sbatch script are checked without a cluster."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml

import trainpipe
from trainpipe.cli import main
from trainpipe.errors import ConfigError
from trainpipe.launch import slurm
from trainpipe.run import rundir

REPO = Path(__file__).resolve().parents[2]
TINY = {"train.epochs": 2, "model.width": 8, "tracking.plots": False, "data.val_split": 0.2, "train.device": "cpu"}
GRID = {"optim.lr": {"values": [0.05, 0.1, 0.2]}, "model.width": {"values": [4, 8]}}


def _sweep_file(tmp_path: Path, fixed: dict = TINY, parameters: dict = GRID, **slurm_opts: object) -> Path:
    data = {"method": "grid", "metric": {"name": "val/acc", "goal": "maximize"}, "parameters": parameters,
            "fixed": fixed, "slurm": {"time": 10, "cpus_per_task": 1, **slurm_opts}}
    p = tmp_path / "grid.yaml"
    p.write_text(yaml.safe_dump(data, sort_keys=False))
    return p


def test_options_come_from_the_slurm_block_and_the_flags() -> None:
    opts = slurm.options({"time": "1-02:00:00", "partition": "gpu", "cpus_per_task": 4}, {"partition": "debug"})
    assert opts.partition == "debug" and opts.minutes() == 26 * 60 and opts.cpus_per_task == 4
    assert slurm.parse_time("90") == 90 and slurm.parse_time("0:30:30") == 31 and slurm.parse_time(15) == 15
    with pytest.raises(ConfigError, match="slurm.partiton: .*did you mean partition"):
        slurm.options({"partiton": "gpu"})
    with pytest.raises(ConfigError, match="slurm.time: 'soon' is not a Slurm time"):
        slurm.options({"time": "soon"})


def test_a_task_stopped_by_a_signal_exits_as_every_command_does(monkeypatch: pytest.MonkeyPatch) -> None:
    import signal

    requeued: list[bool] = []
    monkeypatch.setattr(slurm, "requeue_self", lambda: requeued.append(True))
    monkeypatch.setenv("SLURM_PROCID", "0")
    assert slurm._after_signal(signal.SIGTERM) == 143 and not requeued  # scancel, preemption: no requeue
    assert slurm._after_signal(None) == 130  # a KeyboardInterrupt with no signal recorded
    monkeypatch.setenv("SLURM_PROCID", "1")
    assert slurm._after_signal(slurm.TIME_LIMIT_SIGNAL) == 138 and not requeued  # only rank 0 requeues the job
    monkeypatch.setenv("SLURM_PROCID", "0")
    assert slurm._after_signal(slurm.TIME_LIMIT_SIGNAL) == 138 and requeued == [True]


def test_the_db_flags_travel_to_every_array_task(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("submitit")
    monkeypatch.chdir(tmp_path)
    sent: list = []

    class Job:
        job_id = "4242_0"

    class Executor:  # what submitit would pickle and send to the array's tasks
        def map_array(self, fn: object, configs: list) -> list[Job]:
            sent.extend(configs)
            return [Job() for _ in configs]

    monkeypatch.setattr(slurm, "executor", lambda *a, **k: Executor())
    monkeypatch.setattr(slurm, "slurm_states", lambda ids: {})  # nothing submitted before
    s = _sweep_file(tmp_path)
    assert main(["sweep", str(s), "--slurm", "--workers", "2", "--db-retry-limit", "42",
                 "--db-connect-timeout", "3"]) == 0
    assert len(sent) == 2 and {(c.index, c.db.retry_limit, c.db.connect_timeout) for c in sent} == {(0, 42, 3), (1, 42, 3)}
    assert all(c.db.statement_timeout == 60 for c in sent)  # the default where no flag was given


def test_dry_run_shows_the_sbatch_parameters(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("submitit")
    monkeypatch.chdir(tmp_path)
    s = _sweep_file(tmp_path, partition="debug", additional_parameters={"constraint": "a100"})
    assert main(["sweep", str(s), "--slurm", "--dry-run", "--workers", "2", "--qos", "high"]) == 0
    out = capsys.readouterr().out
    for line in ("#SBATCH --array=0-1%2", "#SBATCH --signal=USR1@120", "#SBATCH --requeue", "#SBATCH --time=10",
                 "#SBATCH --partition=debug", "#SBATCH --qos=high", "#SBATCH --constraint=a100",
                 "#SBATCH --cpus-per-task=1"):
        assert line in out
    assert "optuna.journal" in out and not (tmp_path / "sweeps").exists()  # nothing written
    assert main(["train", "--slurm", "--dry-run", "--nproc", "2", "--signal-lead", "300", "--output",
                 str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "#SBATCH --ntasks-per-node=2" in out and "#SBATCH --signal=USR1@300" in out


# ------------------------------------------------------------------ a real cluster
def _cluster_up() -> bool:
    try:
        r = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0 and any(state in r.stdout for state in ("idle", "mix", "alloc"))


@pytest.fixture(scope="session")
def cluster() -> Iterator[None]:
    pytest.importorskip("submitit", reason="submitit is not installed (pip install 'trainpipe[slurm]')")
    if not _cluster_up():
        if shutil.which("slurmctld") is None or shutil.which("sbatch") is None:
            pytest.skip("Slurm is not installed here (.ci/slurm.sh installs Debian's packages and starts a "
                        "one-node cluster; .ci/run does so)")
        if os.geteuid() != 0:
            pytest.skip("no Slurm cluster runs here and starting one needs root (.ci/slurm.sh)")
        r = subprocess.run(["bash", str(REPO / ".ci" / "slurm.sh"), "start"], capture_output=True, text=True,
                           timeout=600)
        if r.returncode != 0 or not _cluster_up():
            pytest.skip(f"a local Slurm cluster could not be started (.ci/slurm.sh): {r.stderr.strip()[-300:]}")
    yield


@pytest.fixture(autouse=True)
def _cancel_leftover_jobs(tmp_path: Path) -> Iterator[None]:
    """A failing test must not leave its jobs to hold the cluster's CPUs."""
    yield
    for jobs in tmp_path.rglob(slurm.JOBS):
        ids = [str(j["job_id"]) for j in slurm.read_jobs(jobs.parent)]
        if ids and shutil.which("scancel"):
            subprocess.run(["scancel", *ids], capture_output=True)


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def _cli(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "trainpipe", *args], cwd=cwd, env=_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _visible(d: Path) -> list:
    from trainpipe.sweep import open_sweep
    from trainpipe.sweep import study as st

    return st.ledger(open_sweep(d)[1].get_trials()).visible


@pytest.mark.slow
def test_a_grid_sweep_as_a_two_task_array_survives_scancel(cluster: None, tmp_path: Path) -> None:
    s = _sweep_file(tmp_path, fixed={**TINY, "train.epochs": 4})
    d = tmp_path / "sweeps" / "grid"
    p = _cli("sweep", str(s), "--slurm", "--workers", "2", cwd=tmp_path)
    out = p.communicate(timeout=120)[0]
    assert p.returncode == 0 and "submitted Slurm job array" in out, out
    (job,) = slurm.read_jobs(d / "slurm")
    deadline = time.monotonic() + 300
    while not any(t.state.name == "COMPLETE" for t in _visible(d)) and time.monotonic() < deadline:
        time.sleep(1)
    subprocess.run(["scancel", str(job["job_id"])], check=True)
    while slurm.active_tasks(d / "slurm") and time.monotonic() < deadline:
        time.sleep(1)

    p = _cli("sweep", str(d), "--slurm", "--wait", cwd=tmp_path)
    out = p.communicate(timeout=600)[0]
    assert p.returncode == 0, out
    visible = _visible(d)
    points = sorted((t.params["optim.lr"], t.params["model.width"]) for t in visible)
    assert points == sorted((lr, w) for lr in (0.05, 0.1, 0.2) for w in (4, 8))  # 0 lost, 0 repeated
    assert all(t.state.name == "COMPLETE" for t in visible)
    assert len(slurm.read_jobs(d / "slurm")) == 2  # the second submission only for what was left
    p = _cli("sweep", str(d), "--status", cwd=tmp_path)
    status = p.communicate(timeout=120)[0]
    assert "Slurm tasks" in status and "CANCELLED" in status and "COMPLETED" in status


EXACT = ["model.width=8", "model.dropout=0.1", "data.augment=[random_crop]", "train.deterministic=true",
         "tracking.plots=false", "train.device=cpu", "train.epochs=4"]


@pytest.mark.slow
def test_a_run_that_gets_the_time_limit_signal_is_requeued_and_ends_as_if_never_stopped(
        cluster: None, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    p = _cli("train", *EXACT, "--output", str(run_dir), "--slurm", "--wait", "--cpus-per-task", "1", "--time", "10",
             cwd=tmp_path)
    deadline = time.monotonic() + 300
    while not rundir.read_metrics(run_dir) and time.monotonic() < deadline:
        assert p.poll() is None, p.stdout.read()
        time.sleep(0.05)
    (job,) = slurm.read_jobs(run_dir / "slurm")
    # what Slurm sends --signal-lead seconds before the time limit
    subprocess.run(["scancel", "--signal=USR1", str(job["job_id"])], check=True)
    out = p.communicate(timeout=600)[0]
    assert p.returncode == 0, out
    events = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events] == ["train", "resume"], out  # requeued once, resumed where it stopped
    reference = trainpipe.train(None, EXACT, output=tmp_path / "reference", quiet=True)
    a = torch.load(reference.run_dir / "checkpoints/last.pt", weights_only=True)
    b = torch.load(run_dir / "checkpoints/last.pt", weights_only=True)
    assert all(torch.equal(v, b["model"][k]) for k, v in a["model"].items())
    strip = lambda rows: [{k: v for k, v in r.items() if "time" not in k and "per_s" not in k} for r in rows]  # noqa: E731
    assert strip(rundir.read_metrics(run_dir)) == strip(rundir.read_metrics(reference.run_dir))


@pytest.mark.slow
def test_a_sweep_task_that_gets_the_time_limit_signal_is_requeued_and_its_trial_ends_as_if_never_stopped(
        cluster: None, tmp_path: Path) -> None:
    fixed = {**TINY, "train.epochs": 4, "model.dropout": 0.1, "data.augment": ["random_crop"],
             "train.deterministic": True}
    s = _sweep_file(tmp_path, fixed=fixed, parameters={"optim.lr": {"values": [0.1]}})
    d = tmp_path / "sweeps" / "grid"
    p = _cli("sweep", str(s), "--slurm", "--wait", cwd=tmp_path)
    deadline = time.monotonic() + 300
    while not rundir.read_metrics(d / "trials" / "0000") and time.monotonic() < deadline:
        assert p.poll() is None, p.stdout.read()
        time.sleep(0.05)
    (job,) = slurm.read_jobs(d / "slurm")
    subprocess.run(["scancel", "--signal=USR1", str(job["job_id"])], check=True)  # every task of the array
    out = p.communicate(timeout=600)[0]
    assert p.returncode == 0, out
    (trial,) = _visible(d)
    assert trial.state.name == "COMPLETE" and trial.system_attrs["retry_history"] == [0], out
    trial_dir = d / "trials" / f"{trial.number:04d}"
    events = [json.loads(line)["event"] for line in (trial_dir / "history.jsonl").read_text().splitlines()]
    assert events == ["train", "resume"]
    reference = trainpipe.train(str(trial_dir / "config.yaml"), output=tmp_path / "reference", quiet=True)
    a = torch.load(reference.run_dir / "checkpoints/last.pt", weights_only=True)
    b = torch.load(trial_dir / "checkpoints/last.pt", weights_only=True)
    assert all(torch.equal(v, b["model"][k]) for k, v in a["model"].items())


@pytest.mark.slow
def test_train_with_nproc_on_slurm_is_one_ddp_run_over_the_jobs_tasks(cluster: None, tmp_path: Path) -> None:
    run_dir = tmp_path / "ddp"
    p = _cli("train", "model.width=8", "train.epochs=1", "tracking.plots=false", "train.device=cpu", "--slurm",
             "--nproc", "2", "--cpus-per-task", "1", "--time", "10", "--wait", "--output", str(run_dir), cwd=tmp_path)
    out = p.communicate(timeout=600)[0]
    assert p.returncode == 0, out
    summary = rundir.read_summary(run_dir)
    assert summary["status"] == "completed" and summary["processes"] == 2
