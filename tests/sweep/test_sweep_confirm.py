"""Seeds where they matter: `confirm:` screens every configuration, then reruns the best with more seeds."""

from __future__ import annotations

import signal
import statistics
import time
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from trainpipe.errors import ConfigError
from trainpipe.sweep import budget as bd
from trainpipe.sweep import confirm as cf
from trainpipe.sweep import open_sweep, run_sweep, sweep_status
from trainpipe.sweep import study as st
from trainpipe.sweep.spec import parse_spec

from sweep_kit import ONE_EPOCH, TINY, read_csv, sweep_file  # noqa: E402

LRS = [0.1, 0.02, 0.001]


def _visible(d: Path) -> list[optuna.trial.FrozenTrial]:
    _, study = open_sweep(d)
    return st.ledger(study.get_trials()).visible


def _config_seed(t: optuna.trial.FrozenTrial) -> tuple[float, int]:
    return t.params["optim.lr"], cf.confirm_seed(t) if cf.is_confirmation(t) else 0


@pytest.fixture(scope="module")
def confirmed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three learning rates screened once (seed 0), the top 2 confirmed to 3 seeds each."""
    root = tmp_path_factory.mktemp("confirm")
    s = sweep_file(root, {"optim.lr": {"values": LRS}}, fixed=ONE_EPOCH, confirm={"top": 2, "seeds": 3},
                   test="none")
    run_sweep(s, root / "sw")
    return root / "sw"


def test_confirm_runs_exactly_the_missing_seeds_of_the_top_configurations(confirmed: Path) -> None:
    visible = _visible(confirmed)
    screen = [t for t in visible if not cf.is_confirmation(t)]
    confirm = [t for t in visible if cf.is_confirmation(t)]
    assert sorted(t.params["optim.lr"] for t in screen) == sorted(LRS)
    ranked = sorted(screen, key=lambda t: (-t.value, t.number))
    top = {t.params["optim.lr"] for t in ranked[:2]}
    # Screening first, then 2 more seeds (1 and 2; the base config's seed is 0) for each of the top 2 only.
    assert max(t.number for t in screen) < min(t.number for t in confirm)
    assert sorted(_config_seed(t) for t in confirm) == sorted((lr, s) for lr in top for s in (1, 2))
    assert all(t.state == TrialState.COMPLETE for t in visible) and len(visible) == 7
    # Each confirmation trial trained with its own seed, in an ordinary trial directory.
    from trainpipe import config as config_mod

    for t in confirm:
        cfg = config_mod.load(confirmed / "trials" / f"{t.number:04d}" / "config.yaml")
        assert (cfg.seed, cfg.optim.lr) == (cf.confirm_seed(t), t.params["optim.lr"])


def test_results_rank_by_the_mean_and_mark_confirmation_trials(confirmed: Path) -> None:
    from trainpipe.report import report

    rows = read_csv(confirmed / "results.csv")
    assert {r["stage"] for r in rows} == {"screen", "confirm"}
    by_config: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        by_config.setdefault(r["config"], []).append(r)
    means = {k: statistics.fmean(float(r["best val/acc"]) for r in rs) for k, rs in by_config.items()}
    assert sorted(means, key=lambda k: -means[k]) == ["#1", "#2", "#3"]
    for k, rs in by_config.items():
        assert {r["n"] for r in rs} == {str(len(rs))} and len(rs) == (1 if k == "#3" else 3)
        assert float(rs[0]["mean val/acc"]) == pytest.approx(means[k])
    assert sorted(r["seed"] for r in rows if r["stage"] == "confirm") == ["1", "1", "2", "2"]
    assert "| stage |" in (confirmed / "results.md").read_text()
    status = sweep_status(confirmed)
    assert "| confirm |" in status and "| screen |" in status and "7 of 7 trials finished" in status
    rep = report([confirmed], evaluate=False).read_text()
    assert "| stage |" in rep and "| confirm |" in rep


def test_the_confirm_block_is_checked_with_a_clear_message() -> None:
    base = {"method": "grid", "metric": {"name": "val/acc", "goal": "maximize"},
            "parameters": {"optim.lr": {"values": [0.1, 0.01]}}}
    spec = parse_spec({**base, "confirm": {"top": 2, "seeds": 4}})
    assert (spec.confirm.top, spec.confirm.seeds) == (2, 4) and spec.grouped
    assert spec.fingerprint() == parse_spec(base).fingerprint()  # adding confirm: keeps the finished trials
    for bad, words in (({"top": 0, "seeds": 3}, "confirm.top is 0; it must be a whole number >= 1"),
                       ({"top": 2, "seeds": 1}, "confirm.seeds is 1; it must be a whole number >= 2"),
                       ({"top": 2}, "confirm.seeds is None"),
                       ({"tops": 2, "seeds": 3}, "confirm.tops is unknown; did you mean top?"),
                       (3, "confirm must be a mapping such as confirm: {top: 3, seeds: 5}")):
        with pytest.raises(ConfigError, match="confirm") as e:
            parse_spec({**base, "confirm": bad})
        assert words in str(e.value)


def _study_with(values: dict[float, list[float]]) -> optuna.Study:
    """An in-memory study with completed screening trials: {lr: [values...]}, seeds 0, 1, ... each."""
    study = optuna.create_study(direction="maximize")
    dist = CategoricalDistribution(list(values))
    for lr, vs in values.items():
        for v in vs:
            study.add_trial(optuna.trial.create_trial(params={"optim.lr": lr}, distributions={"optim.lr": dist},
                                                      value=v))
    return study


def _wc(spec, tmp_path: Path, budget: bd.Budget | None) -> SimpleNamespace:
    return SimpleNamespace(spec=spec, budget=budget, sweep_dir=str(tmp_path), total=3, say=lambda m: None)


def test_with_a_budget_screening_leaves_a_share_for_confirmation(tmp_path: Path) -> None:
    spec = parse_spec({"method": "grid", "metric": {"name": "val/acc", "goal": "maximize"},
                       "parameters": {"optim.lr": {"values": [0.1, 0.02, 0.001]}},
                       "confirm": {"top": 1, "seeds": 2}})
    study = _study_with({0.1: [0.5], 0.02: [0.9]})  # 0.001 not screened yet
    led = st.ledger(study.get_trials())
    now = time.time()
    # Well inside the screening share: screening goes on.
    early = bd.Budget(total_s=100, used_before_s=10, started=now)
    assert cf.step(_wc(spec, tmp_path, early), led, "run", [5.0]) == ("run", None)
    # The next screening trial would end past 70% of the budget: the best configuration is confirmed instead.
    late = bd.Budget(total_s=100, used_before_s=66, started=now)
    assert cf.step(_wc(spec, tmp_path, late), led, "run", [5.0]) == ("run", ({"optim.lr": 0.02}, 1))
    # Once it has its seeds, the sweep ends, stopped by its budget (the third value was never screened).
    study.add_trial(optuna.trial.create_trial(params={"optim.lr": 0.02}, value=0.8, user_attrs={cf.CONFIRM_ATTR: {"seed": 1}},
                                              distributions={"optim.lr": CategoricalDistribution([0.1, 0.02])}))
    bd.start(tmp_path, 100)
    assert cf.step(_wc(spec, tmp_path, late), st.ledger(study.get_trials()), "run", [5.0]) == ("done", None)
    assert bd.read(tmp_path)["stopped"] == "budget"


def test_seeds_go_first_to_configurations_that_cannot_be_told_apart() -> None:
    spec = parse_spec({"method": "grid", "metric": {"name": "val/acc", "goal": "maximize"},
                       "parameters": {"optim.lr": {"values": [0.1, 0.02, 0.001]},
                                      "seed": {"values": [0, 1]}},
                       "confirm": {"top": 3, "seeds": 4}})
    # 0.1 and 0.02 overlap; 0.001 is far below both: its seeds come last.
    study = optuna.create_study(direction="maximize")
    lr, sd = CategoricalDistribution([0.1, 0.02, 0.001]), CategoricalDistribution([0, 1])
    for v_lr, vs in ((0.1, [0.90, 0.92]), (0.02, [0.91, 0.89]), (0.001, [0.10, 0.11])):
        for seed, v in enumerate(vs):
            study.add_trial(optuna.trial.create_trial(params={"optim.lr": v_lr, "seed": seed},
                                                      distributions={"optim.lr": lr, "seed": sd}, value=v))
    todo = cf.needed(spec, st.ledger(study.get_trials()).visible)
    assert [(p["optim.lr"], s) for p, s in todo] == [(0.1, 2), (0.02, 2), (0.1, 3), (0.02, 3), (0.001, 2),
                                                     (0.001, 3)]


def test_single_runs_point_to_confirm() -> None:
    from trainpipe.sweep.verdict import decide

    v = decide([("a", [0.9]), ("b", [0.8])], "val/acc")
    assert v.kind == "none" and "Add `confirm: {top: 3, seeds: 5}` to the sweep file" in v.sentence


@pytest.mark.slow
def test_two_workers_and_a_kill_add_no_duplicate_confirmation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from test_sweep_workers import sweep_cmd, wait_until

    from trainpipe.run import rundir

    monkeypatch.chdir(tmp_path)
    # Two workers: both queue confirmation trials; each (configuration, seed) still trains once.
    s = sweep_file(tmp_path, {"optim.lr": {"values": [0.05, 0.2]}}, fixed=ONE_EPOCH,
                   confirm={"top": 2, "seeds": 3}, test="none", name="two")
    run_sweep(s, workers=2, devices="cpu")
    visible = _visible(tmp_path / "sweeps" / "two")
    assert sorted(_config_seed(t) for t in visible) == [(lr, sd) for lr in (0.05, 0.2) for sd in (0, 1, 2)]
    assert all(t.state == TrialState.COMPLETE for t in visible)
    assert sorted(p.name for p in (tmp_path / "sweeps" / "two" / "trials").iterdir()) == \
        sorted(f"{t.number:04d}" for t in visible)

    # A kill during the first confirmation trial, then a resume: nothing lost, nothing repeated.
    s = sweep_file(tmp_path, {"optim.lr": {"values": [0.05, 0.2]}}, fixed={**TINY, "train.epochs": 10},
                   confirm={"top": 1, "seeds": 3}, test="none", name="killed")
    d = tmp_path / "sweeps" / "killed"
    p = sweep_cmd(str(s))
    wait_until(lambda: bool(rundir.read_metrics(d / "trials" / "0002")), p)
    p.send_signal(signal.SIGKILL)
    p.communicate(timeout=60)
    assert any(cf.is_confirmation(t) and t.state == TrialState.RUNNING for t in open_sweep(d)[1].get_trials())
    out = run_sweep(d)
    visible = _visible(d)
    best = max((t for t in visible if not cf.is_confirmation(t)), key=lambda t: (t.value, -t.number))
    assert sorted(_config_seed(t) for t in visible) == sorted(
        [(0.05, 0), (0.2, 0), (best.params["optim.lr"], 1), (best.params["optim.lr"], 2)])
    assert all(r.state == "completed" for r in out.rows) and len(out.rows) == 4


def test_a_study_rebuilt_from_the_trial_directories_keeps_its_confirmation_trials(tmp_path: Path) -> None:
    s = sweep_file(tmp_path, {"optim.lr": {"values": [0.1, 0.02]}}, fixed=ONE_EPOCH, confirm={"top": 1, "seeds": 2},
                   test="none")
    d = tmp_path / "sw"
    run_sweep(s, d)
    before = {t.number: _config_seed(t) for t in _visible(d)}
    assert sum(cf.is_confirmation(t) for t in _visible(d)) == 1
    (d / "optuna.db").unlink()
    out = run_sweep(d)  # rebuilt from trials/: nothing runs again, the confirmation trial is still one
    assert {t.number: _config_seed(t) for t in _visible(d)} == before and len(out.rows) == 3
    assert sorted(p.name for p in (d / "trials").iterdir()) == ["0000", "0001", "0002"]
