from __future__ import annotations

import copy
import math

import re

import pytest
import torch
from torch import nn

from trainpipe import optim
from trainpipe.config import load as load_config
from trainpipe.errors import ConfigError
from trainpipe.optim.muon import KernelMuon, OptimizerSet
from trainpipe.optim.sam import SAM
from trainpipe.registry import OPTIMIZERS

TIMM_SAMPLES = ["lion", "lamb"]
needs_muon = pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="torch.optim.Muon needs torch >= 2.9")
ALL_NAMES = [pytest.param(n, marks=needs_muon) if n == "muon" else n for n in OPTIMIZERS.names() + TIMM_SAMPLES]
# A learning rate at which a few steps reliably reduce the loss on the fixed batch.
LR = {"sgd": 0.2, "sam": 0.2, "rmsprop": 3e-3, "lion": 1e-2, "lamb": 0.03, "muon": 0.02}


class TinyNet(nn.Module):
    """stem conv -> hidden conv -> BN -> hidden linear -> head, like the real models (get_classifier)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.conv = nn.Conv2d(4, 6, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(6)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(24, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(torch.relu(self.stem(x)))))
        return self.head(torch.relu(self.fc(self.pool(x).flatten(1))))

    def get_classifier(self) -> nn.Module:
        return self.head


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(16, 1, 6, 6, generator=g), torch.randint(0, 3, (16,), generator=g)


def train_steps(model: nn.Module, opt: torch.optim.Optimizer, steps: int) -> list[float]:
    """`steps` optimizer steps on one fixed batch, the way the loop drives them; returns the losses."""
    x, y = batch()
    losses = []
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        if getattr(opt, "requires_closure", False):

            def closure() -> torch.Tensor:
                again = nn.functional.cross_entropy(model(x), y)
                again.backward()
                return again

            opt.step(closure)
        else:
            opt.step()
        losses.append(loss.item())
    return losses


def ids(params) -> set[int]:
    return {id(p) for p in params}


# ----------------------------------------------------------- every optimizer
@pytest.mark.parametrize("name", ALL_NAMES)
def test_every_optimizer_reduces_the_loss_on_a_fixed_batch(name: str) -> None:
    torch.manual_seed(0)
    model = TinyNet()
    opt = optim.build(name, {}, model, lr=LR.get(name, 1e-2), weight_decay=1e-4)
    covered = [p for g in opt.param_groups for p in g["params"]]
    assert ids(covered) == ids(model.parameters()) and len(covered) == len(list(model.parameters()))
    losses = train_steps(model, opt, 8)
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.92 * losses[0], losses


@pytest.mark.parametrize("name", ALL_NAMES)
def test_state_dict_resumes_the_same_trajectory(name: str) -> None:
    torch.manual_seed(0)
    model = TinyNet()
    opt = optim.build(name, {}, model, lr=LR.get(name, 1e-2), weight_decay=1e-4)
    train_steps(model, opt, 3)
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    train_steps(model, opt, 3)

    resumed = TinyNet()
    resumed.load_state_dict(saved_model)
    opt2 = optim.build(name, {}, resumed, lr=LR.get(name, 1e-2), weight_decay=1e-4)
    opt2.load_state_dict(saved_opt)
    train_steps(resumed, opt2, 3)
    for a, b in zip(model.parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # The groups a schedule writes lr into are the ones every part steps with, also after loading.
    for m, o in ((model, opt), (resumed, opt2)):
        for g in o.param_groups:
            g["lr"] = 0.0
        before = [p.detach().clone() for p in m.parameters()]
        train_steps(m, o, 1)
        assert all(torch.equal(a, b) for a, b in zip(before, m.parameters()))


# --------------------------------------------------------------- param groups
def test_no_weight_decay_on_norms_and_biases_by_default() -> None:
    model = TinyNet()
    opt = optim.build("sgd", {}, model, lr=0.1, weight_decay=5e-4)
    for g in opt.param_groups:
        for p in g["params"]:
            assert g["weight_decay"] == (5e-4 if p.ndim > 1 else 0.0)
    decayed = [p for g in opt.param_groups if g["weight_decay"] for p in g["params"]]
    assert ids(decayed) == ids([model.stem.weight, model.conv.weight, model.fc.weight, model.head.weight])

    opt = optim.build("sgd", {}, model, lr=0.1, weight_decay=5e-4, decay_norm_and_bias=True)
    assert all(g["weight_decay"] == 5e-4 for g in opt.param_groups)


def test_names_a_model_exempts_from_decay_are_not_decayed() -> None:
    class WithToken(TinyNet):  # timm's convention for position embeddings and class tokens
        def __init__(self) -> None:
            super().__init__()
            self.token = nn.Parameter(torch.zeros(1, 4, 4))

        def no_weight_decay(self) -> set[str]:
            return {"token"}

    model = WithToken()
    for flag in (False, True):
        opt = optim.build("adamw", {}, model, lr=0.1, weight_decay=0.05, decay_norm_and_bias=flag)
        assert next(g["weight_decay"] for g in opt.param_groups if any(p is model.token for p in g["params"])) == 0


def test_no_weight_decay_names_are_patterns_as_in_timm() -> None:
    import timm
    from timm.optim import param_groups_weight_decay

    # xcit's no_weight_decay() is {"pos_embed.*", "cls_token"}: its position encoding is a module.
    model = timm.create_model("xcit_nano_12_p16_224", img_size=32, depth=1, num_classes=3)
    ref = param_groups_weight_decay(model, 0.05, no_weight_decay_list=model.no_weight_decay())
    opt = optim.build("adamw", {}, model, lr=0.1, weight_decay=0.05)
    for groups in (ref, opt.param_groups):
        assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    assert ids(p for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"]) == ids(
        p for g in ref if g["weight_decay"] == 0 for p in g["params"])
    assert model.pos_embed.token_projection.weight.ndim == 4  # decayed if the pattern were a plain name


def test_backbone_lr_mult_keeps_the_head_at_lr() -> None:
    model = TinyNet()
    opt = optim.build("adamw", {}, model, lr=0.1, weight_decay=1e-2, backbone_lr_mult=0.1)
    head = ids(model.head.parameters())
    for g in opt.param_groups:
        expected = 0.1 if ids(g["params"]) <= head else pytest.approx(0.01)
        assert ids(g["params"]) <= head or not (ids(g["params"]) & head)
        assert g["lr"] == expected and g["base_lr"] == expected
    # The first group is the head's, so the logged lr is the configured one.
    assert opt.param_groups[0]["lr"] == 0.1


def test_backbone_lr_mult_falls_back_to_the_last_linear() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = optim.build("sgd", {}, model, lr=0.2, backbone_lr_mult=0.5)
    lrs = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert all(lrs[id(p)] == 0.2 for p in model[2].parameters())
    assert all(lrs[id(p)] == 0.1 for p in model[0].parameters())


def test_only_trainable_parameters_are_optimised() -> None:
    model = TinyNet()
    for p in model.stem.parameters():
        p.requires_grad_(False)
    opt = optim.build("sgd", {}, model, lr=0.1)
    got = ids(p for g in opt.param_groups for p in g["params"])
    assert got == ids(p for p in model.parameters() if p.requires_grad)
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ConfigError, match="nothing to optimise"):
        optim.build("sgd", {}, model, lr=0.1)


# ----------------------------------------------------------------------- SAM
class Quadratic(nn.Module):
    """f(w) = 0.5 * sum(a * w^2): gradient a * w, easy to follow by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([1.0, 2.0], dtype=torch.float64))
        self.register_buffer("a", torch.tensor([1.0, 3.0], dtype=torch.float64))
        self.calls = 0

    def loss(self) -> torch.Tensor:
        self.calls += 1
        return 0.5 * (self.a * self.w**2).sum()


