from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from trainpipe import sched
from trainpipe.config import load as load_config
from trainpipe.sched.batch_size import batch_size_at, lr_scale_for
from trainpipe.errors import ConfigError
from trainpipe.registry import SCHEDULERS

BASE = 0.1


def optimizer(*lrs: float) -> torch.optim.Optimizer:
    """An SGD with one group per lr, each recording its base_lr as optim.param_groups does."""
    lrs = lrs or (BASE,)
    groups = [{"params": [nn.Parameter(torch.zeros(1))], "lr": lr, "base_lr": lr} for lr in lrs]
    return torch.optim.SGD(groups, lr=lrs[0])


def build(name: str, options: dict | None = None, *, opt: torch.optim.Optimizer | None = None, epochs: int = 10,
          steps_per_epoch: int = 4, **kw) -> sched.Schedule:
    return sched.build(name, options or {}, opt or optimizer(), epochs=epochs, steps_per_epoch=steps_per_epoch, **kw)


def lr_at(s: sched.Schedule, t: float) -> float:
    s.step(t)
    return s.current_lrs()[0]


# ------------------------------------------------------------ curves by hand
def test_warmup_then_cosine_by_hand() -> None:
    s = build("cosine", {"min_factor": 0.1}, epochs=10, steps_per_epoch=4, warmup_epochs=2)
    # Warmup: (t + 1 step) / (2 epochs + 1 step), one step = 1/4 epoch.
    assert lr_at(s, 0.0) == pytest.approx(BASE * 0.25 / 2.25)
    assert lr_at(s, 1.0) == pytest.approx(BASE * 1.25 / 2.25)
    assert lr_at(s, 1.75) == pytest.approx(BASE * 2.0 / 2.25)
    # Then the cosine runs over the remaining 8 epochs: 0.1 + 0.9 * (1 + cos(pi * u / 8)) / 2.
    assert lr_at(s, 2.0) == pytest.approx(BASE)
    assert lr_at(s, 4.0) == pytest.approx(BASE * (0.1 + 0.9 * (1 + math.sqrt(0.5)) / 2))
    assert lr_at(s, 6.0) == pytest.approx(BASE * 0.55)
    assert lr_at(s, 10.0) == pytest.approx(BASE * 0.1)


def test_warmup_steps_convert_with_steps_per_epoch() -> None:
    by_steps = build("constant", steps_per_epoch=4, warmup_steps=6)
    by_epochs = build("constant", steps_per_epoch=4, warmup_epochs=1.5)
    for t in (0.0, 0.5, 1.25, 1.5, 3.0):
        assert lr_at(by_steps, t) == pytest.approx(lr_at(by_epochs, t))
    assert lr_at(by_steps, 1.25) == pytest.approx(BASE * 6 / 7)  # step 5 of 6: (5 + 1) / (6 + 1)


@pytest.mark.parametrize("anneal", ["cos", "linear"])
@pytest.mark.parametrize("make_opt", [
    lambda p: torch.optim.SGD(p, lr=BASE, momentum=0.9, nesterov=True),
    lambda p: torch.optim.AdamW(p, lr=BASE, betas=(0.9, 0.99)),
], ids=["sgd", "adamw"])
def test_onecycle_lr_and_momentum_match_torch_step_by_step(anneal: str, make_opt) -> None:
    epochs, spe = 10, 50  # 500 steps: torch's peak is step 149, its last step (499) the minimum
    opts = {"pct_start": 0.3, "div_factor": 25.0, "final_div_factor": 1e4}
    ours_opt = make_opt([{"params": [nn.Parameter(torch.zeros(1))], "lr": BASE, "base_lr": BASE}])
    ours = build("onecycle", {**opts, "anneal": anneal}, opt=ours_opt, epochs=epochs, steps_per_epoch=spe)
    ref_opt = make_opt([nn.Parameter(torch.zeros(1))])
    ref = torch.optim.lr_scheduler.OneCycleLR(ref_opt, max_lr=BASE, total_steps=epochs * spe,
                                              anneal_strategy=anneal, **opts)
    key = "betas" if "betas" in ref_opt.defaults else "momentum"

    def momentum(o: torch.optim.Optimizer) -> float:
        v = o.param_groups[0][key]
        return v[0] if key == "betas" else v

    lrs = []
    for k in range(epochs * spe):
        ours.step(k / spe)
        lrs.append(ours.current_lrs()[0])
        assert lrs[-1] == pytest.approx(ref_opt.param_groups[0]["lr"], rel=1e-9, abs=1e-15), k
        assert momentum(ours_opt) == pytest.approx(momentum(ref_opt), rel=1e-9), k
        if key == "betas":
            assert ours_opt.param_groups[0]["betas"][1] == 0.99  # beta2 untouched
        ref_opt.step()
        ref.step()
    assert max(range(len(lrs)), key=lrs.__getitem__) == 149
    assert lrs[-1] == pytest.approx(BASE / 25 / 1e4)


