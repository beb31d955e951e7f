"""Checks of bench/gpu_session.sh that prove, on the first GPU it runs on, what the CPU cannot:

    python -m bench.gpu_checks tests OUT_DIR [--rehearse]   every CUDA test of the tree (`-m cuda`)
    python -m bench.gpu_checks inductor [--rehearse]        can torch.compile's inductor build here?

and, inside the smoke part (`resume_checks`), the runs a GPU must survive: a rollback after a
divergence, a resume on fewer GPUs than saved the checkpoint, an fp16 resume of a bf16 run,
and two deterministic runs that must end with identical weights.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------ CUDA tests
def tests_verdict(counts: dict[str, int], rehearse: bool) -> tuple[bool, str]:
    """Whether the CUDA-test step is ok, and why, from pytest's counts. On a GPU every CUDA
    test must run and pass (one skipped there is one not proven); in a rehearsal on the CPU
    they are all skipped, and the step checks that the selection is not empty."""
    passed, skipped = counts.get("passed", 0), counts.get("skipped", 0)
    failed = counts.get("failed", 0) + counts.get("error", 0) + counts.get("errors", 0)
    selected = passed + skipped + failed
    if failed:
        return False, f"{failed} of {selected} CUDA tests failed"
    if selected == 0:
        return False, "no CUDA test was selected (tests marked @pytest.mark.cuda): nothing was proven"
    if rehearse:
        return True, f"{selected} CUDA tests selected; without CUDA they are skipped (rehearsal)"
    if passed == 0:
        return False, f"none of the {selected} CUDA tests ran (all skipped): is CUDA visible to pytest?"
    if skipped:
        return False, f"{passed} CUDA tests passed but {skipped} were skipped on this GPU machine (see above)"
    return True, f"all {passed} CUDA tests passed"


def pytest_counts(last_line: str) -> dict[str, int]:
    """{"passed": 3, "skipped": 1, ...} from pytest's summary line."""
    return {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", last_line)}


def run_tests(out: Path, rehearse: bool) -> int:
    out.mkdir(parents=True, exist_ok=True)
    report = out / "cuda_tests.txt"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", "-m", "cuda", "tests"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    text = proc.stdout + proc.stderr
    lines = [line for line in text.splitlines() if line.strip()]
    ok, why = tests_verdict(pytest_counts(lines[-1] if lines else ""), rehearse)
    verdict = f"cuda tests: {'ok' if ok else 'NOT OK'}: {why}"
    report.write_text(f"$ {' '.join(cmd)}\n{text}\n{verdict}\n")
    print(text, verdict, sep="\n", flush=True)
    return 0 if ok else 1


# ------------------------------------------------------------------------- inductor
def c_compiler() -> str | None:
    """The C compiler Triton and inductor call: $CC, else the first of cc, gcc, clang on PATH."""
    cc = os.environ.get("CC")
    if cc:
        return shutil.which(cc) or cc
    return next((p for p in map(shutil.which, ("cc", "gcc", "clang")) if p), None)


def inductor_problems() -> list[str]:
    """What torch.compile's default backend lacks here, each with its fix; empty when nothing."""
    problems = []
    if c_compiler() is None:
        problems.append("no C compiler (cc, gcc or clang on PATH, or $CC): install one "
                        "(apt-get install build-essential) or point CC at it")
    include = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if not include.is_file():
        problems.append(f"no Python headers ({include} is missing; Triton builds its launcher against them): "
                        f"install python3-dev for this Python")
    try:
        import triton  # noqa: F401
    except ImportError as e:
        problems.append(f"Triton does not import ({e}): install the triton wheel that matches torch")
    return problems


def check_inductor(rehearse: bool) -> int:
    import torch

    print(f"torch {torch.__version__}, C compiler: {c_compiler() or 'none'}", flush=True)
    problems = inductor_problems()
    if problems and rehearse:
        print("rehearsal: inductor is not used on the CPU here; on the GPU machine this would fail: "
              + "; ".join(problems), flush=True)
        return 0
    if problems:
        print("inductor cannot compile on this machine, so every torch.compile run below fails: "
              + "; ".join(problems), file=sys.stderr, flush=True)
        return 1
    if rehearse:
        print("rehearsal: C compiler, Python headers and Triton found; the compile itself runs on the GPU only",
              flush=True)
        return 0
    start = time.perf_counter()
    x = torch.randn(4096, device="cuda")
    f = torch.compile(lambda t: torch.sin(t) * 2 + t.square().mean())
    try:
        same = torch.allclose(f(x), torch.sin(x) * 2 + x.square().mean(), rtol=1e-5, atol=1e-5)
    except Exception as e:  # noqa: BLE001 (what inductor says is the result)
        print(f"inductor failed to compile a small CUDA function: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(f"inductor compiled a CUDA kernel with Triton in {time.perf_counter() - start:.1f}s; "
          f"{'same values as eager' if same else 'VALUES DIFFER from eager'}", flush=True)
    return 0 if same else 1


# ------------------------------------------------------- runs a GPU must survive (smoke)
def resume_checks(plan: Any, res: Any) -> None:
    """Rows of the smoke part: rollback, resume on fewer GPUs, fp16 resume of bf16, determinism."""
    import torch

    import trainpipe
    from trainpipe.run import checkpoints as ckpt
    from trainpipe.run.resume import resume

    quick = ["model.width=8", "tracking.plots=false", *plan.device_overrides]
    if plan.rehearse:
        quick.append("data.fraction=0.3")
    work = Path(tempfile.mkdtemp(prefix="trainpipe-bench-resume-", dir=plan.work))

    def row(label: str, problems: list[str], shown: str, **record: Any) -> None:
        res.row([f"smoke: {label}", "ran", shown, ("ok" if not problems else "NOT AS ASKED: " + "; ".join(problems))],
                ok=not problems, **record)
        if problems:
            raise RuntimeError(f"{label}: " + "; ".join(problems))

    with res.step("smoke: rollback after a divergence"):
        r = trainpipe.train(None, [*quick, "train.epochs=3", "train.on_nonfinite=rollback", "optim.lr=1e6"],
                            output=work / "rollback", quiet=True)
        rollbacks = r.summary.get("rollbacks", 0)
        problems = [] if rollbacks >= 1 and r.summary.get("stop_reason") == "non_finite_loss" else [
            f"rollbacks {rollbacks}, stop reason {r.summary.get('stop_reason')!r}"]
        row("rollback after a divergence", problems, f"{rollbacks} rollbacks, then {r.status}", rollbacks=rollbacks)

    with res.step("smoke: resume on fewer GPUs than saved the run"):
        run = work / "fewer"
        trainpipe.train(None, [*quick, "train.epochs=1"], output=run, quiet=True)
        last = run / "checkpoints" / ckpt.LAST
        state = ckpt.load(last)
        present = torch.cuda.device_count() if torch.cuda.is_available() else 0
        cuda = list(state["rng"].get("cuda", [])) or [torch.get_rng_state()]
        # As if written on a node with 3 GPUs more than this one: their states cannot be restored.
        state["rng"]["cuda"] = cuda + [cuda[0].clone() for _ in range(3)]
        ckpt.save_atomic(state, last)
        r = resume(run, ["train.epochs=2"], quiet=True)
        problems = [] if r.status == "completed" and r.summary.get("epochs_run") == 2 else [f"status {r.status}"]
        row("resume on fewer GPUs than saved the run", problems,
            f"saved {len(state['rng']['cuda'])} GPU states, {present} GPUs here: {r.status}")

    with res.step("smoke: fp16 resume of a bf16 run"):
        run = work / "bf16"
        trainpipe.train(None, [*quick, "train.epochs=1", "train.precision=bf16"], output=run, quiet=True)
        r = resume(run, ["train.epochs=2", "train.precision=fp16"], quiet=True)
        scaler = ckpt.load(run / "checkpoints" / ckpt.LAST).get("scaler") or {}
        problems = [] if r.status == "completed" and scaler.get("scale") else [
            f"status {r.status}, scaler {scaler!r}"]
        row("fp16 resume of a bf16 run", problems, f"{r.status}, loss scale {float(scaler.get('scale', 0)):g}")

    with res.step("smoke: train.deterministic twice"):
        weights = []
        for i in range(2):
            out = work / f"det{i}"
            trainpipe.train(None, [*quick, "train.epochs=1", "train.deterministic=true", "model.dropout=0.1",
                                   "data.augment=[random_crop, hflip]"], output=out, quiet=True)
            weights.append(ckpt.load(out / "checkpoints" / ckpt.LAST)["model"])
        differ = [k for k in weights[0] if not torch.equal(weights[0][k], weights[1][k])]
        row("train.deterministic twice", [f"{len(differ)} tensors differ, e.g. {differ[0]}"] if differ else [],
            "bit-identical weights" if not differ else f"{len(differ)} tensors differ")
    shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.gpu_checks", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    t = sub.add_parser("tests", help="run every CUDA test (-m cuda); fail when none ran")
    t.add_argument("out", type=Path)
    t.add_argument("--rehearse", action="store_true")
    i = sub.add_parser("inductor", help="check that inductor finds a C compiler, Python headers and Triton")
    i.add_argument("--rehearse", action="store_true")
    a = ap.parse_args(argv)
    return run_tests(a.out, a.rehearse) if a.what == "tests" else check_inductor(a.rehearse)


if __name__ == "__main__":
    sys.exit(main())
