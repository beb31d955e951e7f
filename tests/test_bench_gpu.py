"""The GPU benchmark script, rehearsed on the CPU: every part runs and leaves its result file."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

# bench/ is a top-level folder of the repository, not part of the installed package.
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import gpu as bench_gpu  # noqa: E402

SESSION = REPO / "bench" / "gpu_session.sh"


def _env(tmp: Path) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "WORK": str(tmp / "work")}
    env.pop("PYTEST_XDIST_WORKER", None)
    return env


def _numbers(record: dict, *keys: str) -> list[float]:
    values = [record[k] for k in keys]
    assert all(isinstance(v, (int, float)) for v in values), record
    return values


@pytest.mark.slow
def test_rehearsal_runs_every_part_and_writes_its_results(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "bench", "gpu", "--rehearse", "--out", str(out)], cwd=REPO,
                          env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = {p: json.loads((out / f"{p}.json").read_text()) for p in bench_gpu.PARTS}
    for part, d in results.items():
        assert d["status"] == "done" and d["rehearsal"] and not d["errors"] and d["rows"], (part, d)
        assert d["device"] == "cpu"

    smoke = results["smoke"]["records"]
    assert len(smoke) == 8 and all(r["ok"] for r in smoke)
    runs, resumes = smoke[:4], {r["measurement"].split(": ", 1)[1]: r for r in smoke[4:]}
    assert set(resumes) == {"rollback after a divergence", "resume on fewer GPUs than saved the run",
                            "fp16 resume of a bf16 run", "train.deterministic twice"}
    assert resumes["rollback after a divergence"]["rollbacks"] >= 1
    for r in runs:
        wall, loss, acc = _numbers(r, "wall_s", "train_loss", "test_acc")
        assert wall > 0 and loss > 0 and 0 <= acc <= 1
    paths = {r["measurement"].split(": ", 1)[1].split(",")[0]: r for r in runs}
    fast = next(r for r in runs if "bf16" in r["measurement"])
    assert fast["precision"] == "bf16" and fast["compiled"] and fast["channels_last"] and fast["loader"] == "DeviceLoader"
    fp16 = next(r for r in runs if "fp16" in r["measurement"])
    assert fp16["grad_scaler"] and fp16["loss_scale"] > 0
    assert any(k.startswith("cifar10_speed") for k in paths)

    tp = results["throughput"]["records"]
    assert _numbers(tp[0], "images_per_s", "bound_images_per_s")[0] > 0 and tp[1]["ratio"] > 0
    speed = results["speed"]["records"][-1]
    assert [r["seed"] for r in speed["runs"]] == [0, 1] and speed["median_time_s"] > 0
    assert all(0 <= r["test_acc"] <= 1 for r in speed["runs"])
    air = results["airbench"]["records"][-1]
    assert len(air["runs"]) == 3 and air["median_time_s"] > 0 and air["script"].endswith("airbench_standin.py")
    rest = {r["measurement"].split(",")[0]: r for r in results["rest"]["records"]}
    assert rest["DeviceLoader (crop + flip + normalise"]["images_per_s"] > 0
    assert any(k.startswith("resnet18_cifar") and r.get("classes") == 100 for k, r in rest.items())
    assert any(k.startswith("cifar100_speed") for k in rest)

    summary = (out / "summary.md").read_text()
    assert "REHEARSAL" in summary and "cifar10_speed time / airbench94 time" in summary
    assert summary.count("\n| ") >= 13 and "- rest: done" in summary


def test_a_part_that_fails_is_written_down_and_the_next_one_runs(tmp_path: Path) -> None:
    plan = bench_gpu.Plan(bench_gpu.torch.device("cpu"), tmp_path, rehearse=True, work=tmp_path)

    def broken(plan: bench_gpu.Plan, res: bench_gpu.Results) -> None:
        res.row(["first number", "1.0", "-", "-"], value=1.0)
        raise ValueError("no such kernel")

    original = bench_gpu.PART_FUNCS["speed"]
    bench_gpu.PART_FUNCS["speed"] = broken
    try:
        assert not bench_gpu.run_part(plan, "speed")
    finally:
        bench_gpu.PART_FUNCS["speed"] = original
    d = json.loads((tmp_path / "speed.json").read_text())
    assert d["status"] == "failed" and d["rows"][0][0] == "first number" and "no such kernel" in d["errors"][0]
    section = bench_gpu.build_section(tmp_path)
    assert not section.ok and "- speed: FAILED" in section.markdown and "- smoke: not run" in section.markdown


def test_collect_never_puts_rehearsal_numbers_in_benchmarks_md(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    plan = bench_gpu.Plan(bench_gpu.torch.device("cpu"), tmp_path, rehearse=True, work=tmp_path)
    res = bench_gpu.Results(plan, "throughput")
    res.row(["images/s", "123", "-", "-"], images_per_s=123.0)
    res.finish()
    written = []
    monkeypatch.setattr(bench_gpu, "publish", lambda section, args: written.append(section))
    assert bench_gpu.main(["--collect", str(tmp_path)]) == 1  # the other parts did not run
    assert not written and "never BENCHMARKS.md" in capsys.readouterr().out
    assert "| images/s" in (tmp_path / "summary.md").read_text()
    # The same files from a GPU run are published.
    d = json.loads((tmp_path / "throughput.json").read_text())
    (tmp_path / "throughput.json").write_text(json.dumps({**d, "rehearsal": False}))
    bench_gpu.main(["--collect", str(tmp_path)])
    assert written and "| images/s" in written[0].markdown and "REHEARSAL" not in written[0].markdown


def test_airbench_is_stopped_after_the_runs_asked_for(tmp_path: Path) -> None:
    data = bench_gpu.make_image_folder(tmp_path / "data", classes=2, train=4, test=2)
    seen = []
    rows = bench_gpu.airbench(bench_gpu.STANDIN, data, runs=2, on_result=seen.append)
    assert len(rows) == 2 and seen == rows and all(r["time_s"] >= 0 and 0 <= r["test_acc"] <= 1 for r in rows)


def test_session_script_parses() -> None:
    assert subprocess.run(["bash", "-n", str(SESSION)]).returncode == 0
    assert os.access(SESSION, os.X_OK) and os.access(REPO / "bench" / "wheelhouse.sh", os.X_OK)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("timeout") is None, reason="needs coreutils' timeout")
def test_session_script_rehearsal_goes_on_past_failures_and_time_caps(tmp_path: Path) -> None:
    # The data as it travels: a tar of an image folder.
    folder = bench_gpu.make_image_folder(tmp_path / "img" / "cifar10")
    tar = tmp_path / "images.tar.gz"
    with tarfile.open(tar, "w:gz") as t:
        t.add(folder, arcname="cifar10")
    # A wheelhouse whose requirements cannot be met: the install fails, the session goes on.
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "requirements.txt").write_text("pyyaml>=6.0\nno-such-package-for-trainpipe>=1\n")
    # An airbench stand-in that prints one run and then hangs: its part is cut at its cap.
    hang = tmp_path / "airbench_hangs.py"
    hang.write_text(
        "import time, torch\n"
        "tr = torch.load('cifar10/train.pt')\n"
        "assert tr['images'].shape == (80, 32, 32, 3)\n"
        "print('| run | epoch | tta_val_acc | total_time_seconds |', flush=True)\n"
        "print('| 0 | eval | 0.9400 | 3.5000 |', flush=True)\n"
        "time.sleep(600)\n"
    )
    out = tmp_path / "out"
    # Caps far above what the steps take, but airbench's (which hangs): a busy machine cuts no other step.
    env = {**_env(tmp_path), "PARTS": "airbench", "CAP_AIRBENCH": "25", "CAP_TESTS": "300", "CAP_DEFAULTS": "300",
           "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(SESSION), "--rehearse", "--cifar10", str(tar), "--wheelhouse", str(wheels),
                           "--airbench", str(hang), str(out)], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=540)
    log = (out / "session.log").read_text()
    assert proc.returncode == 1, log[-3000:]  # not every step was ok
    assert "install: FAILED" in log and "--dry-run" in log
    assert "data: " in log and "(80 training images)" in log
    # Every CUDA test of the tree is selected (in sub-folders too); on the CPU they are skipped.
    cuda_tests = (out / "cuda_tests.txt").read_text()
    assert "cuda_tests: ok" in log and "CUDA tests selected" in cuda_tests
    assert "tests/optim/test_optim.py" in cuda_tests and "tests/loop/test_device.py" in cuda_tests
    assert "inductor: ok" in log and "C compiler" in log
    assert "airbench: CUT SHORT" in log
    # The defaults comparison runs as far as the CPU allows: every variant, whole processes, its table.
    assert "defaults: ok" in log and "--quick --device cpu" in log
    assert all(v in log for v in ("trainpipe defaults", "trainpipe hand-set", "plain PyTorch loop"))
    air = json.loads((out / "airbench.json").read_text())
    assert air["status"] == "running" and air["records"][-1]["runs"] == [{"time_s": 3.5, "test_acc": 0.94}]
    summary = (out / "summary.md").read_text()
    assert "bench/gpu_session.sh --rehearse" in summary and "airbench: cut short" in summary
    assert "0/1 runs" not in summary and "1/1 runs >= 94%" in summary
    assert len(list(out.iterdir())) <= 8


def test_the_cuda_test_step_fails_when_no_cuda_test_ran() -> None:
    from bench.gpu_checks import pytest_counts, tests_verdict

    assert pytest_counts("3 passed, 2 skipped, 900 deselected in 12.0s") == {"passed": 3, "skipped": 2,
                                                                             "deselected": 900}
    assert tests_verdict({"passed": 9}, rehearse=False) == (True, "all 9 CUDA tests passed")
    # On a GPU machine: skipped CUDA tests are not proven, none selected proves nothing.
    assert not tests_verdict({"skipped": 9}, rehearse=False)[0]
    assert not tests_verdict({"passed": 8, "skipped": 1}, rehearse=False)[0]
    assert not tests_verdict({"passed": 8, "failed": 1}, rehearse=False)[0]
    assert not tests_verdict({}, rehearse=False)[0] and not tests_verdict({"deselected": 900}, rehearse=True)[0]
    assert tests_verdict({"skipped": 9}, rehearse=True)[0]  # the rehearsal on a CPU


def test_inductor_check_names_what_the_gpu_machine_lacks(monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from bench import gpu_checks

    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")  # no cc, gcc or clang
    assert gpu_checks.check_inductor(rehearse=False) == 1
    err = capsys.readouterr().err
    assert "inductor cannot compile on this machine" in err and "no C compiler" in err and "build-essential" in err
    assert gpu_checks.check_inductor(rehearse=True) == 0  # a rehearsal reports it and goes on
    assert "no C compiler" in capsys.readouterr().out