def test_onecycle_without_momentum_cycling_leaves_the_optimizer_momentum() -> None:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=BASE, momentum=0.9)
    s = build("onecycle", {"cycle_momentum": False}, opt=opt, epochs=4)
    for t in (0.0, 1.0, 3.5):
        s.step(t)
        assert opt.param_groups[0]["momentum"] == 0.9


def test_a_chain_after_onecycle_keeps_the_momentum_onecycle_left() -> None:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=BASE, momentum=0.9)
    s = build("chain", {"schedulers": [{"name": "onecycle", "until_epoch": 4}, {"name": "cosine"}]}, opt=opt,
              epochs=8)
    s.step(1.0)
    assert 0.85 < opt.param_groups[0]["momentum"] < 0.95
    s.step(6.0)
    assert opt.param_groups[0]["momentum"] == pytest.approx(0.95)  # torch's OneCycleLR ends at max_momentum


def test_step_multistep_exponential_linear_by_hand() -> None:
    s = build("step", {"step_size": 3, "gamma": 0.5})
    assert [lr_at(s, t) / BASE for t in (0, 2.75, 3.0, 5.5, 6.0, 9.0)] == pytest.approx([1, 1, .5, .5, .25, .125])
    m = build("multistep", {"milestones": [2, 5], "gamma": 0.1})
    assert [lr_at(m, t) / BASE for t in (0, 1.75, 2.0, 4.75, 5.0, 9.9)] == pytest.approx([1, 1, .1, .1, .01, .01])
    # Milestones count from the schedule's start, i.e. after warmup.
    w = build("multistep", {"milestones": [2], "gamma": 0.1}, warmup_epochs=1)
    assert lr_at(w, 2.75) == pytest.approx(BASE) and lr_at(w, 3.0) == pytest.approx(BASE * 0.1)
    e = build("exponential", {"gamma": 0.5})
    assert [lr_at(e, t) / BASE for t in (0, 1, 2.5)] == pytest.approx([1, 0.5, 0.5**2.5])
    lin = build("linear", {"start_factor": 1.0, "end_factor": 0.2})
    assert [lr_at(lin, t) / BASE for t in (0, 5, 10)] == pytest.approx([1, 0.6, 0.2])
    c = build("constant")
    assert {lr_at(c, t) for t in (0, 3.3, 10)} == {BASE}


@pytest.mark.parametrize("spe", [1, 3])
def test_curves_match_torch_schedulers_at_a_fixed_steps_per_epoch(spe: int) -> None:
    epochs = 6
    cases = [
        ("cosine", {"min_factor": 0.05},
         lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=epochs * spe, eta_min=0.05 * BASE)),
        ("step", {"step_size": 2, "gamma": 0.3}, lambda o: torch.optim.lr_scheduler.StepLR(o, 2 * spe, gamma=0.3)),
        ("multistep", {"milestones": [1, 4], "gamma": 0.2},
         lambda o: torch.optim.lr_scheduler.MultiStepLR(o, [1 * spe, 4 * spe], gamma=0.2)),
        ("linear", {"start_factor": 0.5, "end_factor": 0.1},
         lambda o: torch.optim.lr_scheduler.LinearLR(o, 0.5, 0.1, total_iters=epochs * spe)),
        ("exponential", {"gamma": 0.7},
         lambda o: torch.optim.lr_scheduler.ExponentialLR(o, gamma=0.7 ** (1 / spe))),
    ]
    for name, options, make in cases:
        ours = build(name, options, epochs=epochs, steps_per_epoch=spe)
        ref_opt = optimizer()
        ref = make(ref_opt)
        for k in range(epochs * spe):
            assert lr_at(ours, k / spe) == pytest.approx(ref_opt.param_groups[0]["lr"], rel=1e-9), (name, k)
            ref_opt.step()
            ref.step()


