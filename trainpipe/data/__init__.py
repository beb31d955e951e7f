"""The data front door: `build(cfg, seed=, device=)` -> train / val / test loaders."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from trainpipe.data.base import DataSpec, SourceData, Split
from trainpipe.data.datasets import stratified_split
from trainpipe.data.loaders import DeviceLoader
from trainpipe.registry import DATASETS

if TYPE_CHECKING:
    from trainpipe.config import DataConfig

__all__ = ["DataBundle", "DataSpec", "Split", "build"]


@dataclass
class DataBundle:
    train: Any
    val: Any | None
    test: Any | None
    spec: DataSpec
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    info: dict = field(default_factory=dict)


def _carve_val(train: Split, val_split: float, seed: int) -> tuple[Split, Split | None]:
    n = len(train)
    n_val = int(val_split) if val_split >= 1 else int(round(n * val_split))
    if n_val <= 0:
        return train, None
    keep, out = stratified_split(train.y.numpy(), n_val, seed)
    return train.subset(torch.from_numpy(keep)), train.subset(torch.from_numpy(out))


def _mean_std(split: Split) -> tuple[tuple[float, ...], tuple[float, ...]]:
    x = split.x
    if x.dtype == torch.uint8:
        xf = x.float().div_(255.0)
        dims = (0, 2, 3)
    else:
        xf = x.float()
        dims = (0,)
    mean = xf.mean(dim=dims)
    std = xf.std(dim=dims).clamp_min(1e-6)
    return tuple(mean.tolist()), tuple(std.tolist())


def build(cfg: "DataConfig", *, seed: int, device: torch.device, channels_last: bool = False) -> DataBundle:
    src: SourceData = DATASETS.build(cfg.dataset, cfg, **cfg.options())
    train, val = (src.train, src.val) if src.val is not None else _carve_val(src.train, cfg.val_split, seed)
    if cfg.fraction < 1:
        keep, _ = stratified_split(train.y.numpy(), len(train) - int(round(len(train) * cfg.fraction)), seed)
        train = train.subset(torch.from_numpy(keep))
    mean, std = (src.mean, src.std) if src.mean is not None else _mean_std(train)
    spec = DataSpec(tuple(train.sample_shape), len(src.classes), tuple(src.classes))
    from trainpipe.data.augment import build_pipeline

    ops = build_pipeline(cfg.augment)
    mix = None
    if cfg.mix is not None and (cfg.mix.mixup_alpha > 0 or cfg.mix.cutmix_alpha > 0):
        from trainpipe.data.mix import build_mix

        mix = build_mix(cfg.mix.model_dump(), spec.num_classes)
    common = dict(device=device, mean=mean, std=std, channels_last=channels_last)
    eval_bs = cfg.eval_batch_size or max(cfg.batch_size, 256)
    train_loader = DeviceLoader(
        train, batch_size=cfg.batch_size, shuffle=True, drop_last=cfg.drop_last and len(train) > cfg.batch_size,
        ops=ops, mix=mix, seed=seed, **common,
    )
    make_eval = lambda s: None if s is None else DeviceLoader(s, batch_size=eval_bs, **common)  # noqa: E731
    info = {"loader": "device", "train_size": len(train), "val_size": len(val) if val else 0,
            "test_size": len(src.test) if src.test else 0}
    return DataBundle(train_loader, make_eval(val), make_eval(src.test), spec, mean, std, info)
