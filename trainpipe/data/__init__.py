"""The data front door: `build(cfg, seed=, device=)` -> train / val / test loaders
(`load_splits` first, when the spec must be known before the loaders are built)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from trainpipe.data.base import DataSpec, SourceData, Split
from trainpipe.data.images import conform
from trainpipe.data.loaders import DeviceLoader, StreamLoader
from trainpipe.data.prepare import feature_stats
from trainpipe.data.splits import carve_val, take_fraction
from trainpipe.errors import ConfigError
from trainpipe.registry import DATASETS

if TYPE_CHECKING:
    from trainpipe.config import DataConfig

__all__ = ["DataBundle", "DataSpec", "DeviceLoader", "SourceData", "Split", "Splits", "StreamLoader", "build",
           "load_source", "load_splits"]

# DeviceLoader only when the data take at most this share of the free device memory
# (or of the host RAM on CPU): the model, activations and optimizer state need the rest.
DEVICE_MEMORY_SHARE = 0.25
# How many processes share this process's GPU (set by `trainpipe sweep --workers N --devices ...`).
PROCESSES_PER_GPU_ENV = "TRAINPIPE_PROCESSES_PER_GPU"


@dataclass
class DataBundle:
    train: Any
    val: Any | None
    test: Any | None
    spec: DataSpec
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    info: dict = field(default_factory=dict)


def load_source(cfg: "DataConfig") -> SourceData:
    """The dataset as its source publishes it, with `data.channels` / `data.image_size` applied."""
    src: SourceData = DATASETS.build(cfg.dataset, cfg, **cfg.options())

    def fit(s: Split | None) -> Split | None:
        # Cached sources conform at cache time (a no-op here); this covers the others.
        if s is None or not s.is_image:
            return s
        x = conform(s.x, channels=cfg.channels, size=cfg.image_size)
        return s if x is s.x else Split(x, s.y)

    src.train, src.val, src.test = fit(src.train), fit(src.val), fit(src.test)
    return src


def memory_budget(device: torch.device) -> int:
    """Bytes of data a DeviceLoader may place on `device`."""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        # The driver counts the blocks torch's allocator keeps cached in this process as used;
        # this process can reuse them (an earlier run or trial left them).
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        # Sweep workers sharing this GPU each see it before the others allocate: each takes
        # its part of it at most.
        sharing = max(1, int(os.environ.get(PROCESSES_PER_GPU_ENV, "1") or 1))
        return int(min(free + cached, total / sharing) * DEVICE_MEMORY_SHARE)
    if device.type == "mps" and hasattr(torch.mps, "recommended_max_memory"):
        return int(torch.mps.recommended_max_memory() * DEVICE_MEMORY_SHARE)
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        ram = 8 << 30
    return int(ram * DEVICE_MEMORY_SHARE)


def choose_loader(requested: str, ops: list, nbytes: int, device: torch.device) -> tuple[str, str]:
    """("device" | "stream", why) for `data.loader`."""
    unbatched = [op.name for op in ops if not op.has_batched]
    if requested == "device":
        if unbatched:
            raise ConfigError(
                f"data.loader: device needs every op in data.augment to have a batched form, but "
                f"{', '.join(unbatched)} has none; set data.loader=auto (or stream), or remove those ops."
            )
        return "device", "data.loader=device"
    if requested == "stream":
        return "stream", "data.loader=stream"
    if unbatched:
        return "stream", f"{', '.join(unbatched)} has no batched form"
    budget = memory_budget(device)
    if nbytes > budget:
        return "stream", f"data ({nbytes / 2**20:.0f} MiB) exceed {DEVICE_MEMORY_SHARE:.0%} of {device.type} memory"
    return "device", f"data ({nbytes / 2**20:.0f} MiB) fit in {device.type} memory"


@dataclass
class Splits:
    """The data of a run before any loader: its splits, their spec and normalisation.

    A run reads the spec (input shape, classes) to build the model, and the model decides
    the batches' memory format, before `build` lays the data out in its loaders.
    """

    train: Split
    val: Split | None
    test: Split | None
    spec: DataSpec
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    official_val: bool
    extra: dict = field(default_factory=dict)


def load_splits(cfg: "DataConfig", *, seed: int) -> Splits:
    """The train / val / test splits of `cfg` (val carved from train when the source has
    none, `data.fraction` applied) with their spec and normalisation statistics."""
    src = load_source(cfg)
    official_val = src.val is not None
    train, val = (src.train, src.val) if official_val else carve_val(src.train, cfg.val_split, seed)
    train = take_fraction(train, cfg.fraction, seed)
    if src.normalized:
        mean = std = None
    elif src.mean is not None:
        mean, std = src.mean, src.std
    else:
        mean, std = feature_stats(src.train.x)
    spec = DataSpec(tuple(train.sample_shape), len(src.classes), tuple(src.classes))
    if cfg.augment and not train.is_image:
        raise ConfigError(
            f"data.augment: image augmentations need image data, but {cfg.dataset} gives feature vectors of "
            f"shape {spec.in_shape}; remove data.augment."
        )
    return Splits(train, val, src.test, spec, mean, std, official_val, src.extra)


def build(cfg: "DataConfig", *, seed: int, device: torch.device, channels_last: bool = False,
          splits: Splits | None = None) -> DataBundle:
    """Train / val / test loaders on `device`, from `splits` when the caller has loaded them."""
    from trainpipe.data.augment import build_pipeline, stream_transform

    device = torch.device(device)
    loaded = splits if splits is not None else load_splits(cfg, seed=seed)
    train, val, test, spec = loaded.train, loaded.val, loaded.test, loaded.spec
    mean, std, official_val = loaded.mean, loaded.std, loaded.official_val

    ops = build_pipeline(cfg.augment)
    mix = None
    if cfg.mix is not None:
        from trainpipe.data.augment.mix import build_mix

        mix = build_mix(cfg.mix, spec.num_classes)

    total = sum(s.nbytes for s in (train, val, test) if s is not None)
    kind, why = choose_loader(cfg.loader, ops, total, device)
    eval_kind = kind
    if kind == "stream" and cfg.loader == "auto" and total <= memory_budget(device):
        eval_kind = "device"  # only the augmentation needed streaming; evaluation has none
    common = dict(device=device, mean=mean, std=std, channels_last=channels_last)
    workers = dict(num_workers=cfg.num_workers)
    drop_last = cfg.drop_last
    # DeviceLoaders without augmentation convert and normalise their split once instead of
    # every batch, when the float32 copies (4 bytes a value, 4x uint8 images) fit in the
    # data's memory share beside the data themselves.
    unaugmented_on_device = [s for s, k in ((train, "device" if not ops else ""), (val, eval_kind),
                                            (test, eval_kind)) if s is not None and k == "device"]
    float_copies = sum(4 * len(s) * math.prod(s.sample_shape) for s in unaugmented_on_device)
    normalize_once = total + float_copies <= memory_budget(device)
    if kind == "device":
        train_loader: Any = DeviceLoader(train, batch_size=cfg.batch_size, shuffle=True, drop_last=drop_last,
                                         ops=ops, mix=mix, seed=seed, normalize_once=normalize_once, **common)
    else:
        train_loader = StreamLoader(train, batch_size=cfg.batch_size, shuffle=True, drop_last=drop_last,
                                    transform=stream_transform(ops) if ops else None, mix=mix, seed=seed,
                                    **common, **workers)
    eval_bs = cfg.eval_batch_size or max(cfg.batch_size, 256)

    def make_eval(s: Split | None) -> Any:
        if s is None:
            return None
        if eval_kind == "device":
            return DeviceLoader(s, batch_size=eval_bs, normalize_once=normalize_once, **common)
        return StreamLoader(s, batch_size=eval_bs, **common, **workers)

    info = {
        "loader": kind,
        "loader_reason": why,
        "eval_loader": eval_kind,
        "train_size": len(train),
        "val_size": len(val) if val is not None else 0,
        "val_source": "official" if official_val else ("carved from train" if val is not None else "none"),
        "test_size": len(test) if test is not None else 0,
        "cache": loaded.extra.get("cache", "off"),
        "skipped_corrupt": loaded.extra.get("skipped", 0),
    }
    return DataBundle(train_loader, make_eval(val), make_eval(test), spec, mean, std, info)
