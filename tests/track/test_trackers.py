"""Trackers: metrics.jsonl, curves.png, TensorBoard read back with its own reader, W&B offline; the console."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import trainpipe
from trainpipe.run.console import ConsoleReport, ProgressBar
from trainpipe.run.resume import resume
from trainpipe.run.rundir import read_jsonl, read_metrics
from trainpipe.track import draw_curves
from trainpipe.track.plots import curve_points

TINY = ["model.width=8", "train.device=cpu"]


def test_curves_png_is_a_valid_image_of_the_run(tmp_path: Path) -> None:
    r = trainpipe.train(None, TINY + ["train.epochs=2"], output=tmp_path, quiet=True)
    png = tmp_path / "curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(png) as im:
        im.verify()
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 1000 and im.size[1] > 300
    assert len(read_metrics(tmp_path)) == len(r.metrics) == 2


def test_curves_skip_non_finite_values(tmp_path: Path) -> None:
    history = [{"epoch": 1, "train/loss": 2.0, "lr": 0.1}, {"epoch": 2, "train/loss": float("nan"), "lr": 0.05},
               {"epoch": 3, "train/loss": float("inf"), "lr": 0.01}, {"epoch": 4, "lr": 0.001}]
    assert curve_points(history, "train/loss") == [(1, 2.0)]
    assert curve_points(history, "lr") == [(1, 0.1), (2, 0.05), (3, 0.01), (4, 0.001)]
    with Image.open(draw_curves(history, tmp_path / "c.png")) as im:
        assert im.format == "PNG"


def test_trackers_chosen_by_name(tmp_path: Path) -> None:
    trainpipe.train(None, TINY + ["train.epochs=1", "tracking.trackers=[tensorboard]", "tracking.plots=false"],
                    output=tmp_path, quiet=True)
    assert list((tmp_path / "tb").glob("events.out.tfevents.*")) and (tmp_path / "metrics.jsonl").is_file()
    assert not (tmp_path / "curves.png").exists()


def test_unknown_tracker_name_is_refused_with_the_choices() -> None:
    from trainpipe.errors import ConfigError

    with pytest.raises(ConfigError, match=r"tracking\.trackers\[1\]: unknown tracker 'tensorbord'; "
                                          r"did you mean tensorboard\?.*jsonl, plots, tensorboard, wandb"):
        trainpipe.load_config(None, ["tracking.trackers=[plots, tensorbord]"])


def test_old_switches_and_the_list_name_the_same_trackers() -> None:
    old = trainpipe.load_config(None, ["tracking.tensorboard=true", "tracking.wandb={mode: offline}"])
    new = trainpipe.load_config(None, ["tracking.trackers=[tensorboard, wandb]"])
    assert old.tracking.enabled() == ["jsonl", "tensorboard", "wandb", "plots"]
    assert new.tracking.enabled() == ["jsonl", "tensorboard", "wandb", "plots"]


def test_no_curves_when_plots_are_off(tmp_path: Path) -> None:
    trainpipe.train(None, TINY + ["train.epochs=1", "tracking.plots=false"], output=tmp_path, quiet=True)
    assert not (tmp_path / "curves.png").exists()


def test_metrics_reader_skips_a_line_cut_by_a_crash(tmp_path: Path) -> None:
    p = tmp_path / "metrics.jsonl"
    p.write_text('{"epoch": 1, "train/loss": 1.0}\n{"epoch": 2, "train/lo')
    assert read_jsonl(p) == [{"epoch": 1, "train/loss": 1.0}]


def test_tensorboard_scalars_and_hparams_read_back(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    r = trainpipe.train(None, TINY + ["train.epochs=2", "tracking.tensorboard=true", "tracking.plots=false",
                                      "optim.lr=0.07"], output=tmp_path, quiet=True)
    ea = EventAccumulator(str(tmp_path / "tb"))
    ea.Reload()
    tags = set(ea.Tags()["scalars"])
    assert {"train/loss", "train/acc", "val/loss", "val/acc", "val/top5", "lr", "epoch_time_s", "images_per_s",
            "test/acc", "test/loss"} <= tags
    for key in ("train/loss", "val/acc", "lr"):
        events = ea.Scalars(key)
        assert [e.step for e in events] == [1, 2]
        assert [e.value for e in events] == pytest.approx([m[key] for m in r.metrics], rel=1e-6)
    assert ea.Scalars("test/acc")[-1].value == pytest.approx(r.summary["test/acc"], rel=1e-6)
    content = ea.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    assert start.session_start_info.hparams["optim.lr"].number_value == pytest.approx(0.07)
    assert start.session_start_info.hparams["model.name"].string_value == "cnn_small"
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert "val/acc" in {m.name.tag for m in experiment.metric_infos}


def test_wandb_offline_run_holds_the_config_and_resume_continues_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    (tmp_path / "wb").mkdir()
    run_dir = tmp_path / "run"
    ov = TINY + ["train.epochs=1", "tracking.plots=false", "tracking.wandb={mode: offline, project: tp-test, "
                                                           "tags: [digits]}"]
    plain = trainpipe.train(None, TINY + ["train.epochs=1", "tracking.plots=false"], output=tmp_path / "plain",
                            quiet=True)
    r = trainpipe.train(None, ov, output=run_dir, quiet=True)
    run_id = (run_dir / "wandb_id.txt").read_text().strip()
    runs = sorted((tmp_path / "wb" / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(runs) == 1
    # Offline, W&B keeps everything (config, metrics) in the run's .wandb log until `wandb sync`;
    # config values are stored there as compact JSON, one per top-level section.
    log = b"".join(p.read_bytes() for p in runs[0].glob("*.wandb"))
    cfg = r.config.to_dict()
    for section in ("train", "model", "optim"):
        assert json.dumps(cfg[section], separators=(",", ":")).encode() in log, section
    assert b'"quickstart"' in log and b"digits" in log and b"images_per_s" in log  # config, tags, metrics
    # W&B's own random draws do not leak into the training's randomness
    assert r.metrics[0]["train/loss"] == plain.metrics[0]["train/loss"]

    resume(run_dir, ["train.epochs=2"], quiet=True)
    assert (run_dir / "wandb_id.txt").read_text().strip() == run_id
    assert len(list((tmp_path / "wb" / "wandb").glob(f"offline-run-*-{run_id}"))) == 2  # same id, continued


def test_progress_bar_only_on_an_interactive_console(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cfg = trainpipe.load_config(None, TINY)
    data = type("D", (), {"train": type("L", (), {"batch_size": 64})()})()
    monkeypatch.setenv("CI", "1")
    assert ConsoleReport(quiet=False).progress(cfg, data) is None
    monkeypatch.delenv("CI")
    assert ConsoleReport(quiet=False).progress(cfg, data) is None  # pytest's stdout is not a TTY
    forced = trainpipe.load_config(None, TINY + ["tracking.progress=bar"])
    assert isinstance(ConsoleReport(quiet=False).progress(forced, data), ProgressBar)
    assert ConsoleReport(quiet=True).progress(forced, data) is None


def test_epoch_lines_and_a_progress_bar_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    r = trainpipe.train(None, TINY + ["train.epochs=2", "tracking.plots=false", "tracking.progress=bar",
                                      "train.log_every=3"], output=tmp_path)
    out = capsys.readouterr().out
    assert r.status == "completed"
    assert "epoch 1/2" in out and "epoch 2/2" in out and "img/s" in out and "val/acc" in out


def test_progress_bar_draws_from_the_loop_without_a_refresh_thread() -> None:
    import threading

    bar = ProgressBar(2, lambda: 8)
    threads = threading.active_count()
    bar.start_epoch(0, 4)
    assert threading.active_count() == threads  # nothing that takes the GIL from the training loop
    bar.update(2, torch.tensor(1.0), torch.tensor(1), 2)
    task = bar._progress.tasks[0]
    assert task.completed == 2 and "loss 0.5000  acc 0.5000" in task.fields["stats"]
    bar.end_epoch()
    assert threading.active_count() == threads


def test_quiet_prints_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trainpipe.train(None, TINY + ["train.epochs=1", "tracking.plots=false"], output=tmp_path, quiet=True)
    assert capsys.readouterr().out == ""


def test_summary_is_written_even_when_the_run_crashes(tmp_path: Path) -> None:
    from trainpipe.loop.callbacks import Callback

    class Boom(Callback):
        def on_epoch_end(self, trainer: object) -> None:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        trainpipe.train(None, TINY + ["train.epochs=2"], output=tmp_path, quiet=True, callbacks=[Boom()])
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["status"] == "failed" and "boom" in s["error"]
    assert (tmp_path / "curves.png").is_file()  # trackers close in a finally
    assert os.path.getsize(tmp_path / "metrics.jsonl") > 0 and torch.load(
        tmp_path / "checkpoints" / "last.pt", weights_only=True)["state"]["epoch"] == 0


@pytest.mark.parametrize("tracker,package", [("tensorboard", "tensorboard"), ("wandb", "wandb")])
def test_a_tracker_whose_library_is_missing_says_how_to_install_it(tracker: str, package: str, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from trainpipe.errors import ConfigError
    from trainpipe.registry import TRACKERS

    monkeypatch.setitem(sys.modules, package, None)  # what `import package` finds when it is not installed
    cfg = trainpipe.load_config(None, [f"tracking.trackers=[{tracker}]"])
    with pytest.raises(ConfigError) as e:
        TRACKERS.build(tracker, tmp_path, cfg)
    msg = str(e.value)
    assert f"the {tracker} tracker needs the {package} package" in msg and f"pip install {package}" in msg
    assert "tracking.trackers" in msg