@pytest.mark.parametrize("adaptive", [False, True])
def test_sam_update_matches_hand_computation(adaptive: bool) -> None:
    model = Quadratic()
    rho, lr = 0.1, 0.1
    opt = optim.build("sam", {"rho": rho, "adaptive": adaptive, "base": "sgd",
                              "base_options": {"momentum": 0.0, "nesterov": False}}, model, lr=lr)
    assert getattr(opt, "requires_closure", False)

    w1, w2 = 1.0, 2.0
    g1, g2 = 1.0 * w1, 3.0 * w2  # gradient a * w at the start
    if adaptive:  # ASAM: e = rho * w^2 g / ||w g||
        n = math.hypot(w1 * g1, w2 * g2)
        e1, e2 = rho * w1**2 * g1 / n, rho * w2**2 * g2 / n
    else:  # SAM: e = rho * g / ||g||
        n = math.hypot(g1, g2)
        e1, e2 = rho * g1 / n, rho * g2 / n
    a1, a2 = 1.0 * (w1 + e1), 3.0 * (w2 + e2)  # gradient at the climbed point
    expected = [w1 - lr * a1, w2 - lr * a2]

    opt.zero_grad()
    model.loss().backward()

    def closure() -> torch.Tensor:
        loss = model.loss()
        loss.backward()
        return loss

    returned = opt.step(closure)
    assert model.calls == 2  # two forward/backward passes for one step
    torch.testing.assert_close(model.w.detach(), torch.tensor(expected, dtype=torch.float64))
    # The closure's loss is the one at the climbed point.
    assert returned.item() == pytest.approx(0.5 * (1.0 * (w1 + e1) ** 2 + 3.0 * (w2 + e2) ** 2))


