"""Loading a local weights file into a freshly built model (`model.weights: PATH`).

Accepted files: a plain state dict as timm and torchvision save them (`.pt`, `.pth`,
`.bin`, or `.safetensors`), or a trainpipe checkpoint (a dict whose "model" entry is
the state dict). Head tensors whose shape differs are left at their fresh
initialisation, which is how a net pretrained on one dataset is fine-tuned on
another with a different class count.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from trainpipe.errors import ConfigError
from trainpipe.models.wrap import head_prefixes, is_head_key

KEY = "model.weights"

# DistributedDataParallel and torch.compile prefix every key of the module they wrap.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# Our torchvision adapter keeps the net as `.net`; plain torchvision files lack that prefix.
_ADAPTER_PREFIX = "net."


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file, with wrapper prefixes removed."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(
            f"{KEY}: no file at {p}. Give the path of a state dict (.pt, .pth, .safetensors) "
            f"or of a checkpoint written by an earlier run (runs/<name>/checkpoints/best.pt)."
        )
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: object = load_file(str(p), device="cpu")
        else:
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as e:
        raise ConfigError(
            f"{KEY}: {p} could not be read as a PyTorch weights file ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else 'no details'}). Only tensors and plain "
            f"containers are loaded (torch.load with weights_only=True); re-save the file as "
            f"`torch.save(model.state_dict(), path)`."
        ) from None
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConfigError(
            f"{KEY}: {p} does not hold a state dict (a mapping of names to tensors, or a "
            f"checkpoint with a 'model' entry holding one). Save one with "
            f"`torch.save(model.state_dict(), path)`."
        )
    state = {}
    for k, v in obj.items():
        for prefix in _WRAPPER_PREFIXES:
            while k.startswith(prefix):
                k = k[len(prefix):]
        state[k] = v
    return state


def _align_keys(source: dict[str, torch.Tensor], target: Mapping[str, object]) -> dict[str, torch.Tensor]:
    """Rename source keys by the adapter prefix when that makes more of them match."""
    candidates = [source]
    if all(k.startswith(_ADAPTER_PREFIX) for k in source):
        candidates.append({k[len(_ADAPTER_PREFIX):]: v for k, v in source.items()})
    else:
        candidates.append({_ADAPTER_PREFIX + k: v for k, v in source.items()})
    return max(candidates, key=lambda s: len(s.keys() & target.keys()))


def _is_counter(key: str) -> bool:
    return key.endswith("num_batches_tracked")


def load_weights(model: nn.Module, path: str | Path) -> list[str]:
    """Copy the tensors of `path` into `model`; returns the head keys left at their fresh init.

    Raises ConfigError when the file is missing or unreadable, when a non-head tensor
    has a different shape, or when the file and the model do not share their tensors
    (a different architecture).
    """
    target = model.state_dict()
    source = _align_keys(read_state_dict(path), target)
    heads = head_prefixes(model)

    missing = [k for k in target if k not in source and not is_head_key(k, heads) and not _is_counter(k)]
    unexpected = [k for k in source if k not in target and not _is_counter(k)]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} model tensors are absent from the file (first: {missing[0]!r})")
        if unexpected:
            parts.append(f"{len(unexpected)} file tensors have no place in the model (first: {unexpected[0]!r})")
        raise ConfigError(
            f"{KEY}: {path} does not fit this model: {'; '.join(parts)}. The file was probably "
            f"saved from a different architecture; set model.name (and model.arch) to the one "
            f"that produced it."
        )

    kept_fresh = [k for k in target if k not in source and is_head_key(k, heads)]
    to_load: dict[str, torch.Tensor] = {}
    for key, value in source.items():
        if key not in target:
            continue
        expected = target[key].shape
        if value.shape == expected:
            to_load[key] = value
        elif is_head_key(key, heads):
            kept_fresh.append(key)
        else:
            raise ConfigError(
                f"{KEY}: {path} does not fit this model: tensor {key!r} has shape "
                f"{tuple(value.shape)} in the file but {tuple(expected)} in the model. Only the "
                f"classifier head may differ (it is re-initialised for the new class count); check "
                f"that model.name, its options and the input channels match the run that saved it."
            )
    model.load_state_dict(to_load, strict=False)
    return kept_fresh
