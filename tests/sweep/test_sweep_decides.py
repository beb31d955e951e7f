"""A sweep that decides: per-configuration intervals and the verdict in results, report and --status."""

from __future__ import annotations

import html
import math
import statistics
from pathlib import Path

import pytest
from scipy import stats

from trainpipe.sweep import run_sweep, sweep_status
from trainpipe.sweep.verdict import decide

from sweep_kit import ONE_EPOCH, read_csv, sweep_file  # noqa: E402



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
    assert "Add `confirm: {top: 3, seeds: 5}` to the sweep file to rerun the best configurations" in md
    assert not math.isnan(float(read_csv(tmp_path / "sw" / "results.csv")[0]["best val/acc"]))


# ------------------------------------------------------------------------ budget
def test_budget_durations_parse_with_units_and_refuse_without() -> None:
    from trainpipe.errors import ConfigError
    from trainpipe.sweep.budget import fmt, parse_duration

    assert parse_duration("90m", "--budget") == 5400 and parse_duration("2h", "budget") == 7200
    assert parse_duration("1h30m", "budget") == 5400 and parse_duration("30s", "budget") == 30
    for bad in ("90", "ten minutes", "0s", True):
        with pytest.raises(ConfigError, match="expected a duration with a unit|longer than zero"):
            parse_duration(bad, "budget")
    assert (fmt(30), fmt(7080), fmt(7200), fmt(300)) == ("30s", "1h58m", "2h", "5m")


def test_a_trial_starts_only_if_its_estimate_ends_inside_the_budget() -> None:
    from trainpipe.sweep.budget import Budget

    b = Budget(total_s=60, used_before_s=30, started=0.0)
    now = 10.0  # 40 s used, 20 left
    assert b.used_s(now) == 40
    import time as time_mod

    real = time_mod.time
    try:
        time_mod.time = lambda: now  # type: ignore[assignment]
        assert b.fits(15) and b.fits(20) and not b.fits(21)
        assert b.expected(5, workers=2) == 8  # 4 rounds of 2 workers
        assert "40s of 1m used, 20s left, ~4 more trials fit" in b.progress(5)
    finally:
        time_mod.time = real  # type: ignore[assignment]