def test_sam_counts_two_passes_per_step_and_refuses_no_closure() -> None:
    model = TinyNet()
    opt = optim.build("sam", {"base": "adamw"}, model, lr=1e-3)
    calls = {"n": 0}
    model.register_forward_hook(lambda *_: calls.__setitem__("n", calls["n"] + 1))
    train_steps(model, opt, 3)
    assert calls["n"] == 6
    assert isinstance(opt, SAM) and isinstance(opt.base_optimizer, torch.optim.AdamW)
    with pytest.raises(RuntimeError, match="closure"):
        opt.step()


def test_sam_wraps_a_timm_optimizer_by_name() -> None:
    model = TinyNet()
    opt = optim.build("sam", {"base": "lion", "base_options": {"betas": [0.9, 0.99]}}, model, lr=1e-3)
    assert type(opt.base_optimizer).__name__ == "Lion"
    assert tuple(opt.base_optimizer.param_groups[0]["betas"]) == (0.9, 0.99)


def _reference_sam_steps(model: nn.Module, batches: list, *, rho: float, lr: float, clip: float,
                         freeze_bn: bool) -> None:
    """SAM as github.com/davda54/sam's example trains with it: `disable_running_stats` (BatchNorm
    momentum 0) around the second pass, the gradient clipped after it, then the base step."""
    base = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for x, y in batches:
        nn.functional.cross_entropy(model(x), y).backward()
        params = [p for p in model.parameters() if p.grad is not None]
        norm = torch.norm(torch.stack([p.grad.norm(p=2) for p in params]), p=2)
        old = [p.data.clone() for p in params]
        with torch.no_grad():
            for p in params:
                p.add_(p.grad * (rho / (norm + 1e-12)))
        base.zero_grad()
        momenta = [m.momentum for m in bns]
        if freeze_bn:
            for m in bns:
                m.momentum = 0
        nn.functional.cross_entropy(model(x), y).backward()
        for m, momentum in zip(bns, momenta):
            m.momentum = momentum
        for p, w in zip(params, old):
            p.data = w
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        base.step()
        base.zero_grad()


@pytest.mark.parametrize("freeze_bn", [True, False])
def test_sam_in_the_loop_matches_the_reference_recipe(freeze_bn: bool) -> None:
    # train.grad_clip applies to the gradient SAM steps with (the second); BatchNorm's running
    # statistics are updated by the first pass only unless freeze_bn=false.
    from types import SimpleNamespace

    import trainpipe
    from trainpipe import sched
    from trainpipe.loop.trainer import Trainer

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 4))
    reference = copy.deepcopy(model)
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(32, 8, generator=g) * 3, torch.randint(0, 4, (32,), generator=g)) for _ in range(4)]
    cfg = trainpipe.load_config(None, [
        "optim.name=sam", "optim.rho=0.05", "optim.lr=0.1", "optim.weight_decay=0",
        "optim.base_options={momentum: 0.9, nesterov: false}", f"optim.freeze_bn={str(freeze_bn).lower()}",
        "sched.name=constant", "train.grad_clip=0.01", "train.epochs=1", "train.device=cpu"])
    o = cfg.optim
    opt = optim.build(o.name, o.options(), model, lr=o.lr, weight_decay=0.0)
    schedule = sched.build("constant", {}, opt, epochs=1, steps_per_epoch=len(batches))
    data = SimpleNamespace(train=batches, val=None, test=None)
    trainer = Trainer(cfg, model, opt, schedule, data, device=torch.device("cpu"))
    model.train()
    for x, y in batches:
        trainer.train_step(x, y, 1, True)
    _reference_sam_steps(reference, batches, rho=0.05, lr=0.1, clip=0.01, freeze_bn=freeze_bn)

    for (name, a), b in zip(model.state_dict().items(), reference.state_dict().values()):
        if name.endswith("num_batches_tracked"):
            # One count per optimizer step, as without SAM (the reference counts both passes).
            assert a.item() == len(batches) * (1 if freeze_bn else 2), name
        else:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=name)


