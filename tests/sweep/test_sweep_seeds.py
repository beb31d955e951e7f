"""Seeded grids: configurations as mean ± std over seeds, labels for list values, the test protocol."""

from __future__ import annotations

import json
import re
import shutil
import statistics
from pathlib import Path

import pytest
import yaml

from trainpipe import config as config_mod
from trainpipe.sweep import open_sweep, run_sweep

from sweep_kit import ONE_EPOCH, read_csv, sweep_file  # noqa: E402

AUGMENT = {"values": [[], ["hflip", {"name": "random_crop", "padding": 2}]]}
LABELS = {"none": [], "hflip+random_crop(padding=2)": ["hflip", {"name": "random_crop", "padding": 2}]}


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2 (augmentation sets) x 2 (seeds) grid of one-epoch digits trials."""
    root = tmp_path_factory.mktemp("seeded")
    s = sweep_file(root, {"data.augment": AUGMENT, "seed": {"values": [0, 1]}}, fixed=ONE_EPOCH)
    run_sweep(s, root / "sw")
    return root / "sw"


def test_optuna_stores_labels_not_indices(seeded: Path) -> None:
    _, study = open_sweep(seeded)
    assert {t.params["data.augment"] for t in study.trials} == set(LABELS)
    assert set(study.trials[0].distributions["data.augment"].choices) == set(LABELS)
    assert study.best_params["data.augment"] in LABELS  # what load_study().best_params shows
    for t in study.trials:  # each label stands for the value its trial ran with
        cfg = config_mod.load(Path(t.user_attrs["run_dir"]) / "config.yaml")
        assert cfg.data.augment == config_mod.load(None, {"data.augment": LABELS[t.params["data.augment"]]}).data.augment


def test_results_rank_configurations_by_their_mean_over_seeds(seeded: Path) -> None:
    rows = read_csv(seeded / "results.csv")
    assert len(rows) == 4 and {r["data.augment"] for r in rows} == set(LABELS)  # labels, not JSON
    by_config: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        by_config.setdefault(r["config"], []).append(r)
    assert sorted(by_config) == ["#1", "#2"]
    means = {}
    for name, rs in by_config.items():
        assert len({r["data.augment"] for r in rs}) == 1 and sorted(r["seed"] for r in rs) == ["0", "1"]
        values = [float(r["best val/acc"]) for r in rs]
        means[name] = statistics.fmean(values)
        for r in rs:
            assert float(r["mean val/acc"]) == pytest.approx(means[name])
            assert float(r["std val/acc"]) == pytest.approx(statistics.stdev(values))
            assert r["n"] == "2"
    assert means["#1"] >= means["#2"]
    assert [r["config"] for r in rows] == ["#1", "#1", "#2", "#2"]  # grouped, best configuration first

    md = (seeded / "results.md").read_text()
    top = by_config["#1"]
    line = next(l for l in md.splitlines() if l.startswith("| #1 |"))
    assert f"| {top[0]['data.augment']} |" in line and "(n=2)" in line and " ± " in line
    assert "[" not in line and "{" not in line

    best = yaml.safe_load((seeded / "best.yaml").read_text())
    first = min(top, key=lambda r: r["trial"])
    assert best == config_mod.load(seeded / "trials" / first["trial"] / "config.yaml").to_dict()


def test_test_best_evaluates_every_seed_of_the_best_configuration_only(seeded: Path) -> None:
    rows = read_csv(seeded / "results.csv")
    for r in rows:
        summary = json.loads((seeded / "trials" / r["trial"] / "summary.json").read_text())
        if r["config"] == "#1":
            assert float(r["test/acc"]) == pytest.approx(summary["test/acc"])
        else:
            assert r["test/acc"] == "" and "test/acc" not in summary
    assert "Test split: the best configuration only" in (seeded / "results.md").read_text()


@pytest.mark.parametrize("mode", ["all", "none"])
def test_test_all_and_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    monkeypatch.chdir(tmp_path)
    run_sweep(sweep_file(tmp_path, {"optim.lr": {"values": [0.05, 0.2]}}, fixed=ONE_EPOCH, test=mode))
    for r in read_csv(tmp_path / "sweeps" / "s" / "results.csv"):
        summary = json.loads((Path(r["run_dir"]) / "summary.json").read_text())
        assert ("test/acc" in summary) == (mode == "all")
        assert (r["test/acc"] != "") == (mode == "all")


# ------------------------------------------------------------------------ report
def section(md: str, title: str) -> str:
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", md, flags=re.S | re.M)
    assert m, f"no section {title!r} in:\n{md}"
    return m.group(1)


def test_report_of_a_seeded_grid(seeded: Path, tmp_path: Path) -> None:
    from trainpipe.report import report

    copy = tmp_path / "sw"
    shutil.copytree(seeded, copy)
    rows = read_csv(copy / "results.csv")
    # An interrupted trial: its directory stays, its re-queued copy ran under another number.
    gone = next(r for r in rows if r["data.augment"] != "none")
    shutil.copytree(copy / "trials" / gone["trial"], copy / "trials" / "0099")
    summary = json.loads((copy / "trials" / "0099" / "summary.json").read_text())
    (copy / "trials" / "0099" / "summary.json").write_text(json.dumps({**summary, "status": "interrupted"}))

    md = report([copy], evaluate=False).read_text()
    configs = section(md, "Configurations (mean ± std over seeds)")
    for name in ("#1", "#2"):
        rs = [r for r in rows if r["config"] == name]
        values = [float(r["best val/acc"]) for r in rs]
        mean, sd = 100 * statistics.fmean(values), 100 * statistics.stdev(values)
        assert f"| {name} | {rs[0]['data.augment']} | {mean:.2f} ± {sd:.2f}% | 2 |" in configs, configs
    results = section(md, "Results")
    assert "[" not in results and "{" not in results  # labels, not JSON
    line = next(l for l in results.splitlines() if l.startswith("| 0099 |"))
    assert line.startswith(f"| 0099 | interrupted | {gone['data.augment']} | {gone['seed']} |"), line
    assert "Test split**: evaluated once, after the sweep, for the best configuration only" in md
    assert "](report_files/configuration_curves.png)" in section(md, "Loss, accuracy and learning rate per configuration")
    # Two configurations: too few for importance to mean anything, and the report says so.
    assert "Not computed: importance needs at least 4 completed configurations" in section(md, "Parameter importance")