def test_unknown_budget_in_the_sweep_file_is_refused_with_exit_code_2(tmp_path: Path) -> None:
    import subprocess
    import sys

    s = sweep_file(tmp_path, {"optim.lr": {"values": [0.1]}}, fixed=ONE_EPOCH, budget="ninety")
    r = subprocess.run([sys.executable, "-m", "trainpipe", "sweep", str(s), "--output", str(tmp_path / "sw")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "budget is 'ninety'; expected a duration with a unit" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "sw" / "trials").exists()


def test_a_budget_stops_the_sweep_and_a_larger_one_goes_on(tmp_path: Path) -> None:
    from trainpipe.report import report

    # A grid far larger than any machine runs in 10 s (a one-epoch trial on digits takes at least
    # a tenth of a second even on a fast machine; 400 of them take 40 s or more).
    lrs = [round(0.0001 * (i + 1), 4) for i in range(400)]
    s = sweep_file(tmp_path, {"optim.lr": {"values": lrs}}, fixed=ONE_EPOCH, budget="10s", test="none")
    first = run_sweep(s, tmp_path / "sw")
    n1 = sum(r.state == "completed" for r in first.rows)
    assert n1 < len(lrs)
    md = (tmp_path / "sw" / "results.md").read_text()
    line = next(l for l in md.splitlines() if l.startswith("stopped: budget"))
    assert f", {n1} of {len(lrs)} trials)" in line and "of 10s used" in line
    assert line in sweep_status(tmp_path / "sw")
    if n1:  # (a loaded machine may not fit even one; the report needs a trial)
        assert "Stopped: budget (" in report([tmp_path / "sw"], evaluate=False).read_text()

    second = run_sweep(tmp_path / "sw", budget="25s")
    n2 = sum(r.state == "completed" for r in second.rows)
    assert n2 > n1  # the finished trials are kept and more run
    assert {r.number for r in first.rows} <= {r.number for r in second.rows}
    if n2 < len(lrs):
        assert "stopped: budget (" in (tmp_path / "sw" / "results.md").read_text()


# ------------------------------------------------------------------------ hand-in exports
def test_the_report_writes_a_booktabs_table_and_vector_figures(three_seeds: Path, tmp_path: Path) -> None:
    from trainpipe.report import report

    out = report([three_seeds], tmp_path / "rep", evaluate=False).parent
    table = (out / "table.tex").read_text()
    assert table.index(r"\toprule") < table.index(r"\midrule") < table.index(r"\bottomrule")
    rows = read_csv(three_seeds / "results.csv")
    for name, rs in _by_config(rows).items():
        values = [100 * float(r["best val/acc"]) for r in rs]
        low, high = stats.t.interval(0.95, 2, loc=statistics.fmean(values), scale=stats.sem(values))
        cells = [rf"optim.lr={float(rs[0]['optim.lr']):.4g}", rf"{statistics.fmean(values):.2f} $\pm$ "
                 rf"{statistics.stdev(values):.2f}", "3", f"{low:.2f} to {high:.2f}"]
        if name == "#1":  # the best in bold
            cells = [rf"\textbf{{{c}}}" for c in cells]
        assert " & ".join(cells) + r" \\" in table.replace(r"\_", "_"), table
    pngs = sorted(p.stem for p in (out / "report_files").glob("*.png"))
    assert pngs and sorted(p.stem for p in out.glob("*.svg")) == pngs
    assert sorted(p.stem for p in out.glob("*.pdf")) == pngs
    assert (out / f"{pngs[0]}.svg").read_text().lstrip().startswith(("<?xml", "<svg"))
    assert (out / f"{pngs[0]}.pdf").read_bytes().startswith(b"%PDF")


def test_latex_special_characters_are_escaped() -> None:
    from trainpipe.report.export import tex

    assert tex("data.augment=flip_crop 50% & #1 {a} ~$^\\") == \
        r"data.augment=flip\_crop 50\% \& \#1 \{a\} \textasciitilde{}\$\textasciicircum{}\textbackslash{}"


# ------------------------------------------------------------------------ reproducible samplers
@pytest.mark.parametrize("method", ["random", "bayes"])
def test_the_sweep_seed_makes_the_same_file_propose_the_same_trials(method: str) -> None:
    import optuna

    from trainpipe.sweep.space import trial_overrides
    from trainpipe.sweep.spec import parse_spec

    def proposals(seed: int | None, order: list[int]) -> dict[int, dict]:
        data = {"method": method, "metric": {"name": "val/acc", "goal": "maximize"}, "run_cap": 4,
                "parameters": {"optim.lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-1},
                               "model.width": {"values": [8, 16, 32]}}}
        spec = parse_spec(data if seed is None else {**data, "seed": seed})
        study = optuna.create_study(sampler=spec.search().sampler(), direction="maximize")
        asked = [study.ask() for _ in order]
        out = {}
        for i in order:  # the workers ask in some order: trial i's values depend on i only
            out[asked[i].number] = trial_overrides(asked[i], spec)
        return out

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    first = proposals(7, [0, 1, 2, 3])
    assert proposals(7, [3, 1, 0, 2]) == first
    assert len({repr(v) for v in first.values()}) == 4  # no two trials share a draw
    assert proposals(8, [0, 1, 2, 3]) != first
    assert proposals(None, [0, 1, 2, 3]) == proposals(0, [0, 1, 2, 3])  # the default seed is 0


def test_a_top_level_seed_that_is_no_whole_number_is_refused() -> None:
    from trainpipe.errors import ConfigError
    from trainpipe.sweep.spec import parse_spec

    with pytest.raises(ConfigError, match=r"seed is 'abc'; the top-level seed is the random and bayes samplers' seed"):
        parse_spec({"method": "random", "metric": {"name": "val/acc", "goal": "maximize"}, "seed": "abc",
                    "parameters": {"optim.lr": {"min": 0.01, "max": 0.1}}})


def test_random_over_a_finite_space_trains_each_configuration_once_and_ends(tmp_path: Path,
                                                                            capsys: pytest.CaptureFixture) -> None:
    s = sweep_file(tmp_path, {"optim.lr": {"values": [0.1, 0.05, 0.02]}}, fixed=ONE_EPOCH, method="random",
                   run_cap=10, test="none", seed=3)
    out = run_sweep(s, tmp_path / "sw")
    done = [r for r in out.rows if r.state == "completed"]
    assert sorted(r.params["optim.lr"] for r in done) == [0.02, 0.05, 0.1]  # each once, none twice
    assert len(out.rows) == 3
    assert "the search space is exhausted: each of its 3 configurations has a trial" in capsys.readouterr().out
    assert "3 of 3 trials finished" in (tmp_path / "sw" / "results.md").read_text()