# ---------------------------------------------------------------------- Muon
@needs_muon
def test_muon_gets_exactly_the_hidden_matrices_and_kernels() -> None:
    model = TinyNet()
    opt = optim.build("muon", {"adamw_lr": 3e-4}, model, lr=0.02, weight_decay=0.01)
    assert isinstance(opt, OptimizerSet)
    kinds = {type(o) for o in opt.parts}
    assert kinds == {KernelMuon, torch.optim.AdamW}
    muon_part = next(o for o in opt.parts if isinstance(o, KernelMuon))
    adamw_part = next(o for o in opt.parts if isinstance(o, torch.optim.AdamW))
    in_muon = [p for g in muon_part.param_groups for p in g["params"]]
    # Hidden conv kernel and hidden linear weight; not the stem (input layer), head, norm or biases.
    assert ids(in_muon) == ids([model.conv.weight, model.fc.weight]) and len(in_muon) == 2
    in_adamw = ids(p for g in adamw_part.param_groups for p in g["params"])
    assert in_adamw == ids(model.parameters()) - ids(in_muon)
    assert all(g["base_lr"] == 0.02 for g in muon_part.param_groups)
    assert all(g["base_lr"] == 3e-4 for g in adamw_part.param_groups)
    # The schedule turns each group's base_lr into its lr.
    from trainpipe import sched

    sched.build("constant", {}, opt, epochs=1, steps_per_epoch=1)
    assert all(g["lr"] == 0.02 for g in muon_part.param_groups)
    assert all(g["lr"] == 3e-4 for g in adamw_part.param_groups)


@needs_muon
@pytest.mark.parametrize("channels_last", [False, True])
def test_muon_kernel_update_is_torch_muon_on_the_flattened_kernel(channels_last: bool) -> None:
    torch.manual_seed(0)
    kernel = nn.Parameter(torch.randn(6, 4, 3, 3))
    if channels_last:
        kernel = nn.Parameter(kernel.detach().to(memory_format=torch.channels_last))
    flat = nn.Parameter(kernel.detach().reshape(6, -1).clone())
    options = {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.01, "adjust_lr_fn": "original"}
    ours, reference = KernelMuon([kernel], **options), torch.optim.Muon([flat], **options)
    for step in range(3):
        grad = torch.randn(6, 4, 3, 3, generator=torch.Generator().manual_seed(step))
        kernel.grad = grad.to(memory_format=torch.channels_last) if channels_last else grad.clone()
        flat.grad = grad.reshape(6, -1).clone()
        ours.step()
        reference.step()
    torch.testing.assert_close(kernel.detach().reshape(6, -1), flat.detach(), rtol=1e-5, atol=1e-6)
    assert kernel.is_contiguous(memory_format=torch.channels_last) == channels_last


# ----------------------------------------------------------------- bad input
def test_unknown_optimizer_suggests_ours_and_timms() -> None:
    with pytest.raises(ConfigError, match=r"optim.name: unknown optimizer 'lino'; did you mean lion\?"):
        optim.build("lino", {}, TinyNet(), lr=0.1)
    with pytest.raises(ConfigError, match=r"did you mean adamw\?"):
        optim.build("adamww", {}, TinyNet(), lr=0.1)
    with pytest.raises(ConfigError, match=r"optim.name: .*did you mean lamb\?"):
        OPTIMIZERS.get("lamm", key="optim.name")


