"""A sweep that decides: per-configuration intervals and the verdict in results, report and --status."""

from __future__ import annotations

import csv
import html
import math
import statistics
from pathlib import Path

import pytest
from scipy import stats

from trainpipe.sweep import run_sweep, sweep_status
from trainpipe.sweep.verdict import decide

from sweep_kit import sweep_file  # noqa: E402

ONE_EPOCH = {"train.epochs": 1, "model.width": 8, "tracking.plots": False, "data.val_split": 0.2}


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def three_seeds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two learning rates x three seeds of one-epoch digits trials."""
    root = tmp_path_factory.mktemp("decides")
    s = sweep_file(root, {"optim.lr": {"values": [0.1, 0.001]}, "seed": {"values": [0, 1, 2]}}, fixed=ONE_EPOCH)
    run_sweep(s, root / "sw")
    return root / "sw"


def _by_config(rows: list[dict[str, str]]) -> dict[str, list[dict[str, str]]]:
    out: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        out.setdefault(r["config"], []).append(r)
    return out


def test_results_csv_gives_each_configuration_its_interval_of_the_mean(three_seeds: Path) -> None:
    rows = read_csv(three_seeds / "results.csv")
    groups = _by_config(rows)
    assert sorted(groups) == ["#1", "#2"]
    for rs in groups.values():
        values = [float(r["best val/acc"]) for r in rs]
        assert len(values) == 3
        low, high = stats.t.interval(0.95, len(values) - 1, loc=statistics.fmean(values), scale=stats.sem(values))
        for r in rs:
            assert r["n"] == "3"
            assert float(r["ci95 low val/acc"]) == pytest.approx(low)
            assert float(r["ci95 high val/acc"]) == pytest.approx(high)


def _expected_verdict(rows: list[dict[str, str]]) -> str:
    groups = _by_config(rows)
    ranked = [(f"optim.lr={float(groups[k][0]['optim.lr']):.4g}", [float(r["best val/acc"]) for r in groups[k]])
              for k in ("#1", "#2")]
    v = decide(ranked, "val/acc")
    # The numbers of the sentence are scipy's Welch test on the trial values.
    a, b = ranked[0][1], ranked[1][1]
    if v.difference is not None and statistics.variance(a) + statistics.variance(b) > 0:
        assert v.difference.p == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue)
    return v.sentence


def test_the_verdict_is_on_top_of_results_md_status_and_report(three_seeds: Path) -> None:
    from trainpipe.report import report

    rows = read_csv(three_seeds / "results.csv")
    sentence = _expected_verdict(rows)
    md = (three_seeds / "results.md").read_text()
    assert f"Verdict: {sentence}" in md.split("## ")[0]  # above the tables
    assert "95% CI" in md
    assert f"Verdict: {sentence}" in sweep_status(three_seeds)

    out = report([three_seeds], evaluate=False)
    rep = out.read_text()
    assert f"**Verdict:** {sentence}" in rep.split("## ")[0]
    configs = rep.split("## Configurations (mean ± std over seeds)")[1].split("## ")[0]
    for name, rs in _by_config(rows).items():
        values = [float(r["best val/acc"]) for r in rs]
        low, high = stats.t.interval(0.95, 2, loc=statistics.fmean(values), scale=stats.sem(values))
        assert f"| 3 | {100 * low:.2f}% to {100 * high:.2f}% |" in configs, configs
    page = (out.parent / "report.html").read_text()
    assert html.escape(sentence, quote=False) in page or sentence in page


def test_single_runs_say_no_verdict_is_possible(tmp_path: Path) -> None:
    s = sweep_file(tmp_path, {"optim.lr": {"values": [0.1, 0.001]}}, fixed=ONE_EPOCH)
    run_sweep(s, tmp_path / "sw")
    md = (tmp_path / "sw" / "results.md").read_text()
    assert "Verdict: no verdict is possible: every configuration ran once (n=1)" in md
    assert not math.isnan(float(read_csv(tmp_path / "sw" / "results.csv")[0]["best val/acc"]))