def test_lr_depends_on_time_only_not_on_steps_per_epoch() -> None:
    # A batch-size schedule changes the steps per epoch mid-run; the lr at a time t must not care.
    a = build("cosine", steps_per_epoch=10, epochs=6)
    b = build("cosine", steps_per_epoch=10, epochs=6)
    for i in range(10):
        a.step(0 + i / 10)
    for i in range(5):  # epoch 1 with batches twice as large
        a.step(1 + i / 5)
    b.step(1.6)
    a.step(1.6)
    assert a.current_lrs() == b.current_lrs()


def test_every_group_is_scheduled_from_its_own_base_lr() -> None:
    s = build("cosine", opt=optimizer(0.1, 0.01), epochs=4)
    s.step(2.0)
    assert s.current_lrs() == pytest.approx([0.05, 0.005])


# ------------------------------------------------------------------ plateau
def test_plateau_reductions_cooldown_and_min_lr_by_hand() -> None:
    s = build("plateau", {"factor": 0.5, "patience": 1, "cooldown": 1, "min_lr": 0.02}, monitor_mode="max")
    metrics = [0.5, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6]
    # e0 better, e1 better, e2 bad 1, e3 bad 2 > patience: halve (cooldown 1), e4 cooldown, e5 bad 1,
    # e6 bad 2: halve, e7 cooldown, e8 bad 1, e9 bad 2: halve to 0.0125, clamped at min_lr 0.02.
    expected = [0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025, 0.025, 0.025, 0.02]
    got = []
    for epoch, m in enumerate(metrics):
        s.step(epoch + 0.5)
        s.epoch_end(epoch, m)
        got.append(lr_at(s, epoch + 1))
    assert got == pytest.approx(expected)
    s.epoch_end(10, None)  # no validation that epoch: nothing changes
    assert lr_at(s, 10) == pytest.approx(0.02)


@pytest.mark.parametrize(("mode", "threshold_mode"), [("max", "rel"), ("min", "abs"), ("min", "rel")])
def test_plateau_decides_like_torch_reduce_lr_on_plateau(mode: str, threshold_mode: str) -> None:
    opts = {"factor": 0.3, "patience": 2, "threshold": 0.01, "threshold_mode": threshold_mode, "cooldown": 2,
            "min_lr": 1e-4}
    ours = build("plateau", opts, epochs=60, monitor_mode=mode)
    ref_opt = optimizer()
    ref = torch.optim.lr_scheduler.ReduceLROnPlateau(ref_opt, mode=mode, **opts)
    g = torch.Generator().manual_seed(1)
    trend = 1.0 if mode == "max" else -1.0
    for epoch in range(60):
        metric = 1.0 + trend * 0.02 * min(epoch, 12) + 0.01 * torch.rand((), generator=g).item()
        ours.step(epoch + 0.5)
        ours.epoch_end(epoch, metric)
        ref.step(metric)
        assert lr_at(ours, epoch + 1) == pytest.approx(ref_opt.param_groups[0]["lr"]), epoch
    assert ref_opt.param_groups[0]["lr"] < BASE * 0.3**2  # the sequence did exercise reductions


def test_plateau_ignores_warmup_epochs() -> None:
    s = build("plateau", {"factor": 0.5, "patience": 0}, warmup_epochs=2, monitor_mode="min")
    for epoch, m in enumerate([1.0, 2.0, 3.0]):
        s.epoch_end(epoch, m)
    # Epochs 0 and 1 are warmup; epoch 2 is the plateau's first judgement (an improvement on inf).
    assert lr_at(s, 3.0) == pytest.approx(BASE)
    s.epoch_end(3, 3.5)
    assert lr_at(s, 4.0) == pytest.approx(BASE / 2)


# ------------------------------------------- deliberate differences (README)
def test_warmup_is_a_prefix_as_timms_warmup_prefix() -> None:
    from timm.scheduler import CosineLRScheduler

    ours = build("cosine", epochs=10, steps_per_epoch=1, warmup_epochs=2)
    ref_opt = optimizer()
    ref = CosineLRScheduler(ref_opt, t_initial=8, warmup_t=2, warmup_prefix=True, warmup_lr_init=1e-3)
    for epoch in range(2, 11):
        ref.step(epoch)
        assert lr_at(ours, epoch) == pytest.approx(ref_opt.param_groups[0]["lr"]), epoch
    assert lr_at(ours, 0) == pytest.approx(BASE / 3)  # the ramp starts one step in: (0 + 1) / (2 + 1)