@pytest.mark.parametrize(
    ("name", "options", "pattern"),
    [
        ("sgd", {"momentum": "fast"}, r"optim\.momentum"),
        ("sgd", {"momentun": 0.9}, r"optim\.momentun: unknown key.*did you mean optim\.momentum"),
        ("sgd", {"momentum": -1.0}, r"optim: sgd rejected its options"),
        ("sgd", {"momentum": 0.0, "nesterov": True}, r"optim: sgd rejected"),
        ("adam", {"betas": [0.9]}, r"optim\.betas"),
        ("muon", {"adjust_lr_fn": "magic"}, r"optim\.adjust_lr_fn"),
        ("muon", {"ns_steps": 0}, r"optim\.ns_steps"),
        ("sam", {"base": "sam"}, r"optim\.base: sam cannot wrap itself"),
        ("sam", {"base": "sgdd"}, r"optim\.base: unknown optimizer 'sgdd'; did you mean sgd"),
        ("sam", {"rho": 0.0}, r"optim\.rho"),
        ("sam", {"base": "adamw", "base_options": {"momentum": 0.9}}, r"optim\.base_options\.momentum: unknown key"),
        ("lion", {"foo": 1}, r"optim: lion rejected its options.*foo"),
    ],
)
def test_bad_options_raise_config_error(name: str, options: dict, pattern: str) -> None:
    """Our own optimizers' options are refused by the config, before any data is read; what only
    the optimizer's constructor can judge (torch's or timm's own checks) is refused when it is built."""
    try:
        cfg = load_config(None, {"optim.name": name, **{f"optim.{k}": v for k, v in options.items()}})
    except ConfigError as e:
        assert re.search(pattern, str(e)), str(e)
        return
    with pytest.raises(ConfigError, match=pattern):
        optim.build(name, cfg.optim.options(), TinyNet(), lr=0.1)


def test_timm_optimizers_resolve_by_name_with_their_options() -> None:
    assert "lion" in OPTIMIZERS and "no_such_optimizer" not in OPTIMIZERS
    opt = optim.build("lamb", {"betas": [0.8, 0.9], "eps": 1e-5}, TinyNet(), lr=0.01)
    assert type(opt).__name__ == "Lamb"
    assert tuple(opt.param_groups[0]["betas"]) == (0.8, 0.9) and opt.param_groups[0]["eps"] == 1e-5
    assert OPTIMIZERS.get("lion").description.startswith("timm:")


@pytest.mark.cuda
@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_fused_kernels_on_cuda(name: str) -> None:
    model = TinyNet().cuda()
    opt = optim.build(name, {}, model, lr=1e-3)
    assert opt.defaults["fused"] is True
    x, y = batch()
    loss = nn.functional.cross_entropy(model(x.cuda()), y.cuda())
    loss.backward()
    opt.step()
    cpu_opt = optim.build(name, {}, TinyNet(), lr=1e-3)
    assert cpu_opt.defaults["fused"] is True  # fused on the CPU too (see test_fused_kernels_on_the_cpu_train_as_torchs_loop_does)


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_fused_kernels_on_the_cpu_train_as_torchs_loop_does(name: str) -> None:
    torch.manual_seed(0)
    fused_net = TinyNet()
    loop_net = copy.deepcopy(fused_net)
    fused = optim.build(name, {}, fused_net, lr=1e-2)
    assert fused.defaults["fused"] is True
    loop = optim.build(name, {}, loop_net, lr=1e-2)
    for g in loop.param_groups:  # torch's own default on the CPU: a Python loop over the parameters
        g["fused"], g["foreach"] = None, False
    assert train_steps(fused_net, fused, 5) == pytest.approx(train_steps(loop_net, loop, 5), rel=1e-5)
    for a, b in zip(fused_net.parameters(), loop_net.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)  # the last bits of fused multiply-adds


def test_no_fused_kernels_for_parameters_spread_over_devices_or_not_floating() -> None:
    from trainpipe.optim import _fast_path

    p = nn.Parameter(torch.zeros(3))
    assert _fast_path([{"params": [p]}]) == {"fused": True}
    assert _fast_path([{"params": [p, nn.Parameter(torch.zeros(2, device="meta"))]}]) == {}
    assert _fast_path([{"params": []}]) == {}
