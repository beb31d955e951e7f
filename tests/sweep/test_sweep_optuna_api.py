"""The sweep on Optuna's public API: no private names, our own heartbeat, the grid's order under ask/tell."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import optuna
import pytest

import trainpipe
from trainpipe.sweep import study as st
from trainpipe.sweep.spec import parse_spec
from trainpipe.sweep.worker import TrialLink

# What the sweep once reached into, besides what `optuna_private_names` finds: RDBStorage's
# signature sniffed to find a renamed argument.
SNIFFED = re.compile(r"inspect\.signature\(optuna")


def optuna_private_names(tmp_path: Path) -> set[str]:
    """Every private attribute (`_name`) of the Optuna objects a sweep meets: studies, trials,
    storages, samplers, pruners, their classes and the classes they derive from."""
    rdb = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'o.db'}")
    journal = optuna.storages.JournalStorage(st.journal_file(tmp_path / "o.journal"))
    study = optuna.create_study(storage=rdb, sampler=optuna.samplers.TPESampler(constant_liar=True))
    trial = study.ask()
    trial.suggest_float("x", 0, 1)
    objects = [rdb, journal, study, trial, study.get_trials()[0], study.sampler, study.pruner,
               optuna.samplers.RandomSampler(), optuna.samplers.GridSampler({"x": [0.0]}),
               optuna.pruners.HyperbandPruner(), optuna.pruners.NopPruner()]
    names = set()
    for obj in objects:
        for cls in type(obj).__mro__:
            names |= set(vars(cls))
        names |= set(getattr(obj, "__dict__", {}))
        for inner in getattr(obj, "__dict__", {}).values():  # e.g. TPE's inner random sampler, its _rng
            names |= set(getattr(inner, "__dict__", {}))
    return {n for n in names if n.startswith("_") and not n.startswith("__")}


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_the_sweep_code_uses_no_private_name_of_optuna(tmp_path: Path) -> None:
    private = optuna_private_names(tmp_path)
    assert {"_storage", "_study_id", "_trial_id", "_rng"} <= private  # what it finds: what the sweep once used
    pattern = re.compile(r"\.(" + "|".join(sorted(map(re.escape, private))) + r")\b")
    src = Path(trainpipe.__file__).parent
    hits = [f"{p.relative_to(src)}:{i}: {line.strip()}" for p in sorted(src.rglob("*.py"))
            for i, line in enumerate(p.read_text().splitlines(), 1)
            if pattern.search(line) or SNIFFED.search(line)]
    assert hits == []


def test_the_grid_keeps_file_order_under_ask_and_tell_and_never_stops_the_study(tmp_path: Path) -> None:
    spec = parse_spec({"method": "grid", "metric": {"name": "val/acc", "goal": "maximize"},
                       "parameters": {"optim.lr": {"values": [0.1, 0.2]}, "model.width": {"values": [8, 16]}}})
    study = optuna.create_study(storage=st.make_storage(f"sqlite:///{tmp_path / 'o.db'}"),
                                sampler=spec.search().sampler(), direction="maximize")
    seen = []
    for _ in range(4):
        t = study.ask()
        seen.append((t.suggest_categorical("optim.lr", [0.1, 0.2]), t.suggest_categorical("model.width", [8, 16])))
        study.tell(t, 1.0)  # the last one exhausts the grid: Study.stop would raise outside optimize
    assert seen == [(0.1, 8), (0.1, 16), (0.2, 8), (0.2, 16)]


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_the_heartbeat_beats_on_after_a_failed_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    study = optuna.create_study(storage=st.make_storage(f"sqlite:///{tmp_path / 'o.db'}"))
    trial = study.ask()
    calls, wrote = [], threading.Event()
    real = trial.set_user_attr

    def flaky(key: str, value: object) -> None:
        calls.append(key)
        if len(calls) == 1:
            raise RuntimeError("the database went away for a moment")
        real(key, value)
        wrote.set()

    monkeypatch.setattr(trial, "set_user_attr", flaky)
    beat = TrialLink(trial, interval=0.02)
    beat.start()
    try:
        assert wrote.wait(30), "no heartbeat was written after the failed one"
        assert beat.is_alive()
    finally:
        beat.close()
    assert "heartbeat" in study.get_trials()[0].user_attrs and not beat.is_alive()


def test_a_silent_trial_is_dead_only_after_the_grace_period_of_this_process_watch() -> None:
    watch = st.Liveness()
    t = optuna.trial.create_trial(state=optuna.trial.TrialState.RUNNING, user_attrs={"heartbeat": "12:00:00"})
    assert watch.silent_for(t, now=100.0) == 0.0
    assert watch.silent_for(t, now=150.0) == 50.0
    beat = optuna.trial.create_trial(state=optuna.trial.TrialState.RUNNING, user_attrs={"heartbeat": "12:00:30"})
    assert watch.silent_for(beat, now=160.0) == 0.0  # it beat: the watch starts again
    watch.forget()  # this process lost the database: what it saw before says nothing
    assert watch.silent_for(beat, now=400.0) == 0.0


def test_a_trial_racing_an_earlier_one_for_its_grid_point_gives_way(tmp_path: Path) -> None:
    # Two workers sample at the same moment and both take the first point; the earlier trial
    # has stored only its first value when the later one checks. The later one must wait for
    # it and give way, not run the point a second time.
    from trainpipe.sweep.worker import Objective, WorkerConfig

    spec = parse_spec({"method": "grid", "metric": {"name": "val/acc", "goal": "maximize"},
                       "parameters": {"optim.lr": {"values": [0.1, 0.2]}, "model.width": {"values": [8, 16]}}})
    storage = st.make_storage(f"sqlite:///{tmp_path / 'o.db'}")
    study = optuna.create_study(storage=storage, study_name="s", sampler=spec.search().sampler(),
                                direction="maximize")
    for _ in range(2):  # two workers that still chose one point (the sampler spreads them out where it can)
        study.enqueue_trial({"optim.lr": 0.1, "model.width": 8})
    first, second = study.ask(), study.ask()
    first.suggest_categorical("optim.lr", [0.1, 0.2])  # the earlier trial is still writing its values
    second.suggest_categorical("optim.lr", [0.1, 0.2])
    second.suggest_categorical("model.width", [8, 16])
    wc = WorkerConfig(spec=spec, sweep_dir=str(tmp_path), storage_url="", study_name="s", total=4, epochs=1)
    finish = threading.Timer(0.3, lambda: first.suggest_categorical("model.width", [8, 16]))
    finish.start()
    reason = Objective(wc, study, distinct_points=True).discard_reason(second)
    finish.join()
    assert (first.params, second.params) == ({"optim.lr": 0.1, "model.width": 8},) * 2
    assert reason == "same point as trial 0000"


def test_workers_asking_at_the_same_moment_take_different_grid_points(tmp_path: Path) -> None:
    spec = parse_spec({"method": "grid", "metric": {"name": "val/acc", "goal": "maximize"},
                       "parameters": {"optim.lr": {"values": [0.1, 0.2]}, "model.width": {"values": [8, 16]}}})
    study = optuna.create_study(storage=st.make_storage(f"sqlite:///{tmp_path / 'o.db'}"),
                                sampler=spec.search().sampler(), direction="maximize")
    first, second = study.ask(), study.ask()  # both asked before either sampled a value
    second.suggest_categorical("optim.lr", [0.1, 0.2])
    first.suggest_categorical("optim.lr", [0.1, 0.2])
    assert [second.suggest_categorical("model.width", [8, 16]), first.suggest_categorical("model.width", [8, 16])] \
        == [16, 8]
    assert (first.params, second.params) == ({"optim.lr": 0.1, "model.width": 8}, {"optim.lr": 0.1, "model.width": 16})
