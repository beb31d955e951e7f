"""trainpipe in a real Jupyter kernel (nbclient + ipykernel + ipywidgets, as on Colab and Kaggle):
what a cell shows and keeps, an interrupted cell, the Python API's objects, no leftover state.

Each test starts one kernel from this environment and runs its cells in it, the way a
notebook would; the saved outputs are what a user sees (and what a saved notebook keeps).
"""

from __future__ import annotations

import os
import random
import re
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("ipywidgets")  # rich's live display in Jupyter takes this path when it is installed

REPO = Path(__file__).resolve().parents[2]
# 3 epochs: the interrupt test stops a run after its first epoch, with two epochs to spare.
RUN = ["train.epochs=3", "model.width=8", "train.deterministic=true", "train.device=cpu", "tracking.plots=false"]
ANSI = re.compile(r"\x1b\[[0-9;]*m")


class Kernel:
    """One notebook executed cell by cell in one kernel; `run` returns the cell's outputs."""

    def __init__(self, client: Any, workdir: Path) -> None:
        self.client, self.workdir = client, workdir

    def run(self, source: str) -> list[dict[str, Any]]:
        nb = self.client.nb
        cell = nbformat.v4.new_code_cell(source)
        nb.cells.append(cell)
        self.client.execute_cell(cell, len(nb.cells) - 1)
        return cell.outputs

    def interrupt_when(self, ready: Any) -> threading.Thread:
        """Send the kernel an interrupt (the notebook's stop button) once `ready()` holds."""
        from jupyter_core.utils import run_sync

        def watch() -> None:
            deadline = time.monotonic() + 120
            while not ready() and time.monotonic() < deadline:
                time.sleep(0.01)
            run_sync(self.client.km.interrupt_kernel)()

        t = threading.Thread(target=watch, daemon=True)
        t.start()
        return t


@pytest.fixture
def kernel(tmp_path: Path) -> Iterator[Kernel]:
    nb = nbformat.v4.new_notebook()
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", allow_errors=True,
                                     resources={"metadata": {"path": str(tmp_path)}})
    # The kernel runs this checkout, on one thread, as a notebook would: no CI variable.
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    with client.setup_kernel(env=env):
        k = Kernel(client, tmp_path)
        k.run("import trainpipe, torch; torch.set_num_threads(1)")
        yield k


def text(outputs: list[dict[str, Any]]) -> str:
    """Everything a cell shows as text: streams, displays' text/plain, results, errors."""
    parts = []
    for o in outputs:
        if o["output_type"] == "stream":
            parts.append(o["text"])
        elif o["output_type"] in ("display_data", "execute_result"):
            parts.append(o["data"].get("text/plain", ""))
        elif o["output_type"] == "error":
            parts.append("\n".join(o["traceback"]))
    return ANSI.sub("", "\n".join(parts))