def test_plateau_does_not_count_a_nan_metric_where_torch_does() -> None:
    ours = build("plateau", {"factor": 0.5, "patience": 0}, monitor_mode="max")
    ref_opt = optimizer()
    ref = torch.optim.lr_scheduler.ReduceLROnPlateau(ref_opt, mode="max", factor=0.5, patience=0)
    for epoch, metric in enumerate([0.5, math.nan]):
        ours.epoch_end(epoch, metric)
        ref.step(metric)
    assert ref_opt.param_groups[0]["lr"] == BASE / 2
    assert lr_at(ours, 2.0) == BASE


def test_a_chain_raises_the_lr_to_the_next_plateaus_min_lr() -> None:
    s = build("chain", {"schedulers": [{"name": "step", "step_size": 1, "gamma": 0.1, "until_epoch": 3},
                                       {"name": "plateau", "min_lr": 0.005}]}, epochs=10)
    assert lr_at(s, 2.5) == pytest.approx(BASE / 100)  # 0.001, below the plateau's min_lr
    assert lr_at(s, 3.0) == pytest.approx(0.005)


# -------------------------------------------------------------------- chain
def test_chain_hands_over_from_the_lr_the_previous_one_left() -> None:
    s = build("chain", {"schedulers": [
        {"name": "onecycle", "until_epoch": 4, "pct_start": 0.5, "div_factor": 10, "final_div_factor": 2},
        {"name": "cosine"},
    ]}, epochs=10)
    assert lr_at(s, 1.75) == pytest.approx(BASE)  # onecycle's peak: half its 4 epochs less one step (1/4)
    left = BASE / 20  # onecycle ends at lr / (div * final_div)
    assert lr_at(s, 3.999) == pytest.approx(left, rel=1e-3)
    assert lr_at(s, 4.0) == pytest.approx(left)  # cosine starts where onecycle stopped
    assert lr_at(s, 7.0) == pytest.approx(left * 0.5)  # half-way through cosine's 6 epochs
    assert lr_at(s, 10.0) == pytest.approx(0.0)


def test_chain_of_steps_then_plateau_with_state_round_trip() -> None:
    cfg = {"schedulers": [
        {"name": "step", "step_size": 1, "gamma": 0.5},
        {"name": "plateau", "start_epoch": 2, "factor": 0.1, "patience": 0},
    ]}
    s = build("chain", cfg, epochs=10)
    assert lr_at(s, 1.5) == pytest.approx(BASE / 2)
    # Step left 0.5 x base (its drop at epoch 2 falls at the hand-off and is not carried).
    assert lr_at(s, 2.0) == pytest.approx(BASE / 2)
    s.epoch_end(1, 0.9)  # epoch 1 belonged to step: ignored
    s.epoch_end(2, 0.9)
    s.epoch_end(3, 0.8)  # worse, patience 0: reduce
    assert lr_at(s, 4.0) == pytest.approx(BASE / 20)

    state = s.state_dict()
    resumed = build("chain", cfg, epochs=10)
    resumed.load_state_dict(state)
    assert resumed.current_lrs() == pytest.approx(s.current_lrs())
    for epoch, m in [(4, 0.85), (5, 0.95), (6, 0.7)]:
        for x in (s, resumed):
            x.step(epoch + 0.5)
            x.epoch_end(epoch, m)
        assert lr_at(resumed, epoch + 1) == lr_at(s, epoch + 1)
    assert lr_at(s, 7.0) == pytest.approx(BASE / 2 * 0.1**3)  # epochs 4 and 6 were worse than the best


def test_chain_boundaries_with_warmup() -> None:
    s = build("chain", {"schedulers": [{"name": "constant", "until_epoch": 5}, {"name": "linear", "end_factor": 0}]},
              epochs=10, warmup_epochs=1)
    assert lr_at(s, 0.0) < BASE / 2
    assert lr_at(s, 3.0) == pytest.approx(BASE)
    assert lr_at(s, 7.5) == pytest.approx(BASE / 2)


