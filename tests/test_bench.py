"""The benchmark code runs on tiny sizes and produces its rows; no timing is asserted."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch
import yaml

# bench/ is a top-level folder of the repository, not part of the installed package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import Section, markers, table, write_section  # noqa: E402
from bench import gpu as bench_gpu  # noqa: E402
from bench import step as bench_step  # noqa: E402
from bench.__main__ import main as bench_main  # noqa: E402
from trainpipe.config import PACKAGED_CONFIGS, load  # noqa: E402

TINY = bench_step.Workload("mlp 64-32-10", (64,), 256, 64, ["model.name=mlp", "model.widths=[32]"])


def test_step_measures_both_loops_on_the_same_batches(tmp_path: Path) -> None:
    m = bench_step.measure(TINY, rounds=2, folder=tmp_path)
    assert m.steps == 4 and len(m.plain) == len(m.trainpipe) == 2
    assert all(t > 0 for t in m.plain + m.trainpipe) and m.ratio > 0 and m.images_per_s > 0
    text = bench_step.report([m])
    assert "mlp 64-32-10" in text and text.count("\n") == 2  # header, rule, one row


def test_step_times_a_workload_in_both_clocks_with_its_validation(tmp_path: Path) -> None:
    w = bench_step.Workload("mlp on images", (3, 8, 8), 400, 64, ["model.name=mlp", "model.widths=[16]"],
                            val_split=0.2, recipe=bench_step.MOMENTUM_CONSTANT)
    clocks = bench_step.default_clocks("cpu")
    threads = torch.get_num_threads()
    ms = bench_step.measure_clocks(w, rounds=1, folder=tmp_path, clocks=clocks)
    assert [m.clock for m in ms] == ["CPU time, 1 thread", str(bench_step.Clock(False, threads))]
    assert all(m.steps == 5 and m.ratio > 0 for m in ms)  # 320 training samples, batch 64
    assert torch.get_num_threads() == threads  # restored after the one-thread rounds
    assert "wall-clock" in bench_step.report(ms)


def test_plain_loop_trains(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (256, 3, 8, 8), dtype=torch.uint8, generator=g)
    y = (x.float().mean(dim=(1, 2, 3)) > 127.5).long()  # learnable: bright or dark
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 2))
    loop = bench_step.PlainLoop(model, x, y, (0.5,) * 3, (0.29,) * 3, batch_size=32, epochs=10, lr=0.1, seed=0,
                                val=(x[:64], y[:64]), eval_batch_size=48)
    first, _ = loop.epoch(0)
    for e in range(1, 6):
        last, acc = loop.epoch(e)
    assert last < first and acc > 0.7
    assert 0.7 < loop.evaluate() <= 1.0  # validation on the first 64 images


def test_step_section_renders_markdown() -> None:
    section = bench_step.run(quick=True, workloads=("tiny",), rounds=1)
    assert section.name == "step" and "| mlp 64-32-10" in section.markdown and "bound" in section.markdown


def test_results_replace_only_their_block(tmp_path: Path) -> None:
    start, end = markers("step")
    md = tmp_path / "B.md"
    md.write_text(f"# Title\nkeep me\n{start}\nold\n{end}\nand me\n")
    assert write_section(Section("step", table(["a", "b"], [[1, 2]])), md)
    text = md.read_text()
    assert "old" not in text and "| 1 | 2 |" in text and text.startswith("# Title\nkeep me\n") and "and me" in text
    assert not write_section(Section("sweep", "x"), md)  # no markers: nothing written
    assert md.read_text() == text


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_gpu_benchmark_refuses_without_cuda(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_main(["gpu"]) == 2
    err = capsys.readouterr().err
    assert "no CUDA device" in err and "BENCHMARKS.md" in err


def test_airbench_output_is_parsed() -> None:
    # The shape of airbench94's table: a header row, per-epoch rows, then an 'eval' row per run.
    out = "\n".join([
        "-" * 40,
        "|  run     |  epoch  |  train_loss  |  val_loss  |  train_acc  |  val_acc  |  tta_val_acc  |  total_time_seconds  |",
        "-" * 40,
        "|       0  |      0  |      1.2000  |    1.1000  |     0.6000  |   0.6500  |               |              0.5000  |",
        "|          |   eval  |      0.4000  |    0.4100  |     0.9000  |   0.9390  |       0.9412  |              3.8300  |",
        "|       1  |      0  |      1.1000  |    1.0000  |     0.6100  |   0.6600  |               |              0.5000  |",
        "|          |   eval  |      0.4000  |    0.4000  |     0.9100  |   0.9380  |       0.9398  |              3.8100  |",
        "Mean: 0.9405    Std: 0.0010",
    ])
    assert bench_gpu.parse_airbench(out) == [{"time_s": 3.83, "test_acc": 0.9412}, {"time_s": 3.81, "test_acc": 0.9398}]


def test_known_gpus_have_a_peak() -> None:
    assert bench_gpu.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert bench_gpu.peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert bench_gpu.peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert bench_gpu.peak_tflops("NVIDIA L40S") == 362.0 and bench_gpu.peak_tflops("NVIDIA L4") == 121.0
    assert bench_gpu.peak_tflops("Some Future GPU") is None


def test_data_paths_pick_the_source(tmp_path: Path) -> None:
    (tmp_path / "folder" / "train").mkdir(parents=True)
    assert "data.dataset=imagefolder" in bench_gpu.data_overrides(tmp_path / "folder", "cifar10")
    assert "data.dataset=cifar100" in bench_gpu.data_overrides(tmp_path, "cifar100")


@pytest.mark.parametrize("name", ["cifar10_speed", "cifar100_speed"])
def test_speed_presets_validate_and_say_what_is_unmeasured(name: str) -> None:
    cfg = load(name)
    header = (PACKAGED_CONFIGS / f"{name}.yaml").read_text().split("\nname:")[0]
    assert "NOT measured" in header and "python -m bench gpu" in header
    t, d = cfg.train, cfg.data
    assert t.compile and t.channels_last and t.precision == "auto" and t.tta == "flip" and t.ema is not None
    assert t.label_smoothing > 0 and d.loader == "device" and d.batch_size >= 512 and cfg.sched.name == "onecycle"
    names = [a if isinstance(a, str) else a["name"] for a in yaml.safe_load(
        (PACKAGED_CONFIGS / f"{name}.yaml").read_text())["data"]["augment"]]
    assert names == ["random_crop", "hflip"]


def test_resnet18_training_step_is_about_3_3_gflop_per_image() -> None:
    assert 3.2e9 < bench_gpu._train_flops_per_image(10) < 3.4e9


def test_speed_runs_time_and_score_each_seed(tmp_path: Path) -> None:
    ov = ["train.epochs=1", "model.width=8", "tracking.plots=false", "train.tta=flip"]
    results = bench_gpu.speed_runs("quickstart", ov, 2)
    assert [r["seed"] for r in results] == [0, 1]
    assert all(r["time_s"] > 0 and 0 <= r["test_acc"] <= 1 for r in results)
    row = bench_gpu.summarise("quickstart", results, 0.5, "digits")
    assert row[0].startswith("quickstart") and row[3].endswith("runs >= 50%")


def test_airbench_gets_the_same_data_in_its_own_format(tmp_path: Path) -> None:
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for split, n in (("train", 6), ("test", 3)):
        for cls in ("cat", "dog"):
            d = tmp_path / "data" / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                px = torch.randint(0, 256, (32, 32, 3), dtype=torch.uint8, generator=g).numpy()
                Image.fromarray(px).save(d / f"{i}.png")
    # A stand-in for airbench94.py: checks the files it would read, prints its table.
    script = tmp_path / "fake_airbench.py"
    script.write_text(
        "import torch\n"
        "tr, te = torch.load('cifar10/train.pt'), torch.load('cifar10/test.pt')\n"
        "assert tr['images'].shape == (12, 32, 32, 3) and tr['images'].dtype == torch.uint8\n"
        "assert te['images'].shape == (6, 32, 32, 3) and tr['classes'] == ['cat', 'dog']\n"
        "assert sorted(tr['labels'].tolist()) == [0] * 6 + [1] * 6\n"
        "print('|  run  |  epoch  |  tta_val_acc  |  total_time_seconds  |')\n"
        "print('|       |   eval  |       0.5000  |              1.2500  |')\n"
    )
    assert bench_gpu.airbench(script, tmp_path / "data") == [{"time_s": 1.25, "test_acc": 0.5}]


def test_profile_lists_the_ops_of_the_last_epoch_and_writes_a_trace(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from bench import profile

    trace = tmp_path / "trace.json"
    assert profile.main(["quickstart", "data.fraction=0.2", "model.width=8", "--rows", "5", "--trace", str(trace)]) == 0
    out = capsys.readouterr().out
    assert "epoch 2 of 2 profiled on cpu" in out
    assert "aten::convolution_backward" in out or "aten::mkldnn_convolution" in out
    assert json.loads(trace.read_text())["traceEvents"]


@pytest.mark.parametrize("flags,written", [([], True), (["--no-write"], False), (["--quick"], False)])
def test_a_section_refreshes_its_block_unless_told_not_to(tmp_path: Path, flags: list[str], written: bool) -> None:
    import argparse

    from bench import add_write_option, publish

    md = tmp_path / "BENCHMARKS.md"
    start, end = markers("sweep")
    md.write_text(f"# x\n{start}\nold\n{end}\n")
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    add_write_option(p)
    publish(Section("sweep", "new"), p.parse_args(flags), md)
    assert ("new" in md.read_text()) is written and ("old" in md.read_text()) is not written


def test_defaults_bench_runs_valid_commands_and_reports_its_bounds(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from bench import defaults as bench_defaults
    from trainpipe.config import load as load_config

    seen: list[bench_defaults.Variant] = []
    wall = {"trainpipe defaults": 6.0, "trainpipe hand-set": 6.0, "plain PyTorch loop": 10.0}

    def fake(v: bench_defaults.Variant, timeout: float | None = None) -> tuple[float, float]:
        seen.append(v)
        return wall.get(v.name, 1.0), 2.0

    monkeypatch.setattr(bench_defaults, "run_process", fake)
    section = bench_defaults.run(quick=True, work=tmp_path, threads=True)
    names = {v.name for v in seen}
    assert {"trainpipe defaults", "trainpipe hand-set", "plain PyTorch loop"} <= names
    assert any(v.beside and v.env.get("OMP_NUM_THREADS") == "1" for v in seen)
    for v in seen:  # every trainpipe command is a valid config with its overrides
        for cmd in [v.command, *v.beside]:
            if cmd[1:3] == ["-m", "trainpipe"]:
                args = [a for a in cmd[4:cmd.index("--output")]]
                load_config(args[0], args[1:])
    assert section.ok and "0.600 on the rounds' workload (bound 0.7: within)" in section.markdown
    assert re.search(r"\| resnet18 +\| plain PyTorch loop +\| 10\.0 \(10\.0-10\.0\)", section.markdown)
    wall["trainpipe defaults"] = 7.5  # slower than the plain loop's 0.7 and than hand-set
    assert not bench_defaults.run(quick=True, work=tmp_path, threads=False).ok
    # --also: the defaults are held to the fastest hand-set variant, whichever it is
    wall.update({"trainpipe defaults": 6.0, "trainpipe hand-set + bf16": 5.0, "trainpipe hand-set + compile": 7.0})
    seen.clear()
    section = bench_defaults.run(quick=True, work=tmp_path, threads=False, configs=False, also=["bf16", "compile"])
    hand = {v.name: v.command for v in seen if v.name.startswith("trainpipe hand-set")}
    assert "train.precision=bf16" in hand["trainpipe hand-set + bf16"]
    assert "train.compile=true" in hand["trainpipe hand-set + compile"]
    assert not section.ok and "(trainpipe hand-set + bf16), worst workload: 1.200" in section.markdown
    # --config NAME: only the packaged configs named
    assert "| quickstart" in bench_defaults.run(quick=True, work=tmp_path, threads=False).markdown
    assert "| quickstart" not in bench_defaults.run(quick=True, work=tmp_path, threads=False, only=["mnist"]).markdown


def test_defaults_bench_reports_the_runs_own_time_beside_the_process(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from bench import defaults as bench_defaults

    own = {"trainpipe defaults": 2.0, "trainpipe hand-set": 2.5}

    def fake(v: bench_defaults.Variant, timeout: float | None = None) -> tuple[float, float]:
        if v.name in own:  # what the run writes at its end
            out = Path(v.command[v.command.index("--output") + 1])
            out.mkdir(parents=True, exist_ok=True)
            (out / "summary.json").write_text(json.dumps({"wall_time_s": own[v.name]}))
        return 5.0, 5.0

    monkeypatch.setattr(bench_defaults, "run_process", fake)
    md = bench_defaults.run(quick=True, work=tmp_path, threads=False, configs=False).markdown
    assert re.search(r"\| trainpipe defaults +\| 5\.0 \(5\.0-5\.0\) +\| 5\.0 +\| 1\.000 +\| 2\.0 \(1\.000\)", md)
    assert re.search(r"\| trainpipe hand-set +\| .* \| 2\.5 \(0\.800\)", md)
    assert re.search(r"\| plain PyTorch loop +\| .* \| - +\|", md)  # not a trainpipe run


def test_plain_cifar_loop_trains_on_an_image_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from bench import plain_cifar

    folder = bench_gpu.make_image_folder(tmp_path / "images", train=4, test=2)
    monkeypatch.setattr(sys, "argv", ["plain_cifar", "--data", str(folder), "--batch-size", "8", "--workers", "0",
                                      "--device", "cpu"])
    plain_cifar.main()
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["steps"] == 5 and 0 <= out["test_acc"] <= 1 and out["seconds"] > 0
