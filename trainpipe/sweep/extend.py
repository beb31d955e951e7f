"""Extend a sweep instead of starting over: the changes to a sweep file that keep every finished trial valid.

Running `trainpipe sweep FILE` (or `trainpipe sweep DIR` after editing DIR/sweep.yaml) on a sweep
directory whose file has changed compares the new file with the one the sweep last accepted (kept in
study.json). Changes that keep every finished trial a valid result of the new sweep are accepted: new
values in a parameter's `values:` list (another grid value, another seed), a different `run_cap`,
`budget`, `confirm:` block, `test:` or sampler `seed:`. The finished trials are kept and only the new
points run. Any other change (method, metric, base config, `fixed`, early_terminate, a parameter's range
or a value taken away, a parameter added or removed) is refused, naming the key and why, and nothing is
written.

New values change the parameter's Optuna CategoricalDistribution, which an Optuna study refuses under the
same parameter name. So an extension that adds values moves the trials to a new study in the same storage
(`NAME.extended-K`): every trial of the old one, in number order and with its state, values, times and
attributes, is added with `Study.add_trial` under the new distributions, so that trial numbers (and the
trials/NNNN directories) stay aligned. study.json then names the new study; the old one stays in the
storage, untouched. A grid's new points are queued (`Study.enqueue_trial`) in file order, so that they
run first and no trial is spent on a point that already has one.

Each accepted extension is recorded in extensions.json in the sweep directory, and results.md lists them.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainpipe import files
from trainpipe.errors import ConfigError
from trainpipe.sweep.spec import SweepSpec, parse_spec

HISTORY = "extensions.json"
TEXT_KEY = "sweep_file_text"  # study.json: the sweep file as the sweep last accepted it


@dataclass(frozen=True)
class Change:
    key: str  # the sweep file's key: parameters.optim.lr, fixed.train.epochs, run_cap
    text: str  # what changed, in words
    why: str = ""  # why it cannot extend the sweep; "" = accepted

    @property
    def accepted(self) -> bool:
        return not self.why


def _fmt(v: Any) -> str:
    return json.dumps(v, default=str) if isinstance(v, (list, dict)) else str(v)


def _values(p: Any) -> list[tuple[str, str]]:
    return [(repr(v), lab) for v, lab in itertools.zip_longest(p.values, p.labels or (), fillvalue="")]


def param_changes(old: SweepSpec, new: SweepSpec) -> list[Change]:
    out: list[Change] = []
    before = {p.display: p for p in old.params}
    after = {p.display: p for p in new.params}
    for name in before:
        if name not in after:
            out.append(Change(f"parameters.{name}", f"parameters.{name} was removed",
                              "the finished trials ran with its values"))
    for name, p in after.items():
        key = f"parameters.{name}"
        q = before.get(name)
        if q is None:
            ran = ran_with(old, p)
            if ran is not None and p.varied:
                out.append(Change(key, f"{key} is new; the finished trials ran with {_fmt(p.values[ran])}, one of "
                                       f"its values"))
            else:
                out.append(Change(key, f"{key} is new", "the finished trials ran without it, with a value that is "
                                                        "not among its values (a values: list that holds the base "
                                                        "config's value would keep them)"))
            continue
        if q.to_dict() == p.to_dict():
            continue
        if not q.varied and p.varied:
            out.append(Change(key, f"{key} now varies", "it was a constant, which the finished trials recorded no "
                                                        "value of; start a new sweep to vary it"))
            continue
        if q.distribution == p.distribution == "categorical" and q.key == p.key:
            old_v, new_v = _values(q), _values(p)
            gone = [q.values[i] for i, v in enumerate(old_v) if v not in new_v]
            if not gone:
                added = [p.values[i] for i, v in enumerate(new_v) if v not in old_v]
                out.append(Change(key, f"{key}: added {', '.join(_fmt(v) for v in added)}"))
                continue
            out.append(Change(key, f"{key} drops {', '.join(_fmt(v) for v in gone)}",
                              "finished trials ran with it; only adding values keeps them all valid"))
            continue
        out.append(Change(key, f"{key} changed from {_fmt(q.to_dict())} to {_fmt(p.to_dict())}",
                          "the finished trials were drawn from the old one; only adding values to a values: list "
                          "keeps them all valid"))
    return out


def ran_with(old: SweepSpec, p: Any) -> int | None:
    """For a parameter new in the sweep: the index in its values of the value every finished trial ran
    with (the old sweep's config at its key), or None when that is not one of them (or not categorical)."""
    from trainpipe import config as config_mod

    if p.distribution != "categorical":
        return None
    try:
        node: Any = config_mod.load(old.base, old.constant_overrides()).to_dict()
        for part in p.key.split("."):
            node = node[part]
    except (ConfigError, KeyError, TypeError):
        return None
    for i, v in enumerate(p.values):
        if v == node and type(v) is type(node):
            return i
    return None


def filled(old: SweepSpec, new: SweepSpec) -> dict[str, Any]:
    """{Optuna name: stored choice} of each parameter new in the sweep, as the finished trials ran it."""
    before = {p.display for p in old.params}
    out = {}
    for p in new.varied:
        if p.display not in before and (i := ran_with(old, p)) is not None:
            out[p.display] = p.choices()[i]
    return out


def changes(old: SweepSpec, new: SweepSpec) -> list[Change]:
    """What differs between the sweep as accepted (`old`) and the changed file (`new`)."""
    from trainpipe.sweep.spec import _base_identity

    out: list[Change] = []
    if old.method != new.method:
        out.append(Change("method", f"method is {new.method}, was {old.method}",
                          "a different method searches differently; the finished trials came from the old one"))
    if (old.metric, old.goal) != (new.metric, new.goal):
        out.append(Change("metric", f"metric is {new.metric} ({new.goal}), was {old.metric} ({old.goal})",
                          "the finished trials were selected, checkpointed and stopped on the old metric"))
    if _base_identity(old.base) != _base_identity(new.base):
        out.append(Change("base", f"base is {new.base or 'quickstart'}, was {old.base or 'quickstart'} (or its "
                                  f"content changed)", "the finished trials trained from the old base config"))
    for k in sorted(set(old.fixed) | set(new.fixed)):
        a, b = old.fixed.get(k, "(unset)"), new.fixed.get(k, "(unset)")
        if repr(a) != repr(b):
            out.append(Change(f"fixed.{k}", f"fixed.{k} is {_fmt(b)}, was {_fmt(a)}",
                              "the finished trials ran with the old value"))
    if old.hyperband != new.hyperband:
        out.append(Change("early_terminate", "early_terminate changed",
                          "the finished trials were pruned by the old rule"))
    if old.overrides != new.overrides:
        out.append(Change("overrides", "the command-line key=value overrides changed",
                          "the finished trials ran with the old ones"))
    out += param_changes(old, new)
    for key, a, b in (("run_cap", old.run_cap, new.run_cap), ("budget", old.raw.get("budget"), new.raw.get("budget")),
                      ("confirm", old.raw.get("confirm"), new.raw.get("confirm")), ("test", old.test, new.test),
                      ("seed", old.sampler_seed, new.sampler_seed)):
        if a != b:
            out.append(Change(key, f"{key} is {_fmt(b) if b is not None else '(unset)'}, was "
                                   f"{_fmt(a) if a is not None else '(unset)'}"))
    return out


def accepted_spec(d: Path, meta: dict[str, Any], new: SweepSpec) -> SweepSpec | None:
    """The sweep file the sweep last accepted, parsed as the new one is; None when it is unknown."""
    import yaml

    text = meta.get(TEXT_KEY)
    if text is None and new.source and Path(new.source).resolve() != (d / "sweep.yaml").resolve() \
            and (d / "sweep.yaml").is_file():
        text = (d / "sweep.yaml").read_text()  # a sweep started before extensions were recorded
    if text is None:
        return None
    try:
        return parse_spec(yaml.safe_load(text), source=new.source, base=meta.get("base"), overrides=new.overrides)
    except ConfigError:
        return None


def refusal(d: Path, refused: list[Change], source: str | None) -> ConfigError:
    listed = "; ".join(f"{c.text} ({c.why})" for c in refused)
    kept = f"{d / 'sweep.yaml'} holds it" if source is None or Path(source).resolve() != \
        (d / "sweep.yaml").resolve() else f"{d / 'study.json'} keeps its text as {TEXT_KEY}"
    return ConfigError(
        f"{d} holds a sweep started from a different sweep file, and the changes cannot extend it: {listed}. A "
        f"sweep is extended only by changes that keep every finished trial valid: new values in a parameter's "
        f"values: list, a larger run_cap or --trials, a larger budget, a confirm: block. Restore the original "
        f"({kept}), or pass another --output to start a new sweep.")


def preview(spec: SweepSpec, d: Path, meta: dict[str, Any]) -> list[str]:
    """The dry run's words on a changed sweep file: what running it would extend, or why it is refused."""
    old = accepted_spec(d, meta, spec)
    if old is None:
        return [] if meta.get("fingerprint") == spec.fingerprint() else [str(refusal(d, [Change(
            "sweep", "the search changed", "the finished trials came from the old one")], spec.source))]
    found = changes(old, spec)
    refused = [c for c in found if not c.accepted]
    if refused:
        return [f"refused: {refusal(d, refused, spec.source)}"]
    return [f"extends the sweep: {'; '.join(c.text for c in found)} (the finished trials are kept)"] if found else []


def reconcile(spec: SweepSpec, d: Path, meta: dict[str, Any], url: str) -> dict[str, Any]:
    """Accept the changed sweep file as an extension of the sweep in `d` (moving its trials to a new
    study where its distributions change), or refuse it; returns study.json's new content."""
    old = accepted_spec(d, meta, spec)
    fingerprint_changed = meta.get("fingerprint") != spec.fingerprint()
    if old is None:
        if fingerprint_changed:
            raise ConfigError(f"{d} holds a sweep started from a different sweep file (method, metric, parameters, "
                              f"base or fixed changed; the original is {d / 'sweep.yaml'}). Restore it, or pass "
                              f"another --output for the new sweep.")
        return meta
    found = changes(old, spec)
    refused = [c for c in found if not c.accepted]
    if refused:
        raise refusal(d, refused, spec.source)
    if fingerprint_changed and not any(c.key.startswith("parameters.") for c in found):
        raise refusal(d, [Change("sweep", "the search changed", "the finished trials came from the old one")],
                      spec.source)
    before, meta = meta, dict(meta)
    entry: dict[str, Any] = {"when": dt.datetime.now().isoformat(timespec="seconds"),
                             "changes": [c.text for c in found]}
    if fingerprint_changed:
        new_name, kept, queued = move_trials(spec, d, meta, url, filled(old, spec))
        meta.update({"study_name": new_name, "name": meta.get("name") or meta["study_name"],
                     "fingerprint": spec.fingerprint(), "params": [p.display for p in spec.varied],
                     "keys": {p.display: p.key for p in spec.varied}})
        entry.update({"study": new_name, "kept": kept, "queued": queued})
    if spec.source:
        meta[TEXT_KEY] = Path(spec.source).read_text()
    if found:
        files.write_json(d / HISTORY, [*read_history(d), entry])
        print(f"extended:{history_lines_of([entry])[0][1:]} (recorded in {d / HISTORY})", flush=True)
    if meta != before:
        files.write_json(d / "study.json", meta)
    return meta


def read_history(d: str | Path) -> list[dict[str, Any]]:
    try:
        data = json.loads((Path(d) / HISTORY).read_text())
    except (OSError, ValueError):
        return []
    return data if isinstance(data, list) else []


def history_lines(d: str | Path) -> list[str]:
    """results.md's section on the sweep's extensions (none: [])."""
    out = history_lines_of(read_history(d))
    return ["", "## Extensions of the sweep (extensions.json)", "", *out] if out else []


def history_lines_of(entries: list[dict[str, Any]]) -> list[str]:
    out = []
    for e in entries:
        kept = f"; {e['kept']} finished trials kept" if "kept" in e else ""
        queued = f", {e['queued']} new point{'s' if e['queued'] != 1 else ''} queued" if e.get("queued") else ""
        out.append(f"- {e.get('when', '?')}: {'; '.join(e.get('changes') or []) or 'no change'}{kept}{queued}")
    return out


def move_trials(spec: SweepSpec, d: Path, meta: dict[str, Any], url: str,
                fill: dict[str, Any] | None = None) -> tuple[str, int, int]:
    """Copy every trial of the sweep's study into a new study under the new distributions (with the
    values `fill` of parameters new in the sweep, as they ran); queue a grid's new points. Returns
    (the new study's name, the finished trials kept, the points queued)."""
    import optuna
    from optuna.distributions import CategoricalDistribution
    from optuna.trial import FrozenTrial, TrialState

    from trainpipe.sweep import study as st

    storage = st.make_storage(url)
    try:
        old = optuna.load_study(study_name=meta["study_name"], storage=storage)
    except KeyError:
        raise ConfigError(f"the storage {st.redact(url)} has no study {meta['study_name']!r}; run the sweep with "
                          f"its original file first (it rebuilds the study from {d / 'trials'}), then extend it.") \
            from None
    st.reap_dead_trials(old, sweep_dir=d)
    trials = sorted(old.get_trials(deepcopy=False), key=lambda t: t.number)
    running = [t for t in trials if t.state == TrialState.RUNNING]
    if running:
        w = running[0].user_attrs.get("worker") or {}
        raise ConfigError(f"the sweep in {d} is running (trial {running[0].number:04d} on {w.get('host', '?')}); "
                          f"extend it once its workers have stopped (Ctrl-C, or let it finish).")
    base = meta.get("name") or meta["study_name"]
    names = {s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    k = len(read_history(d)) + 1
    while f"{base}.extended-{k}" == meta["study_name"]:
        k += 1
    new_name = f"{base}.extended-{k}"
    if new_name in names:  # left by an extension that stopped half-way (study.json never named it): start again
        optuna.delete_study(study_name=new_name, storage=storage)
    new = optuna.create_study(storage=storage, study_name=new_name, direction=spec.direction)
    for key, value in old.user_attrs.items():
        new.set_user_attr(key, value)
    new.set_user_attr(st.FINGERPRINT_ATTR, spec.fingerprint())
    new.set_user_attr("trainpipe:sweep", {"method": spec.method, "metric": spec.metric, "goal": spec.goal,
                                          "params": [p.display for p in spec.varied], "name": base})
    by_name = {p.display: p for p in spec.params}
    old_names = [n for n in meta.get("params") or []]
    for t in trials:
        dists, params, system = {}, dict(t.params), dict(t.system_attrs)
        for name, dist in t.distributions.items():
            p = by_name.get(name)
            if isinstance(dist, CategoricalDistribution) and p is not None and p.distribution == "categorical":
                dist = CategoricalDistribution(p.choices())
            dists[name] = dist
        for name, stored in (fill or {}).items():
            if old_names and all(n in params for n in old_names):  # a trial with all of its values
                params[name], dists[name] = stored, CategoricalDistribution(by_name[name].choices())
            # A queued trial (`Study.enqueue_trial`) carries its values in the system attribute
            # "fixed_params", which Optuna's samplers read when the trial starts; no public call
            # edits a queued trial's values. Checked on Optuna 3.6.0 and 5.1.0.
            if isinstance(system.get("fixed_params"), dict):  # a queued one
                system["fixed_params"] = {**system["fixed_params"], name: stored}
        new.add_trial(FrozenTrial(number=t.number, state=t.state, value=None, values=t.values,
                                  datetime_start=t.datetime_start, datetime_complete=t.datetime_complete,
                                  params=params, distributions=dists, user_attrs=dict(t.user_attrs),
                                  system_attrs=system, intermediate_values=dict(t.intermediate_values),
                                  trial_id=-1))
    copied = new.get_trials(deepcopy=False)
    if [t.number for t in copied] != [t.number for t in trials]:
        raise ConfigError(f"extending the sweep in {d}: the new study {new_name!r} did not number its trials as "
                          f"the old one; the sweep is unchanged (study.json still names {meta['study_name']!r}).")
    queued = queue_new_points(spec, new, copied)
    kept = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in copied)
    return new_name, kept, queued


def queue_new_points(spec: SweepSpec, study: Any, trials: list[Any]) -> int:
    """A grid's points without a trial, queued in file order (Optuna's grid sampler would give new trial
    numbers the old grid's points)."""
    from trainpipe.sweep import confirm as cf
    from trainpipe.sweep import study as st
    from trainpipe.sweep.space import grid_search_space

    if spec.search().points is None:
        return 0
    keys = [p.display for p in spec.varied]
    space = grid_search_space(spec)
    led = st.ledger(trials)
    seen = {st.point_of(t, keys) for t in led.visible if not cf.is_confirmation(t)}
    n = 0
    for combo in itertools.product(*(space[k] for k in keys)):
        point = dict(zip(keys, combo))
        if tuple(repr(point[k]) for k in keys) not in seen:
            study.enqueue_trial(point)
            n += 1
    return n
