"""Optimizers by name, and the parameter groups they work on.

`build(name, options, model, lr=...)` is the front door. It splits the trainable
parameters into groups (no weight decay on norm weights and biases unless
`decay_norm_and_bias`; the classifier head at `lr`, the rest at
`lr * backbone_lr_mult`) and hands them to the registered function. Every group
records `base_lr`, the lr a schedule multiplies, and `lr_mult`, its share of the
configured lr; from then on the schedule (`trainpipe.sched`) is the only writer of a
group's `lr`. Besides the names registered here, any optimizer timm knows
(lion, lamb, lars, adabelief, ...) works by name with its own keyword arguments.
"""

from __future__ import annotations

import fnmatch
import functools
import warnings
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import torch
from pydantic import Field
from torch import nn
from torch.optim import Optimizer

from trainpipe.errors import ConfigError
from trainpipe.optim.muon import KernelMuon, OptimizerSet
from trainpipe.optim.sam import SAM  # noqa: F401  (registers sam)
from trainpipe.registry import OPTIMIZERS, Entry


# ------------------------------------------------------------ parameter groups
def classifier_params(model: nn.Module) -> list[nn.Parameter]:
    """The parameters of the classifier head: `model.get_classifier()` (timm's convention),
    else the last `nn.Linear` in the model."""
    if callable(getattr(model, "get_classifier", None)):
        from trainpipe.models.wrap import head_modules  # handles models with two heads

        return [p for m in head_modules(model) if isinstance(m, nn.Module) for p in m.parameters()]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return list(linears[-1].parameters()) if linears else []


_WEIGHT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                  nn.ConvTranspose3d)


def hidden_matrices(model: nn.Module) -> list[nn.Parameter]:
    """The weights Muon is meant for: every Linear and conv weight except the first layer's and the head's.

    The first layer is left out like an embedding is in Muon's reference setup: its
    fan-in is the raw input (27 columns for a 3x3 RGB conv, the pixel count for an
    MLP), so it is not a hidden layer. Other tensors with 2+ dimensions that are not
    Linear/conv weights (position embeddings, class tokens, attention's packed
    in-projection) are not matrices of a linear map between hidden layers either.
    """
    layers = [m for m in model.modules() if isinstance(m, _WEIGHT_LAYERS)]
    head = {id(p) for p in classifier_params(model)}
    return [m.weight for m in layers[1:] if id(m.weight) not in head]


def param_groups(
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float = 0.0,
    decay_norm_and_bias: bool = False,
    backbone_lr_mult: float = 1.0,
) -> list[dict[str, Any]]:
    """Trainable parameters split by (head or backbone, decayed or not, hidden matrix or not).

    The decay rule is timm's `param_groups_weight_decay`: no decay on 1-D tensors
    (norm weights), biases and the names a model lists in `no_weight_decay()`
    (position embeddings, class tokens), which are fnmatch patterns as in timm
    (xcit lists `pos_embed.*`). Written out because that function's signature
    changed within timm 1.0.x. Head groups come first so that the first group's lr
    is the configured one.
    """
    no_wd_patterns = set(getattr(model, "no_weight_decay", lambda: set())())
    split_head = backbone_lr_mult != 1.0
    head = {id(p) for p in classifier_params(model)} if split_head else set()
    matrices = {id(p) for p in hidden_matrices(model)}
    groups: dict[tuple[bool, bool, bool], dict[str, Any]] = {}
    for pname, p in model.named_parameters():
        if not p.requires_grad:
            continue
        one_d = p.ndim <= 1 or pname.endswith(".bias")
        decays = (weight_decay > 0 and (decay_norm_and_bias or not one_d)
                  and not any(fnmatch.fnmatch(pname, pat) for pat in no_wd_patterns))
        key = (id(p) in head, decays, id(p) in matrices)
        if key not in groups:
            mult = 1.0 if key[0] or not split_head else backbone_lr_mult
            parts = ["head" if key[0] else "backbone"] if split_head else []
            parts += ["decay" if decays else "no_decay"] + (["matrix"] if key[2] else [])
            groups[key] = {"params": [], "name": "/".join(parts), "lr": lr * mult, "base_lr": lr * mult,
                           "lr_mult": mult, "weight_decay": weight_decay if decays else 0.0, "matrix": key[2]}
        groups[key]["params"].append(p)
    return [groups[k] for k in sorted(groups, key=lambda k: (not k[0], not k[1], not k[2]))]