def test_a_run_in_a_notebook_keeps_its_lines_leaves_nothing_behind_and_reports_errors(kernel: Kernel) -> None:
    out = kernel.run("import random\nrandom.seed(123)\n"
                     f"r = trainpipe.train(None, {RUN!r}, output='runs/a')")
    shown = text(out)
    assert not [o for o in out if o["output_type"] == "error"], shown
    # The start line, every epoch's line and the final table stay in the cell's saved output.
    assert re.search(r"quickstart: digits \(\d+ train / \d+ val / \d+ test", shown), shown
    for epoch in (1, 2, 3):
        assert f"epoch {epoch}/3  train/loss" in shown, shown
    assert "completed" in shown and "run directory: runs/a" in shown
    # The Python API's objects: a short repr, the history as a table, the curves as an image.
    repr_out = kernel.run("r")
    r_text = text(repr_out)
    assert r_text.startswith("RunResult(status='completed', best val/acc=") and "runs/a" in r_text
    assert len(r_text) < 300 and "Conv2d" not in r_text
    history = kernel.run("r.history")
    assert "text/html" in history[0]["data"] and "val/acc" in history[0]["data"]["text/html"]
    assert "image/png" in kernel.run("r.plot()")[0]["data"]
    # The global generators are where the user left them: the draw after the run is the
    # draw the seed gives without a run in between.
    random.seed(123)
    expected = random.random()
    after = kernel.run("print(repr(random.random()))")
    assert text(after).strip() == repr(expected)
    # An in-process sweep keeps every trial's lines; its result gives its tables.
    (kernel.workdir / "s.yaml").write_text(yaml.safe_dump({
        "method": "grid", "metric": {"name": "val/acc", "goal": "maximize"},
        "parameters": {"optim.lr": {"values": [0.05, 0.1]}},
        "fixed": {"train.epochs": 1, "model.width": 8, "tracking.plots": False, "train.device": "cpu"}}))
    shown = text(kernel.run("s = trainpipe.sweep('s.yaml')"))
    assert "trial 0000 completed" in shown and "trial 0001 completed" in shown, shown
    assert shown.count("epoch 1/1  train/loss") == 2 and shown.count("run directory:") == 2
    assert text(kernel.run("s")).startswith("SweepOutcome(2 completed, best val/acc=")
    configurations = kernel.run("s.configurations")[0]["data"]["text/html"]
    assert "optim.lr" in configurations and "mean" in configurations
    # A config mistake shows its one-paragraph message, not a traceback; it can be caught.
    out = kernel.run("trainpipe.train(None, ['train.epochz=2'])")
    (err,) = [o for o in out if o["output_type"] == "error"]
    assert err["ename"] == "ConfigError"
    shown = text([err])
    assert "epochz" in shown and "did you mean" in shown and "Traceback" not in shown and "File " not in shown
    assert len(err["traceback"]) == 1
    caught = kernel.run("try:\n    trainpipe.train(None, ['train.epochz=2'])\n"
                        "except trainpipe.ConfigError as e:\n    print('caught', type(e).__name__)")
    assert text(caught).strip() == "caught ConfigError"


def test_an_interrupted_cell_leaves_a_resumable_run_and_a_working_kernel(kernel: Kernel) -> None:
    run_dir = kernel.workdir / "runs" / "int"
    # Mid-training: after epoch 1 is logged (and its checkpoint written or being written).
    watcher = kernel.interrupt_when(lambda: (run_dir / "metrics.jsonl").is_file()
                                    and (run_dir / "metrics.jsonl").read_text().count("\n") >= 1)
    out = kernel.run(f"r = trainpipe.train(None, {RUN!r}, output='runs/int')")
    watcher.join()
    (err,) = [o for o in out if o["output_type"] == "error"]
    assert err["ename"] == "TrainingInterrupted", text(out)
    shown = text([err])
    # A short message with the run directory and the resume call, not a traceback.
    assert "trainpipe.resume('runs/int')" in shown and "Traceback" not in shown and len(err["traceback"]) == 1
    assert "epoch 1/3  train/loss" in text(out)
    # The kernel's streams are its own again: a print is a plain stream output.
    after = kernel.run("print('still here')")
    assert after == [{"output_type": "stream", "name": "stdout", "text": "still here\n"}]
    status = kernel.run("import json; print(json.load(open('runs/int/summary.json'))['status'])")
    assert text(status).strip() == "interrupted"
    # Resuming it in Python ends where a run never interrupted ends.
    kernel.run("resumed = trainpipe.resume('runs/int', quiet=True)\n"
               f"plain = trainpipe.train(None, {RUN!r}, output='runs/plain', quiet=True)")
    same = kernel.run("keys = ('train/loss', 'val/loss', 'val/acc')\n"
                      "print(resumed.status, [[m[k] for k in keys] for m in resumed.metrics] == "
                      "[[m[k] for k in keys] for m in plain.metrics], "
                      "resumed.summary['test/acc'] == plain.summary['test/acc'], len(resumed.metrics))")
    assert text(same).strip() == "completed True True 3"


if sys.platform == "win32":  # pragma: no cover - kernels are interrupted by signals here
    pytestmark = pytest.mark.skip("SIGINT interrupts")