@pytest.mark.parametrize(
    ("members", "pattern"),
    [
        ([], r"sched\.schedulers: is empty"),
        ([{"name": "cosine"}, {"name": "cosin", "start_epoch": 3}], r"sched\.schedulers\[1\]\.name: unknown .*cosine"),
        ([{"name": "cosine"}, {"name": "step", "start_epoch": 3, "gama": 0.5}],
         r"sched\.schedulers\[1\]\.gama: unknown key.*gamma"),
        ([{"name": "cosine"}, {"name": "step", "start_epoch": 3, "gamma": "x"}], r"sched\.schedulers\[1\]\.gamma"),
        ([{"name": "cosine"}, {"name": "step", "start_epoch": 3, "gamma": -1}], r"sched\.schedulers\[1\]\.gamma"),
        ([{"name": "cosine"}, {"name": "step"}], r"sched\.schedulers\[1\]: says nowhere when it takes over"),
        ([{"name": "cosine", "until_epoch": 4}, {"name": "step", "start_epoch": 5}],
         r"sched\.schedulers\[1\]\.start_epoch: is 5 but schedulers\[0\]\.until_epoch is 4"),
        ([{"name": "cosine"}, {"name": "step", "start_epoch": 12}], r"sched\.schedulers\[1\]\.start_epoch"),
        ([{"name": "cosine", "start_epoch": 0}], r"sched\.schedulers\[0\]\.start_epoch"),
        ([{"name": "chain", "schedulers": []}], r"sched\.schedulers\[0\]\.name: a chain cannot hold another"),
        ([{"gamma": 0.1}], r"sched\.schedulers\[0\]\.name: is missing"),
        (["cosine"], r"sched\.schedulers\[0\]: input should be a valid dictionary"),
    ],
)
def test_chain_validation(members: list, pattern: str) -> None:
    # Checked once, with the rest of the config: before any data is read.
    with pytest.raises(ConfigError, match=pattern):
        load_config(None, {"sched.name": "chain", "sched.schedulers": members, "train.epochs": 10})


# --------------------------------------------------- state, scale, bad input
def resume_case(name: str) -> dict:
    # Plateau options chosen so that the run is saved in the middle of a streak of bad epochs.
    if name == "chain":
        return {"schedulers": [{"name": "constant", "until_epoch": 1}, {"name": "plateau", "patience": 1}]}
    return {"patience": 1} if name == "plateau" else {}


@pytest.mark.parametrize("name", SCHEDULERS.names())
def test_every_scheduler_builds_steps_and_resumes_identically(name: str) -> None:
    options = resume_case(name)
    metrics = [0.5, 0.6, 0.55, 0.5, 0.45, 0.4, 0.7, 0.3]

    def run(s: sched.Schedule, epochs: range) -> list[float]:
        out = []
        for epoch in epochs:
            for i in range(3):
                out.append(lr_at(s, epoch + i / 3))
            s.epoch_end(epoch, metrics[epoch])
        return out

    def make() -> sched.Schedule:
        return build(name, options, opt=optimizer(), epochs=8, warmup_epochs=0.5)

    full = run(make(), range(8))
    assert len(full) == 24 and all(math.isfinite(v) and v >= 0 for v in full)
    first = make()
    before = run(first, range(3))
    resumed = make()
    resumed.load_state_dict(first.state_dict())
    assert before + run(resumed, range(3, 8)) == full
    if name in ("plateau", "chain"):
        assert min(full[9:]) < max(full[9:])  # a reduction happened after the resume point


def test_schedule_survives_the_optimizer_replacing_its_groups_on_load() -> None:
    opt = optimizer()
    s = build("cosine", opt=opt, epochs=4)
    opt.load_state_dict(optimizer().state_dict())  # torch builds new group dicts here
    s.step(2.0)
    assert opt.param_groups[0]["lr"] == pytest.approx(BASE / 2)


def test_factors_multiply_every_lr_and_are_saved() -> None:
    s = build("cosine", opt=optimizer(0.1, 0.02), epochs=4)
    s.step(2.0)
    s.set_factor("batch_size", 2.0)
    assert s.current_lrs() == pytest.approx([0.1, 0.02])  # applied at once, at the current t
    s.set_factor("rollback", 0.5)
    s.set_factor("rollback", 0.25)  # a name's factor is replaced, not compounded
    s.step(3.0)
    c = 0.5 * (1 + math.cos(math.pi * 3 / 4))
    assert s.current_lrs() == pytest.approx([0.5 * 0.1 * c, 0.5 * 0.02 * c])
    other = build("cosine", opt=optimizer(0.1, 0.02), epochs=4)
    other.load_state_dict(s.state_dict())
    assert other.current_lrs() == s.current_lrs()
    assert other.factor("batch_size") == 2.0 and other.factor("rollback") == 0.25