def _fast_path(groups: list[dict[str, Any]]) -> dict[str, bool]:
    """`fused=True` when every parameter is a floating tensor on the CPU or on CUDA.

    torch's fused kernels update every parameter in one pass; without `fused`, torch
    picks its foreach kernels on CUDA and a Python loop over the parameters on the CPU.
    Measured on the 2-core CPU (timm resnet18, one thread): SGD-Nesterov with weight decay
    took 6.4 ms a step fused against 48 ms looped (AdamW: 9 against 31), about a tenth of
    a batch-256 CIFAR step. Fused results differ from the loop's in the last bit of some
    weights (the update is evaluated with fused multiply-adds; 2e-9 after 5 steps), as on
    CUDA; runs stay bit-for-bit repeatable. MPS keeps torch's default.
    """
    params = [p for g in groups for p in g["params"]]
    types = {p.device.type for p in params}
    if params and len(types) == 1 and types <= {"cpu", "cuda"} and all(p.is_floating_point() for p in params):
        return {"fused": True}
    return {}


# ------------------------------------------------------------------ the entries
@OPTIMIZERS.register("sgd")
def sgd(param_groups: list[dict[str, Any]], /, *, momentum: float = 0.9, nesterov: bool = True,
        dampening: float = 0.0) -> Optimizer:
    """SGD with (Nesterov) momentum: the CIFAR ResNet workhorse."""
    return torch.optim.SGD(param_groups, lr=param_groups[0]["lr"], momentum=momentum, nesterov=nesterov,
                           dampening=dampening, **_fast_path(param_groups))


@OPTIMIZERS.register("adam")
def adam(param_groups: list[dict[str, Any]], /, *, betas: tuple[float, float] = (0.9, 0.999),
         eps: float = 1e-8, amsgrad: bool = False) -> Optimizer:
    """Adam (weight decay added to the gradient, i.e. L2 regularisation)."""
    return torch.optim.Adam(param_groups, lr=param_groups[0]["lr"], betas=betas, eps=eps, amsgrad=amsgrad,
                            **_fast_path(param_groups))


@OPTIMIZERS.register("adamw")
def adamw(param_groups: list[dict[str, Any]], /, *, betas: tuple[float, float] = (0.9, 0.999),
          eps: float = 1e-8, amsgrad: bool = False) -> Optimizer:
    """AdamW: Adam with decoupled weight decay."""
    return torch.optim.AdamW(param_groups, lr=param_groups[0]["lr"], betas=betas, eps=eps, amsgrad=amsgrad,
                             **_fast_path(param_groups))


@OPTIMIZERS.register("rmsprop")
def rmsprop(param_groups: list[dict[str, Any]], /, *, alpha: float = 0.99, eps: float = 1e-8,
            momentum: float = 0.0, centered: bool = False) -> Optimizer:
    """RMSprop."""
    return torch.optim.RMSprop(param_groups, lr=param_groups[0]["lr"], alpha=alpha, eps=eps,
                               momentum=momentum, centered=centered)


@OPTIMIZERS.register("muon")
def muon(param_groups: list[dict[str, Any]], /, *, momentum: float = 0.95, nesterov: bool = True,
         ns_steps: Annotated[int, Field(ge=1, lt=100)] = 5,
         adjust_lr_fn: Literal["original", "match_rms_adamw", "spectral_unclamped"] = "match_rms_adamw",
         adamw_lr: float | None = None, adamw_betas: tuple[float, float] = (0.9, 0.999),
         adamw_eps: float = 1e-8) -> Optimizer:
    """Muon on hidden weight matrices and conv kernels, AdamW on the rest (first layer, head, norms, biases).

    The default `adjust_lr_fn=match_rms_adamw` (Moonshot's scaling) makes Muon's
    update as large as AdamW's, so one lr serves both; `adamw_lr` sets AdamW's
    apart (scaled by `backbone_lr_mult` like every other lr): it becomes those groups'
    `base_lr`, which the schedule turns into their lr from its first step.
    """
    if not hasattr(torch.optim, "Muon"):
        raise ConfigError(f"optim.name: muon needs torch.optim.Muon (torch >= 2.9), this is torch {torch.__version__}; "
                          "upgrade torch or choose another optimizer.")
    matrices = [g for g in param_groups if g.get("matrix")]
    others = [g for g in param_groups if not g.get("matrix")]
    if adamw_lr is not None:
        for g in others:
            g["base_lr"] = adamw_lr * g["lr_mult"]
    parts: list[Optimizer] = []
    if matrices:
        parts.append(KernelMuon(matrices, lr=matrices[0]["lr"], momentum=momentum, nesterov=nesterov,
                                ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn))
    else:
        warnings.warn("muon: the model has no hidden weight matrices or conv kernels; every parameter uses AdamW",
                      stacklevel=2)
    if others:
        parts.append(torch.optim.AdamW(others, lr=others[0]["lr"], betas=adamw_betas, eps=adamw_eps,
                                       **_fast_path(others)))
    return OptimizerSet(parts)


# ------------------------------------------------------------- timm's optimizers
@functools.cache
def timm_names() -> tuple[str, ...]:
    from timm.optim import list_optimizers

    return tuple(list_optimizers())


@OPTIMIZERS.register_fallback(
    names=timm_names,
    hint="Any optimizer timm provides also works by its name (timm.optim.list_optimizers(): lion, lamb, lars, ...).",
)
def _timm_entry(name: str) -> Entry | None:
    """Any optimizer timm provides, with its keyword arguments passed through."""
    if name not in timm_names():
        return None
    from timm.optim import create_optimizer_v2, get_optimizer_info

    def build_timm(param_groups: list[dict[str, Any]], /, **options: Any) -> Optimizer:
        return create_optimizer_v2(param_groups, opt=name, **options)

    return Entry(name, build_timm, f"timm: {get_optimizer_info(name).description}")


# ------------------------------------------------------------------ front door
def build(
    name: str,
    options: Mapping[str, Any],
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float = 0.0,
    decay_norm_and_bias: bool = False,
    backbone_lr_mult: float = 1.0,
) -> Optimizer:
    """The optimizer `name` over `model`'s trainable parameters (see the module docstring).

    `name` and `options` come from a validated config (`trainpipe.config.load` checked and
    completed them); only timm's optimizers, whose options are their own, can still refuse
    theirs here.
    """
    entry = OPTIMIZERS.get(name, key="optim.name")
    groups = param_groups(model, lr=lr, weight_decay=weight_decay, decay_norm_and_bias=decay_norm_and_bias,
                          backbone_lr_mult=backbone_lr_mult)
    if not groups:
        raise ConfigError("model: no parameter requires gradients, so there is nothing to optimise; "
                          "check model.freeze (a linear probe still trains the head).")
    try:
        return entry.fn(groups, **options)
    except (TypeError, ValueError) as e:
        if isinstance(e, TypeError) and not entry.accepts_any_option():
            raise  # our own entries' options were validated with the config: this is a bug
        # What only the constructor can judge (torch's and timm's own checks, e.g. Nesterov
        # without momentum), with the key to fix.
        where = (f"timm.optim.get_optimizer_class({name!r}) lists the arguments it takes"
                 if entry.accepts_any_option() else f"`trainpipe list optimizer` shows {name}'s options")
        raise ConfigError(f"optim: {name} rejected its options ({e}). Fix the matching optim.* key; {where}.") from e