def test_the_schedule_keeps_the_base_lrs_it_was_built_with() -> None:
    # A resumed optimizer's groups carry the lr and base_lr they were saved with; the lr that
    # counts is the one the schedule (built from the config) sets.
    opt = optimizer(0.1)
    s = build("constant", opt=opt, epochs=4)
    saved = optimizer(0.3).state_dict()
    opt.load_state_dict(saved)
    s.step(1.0)
    assert opt.param_groups[0]["lr"] == BASE


@pytest.mark.parametrize(
    ("name", "options", "kw", "pattern"),
    [
        ("cosin", {}, {}, r"sched\.name: unknown scheduler 'cosin'; did you mean cosine\?"),
        ("cosine", {"min_factor": 2}, {}, r"sched\.min_factor"),
        ("cosine", {"eta_min": 0.1}, {}, r"sched\.eta_min: unknown key.*Valid keys here: .*min_factor"),
        ("step", {"step_size": 0}, {}, r"sched\.step_size"),
        ("multistep", {"milestones": [5, 2]}, {}, r"sched\.milestones"),
        ("onecycle", {"pct_start": 1.0}, {}, r"sched\.pct_start"),
        ("onecycle", {"anneal": "cosine"}, {}, r"sched\.anneal"),
        ("onecycle", {"max_momentum": 1.0}, {}, r"sched\.max_momentum"),
        ("plateau", {"factor": 1.5}, {}, r"sched\.factor"),
        ("plateau", {"threshold_mode": "relative"}, {}, r"sched\.threshold_mode"),
        ("cosine", {}, {"warmup_epochs": 1, "warmup_steps": 4}, r"sched\.warmup_steps: set either"),
        ("cosine", {}, {"warmup_epochs": 10}, r"sched\.warmup_epochs: warmup .* must end before"),
        ("chain", {}, {}, r"sched\.schedulers: required key is missing"),
    ],
)
def test_bad_input_raises_config_error(name: str, options: dict, kw: dict, pattern: str) -> None:
    overrides = {"sched.name": name, "train.epochs": 10, **{f"sched.{k}": v for k, v in {**options, **kw}.items()}}
    with pytest.raises(ConfigError, match=pattern):
        load_config(None, overrides)


# ------------------------------------------------------- batch-size schedule
def test_batch_size_at() -> None:
    assert [batch_size_at(e, 32, None) for e in (0, 5)] == [32, 32]
    schedule = {3: 64, 6: 128}
    assert [batch_size_at(e, 32, schedule) for e in range(8)] == [32, 32, 32, 64, 64, 64, 128, 128]
    assert batch_size_at(0, 32, {0: 16, 2: 8}) == 16  # the schedule may set epoch 0 too, and shrink
    assert batch_size_at(5, 32, {2: 8, 0: 16}) == 8  # order of the mapping does not matter
    with pytest.raises(ConfigError, match=r"train\.batch_size_schedule"):
        load_config(None, {"train.batch_size_schedule": {1: 0}})


def test_lr_scale_for() -> None:
    assert lr_scale_for(256, 128, "none") == 1.0
    assert lr_scale_for(256, 128, "linear") == 2.0
    assert lr_scale_for(64, 128, "linear") == 0.5
    assert lr_scale_for(512, 128, "sqrt") == pytest.approx(2.0)
    with pytest.raises(ConfigError, match=r"train\.lr_scaling"):
        load_config(None, {"train.lr_scaling": "cubic"})


def test_the_batch_size_schedule_scales_the_lr_through_the_schedule(tmp_path) -> None:
    import trainpipe

    tiny = ["model.width=8", "tracking.plots=false", "train.device=cpu", "sched.name=constant", "optim.lr=0.05",
            "data.batch_size=32", "train.epochs=3"]
    r = trainpipe.train(None, tiny + ["train.batch_size_schedule={1: 64, 2: 128}", "train.lr_scaling=sqrt"],
                        output=tmp_path, quiet=True)
    assert [m["lr"] for m in r.metrics] == pytest.approx([0.05, 0.05 * 2**0.5, 0.05 * 2])
